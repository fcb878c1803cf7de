//! The dtype table against an outside reference: fixtures written by
//! scripts/reference/quant_fixtures.py with the `gguf` package (gguf.quants, llama.cpp's
//! Python reference) and gguf.constants.GGML_QUANT_SIZES.

use std::path::{Path, PathBuf};

use retort_kernels::DType;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants")
}

fn index() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("index.json")).expect("fixture index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

fn read_bytes(name: &Value) -> Vec<u8> {
    let name = name.as_str().expect("file name");
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn read_f32s(name: &Value) -> Vec<f32> {
    let bytes = read_bytes(name);
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn dtype_named(name: &str) -> DType {
    *DType::ALL
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no dtype named {name:?} in the table"))
}

fn cases<'a>(index: &'a Value, kind: &str) -> &'a Vec<Value> {
    index[kind].as_array().expect("case list")
}

/// A copy of `bytes` placed one byte past an 8-aligned address, so reads of the block
/// structs are misaligned as they may be in a GGUF mmap. Returns the buffer and the offset.
fn misaligned(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut buffer = vec![0u8; bytes.len() + 8];
    let offset = (9 - buffer.as_ptr() as usize % 8) % 8;
    buffer[offset..offset + bytes.len()].copy_from_slice(bytes);
    assert_eq!(buffer[offset..].as_ptr() as usize % 8, 1);
    (buffer, offset)
}

/// xorshift64*: deterministic activations without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40; // 24 random bits
        bits as f32 / (1u64 << 23) as f32 - 1.0 // uniform in [-1, 1)
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

#[test]
fn table_matches_gguf_type_sizes() {
    let index = index();
    let types = index["types"].as_object().expect("types");
    // Q8_1 is an activation-only type (never stored in files); gguf-py's size for it is
    // stale (40 bytes: f32 d and s), ggml's block_q8_1 has been 36 bytes since they became f16.
    assert_eq!(types.len(), DType::ALL.len() - 1, "fixture and table list different types");
    assert!(!types.contains_key("q8_1"));
    for (name, sizes) in types {
        let id = sizes["ggml_id"].as_u64().unwrap() as u32;
        let dtype = DType::from_ggml_id(id).unwrap_or_else(|| panic!("ggml id {id} ({name}) not in the table"));
        assert_eq!(dtype.name(), name, "name of ggml id {id}");
        assert_eq!(dtype.ggml_id(), id);
        assert_eq!(dtype.block_size() as u64, sizes["block_size"].as_u64().unwrap(), "{name} block_size");
        assert_eq!(dtype.type_size() as u64, sizes["type_size"].as_u64().unwrap(), "{name} type_size");
        let row = dtype.traits();
        assert_eq!(row.dtype, dtype);
        assert_eq!((row.name, row.block_size, row.type_size), (dtype.name(), dtype.block_size(), dtype.type_size()));
    }
}

#[test]
fn unknown_ggml_ids_are_rejected() {
    // The IQ types, the integer types, TQ*, MXFP4, and garbage.
    for id in [4, 5, 16, 20, 23, 24, 28, 29, 31, 34, 39, 1000, u32::MAX] {
        assert_eq!(DType::from_ggml_id(id), None, "ggml id {id}");
    }
    for &dtype in DType::ALL {
        assert_eq!(DType::from_ggml_id(dtype.ggml_id()), Some(dtype));
    }
}

#[test]
fn to_f32_matches_gguf_bit_for_bit() {
    let index = index();
    for case in cases(&index, "dequantize") {
        let dtype = dtype_named(case["type"].as_str().unwrap());
        let blocks = read_bytes(&case["blocks"]);
        let expected = read_f32s(&case["values"]);
        assert_eq!(dtype.row_bytes(expected.len()), Some(blocks.len()), "{dtype} fixture geometry");

        let (storage, offset) = misaligned(&blocks);
        let src = &storage[offset..offset + blocks.len()];
        let mut got = vec![f32::NAN; expected.len()];
        (dtype.traits().to_f32)(src, &mut got);

        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                g.to_bits() == e.to_bits(),
                "{dtype} ({}): value {i} (block {}) is {g:e} ({:#010x}), gguf says {e:e} ({:#010x})",
                case["note"],
                i / dtype.block_size(),
                g.to_bits(),
                e.to_bits()
            );
        }
    }
}

#[test]
fn from_f32_matches_gguf_bytes() {
    let index = index();
    let quantized: Vec<&str> = cases(&index, "quantize").iter().map(|c| c["type"].as_str().unwrap()).collect();
    for must in ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_K"] {
        assert!(quantized.contains(&must), "no quantize fixture for {must}");
    }
    for case in cases(&index, "quantize") {
        let dtype = dtype_named(case["type"].as_str().unwrap());
        let input = read_f32s(&case["input"]);
        let expected = read_bytes(&case["output"]);
        let quantize = dtype.traits().from_f32.unwrap_or_else(|| panic!("{dtype} has no quantizer"));
        assert_eq!(dtype.row_bytes(input.len()), Some(expected.len()), "{dtype} fixture geometry");

        let mut got = vec![0xAAu8; expected.len()];
        quantize(&input, &mut got);

        let ts = dtype.type_size();
        for (b, (g, e)) in got.chunks(ts).zip(expected.chunks(ts)).enumerate() {
            assert_eq!(g, e, "{dtype}: block {b} differs from gguf's quantization of {:?}", &input[b * dtype.block_size()..(b + 1) * dtype.block_size()]);
        }
    }
}

