//! Hugging Face tokenizer files → GGUF tokenizer metadata (`tokenizer.ggml.*`,
//! `tokenizer.chat_template`), for byte-level BPE vocabularies (the GPT-2 family: SmolLM,
//! Qwen2/2.5/3, the DeepSeek-R1 distills, Llama 3, DeepSeek-V3).
//!
//! The result loads in retort (`retort_runtime::model::vocabulary_from_gguf`) and in llama.cpp,
//! and tokenizes as Hugging Face `tokenizers` does on the folder's `tokenizer.json`.
//!
//! What is read, from the checkpoint folder:
//! - `tokenizer.json`: `model` (must be `BPE`, byte-level: no `byte_fallback`, no subword
//!   prefix/suffix), its `vocab`, `merges` (`"a b"` strings or `["a", "b"]` pairs, as
//!   tokenizers ≥ 0.20 writes them) and `ignore_merges`; `added_tokens`; `normalizer` and
//!   `pre_tokenizer` (which name the pre-tokenizer, below); `post_processor` (whether BOS/EOS are
//!   added, as llama.cpp's converter reads it);
//! - `tokenizer_config.json`: `bos_token`, `eos_token`, `pad_token` (strings or
//!   `{"content": ...}` objects), `add_bos_token`, `add_eos_token`, `chat_template` (a string,
//!   or a list of `{"name", "template"}`);
//! - `chat_template.jinja` and `additional_chat_templates/*.jinja` (transformers ≥ 4.43 saves
//!   templates there; as in transformers, they win over `tokenizer_config.json`'s), else
//!   `chat_template.json`;
//! - `config.json`, then `generation_config.json`: `bos_token_id`, `eos_token_id` (an id or a
//!   list, whose first is taken), `pad_token_id`, for what the tokenizer files do not name.
//!
//! **`tokenizer.ggml.pre`** is derived from the pipeline `tokenizer.json` defines, not from a hash
//! of sample encodings: the normalizer (flattened: nothing or NFC) and the pre-tokenizer stages
//! (`Split` regexes with `Isolated` behavior, `Digits(individual_digits)`, and the final
//! `ByteLevel`, whose `use_regex=true` counts as a `Split` with GPT-2's regex), plus the BPE
//! model's `ignore_merges`, are compared with the pipelines the runtime implements; the name of
//! the identical one is taken (`gpt-2`, `smollm`, `qwen2`/`deepseek-r1-qwen`, `llama-bpe`,
//! `deepseek-v3`: names llama.cpp knows for the same regexes). Regexes compare as text, with
//! CR, LF and tab characters written literally (as DeepSeek-V3's file has them) taken as their
//! `\r`, `\n`, `\t` escapes. Qwen2's pipeline is `qwen2`, or `deepseek-r1-qwen` when the
//! tokenizer adds BOS (the R1 distills). Anything else is an error that prints the pipeline
//! found and the known ones.
//!
//! **Tokens**: id `i` is the vocabulary token or added token with that id, the added tokens
//! numbered as `tokenizers` numbers them on load (it ignores their `"id"` fields: a content
//! already in the vocabulary keeps its id, a new one takes the next id after the vocabulary);
//! an id neither defines (below `n_vocab`, the embedding's row count) becomes `[PAD{i}]` of
//! type unused (5), as llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base`) pads. Token
//! types as that script gives them: vocabulary tokens normal (1); added tokens control (3)
//! when `special` or when they look special (`<|...|>`, `<｜...｜>`, `<pad>`, `<mask>`,
//! `<unused...>`, ...), else user-defined (4).
//!
//! **BOS/EOS**, as llama.cpp's `gguf.SpecialVocab`: a `TemplateProcessing` post-processor that
//! starts with a special token sets `add_bos_token` (and names BOS when the config does not); one
//! that ends with one sets `add_eos_token` (a different EOS there makes the configured one EOT);
//! a `ByteLevel` post-processor means no BOS/EOS; only when the post-processor says nothing do
//! `add_bos_token`/`add_eos_token` of `tokenizer_config.json` count (transformers ≥ 5 ignores
//! those when `tokenizer.json` exists, too). Both flags are always written, so that retort and
//! llama.cpp (whose defaults differ by pre-tokenizer) agree. BOS, EOS, padding, unknown,
//! separator, CLS and mask ids come from the tokens `tokenizer_config.json` names (looked up
//! among the added tokens, then the vocabulary), else from `config.json`/`generation_config.json`.
//!
//! Inputs are untrusted: files are size-capped ([`MAX_TOKENIZER_JSON_BYTES`] for
//! `tokenizer.json`), must be UTF-8 JSON, and ids out of range, ids given twice, merges naming
//! tokens the vocabulary lacks and the like are errors naming the file and the entry.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use retort_models::gguf::{Array, Value};
use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};

