//! safetensors reader: files written here by hand (round trips and hostile files that must
//! fail with an error naming the problem, never a panic), a file written by the Python
//! `safetensors` package, and the f32 decoding (every F8_E4M3 byte against torch, block
//! scales).

use std::path::{Path, PathBuf};

use retort_convert::safetensors::{self, f8_e4m3fn_to_f32, to_f32, validate_bytes, SafetensorsFile, StDType, TensorEntry};
use serde_json::{json, Value};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retort-safetensors-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors").join(name)
}

/// A file: the u64 header length, the header text, the data.
fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

/// A well-formed file of `tensors` (name, dtype, shape, bytes), laid out back to back in the
/// given order, plus metadata.
fn build(tensors: &[(&str, &str, &[usize], Vec<u8>)], metadata: Option<Value>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend(bytes);
        header.insert(name.to_string(), json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    file_bytes(&Value::Object(header).to_string(), &data)
}

/// Bytes that differ per tensor and per position, so a misplaced view cannot go unnoticed.
fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn sample() -> Vec<u8> {
    build(
        &[
            ("w.f32", "F32", &[2, 3], pattern(1, 24)),
            ("w.bf16", "BF16", &[4], pattern(2, 8)),
            ("w.f8", "F8_E4M3", &[3, 1], pattern(3, 3)),
            ("scalar", "I64", &[], pattern(4, 8)),
            ("empty", "F16", &[0, 7], vec![]),
            ("mask", "BOOL", &[5], pattern(5, 5)),
        ],
        Some(json!({"format": "pt", "note": "ünïcode ✓"})),
    )
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn round_trips_tensors_metadata_and_views() {
    let path = write("sample.safetensors", &sample());
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.path(), path);
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    // Data-offset order; the empty tensor sits at offset 43, before `mask`'s bytes there.
    assert_eq!(names, ["w.f32", "w.bf16", "w.f8", "scalar", "empty", "mask"]);
    let f32_entry = file.tensor("w.f32").unwrap();
    assert_eq!(
        f32_entry,
        &TensorEntry { name: "w.f32".into(), dtype: StDType::F32, shape: vec![2, 3], begin: 0, end: 24 }
    );
    assert_eq!(file.data(f32_entry), pattern(1, 24));
    assert_eq!(file.data(file.tensor("w.bf16").unwrap()), pattern(2, 8));
    assert_eq!(file.data(file.tensor("w.f8").unwrap()), pattern(3, 3));
    let scalar = file.tensor("scalar").unwrap();
    assert_eq!((scalar.shape.len(), scalar.n_elements(), file.data(scalar)), (0, 1, &pattern(4, 8)[..]));
    let empty = file.tensor("empty").unwrap();
    assert_eq!((empty.n_elements(), file.data(empty).len()), (0, 0));
    assert_eq!(file.data(file.tensor("mask").unwrap()), pattern(5, 5));
    assert!(file.tensor("missing").is_none());
    assert_eq!(file.metadata().get("note").map(String::as_str), Some("ünïcode ✓"));
    assert_eq!(file.metadata().len(), 2);
    assert_eq!(validate_bytes(&sample()), Ok(6));
}

#[test]
fn tensors_are_listed_by_offset_whatever_the_header_order() {
    let header = json!({
        "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
        "a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
        "c": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
    });
    let path = write("order.safetensors", &file_bytes(&header.to_string(), &[1, 2, 3, 4, 5, 6]));
    let file = SafetensorsFile::open(path).unwrap();
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["c", "b", "a"]);
    assert_eq!(file.data(file.tensor("a").unwrap()), [5, 6]);
    assert!(file.metadata().is_empty());
}

