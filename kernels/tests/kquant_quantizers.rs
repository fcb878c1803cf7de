//! The K-quant quantizers (Q2_K..Q6_K `from_f32`) against ggml itself: fixtures written by
//! scripts/reference/kquant_fixtures.py, which calls quantize_row_q*_K_ref in the peer
//! llama.cpp build's libggml-base.so on seeded rows (normal, uniform, heavy-tailed with
//! outliers, all zero, constant, ~1e-8, mixed sign, groups over four decades, sparse, all
//! positive, small integers, magnitudes around ggml's 1e-15 zero threshold, signed zeros;
//! 256 and 512 values). Every byte must match.
//!
//! RETORT_KQUANT_FIXTURES=<dir> points the tests at another fixture directory, such as a
//! larger uncommitted set from `kquant_fixtures.py --out <dir> --rows N`.

use std::path::PathBuf;

use retort_kernels::DType;
use serde_json::Value;

const K_TYPES: [DType; 5] = [DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K];

struct Case {
    name: String,
    input: Vec<f32>,
    /// ggml's blocks for `input`, per type in K_TYPES order.
    blocks: Vec<Vec<u8>>,
}

fn fixture_dir() -> PathBuf {
    match std::env::var_os("RETORT_KQUANT_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kquants"),
    }
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The cases of index.json, cut out of inputs.bin and the per-type block files (all
/// concatenated in case order).
fn cases() -> Vec<Case> {
    let index: Value = serde_json::from_slice(&read("index.json")).expect("index.json parses");
    let inputs: Vec<f32> =
        read("inputs.bin").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let type_blocks: Vec<Vec<u8>> = K_TYPES.iter().map(|t| read(&format!("{}.bin", t.name()))).collect();
    for (dtype, size) in K_TYPES.iter().zip(index["types"].as_object().expect("types").values()) {
        assert_eq!(dtype.type_size() as u64, size.as_u64().unwrap(), "{dtype} block size in the fixture");
    }

    let mut cases = Vec::new();
    let (mut value_at, mut byte_at) = (0, [0usize; K_TYPES.len()]);
    for case in index["cases"].as_array().expect("cases") {
        let n = case["values"].as_u64().expect("values") as usize;
        let input = inputs[value_at..value_at + n].to_vec();
        value_at += n;
        let blocks = K_TYPES
            .iter()
            .zip(&type_blocks)
            .zip(&mut byte_at)
            .map(|((dtype, all), at)| {
                let len = dtype.row_bytes(n).unwrap();
                *at += len;
                all[*at - len..*at].to_vec()
            })
            .collect();
        cases.push(Case { name: case["name"].as_str().unwrap().to_string(), input, blocks });
    }
    assert_eq!(value_at, inputs.len(), "inputs.bin has values no case claims");
    for ((dtype, all), at) in K_TYPES.iter().zip(&type_blocks).zip(byte_at) {
        assert_eq!(at, all.len(), "{dtype}.bin has bytes no case claims");
    }
    assert!(cases.len() >= 20, "fixture has only {} cases", cases.len());
    cases
}

fn quantize(dtype: DType, input: &[f32]) -> Vec<u8> {
    let quantize = dtype.traits().from_f32.unwrap_or_else(|| panic!("{dtype} has no quantizer"));
    let mut out = vec![0xA5u8; dtype.row_bytes(input.len()).unwrap()];
    quantize(input, &mut out);
    out
}

/// The named field of a K-quant block that byte `offset` belongs to (ggml-common.h).
fn field(dtype: DType, offset: usize) -> &'static str {
    let fields: &[(usize, &'static str)] = match dtype {
        DType::Q2_K => &[(0, "scales"), (16, "qs"), (80, "d"), (82, "dmin")],
        DType::Q3_K => &[(0, "hmask"), (32, "qs"), (96, "scales"), (108, "d")],
        DType::Q4_K => &[(0, "d"), (2, "dmin"), (4, "scales"), (16, "qs")],
        DType::Q5_K => &[(0, "d"), (2, "dmin"), (4, "scales"), (16, "qh"), (48, "qs")],
        DType::Q6_K => &[(0, "ql"), (128, "qh"), (192, "scales"), (208, "d")],
        _ => unreachable!(),
    };
    fields.iter().rev().find(|&&(start, _)| offset >= start).unwrap().1
}

#[test]
fn from_f32_matches_ggml_bytes() {
    let mut failures = Vec::new();
    for case in cases() {
        for (&dtype, expected) in K_TYPES.iter().zip(&case.blocks) {
            let got = quantize(dtype, &case.input);
            let ts = dtype.type_size();
            for (b, (g, e)) in got.chunks(ts).zip(expected.chunks(ts)).enumerate() {
                let differing: Vec<String> = (0..ts)
                    .filter(|&i| g[i] != e[i])
                    .map(|i| format!("{}[{i}] {:#04x} != {:#04x}", field(dtype, i), g[i], e[i]))
                    .collect();
                if !differing.is_empty() {
                    failures.push(format!(
                        "{dtype} {} block {b}: {} bytes differ from ggml: {}",
                        case.name,
                        differing.len(),
                        differing.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} blocks differ:\n{}", failures.len(), failures.join("\n"));
}

/// Quantizing one row and quantizing its blocks one at a time give the same bytes (no state
/// leaks from one super-block to the next), and a quantizer writes every byte of its output.
#[test]
fn blocks_are_independent_and_fully_written() {
    for case in cases().iter().filter(|c| c.input.len() > 256) {
        for &dtype in &K_TYPES {
            let whole = quantize(dtype, &case.input);
            let ts = dtype.type_size();
            for (b, values) in case.input.chunks(256).enumerate() {
                assert_eq!(quantize(dtype, values), whole[b * ts..(b + 1) * ts], "{dtype} {} block {b}", case.name);
            }
            let quantize = dtype.traits().from_f32.unwrap();
            let mut zeroed = vec![0u8; whole.len()];
            quantize(&case.input, &mut zeroed);
            assert_eq!(zeroed, whole, "{dtype} {}: output depends on the destination's old bytes", case.name);
        }
    }
}

/// The error an ideal uniform quantizer would leave on standard normal data, as a fraction
/// of the data's RMS: step / sqrt(12), with the step each format gets in a typical group.
/// Over n standard normal values the expected range (max - min) is 3.53 for n = 16 and 4.14
/// for n = 32, and the expected max |x| is 2.08 for n = 16 (sampled). The affine types spread
/// 2^b levels over the range; the symmetric ones put the largest magnitude on level -2^(b-1).
/// For the normal fixtures the measured errors come within 10% of these.
fn gaussian_error_estimate(dtype: DType) -> f64 {
    let step = match dtype {
        DType::Q2_K => 3.53 / 3.0,  // 2 bits, affine, groups of 16
        DType::Q3_K => 2.08 / 4.0,  // 3 bits, symmetric, groups of 16
        DType::Q4_K => 4.14 / 15.0, // 4 bits, affine, groups of 32
        DType::Q5_K => 4.14 / 31.0, // 5 bits, affine, groups of 32
        DType::Q6_K => 2.08 / 32.0, // 6 bits, symmetric, groups of 16
        _ => unreachable!(),
    };
    step / 12f64.sqrt()
}

/// Bound on RMS(dequantize(quantize(x)) - x) / RMS(x): 2.5 times the Gaussian estimate.
/// The slack covers what the estimate leaves out: the sub-block scales are quantized too
/// (to 4 bits in Q2_K), and heavy tails, sparse rows or groups spanning decades leave most
/// groups far below the scale set by the largest. On 300 rows of each distribution per length
/// (kquant_fixtures.py --rows 300) the worst ratio to the estimate was 2.1 (Q6_K heavy
/// tailed, Q5_K sparse). A layout or rounding bug (a level in the wrong place, a scale off by
/// a bit) gives errors of the order of the data itself.
fn relative_rmse_bound(dtype: DType) -> f64 {
    2.5 * gaussian_error_estimate(dtype)
}

/// Q2_K's fit weighs each value by |x| (ggml's choice for its 4 levels), so exact zeros carry no
/// weight at all: in a group of zeros and a few large negative values, the levels go to the
/// large values and the zeros decode to whatever is left, several units off. ggml does exactly
/// this (the bytes match), so Q2_K on mostly-zero rows is exempt from the bound.
fn bound_applies(dtype: DType, case: &Case) -> bool {
    !(dtype == DType::Q2_K && case.name.starts_with("sparse"))
}

fn rms(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(sum, n), v| (sum + v * v, n + 1));
    (sum / n as f64).sqrt()
}

#[test]
fn round_trip_error_is_bounded() {
    for case in cases() {
        for &dtype in &K_TYPES {
            let blocks = quantize(dtype, &case.input);
            let mut decoded = vec![f32::NAN; case.input.len()];
            (dtype.traits().to_f32)(&blocks, &mut decoded);
            assert!(decoded.iter().all(|v| v.is_finite()), "{dtype} {}: non-finite output", case.name);

            let input_rms = rms(case.input.iter().map(|&v| v as f64));
            let error_rms = rms(case.input.iter().zip(&decoded).map(|(&x, &y)| x as f64 - y as f64));
            if input_rms == 0.0 {
                assert_eq!(error_rms, 0.0, "{dtype} {}: zeros do not decode to zeros", case.name);
            } else if input_rms < 1e-6 {
                // For values this small the f16 super-block scales underflow to 0, so the row
                // decodes to zeros: ggml's behaviour too (the bytes match it).
                assert!(decoded.iter().all(|&v| v == 0.0), "{dtype} {}: tiny values decode to non-zeros", case.name);
            } else if bound_applies(dtype, &case) {
                let relative = error_rms / input_rms;
                assert!(
                    relative <= relative_rmse_bound(dtype),
                    "{dtype} {}: relative rms error {relative:.4} above {}",
                    case.name,
                    relative_rmse_bound(dtype)
                );
            }
        }
    }
}