/// The largest `tokenizer.json` read (real ones are 2 to 35 MiB).
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 512 << 20;
/// The largest of the other files read (configs, chat templates).
pub const MAX_SIDE_FILE_BYTES: u64 = 64 << 20;
/// The largest `n_vocab` accepted (real vocabularies stay under 300k tokens).
pub const MAX_N_VOCAB: usize = 1 << 22;
/// At most this many `additional_chat_templates/*.jinja` files are read.
const MAX_EXTRA_TEMPLATES: usize = 64;

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// GPT-2's regex, what `ByteLevel(use_regex=true)` splits with.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_V3_REGEXES: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];

/// The GGUF tokenizer metadata for the Hugging Face tokenizer in `dir`, for a model whose
/// embedding has `n_vocab` rows: `tokenizer.ggml.{model, pre, tokens, token_type, merges}`, the
/// special token ids and `add_*_token` flags, and the chat template(s), in llama.cpp's order.
pub fn tokenizer_metadata(dir: &Path, n_vocab: usize) -> Result<Vec<(String, Value)>> {
    if n_vocab == 0 {
        return Err(Error::Checkpoint("the model's vocabulary size (embedding rows) is 0".into()));
    }
    if n_vocab > MAX_N_VOCAB {
        return Err(Error::Checkpoint(format!(
            "the model's vocabulary size {n_vocab} is larger than the {MAX_N_VOCAB} tokens accepted"
        )));
    }
    let tj_path = dir.join("tokenizer.json");
    let Some(tj) = read_json(&tj_path, MAX_TOKENIZER_JSON_BYTES)? else {
        return Err(Error::Checkpoint(format!(
            "{}: not found; only tokenizers saved as tokenizer.json (byte-level BPE) are supported",
            tj_path.display()
        )));
    };
    let tc = read_json(&dir.join("tokenizer_config.json"), MAX_SIDE_FILE_BYTES)?;
    let config = read_json(&dir.join("config.json"), MAX_SIDE_FILE_BYTES)?;
    let generation = read_json(&dir.join("generation_config.json"), MAX_SIDE_FILE_BYTES)?;

    let where_ = tj_path.display().to_string();
    let tj = tj
        .as_object()
        .ok_or_else(|| Error::Checkpoint(format!("{where_}: not a JSON object")))?;
    let model = tj
        .get("model")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::Checkpoint(format!("{where_}: no \"model\" object")))?;
    check_model(model, &where_)?;
    let ignore_merges = optional_bool(model, "ignore_merges", &where_, "model")?.unwrap_or(false);
    let pipeline = Pipeline::from_json(tj.get("normalizer"), tj.get("pre_tokenizer"), ignore_merges);
    if pre_tokenizer_name(&pipeline, false).is_none() {
        return Err(Error::Checkpoint(unknown_pipeline(&where_, &pipeline)));
    }

    let vocab = read_vocab(model, tj.get("added_tokens"), n_vocab, &where_)?;
    let merges = read_merges(model, &vocab.model_ids, &where_)?;
    let specials = special_tokens(tj.get("post_processor"), tc.as_ref(), config.as_ref(), generation.as_ref(), &vocab, n_vocab)
        .map_err(|e| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", dir.display())),
            e => e,
        })?;
    let pre = pre_tokenizer_name(&pipeline, specials.add_bos).ok_or_else(|| Error::Checkpoint(unknown_pipeline(&where_, &pipeline)))?;
    let templates = chat_templates(dir, tc.as_ref())?;
    log::info!(
        "tokenizer: {} tokens ({} of them [PAD] padding), {} merges, pre-tokenizer {pre}, bos {:?}, eos {:?}, add_bos {}, \
         chat template {}",
        vocab.tokens.len(),
        vocab.types.iter().filter(|&&t| t == UNUSED).count(),
        merges.len(),
        specials.bos,
        specials.eos,
        specials.add_bos,
        if templates.default.is_some() { "yes" } else { "no" }
    );

    let mut out: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(Array::String(vocab.tokens))),
        ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(vocab.types))),
        ("tokenizer.ggml.merges".into(), Value::Array(Array::String(merges))),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", specials.bos),
        ("tokenizer.ggml.eos_token_id", specials.eos),
        ("tokenizer.ggml.eot_token_id", specials.eot),
        ("tokenizer.ggml.unknown_token_id", specials.unk),
        ("tokenizer.ggml.seperator_token_id", specials.sep), // sic, llama.cpp's key
        ("tokenizer.ggml.padding_token_id", specials.pad),
        ("tokenizer.ggml.cls_token_id", specials.cls),
        ("tokenizer.ggml.mask_token_id", specials.mask),
    ] {
        if let Some(id) = id {
            out.push((key.into(), Value::U32(id)));
        }
    }
    out.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(specials.add_bos)));
    out.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(specials.add_eos)));
    if let Some(default) = templates.default {
        out.push(("tokenizer.chat_template".into(), Value::String(default)));
    }
    if !templates.named.is_empty() {
        let names: Vec<String> = templates.named.keys().cloned().collect();
        for (name, template) in templates.named {
            out.push((format!("tokenizer.chat_template.{name}"), Value::String(template)));
        }
        out.push(("tokenizer.chat_templates".into(), Value::Array(Array::String(names))));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// files

/// The bytes of `path`, `None` if it does not exist; more than `cap` bytes is an error.
fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() {
        return Err(Error::Checkpoint(format!("{}: not a regular file", path.display())));
    }
    let too_big = |len: u64| Error::Checkpoint(format!("{}: {len} bytes, more than the {cap} accepted", path.display()));
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path).map_err(io)?.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