#[test]
fn accepts_padding_gaps_trailing_bytes_and_every_dtype() {
    // Writers pad the header with spaces; a gap between tensors and bytes after the last one
    // are harmless.
    let header = format!("{}   ", json!({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}));
    let file = file_bytes(&header, &[0, 0, 0, 0, 0, 0, 0x80, 0x3F, 9, 9]);
    let path = write("padded.safetensors", &file);
    let st = SafetensorsFile::open(path).unwrap();
    assert_eq!(to_f32(&st.tensors()[0], st.data(&st.tensors()[0]), None).unwrap(), [1.0]);
    for dtype in StDType::ALL {
        assert_eq!(StDType::from_name(dtype.name()), Some(dtype));
        let bytes = build(&[("t", dtype.name(), &[3], vec![0; 3 * dtype.size_bytes()])], None);
        assert_eq!(validate_bytes(&bytes), Ok(1), "{dtype}");
    }
    assert_eq!(StDType::F8E4M3.name(), "F8_E4M3");
}

// ---- hostile files ---------------------------------------------------------------------

/// Writes raw bytes and returns the error message of opening them, after checking that
/// validate_bytes (the fuzz target's path) fails the same way.
fn open_error(name: &str, bytes: &[u8]) -> String {
    let path = write(name, bytes);
    let message = match SafetensorsFile::open(&path) {
        Ok(_) => panic!("{name}: opened a bad file"),
        Err(e) => e.to_string(),
    };
    let validated = validate_bytes(bytes).expect_err("validate_bytes accepted a file open refused");
    assert!(message.contains(&validated), "{message} vs {validated}");
    assert!(message.contains(&*path.to_string_lossy()), "the error names the file: {message}");
    message
}

fn assert_error(name: &str, bytes: &[u8], expected: &[&str]) {
    let message = open_error(name, bytes);
    for part in expected {
        assert!(message.contains(part), "{name}: '{message}' lacks '{part}'");
    }
}

fn one_tensor(info: Value, data_len: usize) -> Vec<u8> {
    file_bytes(&json!({ "t": info }).to_string(), &vec![0; data_len])
}

#[test]
fn truncated_at_every_length_is_an_error_never_a_panic() {
    let bytes = sample();
    for len in 0..bytes.len() {
        let prefix = &bytes[..len];
        assert!(validate_bytes(prefix).is_err(), "prefix of {len} bytes accepted");
        let path = write("truncated.safetensors", prefix);
        assert!(SafetensorsFile::open(&path).is_err(), "prefix of {len} bytes opened");
    }
    assert_error("empty.safetensors", &[], &["0 bytes, too short for the 8-byte header length"]);
    assert_error("seven.safetensors", &[1; 7], &["7 bytes, too short"]);
    let last = bytes.len() - 1;
    assert_error("short_data.safetensors", &bytes[..last], &["tensor 'mask'", "run past the end of the data", "truncated"]);
}

#[test]
fn header_length_past_the_end_or_over_the_cap() {
    let mut bytes = sample();
    bytes[..8].copy_from_slice(&10_000u64.to_le_bytes());
    assert_error("past_eof.safetensors", &bytes, &["header length 10000 runs past the end of the file"]);
    for huge in [100_000_001u64, u64::MAX, 1 << 63] {
        bytes[..8].copy_from_slice(&huge.to_le_bytes());
        assert_error("huge.safetensors", &bytes, &[&format!("header length {huge} exceeds the cap of 100000000 bytes")]);
    }
}

