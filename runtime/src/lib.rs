//! retort-runtime: the executor, KV cache, tokenizer, chat templates, sampler, generation
//! loop and the `retort` CLI.
pub mod chat_template;
pub mod error;
pub mod executor;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod npy;
pub mod plan;
pub mod sampler;
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::Model;