fn read_text(path: &Path, cap: u64) -> Result<Option<String>> {
    let Some(bytes) = read_capped(path, cap)? else { return Ok(None) };
    String::from_utf8(bytes).map(Some).map_err(|e| {
        Error::Checkpoint(format!("{}: not UTF-8 (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to()))
    })
}

/// The JSON in `path` (a leading byte-order mark is skipped), `None` if the file does not exist.
fn read_json(path: &Path, cap: u64) -> Result<Option<Json>> {
    let Some(text) = read_text(path, cap)? else { return Ok(None) };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Error::Checkpoint(format!("{}: invalid JSON: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// model, vocabulary, merges

fn check_model(model: &Map<String, Json>, where_: &str) -> Result<()> {
    match model.get("type").map(|t| t.as_str()) {
        Some(Some("BPE")) => {}
        // Files from old `tokenizers` versions leave the type out; BPE is the one with merges.
        None if model.contains_key("merges") => {}
        Some(Some(other)) => {
            return Err(Error::Checkpoint(format!(
                "{where_}: the tokenizer model is {other}; only byte-level BPE tokenizers (GPT-2 style: SmolLM, Qwen, \
                 Llama 3, DeepSeek) are supported for now, not SentencePiece-style Unigram, WordPiece or WordLevel ones"
            )))
        }
        _ => return Err(Error::Checkpoint(format!("{where_}: model.type is missing or not a string"))),
    }
    if optional_bool(model, "byte_fallback", where_, "model")? == Some(true) {
        return Err(Error::Checkpoint(format!(
            "{where_}: a BPE model with byte_fallback is SentencePiece-style (Llama 2, Mistral, Gemma); only \
             byte-level BPE is supported for now"
        )));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(key) {
            None | Some(Json::Null) => {}
            Some(Json::String(s)) if s.is_empty() => {}
            Some(v) => {
                return Err(Error::Checkpoint(format!(
                    "{where_}: model.{key} is {v}; byte-level BPE has none (GGUF cannot express it)"
                )))
            }
        }
    }
    match model.get("dropout") {
        None | Some(Json::Null) => {}
        Some(v) if v.as_f64() == Some(0.0) => {}
        Some(v) => {
            return Err(Error::Checkpoint(format!(
                "{where_}: model.dropout is {v}: BPE dropout makes encoding random, which GGUF cannot express"
            )))
        }
    }
    Ok(())
}

fn optional_bool(obj: &Map<String, Json>, key: &str, where_: &str, what: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(Error::Checkpoint(format!("{where_}: {what}.{key} is {v}, not a boolean"))),
    }
}

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    /// `model.vocab`: token → id.
    model_ids: HashMap<String, u32>,
    /// `added_tokens` contents → ids, the first of each content.
    added_ids: HashMap<String, u32>,
}

impl Vocab {
    /// The id of the token spelled `content`: an added token's, else a vocabulary token's.
    fn id_of(&self, content: &str) -> Option<u32> {
        self.added_ids.get(content).or_else(|| self.model_ids.get(content)).copied()
    }
}

/// An id from JSON: a non-negative integer.
fn json_id(v: &Json) -> Option<u64> {
    v.as_u64()
}

fn read_vocab(model: &Map<String, Json>, added: Option<&Json>, n_vocab: usize, where_: &str) -> Result<Vocab> {
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::Checkpoint(format!("{where_}: model.vocab is missing or not an object")))?;
    if vocab.is_empty() {
        return Err(Error::Checkpoint(format!("{where_}: model.vocab is empty")));
    }
    let mut slots: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![UNUSED; n_vocab];
    let mut model_ids = HashMap::with_capacity(vocab.len());
    let out_of_range = |what: &str, token: &str, id: u64| {
        Error::Checkpoint(format!(
            "{where_}: {what} {token:?} has id {id}, but the model's embedding has {n_vocab} rows (ids 0..{})",
            n_vocab - 1
        ))
    };
    for (token, id) in vocab {
        let id = json_id(id).ok_or_else(|| {
            Error::Checkpoint(format!("{where_}: model.vocab[{token:?}] is {id}, not a token id (a non-negative integer)"))
        })?;
        let i = usize::try_from(id).ok().filter(|&i| i < n_vocab).ok_or_else(|| out_of_range("token", token, id))?;
        if let Some(other) = &slots[i] {
            return Err(Error::Checkpoint(format!("{where_}: model.vocab gives id {id} to both {other:?} and {token:?}")));
        }
        slots[i] = Some(token.clone());
        types[i] = NORMAL;
        model_ids.insert(token.clone(), i as u32);
    }

    // Added tokens get their ids as `tokenizers` gives them when it loads the file (the "id"
    // fields only produce a warning there): in file order, an added token whose content is
    // already known keeps that id, and a new one takes the next id after the vocabulary
    // (`model.vocab`'s entry count) and the added tokens before it.
    let mut added_ids: HashMap<String, u32> = HashMap::new();
    let added = match added {
        None | Some(Json::Null) => &[][..],
        Some(Json::Array(a)) => a.as_slice(),
        Some(_) => return Err(Error::Checkpoint(format!("{where_}: added_tokens is not a list"))),
    };
    let mut next_id = vocab.len() as u64;
    let mut special_ids = vec![false; n_vocab];
    for (k, entry) in added.iter().enumerate() {
        let bad = |what: &str| Error::Checkpoint(format!("{where_}: added_tokens[{k}]: {what}"));
        let obj = entry.as_object().ok_or_else(|| bad("not an object"))?;
        let content = obj.get("content").and_then(Json::as_str).ok_or_else(|| bad("no \"content\" string"))?;
        let file_id = obj
            .get("id")
            .and_then(json_id)
            .filter(|&id| id <= u32::MAX as u64)
            .ok_or_else(|| bad("no \"id\" (a 32-bit non-negative integer)"))?;
        let special = match obj.get("special") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(bad("\"special\" is not a boolean")),
        };
        if content.is_empty() {
            log::warn!("{where_}: added_tokens[{k}] has empty content; ignored (as tokenizers does)");
            continue;
        }
        let id = match added_ids.get(content).or_else(|| model_ids.get(content)) {
            Some(&id) => id as u64,
            None => {
                next_id += 1;
                next_id - 1
            }
        };
        if id != file_id {
            log::warn!(
                "{where_}: added token {content:?} says id {file_id}, but tokenizers gives it id {id} (after the {} \
                 vocabulary entries and the added tokens before it); {id} is used",
                vocab.len()
            );
        }
        let i = usize::try_from(id).ok().filter(|&i| i < n_vocab).ok_or_else(|| out_of_range("added token", content, id))?;
        if let Some(other) = slots[i].as_ref().filter(|other| *other != content) {
            // Only possible when model.vocab's ids are not 0..n: tokenizers would give one id
            // two tokens.
            return Err(bad(&format!(
                "{content:?} gets id {id} (after the {} vocabulary entries), which model.vocab gives to {other:?}",
                vocab.len()
            )));
        }
        for flag in ["lstrip", "rstrip", "single_word"] {
            if obj.get(flag).and_then(Json::as_bool) == Some(true) {
                log::warn!(
                    "{where_}: added token {content:?} has {flag}=true, which GGUF cannot express; retort and llama.cpp \
                     match it exactly as written"
                );
            }
        }
        special_ids[i] |= special;
        slots[i] = Some(content.to_owned());
        types[i] = if special_ids[i] || looks_special(content) { CONTROL } else { USER_DEFINED };
        added_ids.entry(content.to_owned()).or_insert(i as u32);
    }

    let tokens = slots
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    Ok(Vocab { tokens, types, model_ids, added_ids })
}

/// Added tokens llama.cpp's converter makes control tokens even when not marked special
/// (`does_token_look_special` in convert_hf_to_gguf.py).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `model.merges` as GGUF wants them: "left right", where the separator is the first space
/// after the first byte (how retort and llama.cpp split them).
fn read_merges(model: &Map<String, Json>, ids: &HashMap<String, u32>, where_: &str) -> Result<Vec<String>> {
    let merges = match model.get("merges") {
        None | Some(Json::Null) => &[][..],
        Some(Json::Array(a)) => a.as_slice(),
        Some(_) => return Err(Error::Checkpoint(format!("{where_}: model.merges is not a list"))),
    };
    let mut out = Vec::with_capacity(merges.len());
    let mut joined = String::new();
    for (k, merge) in merges.iter().enumerate() {
        let bad = |what: String| Error::Checkpoint(format!("{where_}: model.merges[{k}] ({merge}): {what}"));
        let (left, right) = match merge {
            // As `tokenizers` reads the old format: exactly one space.
            Json::String(s) => {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(l), Some(r), None) => (l, r),
                    _ => return Err(bad("not two tokens separated by one space".into())),
                }
            }
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(l), Json::String(r)] => (l.as_str(), r.as_str()),
                _ => return Err(bad("not a pair of strings".into())),
            },
            _ => return Err(bad("neither a string nor a pair".into())),
        };
        if left.is_empty() || right.is_empty() {
            return Err(bad("an empty token".into()));
        }
        for part in [left, right] {
            if !ids.contains_key(part) {
                return Err(bad(format!("{part:?} is not in model.vocab")));
            }
        }
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        if !ids.contains_key(joined.as_str()) {
            return Err(bad(format!("the merged token {joined:?} is not in model.vocab")));
        }
        let line = format!("{left} {right}");
        let sep = line.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
        if sep != Some(left.len()) {
            return Err(bad("a token with a space in it, which the GGUF merge format cannot express".into()));
        }
        out.push(line);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// special tokens

