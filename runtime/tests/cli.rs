//! The `retort` binary as a user drives it: output formats, and clear errors (never a
//! panic) for bad files, flags and requests.

use std::path::PathBuf;
use std::process::{Command, Output};

use retort_models::real_models::real_model as model;

fn smollm2() -> Option<PathBuf> {
    model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn retort(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retort")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with a message on stderr that contains `needle`, without panicking.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn fixture(path: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retort-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn run_prints_only_the_greedy_continuation() {
    let Some(m) = smollm2() else { return };
    let case = &fixture("tests/fixtures/smollm2/greedy.json")["cases"][2];
    let prompt = case["prompt"].as_str().unwrap();
    // --exact: the reference is transformers' f32 arithmetic (8-bit activations are tested
    // against it by KL in tests/smollm2_reference.rs).
    let o = retort(&["run", m.to_str().unwrap(), "-p", prompt, "-n", "32", "--temp", "0", "-t", "2", "--exact"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end_matches('\n'), case["generated_text"].as_str().unwrap());
    let err = stderr(&o);
    assert!(err.contains("load:") && err.contains("prompt:") && err.contains("tokens/s"), "timings on stderr: {err}");
}

#[test]
fn same_seed_same_text() {
    let Some(m) = smollm2() else { return };
    let args = ["run", m.to_str().unwrap(), "-p", "Once upon a time", "-n", "24", "--temp", "1.0", "--seed", "1234", "-t", "2"];
    let (a, b) = (retort(&args), retort(&args));
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let mut other = args;
    other[9] = "99";
    assert_ne!(stdout(&a), stdout(&retort(&other)), "a different seed should give a different sample");
}

#[test]
fn chat_renders_the_template_and_stops_at_end_of_turn() {
    let Some(m) = smollm2() else { return };
    let o = retort(&["run", m.to_str().unwrap(), "-p", "What is the capital of France?", "--chat", "--system", "Answer in one word.", "-n", "48", "--temp", "0", "-t", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("Paris"), "{text:?}");
    assert!(!text.contains("<|im_end|>") && !text.contains("<|im_start|>"), "{text:?}");
}

#[test]
fn tokenize_prints_a_json_array() {
    let Some(m) = smollm2() else { return };
    let case = &fixture("tests/fixtures/smollm2/greedy.json")["cases"][0];
    let o = retort(&["tokenize", m.to_str().unwrap(), case["prompt"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(ids, case["prompt_ids"]);
}

#[test]
fn inspect_json_lists_metadata_and_tensors() {
    let Some(m) = smollm2() else { return };
    let o = retort(&["inspect", m.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["metadata"]["general.architecture"], "llama");
    assert_eq!(doc["metadata"]["tokenizer.ggml.tokens"].as_array().unwrap().len(), 49152);
    let tensors = doc["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 + 30 * 9, "embedding, output norm, 9 per block");
    let embd = tensors.iter().find(|t| t["name"] == "token_embd.weight").unwrap();
    assert_eq!((embd["type"].as_str().unwrap(), embd["dims"].clone()), ("q8_0", serde_json::json!([576, 49152])));
}

#[test]
fn eval_writes_npy_logits_of_every_position() {
    let Some(m) = smollm2() else { return };
    let out = temp("logits.npy");
    let o = retort(&["eval", m.to_str().unwrap(), "--tokens", "504,3575,282,4649,314", "--logits-out", out.to_str().unwrap(), "-t", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (5, 49152)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes.len(), 10 + header_len + 5 * 49152 * 4);
    // Position 4 ("... France is") predicts " Paris" (7042), as transformers does.
    let last = &bytes[10 + header_len + 4 * 49152 * 4..];
    let logits: Vec<f32> = last.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let argmax = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(argmax, 7042);
}

#[test]
fn perplexity_json_output() {
    let Some(m) = smollm2() else { return };
    // A short text: two chunks of 64 tokens.
    let text = temp("short.txt");
    let gpl = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/GPL-3")).unwrap();
    std::fs::write(&text, &gpl[..2000]).unwrap();
    let o = retort(&["perplexity", m.to_str().unwrap(), "-f", text.to_str().unwrap(), "-c", "64", "--json", "-t", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let ppl = doc["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 200.0, "{ppl}");
    assert_eq!(doc["tokens"].as_u64().unwrap() % 31, 0, "31 scored tokens per 64-token chunk");
}

// ---- errors -------------------------------------------------------------------------------

#[test]
fn missing_file_is_named() {
    let o = retort(&["run", "/nonexistent/model.gguf", "-p", "hi"]);
    assert_clean_failure(&o, "/nonexistent/model.gguf");
}

#[test]
fn not_a_gguf_file() {
    let path = temp("not.gguf");
    std::fs::write(&path, b"PK\x03\x04 this is a zip, not a model").unwrap();
    assert_clean_failure(&retort(&["inspect", path.to_str().unwrap()]), "bad magic");
}

#[test]
fn truncated_r1_chunk_names_the_missing_tensor() {
    let Some(m) = model("r1-distill-qwen-7b.part0000.gguf") else { return };
    let o = retort(&["run", m.to_str().unwrap(), "-p", "hi"]);
    assert_clean_failure(&o, "past the end of the file");
    assert!(stderr(&o).contains("tensor '"), "{}", stderr(&o));
    // Its header is whole: tokenizing works from a truncated download.
    let o = retort(&["tokenize", m.to_str().unwrap(), "<think>\n1+1=2</think>"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_flag_values_are_rejected() {
    let Some(m) = smollm2() else { return };
    let m = m.to_str().unwrap();
    assert_clean_failure(&retort(&["run", m, "-p", "hi", "--top-p", "1.5"]), "--top-p");
    assert_clean_failure(&retort(&["run", m, "-p", "hi", "-t", "0"]), "-t");
    assert_clean_failure(&retort(&["run", m, "-p", "hi", "-c", "0"]), "context");
    assert_clean_failure(&retort(&["run", m, "-p", "", "-n", "4"]), "empty");
    assert_clean_failure(&retort(&["run", m, "-p", "not-a-number", "-n", "x"]), "invalid value");
    assert_clean_failure(&retort(&["run", m, "-p", "hi", "--kv-type", "q4_0"]), "--kv-type");
    assert_clean_failure(&retort(&["bench", m, "-p", "4", "-n", "1", "--kv-type", ""]), "--kv-type");
}

#[test]
fn bandwidth_reports_a_rate_and_rejects_bad_sizes() {
    let o = retort(&["bandwidth", "--mib", "64", "-t", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(doc["read_gb_s"].as_f64().unwrap() > 0.0, "{doc}");
    assert_clean_failure(&retort(&["bandwidth", "--mib", "0"]), "--mib");
    assert_clean_failure(&retort(&["bandwidth", "--mib", "18446744073709551615"]), "--mib");
    assert_clean_failure(&retort(&["bandwidth", "-t", "0"]), "-t");
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let Some(m) = smollm2() else { return };
    let o = retort(&["run", m.to_str().unwrap(), "-p", "one two three four five six seven eight nine ten", "-c", "4"]);
    assert_clean_failure(&o, "context full");
}

#[test]
fn eval_rejects_out_of_range_tokens() {
    let Some(m) = smollm2() else { return };
    let out = temp("never.npy");
    let o = retort(&["eval", m.to_str().unwrap(), "--tokens", "1,49152", "--logits-out", out.to_str().unwrap()]);
    assert_clean_failure(&o, "token id 49152 is out of range");
    assert!(!out.exists(), "no output file on failure");
}

#[test]
fn bench_json_reports_both_speeds() {
    let Some(m) = smollm2() else { return };
    let o = retort(&["bench", m.to_str().unwrap(), "-p", "16", "-n", "4", "-r", "2", "-t", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(doc["pp_tps"].as_f64().unwrap() > 0.0 && doc["tg_tps"].as_f64().unwrap() > 0.0, "{doc}");
    assert_eq!(doc["threads"], 1);
    assert_clean_failure(&retort(&["bench", m.to_str().unwrap(), "-r", "0"]), "nothing to measure");
}
