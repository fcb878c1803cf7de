//! GGUF reader and writer: round trips of every value and tensor type, and hostile files
//! that must fail with an error naming the problem (never a panic).

use std::path::{Path, PathBuf};

use retort_kernels::DType;
use retort_models::gguf::{Array, GgufFile, GgufWriter, Value};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retort-gguf-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn every_value() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(250)),
        ("t.i8".into(), Value::I8(-7)),
        ("t.u16".into(), Value::U16(65000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(1e-5)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::String("<｜User｜> ünïcode ✓".into())),
        ("t.u64".into(), Value::U64(u64::MAX)),
        ("t.i64".into(), Value::I64(i64::MIN)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.arr.u8".into(), Value::Array(Array::U8(vec![1, 2, 3]))),
        ("t.arr.i8".into(), Value::Array(Array::I8(vec![-1, 2]))),
        ("t.arr.u16".into(), Value::Array(Array::U16(vec![1, 65535]))),
        ("t.arr.i16".into(), Value::Array(Array::I16(vec![-1, 300]))),
        ("t.arr.u32".into(), Value::Array(Array::U32(vec![7]))),
        ("t.arr.i32".into(), Value::Array(Array::I32(vec![1, 3, 4, 6]))),
        ("t.arr.f32".into(), Value::Array(Array::F32(vec![0.5, -2.0]))),
        ("t.arr.bool".into(), Value::Array(Array::Bool(vec![true, false]))),
        ("t.arr.string".into(), Value::Array(Array::String(vec!["Ġthe".into(), "".into(), "日本".into()]))),
        ("t.arr.u64".into(), Value::Array(Array::U64(vec![u64::MAX]))),
        ("t.arr.i64".into(), Value::Array(Array::I64(vec![-5]))),
        ("t.arr.f64".into(), Value::Array(Array::F64(vec![1.5]))),
        ("t.arr.empty".into(), Value::Array(Array::F32(vec![]))),
        ("t.arr.nested".into(), Value::Array(Array::Array(vec![Array::U8(vec![1]), Array::String(vec!["x".into()])]))),
    ]
}

/// Bytes of a tensor of `dims` and `dtype`, each byte a function of the tensor's index
/// and position so a misplaced tensor cannot go unnoticed.
fn pattern(index: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + index * 7 + 1) as u8).collect()
}

fn write_sample(path: &Path) -> Vec<(String, Vec<u64>, DType)> {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.set(k, v).unwrap();
    }
    let mut tensors = Vec::new();
    for (i, &dtype) in DType::ALL.iter().enumerate() {
        let dims = vec![dtype.block_size() as u64 * 2, 3];
        tensors.push((format!("tensor.{i}.{}", dtype.name()), dims, dtype));
    }
    tensors.push(("vector".into(), vec![5], DType::F32));
    for (name, dims, dtype) in &tensors {
        w.add_tensor(name, dims, *dtype).unwrap();
    }
    w.write(path, |i, info, out| out.write_all(&pattern(i, info.n_bytes))).unwrap();
    tensors
}

#[test]
fn round_trips_every_value_type_and_tensor_type() {
    let path = temp_dir().join("round_trip.gguf");
    let tensors = write_sample(&path);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version, 3);
    let read: Vec<(String, Value)> = file.metadata().map(|(k, v)| (k.to_owned(), v.clone())).collect();
    assert_eq!(read, every_value());
    assert_eq!(file.tensors().len(), tensors.len());
    for (i, (name, dims, dtype)) in tensors.iter().enumerate() {
        let t = file.tensor(name).unwrap();
        assert_eq!((&t.dims, t.dtype), (dims, *dtype));
        assert_eq!(t.offset % 32, 0, "{name} is aligned");
        assert_eq!(file.tensor_data(t).unwrap(), pattern(i, t.n_bytes), "{name} data");
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let path = temp_dir().join("aligned.gguf");
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(256)).unwrap();
    w.add_tensor("a", &[3], DType::F32).unwrap();
    w.add_tensor("b", &[32], DType::Q8_0).unwrap();
    w.write(&path, |i, info, out| out.write_all(&pattern(i, info.n_bytes))).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.data_start() % 256, 0);
    assert_eq!(file.tensor("b").unwrap().offset, 256);
    assert_eq!(file.tensor_data(file.tensor("b").unwrap()).unwrap(), pattern(1, 34));
}