#[derive(Debug, Default)]
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    /// What llama.cpp's converter also writes when the files name them.
    unk: Option<u32>,
    sep: Option<u32>,
    cls: Option<u32>,
    mask: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// A special token as `tokenizer_config.json` gives it: a string or `{"content": ...}`.
fn token_content(tc: Option<&Map<String, Json>>, key: &str) -> Option<String> {
    match tc?.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The content a `TemplateProcessing` item names when it is a special token.
fn template_special(item: Option<&Json>) -> Option<String> {
    item?.get("SpecialToken")?.get("id")?.as_str().map(str::to_owned)
}

fn special_tokens(
    post_processor: Option<&Json>,
    tc: Option<&Json>,
    config: Option<&Json>,
    generation: Option<&Json>,
    vocab: &Vocab,
    n_vocab: usize,
) -> Result<Specials> {
    let tc = tc.and_then(Json::as_object);
    let mut bos = token_content(tc, "bos_token");
    let mut eos = token_content(tc, "eos_token");
    let mut cls = token_content(tc, "cls_token");
    let mut sep = token_content(tc, "sep_token");
    let pad = token_content(tc, "pad_token");
    let unk = token_content(tc, "unk_token");
    let mask = token_content(tc, "mask_token");
    let mut eot: Option<String> = None;
    if bos.is_none() && tc.is_some() {
        bos = cls.clone();
    }
    if eos.is_none() && tc.is_some() {
        eos = sep.clone();
    }

    // The post-processor, read as llama.cpp's gguf.SpecialVocab reads it.
    let mut add_bos: Option<bool> = None;
    let mut add_eos: Option<bool> = None;
    let processors: Vec<&Json> = match post_processor {
        Some(p @ Json::Object(o)) => match o.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![p],
        },
        _ => Vec::new(),
    };
    for p in processors {
        match p.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {
                add_bos.get_or_insert(false);
                add_eos.get_or_insert(false);
            }
            Some("RobertaProcessing") => {
                add_bos = Some(true);
                add_eos = Some(true);
                let first = |key: &str| p.get(key)?.get(0)?.as_str().map(str::to_owned);
                if cls.is_none() {
                    cls = first("cls");
                }
                if bos.is_none() {
                    bos = cls.clone();
                }
                if sep.is_none() {
                    sep = first("sep");
                }
                if eos.is_none() {
                    eos = sep.clone();
                }
            }
            Some("TemplateProcessing") => {
                let single = p.get("single").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);
                if single.len() > 1 {
                    if let Some(first) = template_special(single.first()) {
                        if tc.is_none() {
                            bos = Some(first.clone());
                        } else if Some(&first) != bos.as_ref() && Some(&first) != cls.as_ref() && bos.is_none() {
                            bos = Some(first.clone());
                            cls.get_or_insert(first.clone());
                        }
                        let adds = Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref();
                        if !adds {
                            log::warn!("tokenizer.json: the post-processor starts with {first:?}, which is not the BOS token");
                        }
                        add_bos = Some(adds);
                    }
                    if let Some(last) = template_special(single.last()) {
                        if tc.is_none() {
                            eos = Some(last.clone());
                        } else if Some(&last) != eos.as_ref() {
                            // llama.cpp: the configured EOS becomes EOT, the appended token EOS.
                            eot = eos.take();
                            eos = Some(last.clone());
                        }
                        add_eos = Some(true);
                    }
                }
            }
            _ => {}
        }
    }
    let config_flag = |key: &str| tc.and_then(|t| t.get(key)).and_then(Json::as_bool);
    let add_bos = add_bos.or_else(|| config_flag("add_bos_token")).unwrap_or(false);
    let add_eos = add_eos.or_else(|| config_flag("add_eos_token")).unwrap_or(false);

    let resolve = |which: &str, content: Option<String>| -> Option<u32> {
        let content = content?;
        let id = vocab.id_of(&content);
        if id.is_none() {
            log::warn!("the {which} token {content:?} of tokenizer_config.json is not in the vocabulary; ignored");
        }
        id
    };
    // config.json, then generation_config.json: an id, or a list of ids (the first is taken).
    let fallback = |which: &str, key: &str| -> Option<u32> {
        for (file, json) in [("config.json", config), ("generation_config.json", generation)] {
            let Some(json) = json else { continue };
            let value = json.get(key).or_else(|| json.get("text_config").and_then(|t| t.get(key)));
            let value = match value {
                Some(Json::Array(a)) => a.first(),
                v => v,
            };
            let Some(value) = value.filter(|v| !v.is_null()) else { continue };
            match value.as_u64().filter(|&id| id < n_vocab as u64) {
                Some(id) => return Some(id as u32),
                None => log::warn!("{file}: {key} {value} is not an id below {n_vocab}; ignored for {which}"),
            }
        }
        None
    };
    let specials = Specials {
        bos: resolve("BOS", bos).or_else(|| fallback("BOS", "bos_token_id")),
        eos: resolve("EOS", eos).or_else(|| fallback("EOS", "eos_token_id")),
        eot: resolve("EOT", eot),
        pad: resolve("padding", pad).or_else(|| fallback("padding", "pad_token_id")),
        unk: resolve("unknown", unk).or_else(|| fallback("unknown", "unk_token_id")),
        sep: resolve("separator", sep).or_else(|| fallback("separator", "sep_token_id")),
        cls: resolve("CLS", cls).or_else(|| fallback("CLS", "cls_token_id")),
        mask: resolve("mask", mask).or_else(|| fallback("mask", "mask_token_id")),
        add_bos,
        add_eos,
    };
    if specials.add_bos && specials.bos.is_none() {
        return Err(Error::Checkpoint("the tokenizer adds a BOS token but names none that is in its vocabulary".into()));
    }
    if specials.add_eos && specials.eos.is_none() {
        return Err(Error::Checkpoint("the tokenizer adds an EOS token but names none that is in its vocabulary".into()));
    }
    Ok(specials)
}

