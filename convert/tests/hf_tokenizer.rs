//! `hf_tokenizer::tokenizer_metadata` against Hugging Face: for each tokenizer folder under
//! tests/fixtures/tokenizers (made by scripts/reference/hf_tokenizer_fixtures.py: tiny BPE
//! tokenizers trained with `tokenizers` under each upstream pipeline, saved as the Hub has them)
//! the metadata is written into a GGUF, read back with the runtime's `vocabulary_from_gguf`, and
//! the runtime's tokenizer must give HF's ids on every recorded string; the pre-tokenizer name,
//! BOS/EOS/padding ids, add_bos/add_eos, chat templates and [PAD{i}] padding are checked too.
//! Then hostile folders, which must fail with a clear error (and never panic).
//!
//! `RETORT_HF_TOKENIZER_GGUF_OUT=DIR` keeps the GGUF files (DIR/<fixture>.gguf), for the
//! llama.cpp cross-check in hf_tokenizer_fixtures.py --check-llama-cpp.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use retort_convert::hf_tokenizer::{tokenizer_metadata, MAX_N_VOCAB, MAX_TOKENIZER_JSON_BYTES};
use retort_models::gguf::{GgufFile, GgufWriter, Value};
use retort_runtime::model::vocabulary_from_gguf;
use retort_runtime::tokenizer::{TokenType, Tokenizer};
use serde_json::{json, Value as Json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

/// A fresh, empty scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "retort-convert-hf-tokenizer-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn get<'a>(meta: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Writes `meta` into a vocabulary-only GGUF (with the few qwen2 hyperparameters llama.cpp's
/// vocab_only load reads) and returns the runtime's tokenizer built from it.
fn through_gguf(meta: &[(String, Value)], path: &Path) -> (GgufFile, Tokenizer) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("qwen2".into())).unwrap();
    for (key, v) in [
        ("qwen2.block_count", 1u32),
        ("qwen2.context_length", 4096),
        ("qwen2.embedding_length", 64),
        ("qwen2.feed_forward_length", 128),
        ("qwen2.attention.head_count", 4),
        ("qwen2.attention.head_count_kv", 4),
    ] {
        w.set(key, Value::U32(v)).unwrap();
    }
    w.set("qwen2.rope.freq_base", Value::F32(10000.0)).unwrap();
    w.set("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6)).unwrap();
    for (k, v) in meta {
        w.set(k.clone(), v.clone()).unwrap();
    }
    w.write(path, |_, _, _| Ok(())).unwrap();
    let file = GgufFile::open(path).unwrap();
    let tokenizer = Tokenizer::new(vocabulary_from_gguf(&file).unwrap()).unwrap();
    (file, tokenizer)
}

/// Where fixture `name`'s GGUF goes, and the scratch directory to keep alive meanwhile.
fn gguf_path(name: &str) -> (PathBuf, Option<Scratch>) {
    match std::env::var_os("RETORT_HF_TOKENIZER_GGUF_OUT") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            fs::create_dir_all(&dir).unwrap();
            (dir.join(format!("{name}.gguf")), None)
        }
        None => {
            let dir = scratch(name);
            (dir.join(format!("{name}.gguf")), Some(dir))
        }
    }
}

fn opt_id(v: &Json) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The ids `tokenizer.json` itself defines (vocabulary and added tokens).
fn defined_ids(dir: &Path) -> std::collections::BTreeSet<u64> {
    let tj: Json = serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let mut set: std::collections::BTreeSet<u64> =
        tj["model"]["vocab"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).collect();
    set.extend(tj["added_tokens"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()));
    set
}