#[test]
fn failed_write_leaves_no_file() {
    let dir = temp_dir();
    let path = dir.join("failed.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[4], DType::F32).unwrap();
    let err = w.write(&path, |_, _, out| out.write_all(&[0u8; 3])).unwrap_err();
    assert!(err.to_string().contains("3 bytes written, 16 expected"), "{err}");
    assert!(!path.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("failed.gguf")).collect();
    assert!(leftovers.is_empty(), "temporary file left behind");
}

// ---- hostile files -------------------------------------------------------------------

/// Writes raw bytes and returns the error message of opening them.
fn open_error(name: &str, bytes: &[u8]) -> String {
    let path = temp_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: opened a bad file"),
        Err(e) => e.to_string(),
    }
}

/// A valid little file as bytes: header, one string KV, one F32 tensor of 4 values.
fn valid_bytes() -> Vec<u8> {
    let path = temp_dir().join("valid.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into())).unwrap();
    w.add_tensor("weight", &[4], DType::F32).unwrap();
    w.write(&path, |_, _, out| out.write_all(&[0u8; 16])).unwrap();
    std::fs::read(path).unwrap()
}

fn header(tensor_count: u64, kv_count: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensor_count.to_le_bytes());
    b.extend(kv_count.to_le_bytes());
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

/// One tensor-table entry.
fn tensor_entry(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name);
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(type_id.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b
}

#[test]
fn valid_bytes_open() {
    let path = temp_dir().join("valid_check.gguf");
    std::fs::write(&path, valid_bytes()).unwrap();
    GgufFile::open(&path).unwrap();
}

#[test]
fn empty_file() {
    let e = open_error("empty.gguf", b"");
    assert!(e.contains("too short for a GGUF header"), "{e}");
}

#[test]
fn wrong_magic() {
    let mut b = valid_bytes();
    b[..4].copy_from_slice(b"GGML");
    let e = open_error("magic.gguf", &b);
    assert!(e.contains("bad magic") && e.contains("GGML"), "{e}");
}

#[test]
fn unsupported_version() {
    let mut b = valid_bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = open_error("version.gguf", &b);
    assert!(e.contains("unsupported GGUF version 1"), "{e}");
}

#[test]
fn truncated_at_every_length_never_panics() {
    let b = valid_bytes();
    for len in 0..b.len() {
        let path = temp_dir().join("truncated.gguf");
        std::fs::write(&path, &b[..len]).unwrap();
        let e = GgufFile::open(&path).err().unwrap_or_else(|| panic!("opened a file truncated at {len}")).to_string();
        assert!(e.contains("invalid GGUF"), "len {len}: {e}");
    }
}

#[test]
fn absurd_tensor_count() {
    let e = open_error("count.gguf", &header(u64::MAX, 0));
    assert!(e.contains("claims 18446744073709551615 tensors"), "{e}");
}

#[test]
fn absurd_metadata_count() {
    let e = open_error("kvcount.gguf", &header(0, 1 << 40));
    assert!(e.contains("metadata key-value pairs"), "{e}");
}

#[test]
fn absurd_string_length() {
    let mut b = header(0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 64]);
    let e = open_error("strlen.gguf", &b);
    assert!(e.contains("exceeds the") && e.contains("limit"), "{e}");
}

#[test]
fn absurd_array_length() {
    let mut b = header(0, 1);
    b.extend(string("tokenizer.ggml.tokens"));
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend((1u64 << 60).to_le_bytes());
    let e = open_error("arrlen.gguf", &b);
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("array items"), "{e}");
}

