//! Arbitrary bytes through `GgufFile::validate_bytes`: the magic and version checks, the
//! metadata key-value section, the tensor table and the tensor data-range/overlap checks that
//! `GgufFile::open` runs on a memory map. Must return an error, never panic, overflow or
//! allocate in proportion to a count the bytes merely claim.
//!
//! Most random inputs die at the 4-byte magic; `gguf_body` starts past it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retort_models::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(n_tensors) = GgufFile::validate_bytes(data) {
        // Each tensor-table entry takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes.
        assert!(n_tensors <= data.len() / 32, "{n_tensors} tensors in {} bytes", data.len());
    }
});