#[test]
fn every_type_has_a_quantizer() {
    // The K-quant ones are checked against ggml's bytes in tests/kquant_quantizers.rs.
    for &dtype in DType::ALL {
        assert!(dtype.traits().from_f32.is_some(), "{dtype} has no quantizer");
    }
}

/// dot_f32 against to_f32 followed by a dot in f64. The f32 dot may differ from that only by
/// its own rounding, bounded by a small multiple of eps * sum |w_i x_i|.
fn check_dot(dtype: DType, row: &[u8], x: &[f32], what: &str) {
    let mut weights = vec![0.0f32; x.len()];
    (dtype.traits().to_f32)(row, &mut weights);
    let exact: f64 = weights.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum();
    let magnitude: f64 = weights.iter().zip(x).map(|(&w, &v)| (w as f64 * v as f64).abs()).sum();
    let got = (dtype.traits().dot_f32)(row, x) as f64;
    let tolerance = 1e-5 * magnitude + 1e-35;
    assert!(
        (got - exact).abs() <= tolerance,
        "{dtype} dot ({what}, n = {}): got {got:e}, expected {exact:e} (error {:e} > {tolerance:e})",
        x.len(),
        (got - exact).abs()
    );
}

#[test]
fn dot_f32_is_the_dot_of_the_dequantized_row() {
    let index = index();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in cases(&index, "dequantize") {
        if case["note"] != "random blocks" {
            continue; // the float edge cases hold infinities
        }
        let dtype = dtype_named(case["type"].as_str().unwrap());
        let blocks = read_bytes(&case["blocks"]);
        let n = read_f32s(&case["values"]).len();
        let (bs, ts) = (dtype.block_size(), dtype.type_size());

        check_dot(dtype, &blocks, &rng.vec(n), "whole row");
        check_dot(dtype, &blocks[..ts], &rng.vec(bs), "one block");
        check_dot(dtype, &[], &[], "empty row");
        if bs == 1 {
            // lengths that are not a multiple of the dot's lanes or decode chunk
            for len in [1, 7, 37, 65, 129] {
                check_dot(dtype, &blocks[..len * ts], &rng.vec(len), "odd length");
            }
        }
        // activations far from 1 in magnitude
        let big: Vec<f32> = rng.vec(n).iter().map(|v| v * 1e4).collect();
        check_dot(dtype, &blocks, &big, "large x");
    }
}

#[test]
fn dot_f32_of_quantized_rows() {
    // The same check on rows made by the quantizers, including all-zero and constant blocks.
    let index = index();
    let mut rng = Rng(42);
    for case in cases(&index, "quantize") {
        let dtype = dtype_named(case["type"].as_str().unwrap());
        let row = read_bytes(&case["output"]);
        let n = read_f32s(&case["input"]).len();
        let mut weights = vec![0.0f32; n];
        (dtype.traits().to_f32)(&row, &mut weights);
        if weights.iter().all(|w| w.is_finite()) {
            check_dot(dtype, &row, &rng.vec(n), "quantized row");
        }
    }
}

#[test]
fn row_bytes_checks_blocks_and_overflow() {
    for &dtype in DType::ALL {
        let (bs, ts) = (dtype.block_size(), dtype.type_size());
        assert_eq!(dtype.row_bytes(0), Some(0));
        assert_eq!(dtype.row_bytes(bs), Some(ts));
        assert_eq!(dtype.row_bytes(7 * bs), Some(7 * ts));
        assert_eq!(dtype.row_bytes(usize::MAX), None, "{dtype}: usize::MAX elements");
        if bs > 1 {
            for n in [1, bs - 1, bs + 1, 3 * bs + bs / 2] {
                assert_eq!(dtype.row_bytes(n), None, "{dtype}: {n} is not whole blocks of {bs}");
            }
        }
        // Large whole-block counts: exactly the u128 answer, None where it exceeds usize.
        for n_blocks in [usize::MAX / bs, usize::MAX / bs / ts, usize::MAX / bs / ts + 1, 1 << 40] {
            let n = n_blocks * bs;
            let wide = n_blocks as u128 * ts as u128;
            let expected = if wide <= usize::MAX as u128 { Some(wide as usize) } else { None };
            assert_eq!(dtype.row_bytes(n), expected, "{dtype}: {n_blocks} blocks");
        }
    }
}

#[test]
fn names_are_ggmls() {
    let names: Vec<&str> = DType::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"]
    );
}

#[test]
#[should_panic]
fn to_f32_rejects_a_short_source() {
    let mut dst = [0.0f32; 32];
    (DType::Q4_0.traits().to_f32)(&[0u8; 17], &mut dst);
}

#[test]
#[should_panic]
fn dot_f32_rejects_a_partial_block() {
    (DType::Q8_0.traits().dot_f32)(&[0u8; 34], &[0.0f32; 31]);
}

#[test]
#[should_panic]
fn from_f32_rejects_a_wrong_destination() {
    let mut dst = [0u8; 33];
    (DType::Q8_0.traits().from_f32.unwrap())(&[0.0f32; 32], &mut dst);
}
