//! The generation loop: prefill the prompt in batches, then decode one token at a time,
//! streaming complete UTF-8 text as it forms.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub generation_seconds: f64,
}

impl Timings {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }
    pub fn generation_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.generation_seconds.max(1e-9)
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    TokenLimit,
    ContextFull,
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub timings: Timings,
}

/// Runs `prompt` from an empty cache and generates up to `n_predict` tokens, calling
/// `emit` with each piece of complete UTF-8 text.
pub fn generate(
    exec: &mut Executor,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    n_predict: usize,
    sampler: &mut Sampler,
    mut emit: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Usage("the prompt is empty: nothing to continue from".into()));
    }
    if prompt.len() >= exec.kv.n_ctx() {
        return Err(Error::ContextFull { needed: prompt.len() + 1, n_ctx: exec.kv.n_ctx() });
    }
    exec.kv.truncate(0);
    let mut timings = Timings { prompt_tokens: prompt.len(), ..Default::default() };
    let mut history: Vec<u32> = Vec::with_capacity(prompt.len() + n_predict);
    history.extend_from_slice(prompt);

    let start = Instant::now();
    let mut logits: &[f32] = &[];
    let batch = exec.max_batch();
    let mut pos = 0;
    for chunk in prompt.chunks(batch) {
        logits = exec.forward(chunk, pos, false)?;
        pos += chunk.len();
    }
    let mut next = sampler.sample(logits, &history);
    timings.prompt_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut decoder = StreamDecoder::new();
    let mut generated = Vec::with_capacity(n_predict);
    let stop = loop {
        if tokenizer.is_end_of_generation(next) {
            break StopReason::EndOfGeneration;
        }
        generated.push(next);
        history.push(next);
        if let Some(bytes) = tokenizer.token_bytes(next) {
            let text = decoder.push(bytes);
            if !text.is_empty() {
                emit(&text);
            }
        }
        if generated.len() >= n_predict {
            break StopReason::TokenLimit;
        }
        if pos >= exec.kv.n_ctx() {
            break StopReason::ContextFull;
        }
        let logits = exec.forward(&[next], pos, false)?;
        pos += 1;
        next = sampler.sample(logits, &history);
    };
    let rest = decoder.finish();
    if !rest.is_empty() {
        emit(&rest);
    }
    timings.generated_tokens = generated.len();
    timings.generation_seconds = start.elapsed().as_secs_f64();
    Ok(Generation { tokens: generated, stop, timings })
}

/// Logits at every position of `tokens` (evaluated from position 0 in batches), as one
/// `tokens.len() × vocab` row-major buffer.
pub fn all_logits(exec: &mut Executor, tokens: &[u32]) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Err(Error::Usage("no tokens to evaluate".into()));
    }
    if tokens.len() > exec.kv.n_ctx() {
        return Err(Error::ContextFull { needed: tokens.len(), n_ctx: exec.kv.n_ctx() });
    }
    exec.kv.truncate(0);
    let mut out = Vec::with_capacity(tokens.len() * exec.vocab_size());
    let mut pos = 0;
    for chunk in tokens.chunks(exec.max_batch()) {
        out.extend_from_slice(exec.forward(chunk, pos, true)?);
        pos += chunk.len();
    }
    Ok(out)
}

/// log Σ exp(x), stable.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// llama.cpp's perplexity: the text's tokens in non-overlapping chunks of `n_ctx`, the
/// first token of each chunk replaced by BOS when the vocabulary adds one, and only the
/// second half of each chunk scored (every scored token has at least n_ctx/2 of context).
/// Returns (perplexity, tokens scored).
pub fn perplexity(exec: &mut Executor, tokens: &[u32], n_ctx: usize, bos: Option<u32>, mut progress: impl FnMut(usize, usize, f64)) -> Result<(f64, usize)> {
    let n_chunks = tokens.len() / n_ctx;
    if n_chunks == 0 || n_ctx < 2 {
        return Err(Error::Usage(format!("the text has {} tokens: perplexity needs at least one chunk of {n_ctx}", tokens.len())));
    }
    let first = n_ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    let mut chunk_tokens = Vec::with_capacity(n_ctx);
    for c in 0..n_chunks {
        chunk_tokens.clear();
        chunk_tokens.extend_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        let logits = all_logits(exec, &chunk_tokens)?;
        let vocab = logits.len() / n_ctx;
        for j in first..n_ctx - 1 {
            let row = &logits[j * vocab..(j + 1) * vocab];
            let target = tokens[c * n_ctx + j + 1] as usize;
            nll += log_sum_exp(row) - row[target] as f64;
            count += 1;
        }
        progress(c + 1, n_chunks, (nll / count as f64).exp());
    }
    Ok(((nll / count as f64).exp(), count))
}