#[test]
fn bad_json_is_an_error() {
    assert_error("bad_json.safetensors", &file_bytes("{\"t\": {\"dtype\": ", &[]), &["header JSON", "EOF"]);
    assert_error("zero_header.safetensors", &file_bytes("", &[]), &["header JSON"]);
    assert_error("not_utf8.safetensors", &file_bytes("{\"\u{ff}\": 1}", &[]).iter().map(|&b| if b == 0xC3 { 0xFF } else { b }).collect::<Vec<_>>(), &["not UTF-8"]);
    assert_error("array.safetensors", &file_bytes("[1, 2]", &[]), &["expected a JSON object of tensors"]);
    assert_error("trailing.safetensors", &file_bytes("{} x", &[]), &["trailing characters"]);
    assert_error("not_an_entry.safetensors", &file_bytes(r#"{"t": 5}"#, &[]), &["'t': invalid type"]);
    assert_error("missing_field.safetensors", &file_bytes(r#"{"t": {"dtype": "F32", "shape": [1]}}"#, &[0; 4]), &["'t': missing field `data_offsets`"]);
    assert_error("negative_dim.safetensors", &one_tensor(json!({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}), 4), &["'t': invalid value"]);
    assert_error("three_offsets.safetensors", &one_tensor(json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}), 8), &["'t'"]);
    // Deep nesting: skipped without recursion inside an unknown field, refused at the first
    // bracket where a string or number is due. Never a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_error("deep_unknown_field.safetensors", &file_bytes(&format!("{{\"t\": {{\"x\": {deep}}}}}"), &[]), &["'t': missing field `dtype`"]);
    assert_error("deep_shape.safetensors", &file_bytes(&format!("{{\"t\": {{\"shape\": {deep}}}}}"), &[]), &["'t': invalid type: sequence, expected u64"]);
    assert_error("deep_metadata.safetensors", &file_bytes(&format!("{{\"__metadata__\": {{\"k\": {deep}}}}}"), &[]), &["'k': invalid type: sequence, expected a string"]);
}

#[test]
fn unknown_dtype_names_tensor_and_dtype() {
    assert_error("dtype.safetensors", &one_tensor(json!({"dtype": "F7_E3M3", "shape": [1], "data_offsets": [0, 1]}), 1), &["tensor 't' has unknown dtype 'F7_E3M3'"]);
    let long = "X".repeat(100_000);
    let message = open_error("long_dtype.safetensors", &one_tensor(json!({"dtype": long, "shape": [1], "data_offsets": [0, 1]}), 1));
    assert!(message.len() < 1000, "the error quotes a shortened dtype: {} bytes", message.len());
}

#[test]
fn shape_and_offsets_must_agree_and_fit() {
    assert_error(
        "size_mismatch.safetensors",
        &one_tensor(json!({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}), 24),
        &["tensor 't' is F32 [2, 3] (24 bytes) but its data_offsets [0, 20] hold 20 bytes"],
    );
    assert_error(
        "past_data.safetensors",
        &one_tensor(json!({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}), 10),
        &["tensor 't' data_offsets [4, 12] run past the end of the data (10 bytes)"],
    );
    assert_error("reversed.safetensors", &one_tensor(json!({"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}), 4), &["data_offsets [4, 0] are reversed"]);
    assert_error(
        "overflow.safetensors",
        &one_tensor(json!({"dtype": "F64", "shape": [1u64 << 32, 1u64 << 32, 4], "data_offsets": [0, 8]}), 8),
        &["tensor 't' shape [4294967296, 4294967296, 4] of F64 overflows"],
    );
    assert_error(
        "huge_offsets.safetensors",
        &one_tensor(json!({"dtype": "U8", "shape": [4], "data_offsets": [u64::MAX - 4, u64::MAX]}), 8),
        &["run past the end of the data"],
    );
    assert_error("rank.safetensors", &one_tensor(json!({"dtype": "U8", "shape": vec![1; 17], "data_offsets": [0, 1]}), 1), &["more than 16 dimensions"]);
}

#[test]
fn overlapping_tensors_are_an_error() {
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    });
    assert_error("overlap.safetensors", &file_bytes(&header.to_string(), &[0; 12]), &["tensors 'a' [0, 8) and 'b' [4, 12) overlap"]);
    // A tensor inside another, listed after a third.
    let header = json!({
        "outer": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
        "inner": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]},
        "empty": {"dtype": "U8", "shape": [0], "data_offsets": [3, 3]},
    });
    assert_error("nested.safetensors", &file_bytes(&header.to_string(), &[0; 10]), &["'outer' [0, 10) and 'inner' [3, 5) overlap"]);
    // The same range twice.
    let header = json!({
        "x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
        "y": {"dtype": "I16", "shape": [1], "data_offsets": [0, 2]},
    });
    assert_error("same_range.safetensors", &file_bytes(&header.to_string(), &[0; 2]), &["overlap"]);
}

#[test]
fn duplicate_names_are_an_error() {
    // serde_json's maps would keep the last of the two; the reader refuses the file.
    let header = r#"{"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "t": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}"#;
    assert_error("duplicate.safetensors", &file_bytes(header, &[0; 2]), &["'t' appears twice"]);
    let header = r#"{"__metadata__": {"a": "1"}, "__metadata__": {}}"#;
    assert_error("duplicate_metadata.safetensors", &file_bytes(header, &[]), &["'__metadata__' appears twice"]);
    let header = r#"{"__metadata__": {"a": "1", "a": "2"}}"#;
    assert_error("duplicate_metadata_key.safetensors", &file_bytes(header, &[]), &["key 'a' appears twice"]);
    let header = r#"{"t": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}"#;
    assert_error("duplicate_field.safetensors", &file_bytes(header, &[0]), &["duplicate field `dtype`"]);
}

#[test]
fn metadata_must_map_strings_to_strings() {
    assert_error("metadata_number.safetensors", &file_bytes(r#"{"__metadata__": {"n": 5}}"#, &[]), &["'__metadata__': 'n': invalid type: integer `5`"]);
    assert_error("metadata_list.safetensors", &file_bytes(r#"{"__metadata__": ["x"]}"#, &[]), &["'__metadata__'"]);
    // null is no metadata, as the reference crate reads it.
    assert_eq!(validate_bytes(&file_bytes(r#"{"__metadata__": null}"#, &[])), Ok(0));
}

// ---- a file from the Python safetensors package -------------------------------------------

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

/// f32 bit patterns, every NaN as the canonical quiet NaN of its sign (payloads are not
/// meaningful, and torch's F16 NaN payload differs from the half crate's).
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| canonical_nan(v.to_bits())).collect()
}

fn canonical_nan(bits: u32) -> u32 {
    if f32::from_bits(bits).is_nan() {
        (bits & 0x8000_0000) | 0x7FC0_0000
    } else {
        bits
    }
}

fn expected_bits(entry: &Value) -> Vec<u32> {
    entry["f32_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect()
}

#[test]
fn reads_the_python_safetensors_reference_file() {
    let file = SafetensorsFile::open(fixture("reference.safetensors")).unwrap();
    let expected = reference();
    let tensors = expected["tensors"].as_object().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for (name, want) in tensors {
        let entry = file.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(entry.dtype.name(), want["dtype"], "{name}");
        let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(entry.shape, shape, "{name}");
        if want.get("f32_bits").is_some() {
            let values = to_f32(entry, file.data(entry), None).unwrap();
            let want: Vec<u32> = expected_bits(want).into_iter().map(canonical_nan).collect();
            assert_eq!(bits(&values), want, "{name}: decoded values differ from torch's");
        }
    }
    let i64s: Vec<i64> = file.data(file.tensor("i64").unwrap()).chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(i64s, [-1, 1 << 40]);
    let metadata: Value = serde_json::to_value(file.metadata()).unwrap();
    assert_eq!(metadata, expected["metadata"]);
}

// ---- decoding -------------------------------------------------------------------------------

/// torch.float8_e4m3fn -> float32 of every byte, from the reference file's 16x16 tensor of
/// bytes 0..=255.
fn torch_e4m3fn_table() -> Vec<u32> {
    expected_bits(&reference()["tensors"]["f8_e4m3"])
}

#[test]
fn e4m3fn_decodes_every_byte_exactly_as_torch() {
    let table = torch_e4m3fn_table();
    assert_eq!(table.len(), 256);
    for byte in 0..=255u8 {
        assert_eq!(f8_e4m3fn_to_f32(byte).to_bits(), table[byte as usize], "byte {byte:#04x}");
    }
    // Landmarks of the format: no infinities, 448 the largest, 2^-9 the smallest subnormal.
    assert_eq!(f8_e4m3fn_to_f32(0x7E), 448.0);
    assert_eq!(f8_e4m3fn_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(f8_e4m3fn_to_f32(0x08), 2f32.powi(-6));
    assert_eq!(f8_e4m3fn_to_f32(0x38), 1.0);
    assert!(f8_e4m3fn_to_f32(0x7F).is_nan() && f8_e4m3fn_to_f32(0xFF).is_nan());
    assert_eq!(f8_e4m3fn_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
}

fn entry(dtype: StDType, shape: &[usize]) -> TensorEntry {
    let n = shape.iter().product::<usize>() * dtype.size_bytes();
    TensorEntry { name: "w".into(), dtype, shape: shape.to_vec(), begin: 0, end: n }
}

#[test]
fn decodes_e5m2_f64_and_refuses_integers() {
    let e = entry(StDType::F8E5M2, &[4]);
    let v = to_f32(&e, &[0x3C, 0xC0, 0x7C, 0x01], None).unwrap();
    assert_eq!(&v[..3], [1.0, -2.0, f32::INFINITY]);
    assert_eq!(v[3], 2f32.powi(-16));
    let e = entry(StDType::F64, &[2]);
    let bytes: Vec<u8> = [0.1f64, -3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(to_f32(&e, &bytes, None).unwrap(), [0.1f32, -3.0]);
    let err = to_f32(&entry(StDType::I32, &[1]), &[0; 4], None).unwrap_err().to_string();
    assert!(err.contains("tensor 'w'") && err.contains("cannot decode I32"), "{err}");
    let err = to_f32(&entry(StDType::F32, &[2]), &[0; 4], None).unwrap_err().to_string();
    assert!(err.contains("4 bytes given, 8 expected"), "{err}");
}

#[test]
fn block_scales_multiply_each_block_including_partial_ones() {
    // 3 x 5 of 1.0 in blocks of 2 x 2: scales [2, 3], the last block row and column partial.
    let e = entry(StDType::F8E4M3, &[3, 5]);
    let scales = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
    let v = to_f32(&e, &[0x38; 15], Some((&scales, 2, 2))).unwrap();
    #[rustfmt::skip]
    let want = [
        1.0, 1.0, 2.0, 2.0, 3.0,
        1.0, 1.0, 2.0, 2.0, 3.0,
        10.0, 10.0, 20.0, 20.0, 30.0,
    ];
    assert_eq!(v, want);
}

#[test]
fn deepseek_128_blocks_match_elementwise_dequantization() {
    // DeepSeek-V3's layout: 128 x 128 blocks; 130 x 260 leaves a partial block row and column.
    let (rows, cols) = (130, 260);
    let table = torch_e4m3fn_table();
    let bytes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7919) % 251) as u8).map(|b| if b & 0x7F == 0x7F { 0 } else { b }).collect();
    let scales: Vec<f32> = (0..2 * 3).map(|i| 0.5 + i as f32 * 0.25).collect();
    let e = entry(StDType::F8E4M3, &[rows, cols]);
    let v = to_f32(&e, &bytes, Some((&scales, 128, 128))).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let want = f32::from_bits(table[bytes[r * cols + c] as usize]) * scales[(r / 128) * 3 + c / 128];
            assert_eq!(v[r * cols + c].to_bits(), want.to_bits(), "({r}, {c})");
        }
    }
    // Scales of the wrong count, or for a tensor that is not 2-D, are errors.
    let err = to_f32(&e, &bytes, Some((&scales[..4], 128, 128))).unwrap_err().to_string();
    assert!(err.contains("4 block scales given, 2x3 expected for blocks of 128x128"), "{err}");
    let err = to_f32(&entry(StDType::F8E4M3, &[4]), &[0; 4], Some((&[1.0], 128, 128))).unwrap_err().to_string();
    assert!(err.contains("2-D weights only"), "{err}");
    let err = to_f32(&entry(StDType::F8E4M3, &[1, 1]), &[0], Some((&[1.0], 0, 128))).unwrap_err().to_string();
    assert!(err.contains("block size 0x128 is empty"), "{err}");
}

#[test]
fn decoding_large_tensors_in_parallel_keeps_the_order() {
    let n = 300_000;
    let bytes: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let v = to_f32(&entry(StDType::F32, &[n]), &bytes, None).unwrap();
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
    let bf16: Vec<u8> = (0..n).flat_map(|i| ((i % 65536) as u16).to_le_bytes()).collect();
    let v = to_f32(&entry(StDType::BF16, &[n]), &bf16, None).unwrap();
    assert!(v.iter().enumerate().all(|(i, &x)| x.to_bits() == safetensors::bf16_to_f32((i % 65536) as u16).to_bits()));
}