// ---------------------------------------------------------------------------------------------
// pre-tokenizer

/// One normalizer step, flattened out of `Sequence`s.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Norm {
    Nfc,
    /// Anything else, described.
    Other(String),
}

/// One pre-tokenizer stage, flattened out of `Sequence`s.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// `Digits(individual_digits=true)`.
    Digits,
    /// `Split(Regex(..), behavior=Isolated, invert=false)`, the regex canonical
    /// (see [`canonical_regex`]).
    Split(String),
    /// `ByteLevel(add_prefix_space=false, use_regex=false)`; `use_regex=true` is read as
    /// `Split(GPT-2 regex)` before it.
    ByteLevel,
    /// Anything else, described.
    Other(String),
}

/// What decides how text is cut before BPE.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pipeline {
    normalizer: Vec<Norm>,
    stages: Vec<Stage>,
    ignore_merges: bool,
}

impl Pipeline {
    fn from_json(normalizer: Option<&Json>, pre_tokenizer: Option<&Json>, ignore_merges: bool) -> Pipeline {
        let mut p = Pipeline { normalizer: Vec::new(), stages: Vec::new(), ignore_merges };
        if let Some(n) = normalizer {
            flatten_normalizer(n, &mut p.normalizer, 0);
        }
        if let Some(t) = pre_tokenizer {
            flatten_pre_tokenizer(t, &mut p.stages, 0);
        }
        p
    }
}

