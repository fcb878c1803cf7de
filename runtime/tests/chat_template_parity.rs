//! Chat templates render exactly as transformers' `apply_chat_template(..., tokenize=False)`.
//!
//! The expected strings in tests/fixtures/chat_templates/*.json were produced by
//! scripts/reference/chat_template_cases.py with transformers' own renderer, from the templates
//! stored in the SmolLM2 and DeepSeek-R1-Distill-Qwen GGUFs.

use std::path::{Path, PathBuf};

use retort_runtime::chat_template::{ChatMessage, ChatTemplate};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("fixtures")
        .join("chat_templates")
}

fn check_fixture(name: &str) {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let source = doc["template"].as_str().expect("template");
    let bos = doc["bos_token"].as_str().unwrap_or("");
    let eos = doc["eos_token"].as_str().unwrap_or("");
    let template = ChatTemplate::new(source, bos, eos).unwrap_or_else(|e| panic!("{name}: {e}"));

    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let case_name = case["name"].as_str().unwrap_or("?");
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let agp = case["add_generation_prompt"]
            .as_bool()
            .expect("add_generation_prompt");
        let expected = case["expected"].as_str().expect("expected");
        match template.render(&messages, agp) {
            Ok(got) if got == expected => {}
            Ok(got) => failures.push(format!(
                "{case_name}:\n  expected {expected:?}\n  got      {got:?}"
            )),
            Err(e) => failures.push(format!("{case_name}: error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_transformers() {
    check_fixture("smollm2.json");
}

#[test]
fn r1_distill_qwen_matches_transformers() {
    check_fixture("r1_distill_qwen.json");
}

#[test]
fn features_match_transformers() {
    check_fixture("features.json");
}

/// Dicts built in a template keep insertion order, as Python's do (tool-call arguments are
/// printed with `tojson`). The expected string was rendered with jinja2 3.1.6 configured as
/// transformers configures it (sandbox, trim_blocks, lstrip_blocks, loopcontrols, its `tojson`).
#[test]
fn template_dicts_keep_insertion_order() {
    let source = "{% set d = {'role': 'x', 'b': 1, 'a': 2} %}{{ d }}|{{ d|tojson }}|\
        {{ dict(z=1, y=2) }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|\
        {{ messages[0] }}|{{ {'name': 'f', 'arguments': {'q': 'x', 'n': 1}}|tojson }}";
    let expected = "{'role': 'x', 'b': 1, 'a': 2}|{\"role\": \"x\", \"b\": 1, \"a\": 2}|\
        {'z': 1, 'y': 2}|role=x;b=1;a=2;|{'role': 'user', 'content': 'hi'}|\
        {\"name\": \"f\", \"arguments\": {\"q\": \"x\", \"n\": 1}}";
    let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
    let got = template
        .render(&[ChatMessage::new("user", "hi")], false)
        .unwrap();
    assert_eq!(got, expected);
}