fn check_fixture(name: &str) {
    let dir = fixtures().join(name);
    let expected: Json = serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let n_vocab = expected["n_vocab"].as_u64().unwrap() as usize;
    let meta = tokenizer_metadata(&dir, n_vocab).unwrap_or_else(|e| panic!("{name}: {e}"));

    let pre = get(&meta, "tokenizer.ggml.pre").and_then(Value::as_str).unwrap();
    assert_eq!(pre, expected["pre"].as_str().unwrap(), "{name}: pre-tokenizer");
    assert!(Tokenizer::known_pre_tokenizers().contains(&pre), "{name}: {pre} unknown to the runtime");

    let (path, _scratch) = gguf_path(name);
    let (file, tok) = through_gguf(&meta, &path);
    assert_eq!(tok.pre_tokenizer(), pre);
    assert_eq!(tok.vocab_size(), n_vocab, "{name}: token count");
    assert_eq!(tok.bos(), opt_id(&expected["bos"]), "{name}: bos");
    assert_eq!(tok.eos(), opt_id(&expected["eos"]), "{name}: eos");
    assert_eq!(
        file.get("tokenizer.ggml.padding_token_id").and_then(Value::as_u64).map(|v| v as u32),
        opt_id(&expected["pad"]),
        "{name}: padding id"
    );
    assert_eq!(tok.add_bos(), expected["add_bos"].as_bool().unwrap(), "{name}: add_bos");
    assert_eq!(tok.add_eos(), expected["add_eos"].as_bool().unwrap(), "{name}: add_eos");
    assert_eq!(
        file.get("tokenizer.chat_template").and_then(Value::as_str),
        expected["chat_template"].as_str(),
        "{name}: chat template"
    );
    if let Some(named) = expected.get("chat_templates").and_then(Json::as_object) {
        for (n, t) in named {
            let key = format!("tokenizer.chat_template.{n}");
            assert_eq!(file.get(&key).and_then(Value::as_str), t.as_str(), "{name}: {key}");
        }
        let names = file.get("tokenizer.chat_templates").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
        assert_eq!(names.len(), named.len());
    } else {
        assert!(file.get("tokenizer.chat_templates").is_none());
    }

    // Padding: every id tokenizer.json leaves out is [PAD{i}], unused; the rest are not.
    let defined = defined_ids(&dir);
    let mut pads = 0;
    for id in 0..n_vocab as u32 {
        let text = tok.token_text(id).unwrap();
        if defined.contains(&(id as u64)) {
            assert_ne!(tok.token_type(id), Some(TokenType::Unused), "{name}: token {id} {text:?}");
        } else {
            assert_eq!(text, format!("[PAD{id}]"), "{name}: token {id}");
            assert_eq!(tok.token_type(id), Some(TokenType::Unused), "{name}: token {id}");
            pads += 1;
        }
    }
    assert_eq!(pads, n_vocab - defined.len(), "{name}: padding count");

    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let want_special = case.get("ids_special").map(ids).unwrap_or_else(|| want.clone());
        let got = tok.encode(text, false);
        let got_special = tok.encode(text, true);
        if got != want || got_special != want_special {
            failures.push(format!("{text:?}: retort {got:?} / {got_special:?}, HF {want:?} / {want_special:?}"));
        }
    }
    assert!(failures.is_empty(), "{name}: {} of {} strings differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn smollm2() {
    check_fixture("smollm2");
}

#[test]
fn gpt2() {
    check_fixture("gpt2");
}

#[test]
fn qwen2() {
    check_fixture("qwen2");
}

#[test]
fn r1_qwen() {
    check_fixture("r1_qwen");
}

#[test]
fn llama3() {
    check_fixture("llama3");
}

#[test]
fn deepseek_v3() {
    check_fixture("deepseek_v3");
}

#[test]
fn token_types_as_llama_cpp_converter() {
    // R1: special -> control; not special but looking special (<｜User｜>) -> control;
    // other not special (<think>) -> user-defined (what llama.cpp's converter wrote into the
    // R1-Distill-Qwen GGUF files).
    let dir = fixtures().join("r1_qwen");
    let n = 541;
    let meta = tokenizer_metadata(&dir, n).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
    let types = get(&meta, "tokenizer.ggml.token_type").and_then(Value::as_array).and_then(|a| a.to_i64_vec()).unwrap();
    let type_of = |t: &str| types[tokens.iter().position(|x| x == t).unwrap()];
    assert_eq!(type_of("<｜begin▁of▁sentence｜>"), 3);
    assert_eq!(type_of("<｜User｜>"), 3);
    assert_eq!(type_of("<|EOT|>"), 3);
    assert_eq!(type_of("<think>"), 4);
    assert_eq!(type_of("<tool_call>"), 4);
    assert_eq!(type_of("Ġt"), 1);
    assert_eq!(type_of("[PAD540]"), 5);
    // the same folder with the model's exact token count: no padding at all
    let defined = defined_ids(&dir).len();
    let meta = tokenizer_metadata(&dir, defined).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
    assert_eq!(tokens.len(), defined);
}

