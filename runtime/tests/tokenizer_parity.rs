//! The tokenizer against Hugging Face `tokenizers` on the real vocabularies.
//!
//! Fixtures (tests/fixtures/tokenizer/*.json, from scripts/reference/tokenizer_cases.py) hold
//! texts and the ids HF produces with each model's upstream pipeline. For every case:
//! - `encode(text, false)` equals HF's ids, and `encode(text, true)` HF's with special tokens;
//! - `decode(ids)` equals the text byte for byte wherever HF's decode round-trips, and HF's
//!   decode otherwise (NFC-normalized text);
//! - a `StreamDecoder` fed the ids' bytes one token at a time yields the same text.
//!
//! Models are found in $RETORT_MODELS_DIR (default `<repo>/models-cache`, filled by
//! scripts/fetch-models.sh). Without the file the test says so loudly and passes, unless
//! $RETORT_REQUIRE_MODELS is set. $RETORT_TOKENIZER_FIXTURES points at another fixture
//! directory (e.g. a large random set made with the script's `--out`/`--random`).

use std::path::{Path, PathBuf};

use retort_models::gguf::{GgufFile, GgufWriter};
use retort_runtime::model::vocabulary_from_gguf;
use retort_runtime::tokenizer::{StreamDecoder, Tokenizer, Vocabulary};
use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const R1: &str = "r1-distill-qwen-7b.part0000.gguf";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("runtime/ has a parent").to_path_buf()
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("RETORT_TOKENIZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fixtures/tokenizer"))
}