/// Deeper `Sequence` nesting than this is described rather than followed.
const MAX_SEQUENCE_DEPTH: usize = 8;

fn describe(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

fn flatten_normalizer(n: &Json, out: &mut Vec<Norm>, depth: usize) {
    match n.get("type").and_then(Json::as_str) {
        _ if n.is_null() => {}
        Some("Sequence") if depth < MAX_SEQUENCE_DEPTH => match n.get("normalizers").and_then(Json::as_array) {
            Some(list) => list.iter().for_each(|x| flatten_normalizer(x, out, depth + 1)),
            None => out.push(Norm::Other(describe(n))),
        },
        Some("NFC") => out.push(Norm::Nfc),
        _ => out.push(Norm::Other(describe(n))),
    }
}

fn flatten_pre_tokenizer(t: &Json, out: &mut Vec<Stage>, depth: usize) {
    let other = |out: &mut Vec<Stage>| out.push(Stage::Other(describe(t)));
    match t.get("type").and_then(Json::as_str) {
        _ if t.is_null() => {}
        Some("Sequence") if depth < MAX_SEQUENCE_DEPTH => match t.get("pretokenizers").and_then(Json::as_array) {
            Some(list) => list.iter().for_each(|x| flatten_pre_tokenizer(x, out, depth + 1)),
            None => other(out),
        },
        Some("Digits") => match t.get("individual_digits").and_then(Json::as_bool) {
            Some(true) => out.push(Stage::Digits),
            _ => other(out),
        },
        Some("Split") => {
            let regex = t.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str);
            let isolated = t.get("behavior").and_then(Json::as_str) == Some("Isolated");
            let inverted = t.get("invert").and_then(Json::as_bool) != Some(false);
            match regex {
                Some(r) if isolated && !inverted => out.push(Stage::Split(canonical_regex(r))),
                _ => other(out),
            }
        }
        Some("ByteLevel") => {
            // `tokenizers` requires add_prefix_space; use_regex defaults to true.
            let prefix = t.get("add_prefix_space").and_then(Json::as_bool);
            let use_regex = t.get("use_regex").map_or(Some(true), Json::as_bool);
            match (prefix, use_regex) {
                (Some(false), Some(true)) => out.extend([Stage::Split(GPT2_REGEX.into()), Stage::ByteLevel]),
                (Some(false), Some(false)) => out.push(Stage::ByteLevel),
                _ => other(out),
            }
        }
        _ => other(out),
    }
}

