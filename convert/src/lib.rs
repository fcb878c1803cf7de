//! retort-convert: Hugging Face checkpoints (and GGUF files) to GGUF, streaming tensor by
//! tensor so that memory does not grow with the model.
pub mod checkpoint;
pub mod error;
pub mod from_gguf;
pub mod from_hf;
pub mod hf_tokenizer;
pub mod plan;
pub mod safetensors;
pub mod write;

pub use error::{Error, Result};