// ---------------------------------------------------------------------------------------------
// variants and hostile folders, made from the gpt2 fixture

/// A copy of fixture `base` in a scratch directory, with `edit` applied to its tokenizer.json.
fn variant(base: &str, edit: impl FnOnce(&mut Json)) -> Scratch {
    let src = fixtures().join(base);
    let dir = scratch(base);
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let mut tj: Json = serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    edit(&mut tj);
    fs::write(dir.join("tokenizer.json"), serde_json::to_string_pretty(&tj).unwrap()).unwrap();
    dir
}

fn n_vocab_of(base: &str) -> usize {
    let expected: Json = serde_json::from_str(&fs::read_to_string(fixtures().join(base).join("expected.json")).unwrap()).unwrap();
    expected["n_vocab"].as_u64().unwrap() as usize
}

fn error_of(dir: &Path, n_vocab: usize) -> String {
    match tokenizer_metadata(dir, n_vocab) {
        Ok(_) => panic!("{}: accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_error(base: &str, edit: impl FnOnce(&mut Json), needles: &[&str]) {
    let dir = variant(base, edit);
    let e = error_of(&dir, n_vocab_of(base));
    for needle in needles {
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    }
}

fn pre_of(dir: &Path, n_vocab: usize) -> String {
    let meta = tokenizer_metadata(dir, n_vocab).unwrap();
    get(&meta, "tokenizer.ggml.pre").and_then(Value::as_str).unwrap().to_owned()
}

#[test]
fn pipelines_compare_by_structure() {
    // GPT-2 written as Split(GPT-2 regex) + ByteLevel(use_regex=false) is still gpt-2.
    let dir = variant("gpt2", |tj| {
        tj["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    });
    assert_eq!(pre_of(&dir, n_vocab_of("gpt2")), "gpt-2");
    // Qwen2's pipeline without BOS is qwen2, with it deepseek-r1-qwen.
    assert_eq!(pre_of(&fixtures().join("qwen2"), n_vocab_of("qwen2")), "qwen2");
    let dir = variant("r1_qwen", |tj| tj["post_processor"] = Json::Null);
    let mut tc: Json = serde_json::from_str(&fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    tc["add_bos_token"] = json!(false);
    fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    assert_eq!(pre_of(&dir, n_vocab_of("r1_qwen")), "qwen2");
    // Llama 3's regex without ignore_merges is not Llama 3's pipeline.
    assert_error("llama3", |tj| tj["model"]["ignore_merges"] = json!(false), &["ignore_merges: false", "llama-bpe"]);
    // Qwen2 without NFC, one character of a regex changed, a prefix space, Metaspace: unknown.
    assert_error("qwen2", |tj| tj["normalizer"] = Json::Null, &["not a pipeline retort knows", "normalizer: none"]);
    assert_error(
        "llama3",
        |tj| {
            let r = tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].as_str().unwrap().replace("{1,3}", "{1,4}");
            tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!(r);
        },
        &["\\p{N}{1,4}", "known:", "smollm", "deepseek-v3"],
    );
    assert_error("gpt2", |tj| tj["pre_tokenizer"]["add_prefix_space"] = json!(true), &["add_prefix_space\":true"]);
    assert_error(
        "gpt2",
        |tj| tj["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
        &["Metaspace", "known:"],
    );
    assert_error("gpt2", |tj| tj["pre_tokenizer"] = Json::Null, &["pre_tokenizer: none"]);
    assert_error("smollm2", |tj| tj["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = json!(false), &["Digits"]);
    assert_error(
        "deepseek_v3",
        |tj| tj["pre_tokenizer"]["pretokenizers"][1]["behavior"] = json!("Removed"),
        &["Removed"],
    );
}

#[test]
fn model_kinds_out_of_scope() {
    assert_error("gpt2", |tj| tj["model"]["type"] = json!("Unigram"), &["Unigram", "only byte-level BPE"]);
    assert_error("gpt2", |tj| tj["model"]["type"] = json!("WordPiece"), &["WordPiece"]);
    assert_error("gpt2", |tj| tj["model"]["byte_fallback"] = json!(true), &["byte_fallback"]);
    assert_error("gpt2", |tj| tj["model"]["continuing_subword_prefix"] = json!("##"), &["continuing_subword_prefix"]);
    assert_error("gpt2", |tj| tj["model"]["dropout"] = json!(0.1), &["dropout"]);
    assert_error("gpt2", |tj| tj["model"] = json!([]), &["no \"model\" object"]);
    // An old file without model.type, with merges: BPE.
    let dir = variant("gpt2", |tj| {
        tj["model"].as_object_mut().unwrap().remove("type");
    });
    assert_eq!(pre_of(&dir, n_vocab_of("gpt2")), "gpt-2");
}

#[test]
fn hostile_vocabularies() {
    let n = n_vocab_of("gpt2");
    // ids out of range, duplicated, not ids
    assert_error("gpt2", |tj| tj["model"]["vocab"]["Ġthe"] = json!(n), &["\"Ġthe\"", &format!("id {n}"), "rows"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"]["Ġthe"] = json!(u64::MAX), &["Ġthe", "rows"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"]["Ġthe"] = json!(-1), &["not a token id"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"]["Ġthe"] = json!(1.5), &["not a token id"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"]["Ġthe"] = json!("7"), &["not a token id"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"]["zzz-new"] = json!(5), &["gives id 5 to both"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"] = json!({}), &["model.vocab is empty"]);
    assert_error("gpt2", |tj| tj["model"]["vocab"] = json!([1, 2]), &["model.vocab is missing or not an object"]);
    // added tokens: their ids are the ones tokenizers gives them, whatever the file says
    assert_error("gpt2", |tj| tj["added_tokens"][0].as_object_mut().unwrap().remove("id").map(drop).unwrap(), &["no \"id\""]);
    assert_error("gpt2", |tj| tj["added_tokens"][0]["id"] = json!(-3), &["no \"id\""]);
    assert_error("gpt2", |tj| tj["added_tokens"] = json!({"a": 1}), &["added_tokens is not a list"]);
    assert_error("gpt2", |tj| tj["added_tokens"][0]["special"] = json!("yes"), &["\"special\" is not a boolean"]);
    let dir = variant("gpt2", |tj| tj["added_tokens"][0]["id"] = json!(7));
    let meta = tokenizer_metadata(&dir, n).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
    assert_eq!(tokens[n - 1], "<|endoftext|>");
    assert_ne!(tokens[7], "<|endoftext|>");
    // a second added token takes the next id, past this embedding
    let twin = |tj: &mut Json| {
        let mut twin = tj["added_tokens"][0].clone();
        twin["content"] = json!("<|other|>");
        tj["added_tokens"].as_array_mut().unwrap().push(twin);
    };
    assert_error("gpt2", twin, &["added token \"<|other|>\" has id 451", "rows"]);
    let dir = variant("gpt2", twin);
    let meta = tokenizer_metadata(&dir, n + 1).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
    assert_eq!(tokens[n], "<|other|>");
    // an empty added token is ignored, as tokenizers does: its id stays free (padding)
    let dir = variant("gpt2", |tj| tj["added_tokens"][0]["content"] = json!(""));
    let meta = tokenizer_metadata(&dir, n).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
    assert_eq!(tokens[n - 1], format!("[PAD{}]", n - 1));
    // model.vocab ids that are not 0..count: the added token's id collides
    assert_error(
        "gpt2",
        |tj| tj["model"]["vocab"]["Ġthe"] = json!(n - 1),
        &[&format!("\"<|endoftext|>\" gets id {}", n - 1), "which model.vocab gives to \"Ġthe\""],
    );
    // merges
    assert_error("gpt2", |tj| tj["model"]["merges"][3] = json!("Ġ nosuchtoken"), &["model.merges[3]", "\"nosuchtoken\" is not in model.vocab"]);
    assert_error("gpt2", |tj| tj["model"]["merges"][3] = json!(["a", "Ġ"]), &["merged token \"aĠ\" is not in model.vocab"]);
    assert_error("gpt2", |tj| tj["model"]["merges"][0] = json!("Ġ t h"), &["two tokens separated by one space"]);
    assert_error("gpt2", |tj| tj["model"]["merges"][0] = json!("Ġt"), &["two tokens separated by one space"]);
    assert_error("gpt2", |tj| tj["model"]["merges"][0] = json!(["Ġ"]), &["not a pair of strings"]);
    assert_error("gpt2", |tj| tj["model"]["merges"][0] = json!(7), &["neither a string nor a pair"]);
    assert_error("gpt2", |tj| tj["model"]["merges"] = json!("a b"), &["model.merges is not a list"]);
    // a token with a space in a pair-format merge: GGUF's "a b" cannot hold it
    let dir = variant("gpt2", |tj| {
        tj["model"]["vocab"]["a b"] = json!(n + 5);
        tj["model"]["vocab"]["a bc"] = json!(n + 6);
        tj["model"]["merges"].as_array_mut().unwrap().push(json!(["a b", "c"]));
    });
    assert!(error_of(&dir, n + 10).contains("space in it"));
}

#[test]
fn holes_in_model_vocab_are_padded() {
    // smollm2's added tokens are vocabulary tokens (ids 0..4): moving the last vocabulary token
    // to a higher id leaves a hole, which becomes [PAD{i}], unused; encoding is unchanged.
    let base = fixtures().join("smollm2");
    let tj: Json = serde_json::from_str(&fs::read_to_string(base.join("tokenizer.json")).unwrap()).unwrap();
    let (last, _) = tj["model"]["vocab"].as_object().unwrap().iter().find(|(_, v)| v.as_u64() == Some(499)).unwrap();
    let last = last.clone();
    let dir = variant("smollm2", |tj| tj["model"]["vocab"][&last] = json!(503));
    let meta = tokenizer_metadata(&dir, 510).unwrap();
    let (_, tok) = through_gguf(&meta, &dir.join("t.gguf"));
    assert_eq!(tok.token_text(499), Some("[PAD499]"));
    assert_eq!(tok.token_type(499), Some(TokenType::Unused));
    assert_eq!(tok.token_text(503), Some(last.as_str()));
    assert_eq!(tok.token_text(509), Some("[PAD509]"));
    let expected: Json = serde_json::from_str(&fs::read_to_string(base.join("expected.json")).unwrap()).unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let want: Vec<u32> = ids(&case["ids"]).into_iter().map(|id| if id == 499 { 503 } else { id }).collect();
        assert_eq!(tok.encode(case["text"].as_str().unwrap(), false), want);
    }
}

#[test]
fn vocabulary_size_limits() {
    let dir = fixtures().join("gpt2");
    let n = n_vocab_of("gpt2");
    // an embedding smaller than the vocabulary
    let e = error_of(&dir, n - 1);
    assert!(e.contains("<|endoftext|>") && e.contains("rows"), "{e}");
    assert!(error_of(&dir, 0).contains("is 0"));
    assert!(error_of(&dir, MAX_N_VOCAB + 1).contains("larger than"));
    // a larger one is padded
    let meta = tokenizer_metadata(&dir, n + 5).unwrap();
    let tokens = get(&meta, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
    assert_eq!(tokens.len(), n + 5);
    assert_eq!(tokens[n + 4], format!("[PAD{}]", n + 4));
}

#[test]
fn hostile_files() {
    // missing tokenizer.json
    let dir = scratch("empty");
    assert!(error_of(&dir, 10).contains("tokenizer.json: not found"));
    // a directory where the file should be
    fs::create_dir(dir.join("tokenizer.json")).unwrap();
    assert!(error_of(&dir, 10).contains("not a regular file"));
    // invalid UTF-8, invalid JSON, not an object, lone surrogate, deep nesting
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"model\": \"\xff\xfe\"}".to_vec(), "not UTF-8 (invalid byte at offset 11)"),
        (b"{\"model\": ".to_vec(), "invalid JSON"),
        (b"[1, 2]".to_vec(), "not a JSON object"),
        (b"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\ud800\": 0}}}".to_vec(), "invalid JSON"),
        ([b"[".repeat(100_000), b"]".repeat(100_000)].concat(), "invalid JSON"),
    ];
    for (bytes, needle) in cases {
        let dir = scratch("bytes");
        fs::write(dir.join("tokenizer.json"), bytes).unwrap();
        let e = error_of(&dir, 10);
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }
    // a byte-order mark is fine
    let dir = variant("gpt2", |_| {});
    let text = fs::read(dir.join("tokenizer.json")).unwrap();
    fs::write(dir.join("tokenizer.json"), [b"\xef\xbb\xbf".as_slice(), &text].concat()).unwrap();
    assert_eq!(pre_of(&dir, n_vocab_of("gpt2")), "gpt-2");
    // too big (a sparse file: nothing is read)
    let dir = scratch("huge");
    let f = fs::File::create(dir.join("tokenizer.json")).unwrap();
    f.set_len(MAX_TOKENIZER_JSON_BYTES + 1).unwrap();
    let e = error_of(&dir, 10);
    assert!(e.contains("more than the 536870912 accepted"), "{e}");
    // invalid side files are errors too, naming the file
    let dir = variant("gpt2", |_| {});
    fs::write(dir.join("tokenizer_config.json"), b"{\"bos_token\": \"\xc3\"}").unwrap();
    assert!(error_of(&dir, n_vocab_of("gpt2")).contains("tokenizer_config.json: not UTF-8"));
    let dir = variant("gpt2", |_| {});
    fs::write(dir.join("chat_template.jinja"), b"\xe2\x82").unwrap();
    assert!(error_of(&dir, n_vocab_of("gpt2")).contains("chat_template.jinja: not UTF-8"));
}

/// Writes `tokenizer_config.json` (and more files) next to a copy of fixture `base`.
fn with_files(base: &str, files: &[(&str, Json)]) -> Scratch {
    let dir = variant(base, |_| {});
    for (name, content) in files {
        let text = match content {
            Json::String(s) if name.ends_with(".jinja") => s.clone(),
            other => other.to_string(),
        };
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

fn meta_of(dir: &Path, n: usize) -> Vec<(String, Value)> {
    tokenizer_metadata(dir, n).unwrap()
}

fn u(meta: &[(String, Value)], key: &str) -> Option<u64> {
    get(meta, key).and_then(Value::as_u64)
}

#[test]
fn special_tokens_and_templates() {
    let n = n_vocab_of("gpt2");
    let eot = (n - 1) as u64; // <|endoftext|>

    // bos/eos from tokenizer_config, as strings or objects; add_bos_token without a post-processor
    let dir = with_files("gpt2", &[("tokenizer_config.json", json!({
        "bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>", "pad_token": "Ġthe",
        "add_bos_token": true, "chat_template": "T"}))]);
    let mut tj: Json = serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    tj["post_processor"] = Json::Null;
    fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let m = meta_of(&dir, n);
    assert_eq!(u(&m, "tokenizer.ggml.bos_token_id"), Some(eot));
    assert_eq!(u(&m, "tokenizer.ggml.eos_token_id"), Some(eot));
    assert!(u(&m, "tokenizer.ggml.padding_token_id").is_some());
    assert_eq!(get(&m, "tokenizer.ggml.add_bos_token").and_then(Value::as_bool), Some(true));
    assert_eq!(get(&m, "tokenizer.chat_template").and_then(Value::as_str), Some("T"));

    // unk_token, as llama.cpp's converter writes it
    let m = meta_of(&fixtures().join("smollm2"), n_vocab_of("smollm2"));
    assert_eq!(u(&m, "tokenizer.ggml.unknown_token_id"), Some(0));
    assert!(get(&m, "tokenizer.ggml.seperator_token_id").is_none());

    // ... but a ByteLevel post-processor overrides add_bos_token (llama.cpp, transformers 5)
    let dir = with_files("gpt2", &[("tokenizer_config.json", json!({"bos_token": "<|endoftext|>", "add_bos_token": true}))]);
    assert_eq!(get(&meta_of(&dir, n), "tokenizer.ggml.add_bos_token").and_then(Value::as_bool), Some(false));

    // a token the vocabulary lacks falls back to config.json; lists take their first id;
    // ids out of range there are ignored
    let dir = with_files("gpt2", &[
        ("tokenizer_config.json", json!({"bos_token": "<nope>", "eos_token": null})),
        ("config.json", json!({"bos_token_id": [5, 6], "eos_token_id": n + 100, "pad_token_id": -1})),
        ("generation_config.json", json!({"eos_token_id": [9, 10], "pad_token_id": 11})),
    ]);
    let m = meta_of(&dir, n);
    assert_eq!(u(&m, "tokenizer.ggml.bos_token_id"), Some(5));
    assert_eq!(u(&m, "tokenizer.ggml.eos_token_id"), Some(9));
    assert_eq!(u(&m, "tokenizer.ggml.padding_token_id"), Some(11));
    assert!(get(&m, "tokenizer.chat_template").is_none());

    // wrong types in tokenizer_config are ignored, not fatal
    let dir = with_files("gpt2", &[("tokenizer_config.json", json!({"bos_token": 5, "add_bos_token": "yes", "chat_template": 3}))]);
    let m = meta_of(&dir, n);
    assert_eq!(u(&m, "tokenizer.ggml.bos_token_id"), Some(eot)); // config.json's
    assert!(get(&m, "tokenizer.chat_template").is_none());

    // adding a BOS that does not exist is an error
    let dir = with_files("gpt2", &[("tokenizer_config.json", json!({"add_bos_token": true})), ("config.json", json!({}))]);
    let mut tj: Json = serde_json::from_str(&fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    tj["post_processor"] = Json::Null;
    fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    assert!(error_of(&dir, n).contains("adds a BOS token but names none"));

    // TemplateProcessing appending an EOS other than the configured one: that one becomes EOT
    // (llama.cpp's converter), and add_eos is set
    let dir = variant("llama3", |tj| {
        let pp = &mut tj["post_processor"]["processors"][1];
        pp["single"].as_array_mut().unwrap().push(json!({"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}}));
    });
    let m = meta_of(&dir, n_vocab_of("llama3"));
    let id = |t: &str| {
        let tokens = get(&m, "tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings()).unwrap();
        tokens.iter().position(|x| x == t).unwrap() as u64
    };
    assert_eq!(u(&m, "tokenizer.ggml.eos_token_id"), Some(id("<|end_of_text|>")));
    assert_eq!(u(&m, "tokenizer.ggml.eot_token_id"), Some(id("<|eot_id|>")));
    assert_eq!(get(&m, "tokenizer.ggml.add_eos_token").and_then(Value::as_bool), Some(true));
    assert_eq!(get(&m, "tokenizer.ggml.add_bos_token").and_then(Value::as_bool), Some(true));

    // templates: chat_template.jinja wins over tokenizer_config's (transformers), extra named
    // templates come from additional_chat_templates/, chat_template.json is the last resort
    let dir = with_files("gpt2", &[
        ("tokenizer_config.json", json!({"chat_template": "from config"})),
        ("chat_template.jinja", json!("from file")),
        ("additional_chat_templates/tool-use.jinja", json!("tools")),
    ]);
    let m = meta_of(&dir, n);
    assert_eq!(get(&m, "tokenizer.chat_template").and_then(Value::as_str), Some("from file"));
    assert_eq!(get(&m, "tokenizer.chat_template.tool_use").and_then(Value::as_str), Some("tools"));
    let dir = with_files("gpt2", &[("chat_template.json", json!({"chat_template": "from json"}))]);
    assert_eq!(get(&meta_of(&dir, n), "tokenizer.chat_template").and_then(Value::as_str), Some("from json"));
    // a list without a default: only the named ones
    let dir = with_files("gpt2", &[("tokenizer_config.json", json!({"chat_template": [{"name": "rag", "template": "R"}, {"x": 1}]}))]);
    let m = meta_of(&dir, n);
    assert!(get(&m, "tokenizer.chat_template").is_none());
    assert_eq!(get(&m, "tokenizer.chat_template.rag").and_then(Value::as_str), Some("R"));
}
