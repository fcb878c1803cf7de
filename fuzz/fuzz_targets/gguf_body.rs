//! GGUF past the magic: the input is taken as is when it starts with "GGUF" (so the seeds in
//! seeds/gguf/ work unchanged), otherwise "GGUF" and version 3 are put in front of it, so every
//! input reaches the counts, the metadata key-value section and the tensor table.
//!
//! When `GgufFile::validate_bytes` accepts the bytes, the whole load path a model file takes
//! runs on them too:
//! - the bytes are written to a file and `GgufFile::open` must accept it as well, with the same
//!   tensor count, and `tensor_data` must return every tensor's `n_bytes` bytes;
//! - the first row of each tensor is dequantized with its dtype's `to_f32` (the quantized block
//!   decoders read untrusted scales and indices);
//! - every metadata value is formatted;
//! - `HParams::from_gguf` and, when it succeeds, `build_graph` (llama/qwen2/qwen3);
//! - `vocabulary_from_gguf`, `Tokenizer::new` (skipped when the vocabulary is the one the
//!   previous input had) and an encode/decode of a fixed text.
//! None of it may panic.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use retort_models::gguf::GgufFile;
use retort_models::HParams;
use retort_runtime::model::vocabulary_from_gguf;
use retort_runtime::tokenizer::{Tokenizer, Vocabulary};

const MAGIC_AND_V3: &[u8; 8] = b"GGUF\x03\x00\x00\x00";
/// Rows longer than this are not dequantized (time, not safety: the data is in the file).
const MAX_ROW: usize = 1 << 16;

static LAST_VOCABULARY: Mutex<Option<Vocabulary>> = Mutex::new(None);

fn scratch_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("retort-fuzz-gguf-body-{}.gguf", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let bytes: &[u8] = if data.starts_with(b"GGUF") {
        data
    } else {
        owned = [MAGIC_AND_V3.as_slice(), data].concat();
        &owned
    };
    let Ok(n_tensors) = GgufFile::validate_bytes(bytes) else { return };

    let path = scratch_path();
    std::fs::write(path, bytes).expect("write scratch file");
    let file = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => panic!("validate_bytes accepted {} bytes that GgufFile::open rejects: {e}", bytes.len()),
    };
    assert_eq!(file.tensors().len(), n_tensors);
    assert!(file.data_checked());

    for t in file.tensors() {
        let d = file.tensor_data(t).expect("open checked every range");
        assert_eq!(d.len(), t.n_bytes, "tensor '{}'", t.name);
        let row_len = t.dims[0] as usize;
        if t.n_bytes > 0 && row_len <= MAX_ROW {
            let row_bytes = t.dtype.row_bytes(row_len).expect("tensor_bytes checked the row");
            let mut row = vec![0f32; row_len];
            (t.dtype.traits().to_f32)(&d[..row_bytes], &mut row);
        }
    }
    for (key, value) in file.metadata() {
        let _ = format!("{key}={value}");
    }

    if let Ok(hp) = HParams::from_gguf(&file) {
        let _ = retort_models::build_graph(&file, &hp);
    }
    if let Ok(vocab) = vocabulary_from_gguf(&file) {
        // Most mutations leave the vocabulary alone; building the same tokenizer again
        // (regex compilation included) would only cost time.
        let mut last = LAST_VOCABULARY.lock().unwrap();
        if last.as_ref() == Some(&vocab) {
            return;
        }
        *last = Some(vocab.clone());
        drop(last);
        if let Ok(tok) = Tokenizer::new(vocab) {
            let ids = tok.encode("Hello, world! <|im_start|>user\n ünïcode 123\t<think>", true);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids);
        }
    }
});