/// The vocabulary of a model file, or None (after a loud message) when the file is absent
/// and models are not required.
fn vocabulary(file: &str) -> Option<Vocabulary> {
    let path = retort_models::real_models::real_model(file)?;
    // The R1 file is a truncated download: its header is whole but its tensors are not, so
    // the vocabulary is read from a header-only GGUF written from it (which also puts the
    // writer through 152k real token strings and merges).
    let header_only = header_only_copy(&path);
    let gguf = GgufFile::open(&header_only).unwrap_or_else(|e| panic!("{}: {e}", header_only.display()));
    Some(vocabulary_from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// All of `path`'s metadata and none of its tensors, in a new GGUF file.
fn header_only_copy(path: &Path) -> PathBuf {
    let source = GgufFile::open_header(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut writer = GgufWriter::new();
    for (key, value) in source.metadata() {
        writer.set(key, value.clone()).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("retort-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(path.file_name().unwrap());
    writer.write(&out, |_, _, _| unreachable!("no tensors")).unwrap();
    let copy = GgufFile::open(&out).unwrap();
    assert!(copy.tensors().is_empty());
    assert!(source.metadata().eq(copy.metadata()), "metadata survives the round trip");
    out
}

fn tokenizer(file: &str) -> Option<Tokenizer> {
    vocabulary(file).map(|v| Tokenizer::new(v).expect("the real vocabulary is accepted"))
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_special: Option<Vec<u32>>,
    hf_decoded: Option<String>,
}

struct Fixture {
    pre: String,
    cases: Vec<Case>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids are an array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn fixture(name: &str) -> Fixture {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_owned(),
            ids: ids(&c["ids"]),
            ids_special: c.get("ids_special").map(ids),
            hf_decoded: c.get("hf_decoded").and_then(Value::as_str).map(str::to_owned),
        })
        .collect();
    Fixture { pre: json["pre"].as_str().expect("pre").to_owned(), cases }
}

fn show(tok: &Tokenizer, ids: &[u32]) -> String {
    let texts: Vec<&str> = ids.iter().map(|&i| tok.token_text(i).unwrap_or("<out of range>")).collect();
    format!("{ids:?} {texts:?}")
}

/// Checks every case of a fixture; returns how many were checked.
fn check(tok: &Tokenizer, name: &str) -> usize {
    let fx = fixture(name);
    assert_eq!(tok.pre_tokenizer(), fx.pre, "{name}: fixture made for pre-tokenizer '{}'", fx.pre);
    let mut failures = Vec::new();
    let mut round_trips = 0;
    for case in &fx.cases {
        let got = tok.encode(&case.text, false);
        if got != case.ids {
            failures.push(format!("encode {:?}\n   got  {}\n   want {}", case.text, show(tok, &got), show(tok, &case.ids)));
            continue;
        }
        let want_special = case.ids_special.as_ref().unwrap_or(&case.ids);
        let got_special = tok.encode(&case.text, true);
        if &got_special != want_special {
            failures.push(format!("encode with specials {:?}: got {got_special:?} want {want_special:?}", case.text));
        }
        let want_text = case.hf_decoded.as_ref().unwrap_or(&case.text);
        if case.hf_decoded.is_none() {
            round_trips += 1;
        }
        let decoded = tok.decode(&got);
        if &decoded != want_text {
            failures.push(format!("decode {:?}: got {decoded:?} want {want_text:?}", case.text));
        }
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &got {
            // A `String` is valid UTF-8 by construction; what matters is that the pieces add
            // up to the whole decode, with nothing cut in the middle of a character.
            streamed.push_str(&stream.push(tok.token_bytes(id).expect("id in range")));
        }
        streamed.push_str(&stream.finish());
        if &streamed != want_text {
            failures.push(format!("stream {:?}: got {streamed:?} want {want_text:?}", case.text));
        }
    }
    let n = fx.cases.len();
    eprintln!("{name}: {n} cases, {} failures, {round_trips} byte-exact round trips", failures.len());
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(12).collect();
        panic!(
            "{name}: {} of {n} cases differ from Hugging Face tokenizers:\n{}",
            failures.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
    n
}

#[test]
fn smollm2_matches_hf() {
    let Some(tok) = tokenizer(SMOLLM2) else { return };
    assert!(check(&tok, "smollm2") >= 60);
}

#[test]
fn r1_distill_qwen_matches_hf() {
    let Some(tok) = tokenizer(R1) else { return };
    assert!(check(&tok, "r1_distill_qwen") >= 60);
}

/// gpt-2, llama-bpe, deepseek-v3 and qwen2 pipelines over SmolLM2's vocabulary and merges.
#[test]
fn other_pre_tokenizers_match_hf() {
    let Some(v) = vocabulary(SMOLLM2) else { return };
    for pre in ["gpt-2", "llama-bpe", "deepseek-v3", "qwen2"] {
        let tok = Tokenizer::new(Vocabulary { pre: pre.into(), ..v.clone() }).expect(pre);
        check(&tok, &format!("smollm2_as_{}", pre.replace('-', "_")));
    }
}

#[test]
fn smollm2_special_tokens() {
    let Some(tok) = tokenizer(SMOLLM2) else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos(), tok.eos(), tok.add_bos(), tok.add_eos()), (Some(1), Some(2), false, false));
    assert_eq!(tok.token_bytes(1), Some(&b"<|im_start|>"[..]));
    assert_eq!(tok.encode("<|im_start|>user\nhi<|im_end|>", true)[..2], [1, 4093]);
    // llama.cpp ends generation on <|im_end|> (eos), <|endoftext|>, and <reponame> (its FIM
    // repo-name token); the auto-detected end-of-turn token is <|endoftext|>.
    assert_eq!(tok.end_of_generation_ids(), [0, 2, 4]);
    assert_eq!(tok.eot(), Some(0));
    assert!(!tok.is_end_of_generation(1));
}

#[test]
fn r1_special_tokens() {
    let Some(tok) = tokenizer(R1) else { return };
    assert_eq!(tok.vocab_size(), 152064);
    assert_eq!((tok.bos(), tok.eos(), tok.add_bos(), tok.add_eos()), (Some(151646), Some(151643), true, false));
    assert_eq!(tok.token_bytes(151644), Some("<｜User｜>".as_bytes()));
    assert_eq!(tok.token_bytes(151648), Some(&b"<think>"[..]));
    let ids = tok.encode("<｜User｜>hi<｜Assistant｜><think>", true);
    assert_eq!(ids[0], 151646);
    assert_eq!(ids[1], 151644);
    assert_eq!(ids[ids.len() - 2..], [151645, 151648]);
    // <｜end▁of▁sentence｜> (eos and end of turn), and the FIM pad / repo / file-sep tokens.
    assert_eq!(tok.end_of_generation_ids(), [151643, 151662, 151663, 151664]);
    assert!(!tok.is_end_of_generation(151645));
    // Unused padding tokens are never produced from text.
    assert_eq!(tok.encode("[PAD151665]", false).iter().filter(|&&i| i >= 151665).count(), 0);
}