/// A regex with literal CR, LF and tab characters written as `\r`, `\n`, `\t` (the same regex:
/// DeepSeek-V3's tokenizer.json has the characters, llama.cpp and retort the escapes).
fn canonical_regex(pattern: &str) -> String {
    fn escape(c: char) -> Option<&'static str> {
        match c {
            '\r' => Some(r"\r"),
            '\n' => Some(r"\n"),
            '\t' => Some(r"\t"),
            _ => None,
        }
    }
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                // `\` before a literal control character escapes that character: the same.
                Some(n) => match escape(n) {
                    Some(e) => out.push_str(e),
                    None => {
                        out.push('\\');
                        out.push(n);
                    }
                },
                None => out.push('\\'),
            }
        } else {
            match escape(c) {
                Some(e) => out.push_str(e),
                None => out.push(c),
            }
        }
    }
    out
}

/// The pipelines the runtime implements, by the name llama.cpp also uses for them. (The
/// runtime also knows "llama3" and "llama-v3", aliases of "llama-bpe", and "deepseek-r1-qwen",
/// "qwen2" with BOS, chosen in [`pre_tokenizer_name`].)
fn known_pipelines() -> Vec<(&'static str, Pipeline)> {
    let split = |r: &str| Stage::Split(r.to_owned());
    let p = |nfc: bool, mut stages: Vec<Stage>, ignore_merges: bool| {
        stages.push(Stage::ByteLevel);
        Pipeline { normalizer: if nfc { vec![Norm::Nfc] } else { Vec::new() }, stages, ignore_merges }
    };
    vec![
        ("gpt-2", p(false, vec![split(GPT2_REGEX)], false)),
        ("smollm", p(false, vec![Stage::Digits, split(GPT2_REGEX)], false)),
        ("qwen2", p(true, vec![split(QWEN2_REGEX)], false)),
        ("llama-bpe", p(false, vec![split(LLAMA3_REGEX)], true)),
        ("deepseek-v3", p(false, DEEPSEEK_V3_REGEXES.iter().map(|r| split(r)).collect(), false)),
    ]
}

fn pre_tokenizer_name(pipeline: &Pipeline, add_bos: bool) -> Option<&'static str> {
    let (name, _) = known_pipelines().into_iter().find(|(_, p)| p == pipeline)?;
    // llama.cpp tells the R1 distills from Qwen2 by name only (older versions add BOS for the
    // former); the runtime and current llama.cpp read add_bos_token either way.
    Some(if name == "qwen2" && add_bos { "deepseek-r1-qwen" } else { name })
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("normalizer: ")?;
        if self.normalizer.is_empty() {
            f.write_str("none")?;
        }
        for (i, n) in self.normalizer.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            match n {
                Norm::Nfc => write!(f, "{sep}NFC")?,
                Norm::Other(d) => write!(f, "{sep}{d}")?,
            }
        }
        f.write_str("; pre_tokenizer: ")?;
        if self.stages.is_empty() {
            f.write_str("none")?;
        }
        for (i, s) in self.stages.iter().enumerate() {
            let sep = if i > 0 { ", " } else { "" };
            match s {
                Stage::Digits => write!(f, "{sep}Digits(individual_digits=true)")?,
                Stage::Split(r) => write!(f, "{sep}Split(/{r}/, Isolated)")?,
                Stage::ByteLevel => write!(f, "{sep}ByteLevel(add_prefix_space=false)")?,
                Stage::Other(d) => write!(f, "{sep}{d}")?,
            }
        }
        write!(f, "; BPE ignore_merges: {}", self.ignore_merges)
    }
}

