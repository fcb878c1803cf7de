//! retort-models: model knowledge. The GGUF format, hyperparameters read from GGUF
//! metadata, and one graph builder per architecture family.
pub mod atomic_file;
pub mod error;
pub mod gguf;
pub mod graph;
pub mod hparams;
pub mod llama;
pub mod mapped_file;
pub mod real_models;

pub use error::{Error, Result};
pub use hparams::{Arch, HParams};

use gguf::GgufFile;
use graph::Graph;

/// The forward graph of the model in `file`, for its `general.architecture`.
pub fn build_graph(file: &GgufFile, hp: &HParams) -> Result<Graph> {
    match hp.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => llama::build(file, hp),
    }
}
