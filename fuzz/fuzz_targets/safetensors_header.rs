//! safetensors files (a checkpoint being converted is untrusted): `validate_bytes`, the checks
//! of `SafetensorsFile::open`: the u64 header length and its cap, the JSON header (duplicate
//! names, ranks, dtypes, shapes whose byte size overflows), every tensor's data range inside
//! the data and no overlaps.
//!
//! The first input byte picks the mode, so one corpus serves both:
//! - even: the rest of the input is the whole file, as is;
//! - odd: the rest is the JSON header text, and the target writes the file around it (the
//!   correct length prefix, then `first_byte / 2 * 16` bytes of data), so the fuzzer spends its
//!   time in the JSON and the range checks instead of on the length prefix.
//!
//! When the bytes are accepted, the file is written out and `SafetensorsFile::open` must accept
//! it too with the same tensors, and each float tensor is decoded with `to_f32`. No panics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use retort_convert::safetensors::{to_f32, validate_bytes, SafetensorsFile, StDType};

fn scratch_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("retort-fuzz-safetensors-{}.safetensors", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let owned;
    let bytes: &[u8] = if mode % 2 == 0 {
        rest
    } else {
        let data_len = (mode / 2) as usize * 16;
        let mut file = Vec::with_capacity(8 + rest.len() + data_len);
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(rest);
        file.extend((0..data_len).map(|i| (i * 37) as u8));
        owned = file;
        &owned
    };
    let Ok(n_tensors) = validate_bytes(bytes) else { return };

    let path = scratch_path();
    std::fs::write(path, bytes).expect("write scratch file");
    let file = match SafetensorsFile::open(path) {
        Ok(f) => f,
        Err(e) => panic!("validate_bytes accepted {} bytes that SafetensorsFile::open rejects: {e}", bytes.len()),
    };
    assert_eq!(file.tensors().len(), n_tensors);
    for t in file.tensors() {
        assert!(file.tensor(&t.name).is_some());
        let d = file.data(t);
        assert_eq!(d.len(), t.n_bytes());
        assert_eq!(t.n_elements() * t.dtype.size_bytes(), t.n_bytes());
        let float = matches!(t.dtype, StDType::F32 | StDType::F16 | StDType::BF16 | StDType::F8E4M3 | StDType::F8E5M2 | StDType::F64);
        match to_f32(t, d, None) {
            Ok(v) => assert_eq!(v.len(), t.n_elements()),
            Err(e) => assert!(!float, "{} tensor '{}' does not decode: {e}", t.dtype, t.name),
        }
    }
    let _ = file.metadata().len();
});