fn unknown_pipeline(where_: &str, found: &Pipeline) -> String {
    let mut s = format!(
        "{where_}: the tokenizer's normalizer and pre-tokenizer are not a pipeline retort knows, so no \
         tokenizer.ggml.pre can be chosen.\n  found:  {found}\n  known:"
    );
    for (name, p) in known_pipelines() {
        let name = if name == "qwen2" { "qwen2 (deepseek-r1-qwen when it adds BOS)" } else { name };
        s.push_str(&format!("\n    {name}: {p}"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// chat templates

#[derive(Debug, Default)]
struct Templates {
    default: Option<String>,
    /// Other named templates (`tool_use`, `rag`), by name made of `[A-Za-z0-9_]`.
    named: BTreeMap<String, String>,
}

impl Templates {
    fn add(&mut self, name: &str, template: String) {
        // As llama.cpp's gguf writer: other characters become '_'.
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        if name == "default" {
            self.default = Some(template);
        } else if !name.is_empty() {
            self.named.insert(name, template);
        }
    }

    /// A `chat_template` value: a string, or a list of `{"name", "template"}`.
    fn from_json(v: &Json, file: &str) -> Templates {
        let mut t = Templates::default();
        match v {
            Json::String(s) => t.default = Some(s.clone()),
            Json::Array(list) => {
                for item in list {
                    let name = item.get("name").and_then(Json::as_str);
                    let template = item.get("template").and_then(Json::as_str);
                    match (name, template) {
                        (Some(n), Some(tpl)) => t.add(n, tpl.to_owned()),
                        _ => log::warn!("{file}: a chat_template entry without name and template; ignored"),
                    }
                }
            }
            Json::Null => {}
            _ => log::warn!("{file}: chat_template is neither a string nor a list; ignored"),
        }
        t
    }
}

/// The templates, as transformers finds them: `chat_template.jinja` and
/// `additional_chat_templates/*.jinja` when present (they win), else `tokenizer_config.json`'s
/// `chat_template`, else `chat_template.json`'s (as llama.cpp's converter also reads).
fn chat_templates(dir: &Path, tc: Option<&Json>) -> Result<Templates> {
    let mut files = Templates::default();
    if let Some(t) = read_text(&dir.join("chat_template.jinja"), MAX_SIDE_FILE_BYTES)? {
        files.default = Some(t);
    }
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let io = |source| Error::Io { path: extra_dir.clone(), source };
        let mut paths = Vec::new();
        for entry in fs::read_dir(&extra_dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "jinja") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.len() > MAX_EXTRA_TEMPLATES {
            return Err(Error::Checkpoint(format!(
                "{}: {} templates, more than the {MAX_EXTRA_TEMPLATES} accepted",
                extra_dir.display(),
                paths.len()
            )));
        }
        for path in paths {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            if let Some(t) = read_text(&path, MAX_SIDE_FILE_BYTES)? {
                files.add(&name, t);
            }
        }
    }
    if files.default.is_some() || !files.named.is_empty() {
        return Ok(files);
    }
    if let Some(v) = tc.and_then(|t| t.get("chat_template")) {
        return Ok(Templates::from_json(v, "tokenizer_config.json"));
    }
    let path = dir.join("chat_template.json");
    if let Some(v) = read_json(&path, MAX_SIDE_FILE_BYTES)? {
        if let Some(t) = v.get("chat_template") {
            return Ok(Templates::from_json(t, "chat_template.json"));
        }
    }
    Ok(Templates::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_regex_escapes_control_characters() {
        assert_eq!(canonical_regex("[^\r\n\\p{L}]\t"), r"[^\r\n\p{L}]\t");
        assert_eq!(canonical_regex("a\\\nb"), r"a\nb");
        assert_eq!(canonical_regex(r"\\n"), r"\\n");
        assert_eq!(canonical_regex("x\\"), "x\\");
        assert_eq!(canonical_regex(DEEPSEEK_V3_REGEXES[2]), DEEPSEEK_V3_REGEXES[2]);
    }

    #[test]
    fn looks_special_as_llama_cpp() {
        for t in ["<|im_start|>", "<｜User｜>", "<pad>", "<unused12>"] {
            assert!(looks_special(t), "{t}");
        }
        for t in ["<think>", "</tool_call>", "<|im_start", "<unused"] {
            assert!(!looks_special(t), "{t}");
        }
    }

    #[test]
    fn byte_level_with_regex_is_the_gpt2_split() {
        let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let seq = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        let a = Pipeline::from_json(None, Some(&bl), false);
        let b = Pipeline::from_json(Some(&serde_json::json!({"type": "Sequence", "normalizers": []})), Some(&seq), false);
        assert_eq!(a, b);
        assert_eq!(pre_tokenizer_name(&a, false), Some("gpt-2"));
        let prefixed = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        assert_eq!(pre_tokenizer_name(&Pipeline::from_json(None, Some(&prefixed), false), false), None);
    }
}
