//! retort-runtime: the executor, KV cache, tokenizer, chat templates, sampler, generation
//! loop and the `retort` CLI.
pub mod tokenizer;
pub mod chat_template;
