//! A loaded model: the mapped file, its hyperparameters, tokenizer and chat template.

use std::path::Path;
use std::time::Instant;

use retort_models::gguf::{GgufFile, Value};
use retort_models::graph::Graph;
use retort_models::HParams;

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::tokenizer::{Tokenizer, Vocabulary};

pub struct Model {
    pub file: GgufFile,
    pub hparams: HParams,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub load_seconds: f64,
}

impl Model {
    /// Maps and validates the file, reads hyperparameters and tokenizer, and checks that
    /// the architecture's graph finds every weight it needs (so a bad file fails here, not
    /// mid-generation).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let start = Instant::now();
        let path = path.as_ref();
        log::info!("loading {}", path.display());
        let file = GgufFile::open(path)?;
        let hparams = HParams::from_gguf(&file)?;
        let tokenizer = Tokenizer::new(vocabulary_from_gguf(&file)?)?;
        let chat_template = file.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_owned);
        retort_models::build_graph(&file, &hparams)?;
        let load_seconds = start.elapsed().as_secs_f64();
        log::info!(
            "{}: {} layers, width {}, {} heads ({} kv), vocab {}, loaded in {:.0} ms",
            hparams.arch.name(),
            hparams.n_layer,
            hparams.n_embd,
            hparams.n_head,
            hparams.n_head_kv,
            tokenizer.vocab_size(),
            load_seconds * 1e3
        );
        Ok(Model { file, hparams, tokenizer, chat_template, load_seconds })
    }

    pub fn graph(&self) -> Result<Graph> {
        Ok(retort_models::build_graph(&self.file, &self.hparams)?)
    }

    /// An executor with a `n_ctx`-position cache, batches of up to `max_batch` tokens, and
    /// logits at every position when `all_logits` (else only the last).
    pub fn executor(&self, n_ctx: usize, max_batch: usize, all_logits: bool, threads: usize) -> Result<Executor<'_>> {
        if n_ctx == 0 {
            return Err(Error::Usage("context size must be at least 1".into()));
        }
        if n_ctx > self.hparams.n_ctx_train {
            log::warn!("context {n_ctx} is longer than the {} the model was trained with", self.hparams.n_ctx_train);
        }
        let max_batch = max_batch.clamp(1, n_ctx);
        Executor::new(&self.file, self.graph()?, n_ctx, max_batch, if all_logits { max_batch } else { 1 }, threads)
    }
}

/// The `tokenizer.ggml.*` keys as the tokenizer wants them.
pub fn vocabulary_from_gguf(file: &GgufFile) -> Result<Vocabulary> {
    let missing = |key: &str| Error::Usage(format!("{}: metadata '{key}' is missing or of the wrong type", file.path().display()));
    let string = |key: &str| file.get(key).and_then(Value::as_str).map(str::to_owned);
    let strings = |key: &str| file.get(key).and_then(Value::as_array).and_then(|a| a.as_strings()).map(<[String]>::to_vec);
    let id = |key: &str| file.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    let flag = |key: &str| file.get(key).and_then(Value::as_bool);

    let tokens = strings("tokenizer.ggml.tokens").ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let token_types = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .to_i64_vec()
            .ok_or_else(|| missing("tokenizer.ggml.token_type"))?
            .into_iter()
            .map(|t| i32::try_from(t).unwrap_or(0))
            .collect(),
        None => vec![1; tokens.len()],
    };
    Ok(Vocabulary {
        model: string("tokenizer.ggml.model").ok_or_else(|| missing("tokenizer.ggml.model"))?,
        pre: string("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()),
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges").unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        eot: id("tokenizer.ggml.eot_token_id"),
        // llama.cpp's defaults for BPE vocabularies when the keys are absent.
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(false),
        add_eos: flag("tokenizer.ggml.add_eos_token").unwrap_or(false),
    })
}
