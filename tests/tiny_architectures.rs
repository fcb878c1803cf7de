//! Every architecture variant retort builds, on tiny random-weight models, against
//! transformers' float32 logits: tests/fixtures/tiny/ (GGUFs written the way llama.cpp's
//! convert_hf_to_gguf.py writes them, references and manifest.json), made by
//! scripts/reference/tiny_models.py. Variants: llama (GQA, untied output, llama3 rope
//! factors), llama with tied embeddings and head_dim != n_embd / n_head (MQA), qwen2 (q/k/v
//! biases, tied) and qwen3 (q/k norm, head_dim != n_embd / n_head).
//!
//! The bar is an exact f32 forward: |ours - ref| ≤ 1e-4 · max|ref| at every position, and
//! the same arg-max everywhere; for one batch, for two batches (the second attending to the
//! first through the KV cache), and for token-by-token decoding.

mod common;

use std::path::PathBuf;

use retort::models::Arch;
use retort::runtime::generate;
use retort::runtime::Model;
use serde_json::Value;
use common::{assert_no_failures, compare, read_npy};

const REL_TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn variants() -> Vec<Value> {
    manifest()["variants"].as_array().unwrap().clone()
}

struct Variant {
    name: String,
    model: Model,
    tokens: Vec<u32>,
    vocab: usize,
    reference: Vec<f32>,
}

fn load(v: &Value) -> Variant {
    let name = v["name"].as_str().unwrap().to_owned();
    let model = Model::load(dir().join(v["gguf"].as_str().unwrap())).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tokens: Vec<u32> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let (rows, vocab, reference) = read_npy(&dir().join(v["logits"].as_str().unwrap()));
    assert_eq!((rows, vocab), (tokens.len(), v["vocab_size"].as_u64().unwrap() as usize), "{name}");
    Variant { name, model, tokens, vocab, reference }
}

fn check(failures: &mut Vec<String>, what: &str, v: &Variant, (rel, disagree): (f32, Vec<usize>)) {
    eprintln!("{:>16} {what}: max |ours - ref| / max|ref| = {rel:.2e}", v.name);
    if !(rel <= REL_TOL) || !disagree.is_empty() {
        failures.push(format!("{} {what}: relative error {rel:.3e} (bar {REL_TOL:e}), arg-max differs at {disagree:?}", v.name));
    }
}

/// The fixtures cover every architecture, and each file reads back with the shapes the
/// generator recorded.
#[test]
fn fixtures_cover_every_architecture() {
    let vs = variants();
    for arch in Arch::ALL {
        assert!(vs.iter().any(|v| v["arch"] == arch.name()), "no tiny model of {}", arch.name());
    }
    for v in &vs {
        let t = load(v);
        let hp = &t.model.hparams;
        let n = |k: &str| v[k].as_u64().unwrap() as usize;
        assert_eq!(hp.arch.name(), v["arch"].as_str().unwrap(), "{}", t.name);
        assert_eq!(
            (hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.head_dim, hp.v_head_dim, hp.n_ff),
            (n("hidden_size"), n("n_layer"), n("n_head"), n("n_head_kv"), n("head_dim"), n("head_dim"), n("n_ff")),
            "{}",
            t.name
        );
        assert_eq!(t.model.tokenizer.vocab_size(), t.vocab, "{}", t.name);
        assert_eq!(t.model.file.tensor("output.weight").is_none(), v["tied_embeddings"].as_bool().unwrap(), "{}", t.name);
    }
}

/// All positions in one batch equal transformers' logits.
#[test]
fn logits_match_transformers() {
    let mut failures = Vec::new();
    for v in variants() {
        let t = load(&v);
        let mut exec = t.model.executor(t.tokens.len(), 512, true, 2).unwrap();
        assert_eq!(exec.vocab_size(), t.vocab);
        let logits = generate::all_logits(&mut exec, &t.tokens).unwrap();
        check(&mut failures, "one batch", &t, compare(&logits, &t.reference, t.vocab, 0..t.tokens.len()));
    }
    assert_no_failures(failures);
}

/// The first 10 tokens, then the rest at positions 10..: the second batch reads the first's
/// keys and values from the cache. Both must equal the reference, and the one-batch logits.
#[test]
fn two_batches_match_one() {
    let mut failures = Vec::new();
    for v in variants() {
        let t = load(&v);
        let n = t.tokens.len();
        let mut exec = t.model.executor(n, 512, true, 2).unwrap();
        let whole = generate::all_logits(&mut exec, &t.tokens).unwrap();
        exec.kv.truncate(0);
        let mut split = exec.forward(&t.tokens[..10], 0, true).unwrap().to_vec();
        split.extend_from_slice(exec.forward(&t.tokens[10..], 10, true).unwrap());
        check(&mut failures, "two batches", &t, compare(&split, &t.reference, t.vocab, 0..n));
        let (rel, _) = compare(&split, &whole, t.vocab, 0..n);
        if rel > REL_TOL {
            failures.push(format!("{}: two batches differ from one by {rel:.3e} of max|logit|", t.name));
        }
    }
    assert_no_failures(failures);
}

/// One token per call (an executor planned for last-token logits, as generation uses),
/// every step's logits equal the reference at that position.
#[test]
fn token_by_token_decoding_matches() {
    let mut failures = Vec::new();
    for v in variants() {
        let t = load(&v);
        let n = t.tokens.len();
        let mut exec = t.model.executor(n, 1, false, 2).unwrap();
        let mut steps = Vec::with_capacity(n * t.vocab);
        for (pos, &tok) in t.tokens.iter().enumerate() {
            steps.extend_from_slice(exec.forward(&[tok], pos, false).unwrap());
        }
        check(&mut failures, "token by token", &t, compare(&steps, &t.reference, t.vocab, 0..n));
        check(&mut failures, "last position", &t, compare(&steps[(n - 1) * t.vocab..], &t.reference, t.vocab, n - 1..n));
    }
    assert_no_failures(failures);
}

/// Prefill as generation runs it (an executor planned for last-token logits, whose last
/// layer computes queries and everything after them for the last position alone), in two
/// batches: each batch's logits equal the reference at its last position, which only holds
/// if that position's rotation and causal window are its own.
#[test]
fn prefill_for_generation_matches_at_the_last_position() {
    let mut failures = Vec::new();
    for v in variants() {
        let t = load(&v);
        let n = t.tokens.len();
        let mut exec = t.model.executor(n, n, false, 2).unwrap();
        let first = exec.forward(&t.tokens[..10], 0, false).unwrap().to_vec();
        check(&mut failures, "prefill of 10", &t, compare(&first, &t.reference, t.vocab, 9..10));
        let rest = exec.forward(&t.tokens[10..], 10, false).unwrap().to_vec();
        check(&mut failures, "prefill of the rest", &t, compare(&rest, &t.reference, t.vocab, n - 1..n));
    }
    assert_no_failures(failures);
}