#[test]
fn invalid_utf8_key() {
    let mut b = header(0, 1);
    b.extend(2u64.to_le_bytes());
    b.extend([0xff, 0xfe]);
    b.extend(4u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    let e = open_error("utf8.gguf", &b);
    assert!(e.contains("not valid UTF-8"), "{e}");
}

#[test]
fn unknown_value_type() {
    let mut b = header(0, 1);
    b.extend(string("general.name"));
    b.extend(99u32.to_le_bytes());
    let e = open_error("vtype.gguf", &b);
    assert!(e.contains("general.name") && e.contains("unknown value type id 99"), "{e}");
}

#[test]
fn duplicate_key() {
    let mut b = header(0, 2);
    for _ in 0..2 {
        b.extend(string("general.name"));
        b.extend(4u32.to_le_bytes());
        b.extend(1u32.to_le_bytes());
    }
    let e = open_error("dupkey.gguf", &b);
    assert!(e.contains("'general.name' appears twice"), "{e}");
}

#[test]
fn bad_alignment() {
    let mut b = header(0, 1);
    b.extend(string("general.alignment"));
    b.extend(4u32.to_le_bytes());
    b.extend(48u32.to_le_bytes());
    let e = open_error("align.gguf", &b);
    assert!(e.contains("general.alignment 48"), "{e}");
}

fn file_with_tensor(entry: Vec<u8>, data_bytes: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend(entry);
    b.resize(b.len().next_multiple_of(32) + data_bytes, 0);
    b
}

#[test]
fn unknown_tensor_type_id() {
    let e = open_error("ttype.gguf", &file_with_tensor(tensor_entry("blk.0.attn_q.weight", &[32], 77, 0), 64));
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("unknown or unsupported tensor type id 77"), "{e}");
}

#[test]
fn tensor_offset_past_the_end() {
    let e = open_error("offset.gguf", &file_with_tensor(tensor_entry("output.weight", &[4], 0, 1 << 20), 16));
    assert!(e.contains("output.weight") && e.contains("past the end of the file"), "{e}");
}

#[test]
fn tensor_offset_overflow() {
    let e = open_error("offset_overflow.gguf", &file_with_tensor(tensor_entry("w", &[4], 0, u64::MAX - 31), 16));
    assert!(e.contains("'w'") && (e.contains("overflow") || e.contains("past the end")), "{e}");
}

#[test]
fn misaligned_offset() {
    let e = open_error("misaligned.gguf", &file_with_tensor(tensor_entry("w", &[4], 0, 4), 64));
    assert!(e.contains("not a multiple of the alignment"), "{e}");
}

#[test]
fn overflowing_dims() {
    let e = open_error("dims.gguf", &file_with_tensor(tensor_entry("w", &[1 << 40, 1 << 40], 0, 0), 16));
    assert!(e.contains("'w'") && e.contains("too large"), "{e}");
}

#[test]
fn too_many_dims() {
    let e = open_error("ndims.gguf", &file_with_tensor(tensor_entry("w", &[1, 1, 1, 1, 1], 0, 0), 16));
    assert!(e.contains("5 dimensions"), "{e}");
}

#[test]
fn row_not_a_whole_block() {
    let e = open_error("block.gguf", &file_with_tensor(tensor_entry("w", &[33], 2, 0), 64));
    assert!(e.contains("row length 33") && e.contains("q4_0"), "{e}");
}

#[test]
fn overlapping_tensors() {
    let mut b = header(2, 0);
    b.extend(tensor_entry("a", &[16], 0, 0));
    b.extend(tensor_entry("b", &[16], 0, 32));
    b.resize(b.len().next_multiple_of(32) + 128, 0);
    let e = open_error("overlap.gguf", &b);
    assert!(e.contains("'a'") && e.contains("'b'") && e.contains("overlap"), "{e}");
}

#[test]
fn duplicate_tensor_name() {
    let mut b = header(2, 0);
    b.extend(tensor_entry("a", &[8], 0, 0));
    b.extend(tensor_entry("a", &[8], 0, 32));
    b.resize(b.len().next_multiple_of(32) + 64, 0);
    let e = open_error("duptensor.gguf", &b);
    assert!(e.contains("'a' appears twice"), "{e}");
}

#[test]
fn nested_arrays_too_deep() {
    let mut b = header(0, 1);
    b.extend(string("deep"));
    b.extend(9u32.to_le_bytes());
    for _ in 0..8 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend([0u8; 64]);
    let e = open_error("deep.gguf", &b);
    assert!(e.contains("nested deeper"), "{e}");
}

/// A random-byte mutation sweep: no input may panic. (The cargo-fuzz target in fuzz/
/// explores much further; this keeps a cheap version in every test run.)
#[test]
fn mutated_files_never_panic() {
    let base = valid_bytes();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let path = temp_dir().join("mutated.gguf");
    for _ in 0..2000 {
        let mut b = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        std::fs::write(&path, &b).unwrap();
        let _ = GgufFile::open(&path);
    }
}
