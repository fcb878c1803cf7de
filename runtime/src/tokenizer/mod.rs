//! Byte-level BPE tokenizer (the GPT-2 family, `tokenizer.ggml.model == "gpt2"`), built from
//! GGUF vocabulary data and equal, id for id, to Hugging Face `tokenizers` running the model's
//! upstream `tokenizer.json`.
//!
//! Encoding, as HF does it:
//! 1. added tokens (GGUF token types 3 control and 4 user-defined, e.g. `<|im_start|>`,
//!    `<think>`, `<｜User｜>`) are cut out of the raw text first, leftmost match first and the
//!    longest among those starting there (`added.rs`); all of them, as in HF, whether "special" or
//!    not (their upstream `lstrip`/`rstrip`/`single_word` are false and `normalized` is false
//!    for the vocabularies supported, so they match the raw text exactly);
//! 2. each stretch of plain text is normalized (NFC for the Qwen family) and cut into pieces by
//!    the pre-tokenizer that `tokenizer.ggml.pre` names (`pretokenize.rs`);
//! 3. each piece's bytes are BPE-merged by merge rank (`bpe.rs`), with a per-piece cache.
//!
//! Decoding concatenates the tokens' bytes ([`Tokenizer::token_bytes`]) and replaces invalid
//! UTF-8 only at the very end; [`StreamDecoder`] does the same incrementally.

mod added;
mod bpe;
mod bytelevel;
mod error;
mod pretokenize;
mod stream;

use std::collections::HashMap;

use added::{AddedTokens, Segment};
use bpe::{Bpe, FxHashMap};
use pretokenize::PreTokenizer;

pub use error::TokenizerError;
pub use stream::StreamDecoder;

/// A vocabulary as GGUF metadata holds it (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    /// `tokenizer.ggml.model`; must be "gpt2".
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer (see [`Tokenizer::known_pre_tokenizers`]).
    pub pre: String,
    /// `tokenizer.ggml.tokens`, byte-level-encoded ("Ġthe").
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (see [`TokenType`]); empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: "Ġ t", two tokens separated by one space, by rank.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// GGUF token types (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// Token texts llama.cpp ends generation on (llama-vocab.cpp, "tokens that cause
/// end-of-generation").
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
/// Texts llama.cpp takes for the end-of-turn token when the metadata names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// FIM pad / repo / file-separator texts; llama.cpp ends generation on the ones it finds.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];

/// A byte-level BPE tokenizer. Cheap to share between threads (`&self` everywhere).
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// All tokens' bytes back to back; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    ids: HashMap<String, u32>,
    bpe: Bpe,
    pre: PreTokenizer,
    added: AddedTokens,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Sorted.
    eog: Vec<u32>,
}

impl Tokenizer {
    /// Builds a tokenizer, checking the vocabulary: the model is "gpt2", the pre-tokenizer is
    /// known, there is one type per token, every merge names two tokens whose concatenation
    /// is a token, and the special ids are in range. Duplicate token strings are allowed (the
    /// lowest id is the one text maps to); empty ones are kept but can never be produced.
    pub fn new(v: Vocabulary) -> Result<Tokenizer, TokenizerError> {
        if v.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { model: v.model });
        }
        let pre = match PreTokenizer::new(&v.pre) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(TokenizerError::UnknownPreTokenizer { pre: v.pre, known: pretokenize::known_names() })
            }
            Err(message) => return Err(TokenizerError::PreTokenizerRegex { pre: v.pre, message }),
        };
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocabulary);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::TooMany { what: "tokens", count: n });
        }
        if u32::try_from(v.merges.len()).is_err() {
            return Err(TokenizerError::TooMany { what: "merges", count: v.merges.len() });
        }
        let types: Vec<TokenType> = if v.token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else if v.token_types.len() != n {
            return Err(TokenizerError::TokenTypeCount { types: v.token_types.len(), tokens: n });
        } else {
            v.token_types
                .iter()
                .enumerate()
                .map(|(id, &t)| TokenType::from_i32(t).ok_or(TokenizerError::InvalidTokenType { id, value: t }))
                .collect::<Result<_, _>>()?
        };
        for (which, id) in [("bos", v.bos), ("eos", v.eos), ("eot", v.eot)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(TokenizerError::SpecialIdOutOfRange { which, id, vocab_size: n });
                }
            }
        }
        if v.add_bos && v.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { which: "bos" });
        }
        if v.add_eos && v.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { which: "eos" });
        }

        let mut ids: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }

        let mut merges: FxHashMap<(u32, u32), (u32, u32)> = FxHashMap::default();
        merges.reserve(v.merges.len());
        let mut joined = String::new();
        for (index, merge) in v.merges.iter().enumerate() {
            // As llama.cpp: the separator is the first space after the first byte.
            let sep = merge.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
            let Some(sep) = sep.filter(|&s| s + 1 < merge.len()) else {
                return Err(TokenizerError::MalformedMerge { index, merge: merge.clone() });
            };
            let (left, right) = (&merge[..sep], &merge[sep + 1..]);
            let id_of = |part: &str| {
                ids.get(part).copied().ok_or_else(|| TokenizerError::MergeNamesNoToken {
                    index,
                    merge: merge.clone(),
                    part: part.to_owned(),
                })
            };
            let (l, r) = (id_of(left)?, id_of(right)?);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let Some(&new_id) = ids.get(joined.as_str()) else {
                return Err(TokenizerError::MergeResultNotInVocabulary {
                    index,
                    merge: merge.clone(),
                    result: joined.clone(),
                });
            };
            // A repeated merge takes its later rank, as HF's merge map does.
            merges.insert((l, r), (index as u32, new_id));
        }

        let mut byte_ids = [None; 256];
        let mut buf = [0u8; 4];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids.get(&*bytelevel::BYTE_TO_CHAR[b].encode_utf8(&mut buf)).copied();
        }

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for t in &v.tokens {
            bytes.extend_from_slice(&bytelevel::decode_token(t));
            offsets.push(bytes.len());
        }

        let mut added = AddedTokens::default();
        for (i, (t, ty)) in v.tokens.iter().zip(&types).enumerate() {
            if matches!(ty, TokenType::Control | TokenType::UserDefined) {
                added.insert(t, i as u32);
            }
        }

        let find = |texts: &[&str]| -> Option<u32> {
            // llama.cpp walks a map sorted by text and keeps the first hit.
            let mut hits: Vec<(&str, u32)> = texts.iter().filter_map(|t| ids.get(*t).map(|&id| (*t, id))).collect();
            hits.sort();
            hits.first().map(|&(_, id)| id)
        };
        let eot = v.eot.or_else(|| find(EOT_TEXTS));
        let mut eog: Vec<u32> = EOG_TEXTS.iter().filter_map(|t| ids.get(*t).copied()).collect();
        eog.extend([find(FIM_PAD_TEXTS), find(FIM_REP_TEXTS), find(FIM_SEP_TEXTS), find(EOM_TEXTS), v.eos, eot].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // llama.cpp: with gpt-oss's "<|return|>" and "<|call|>", "<|end|>" does not end generation.
        if ["<|return|>", "<|call|>"].iter().all(|t| ids.get(*t).is_some_and(|id| eog.contains(id))) {
            if let Some(end) = ids.get("<|end|>") {
                eog.retain(|id| id != end);
            }
        }

        Ok(Tokenizer {
            tokens: v.tokens,
            types,
            bytes,
            offsets,
            ids,
            bpe: Bpe::new(merges, byte_ids),
            pre,
            added,
            bos: v.bos,
            eos: v.eos,
            eot,
            add_bos: v.add_bos,
            add_eos: v.add_eos,
            eog,
        })
    }

    /// The `tokenizer.ggml.pre` names [`Tokenizer::new`] accepts.
    pub fn known_pre_tokenizers() -> Vec<&'static str> {
        pretokenize::known_names()
    }

    /// Token ids for `text`. Added tokens written in the text (`<|im_start|>`, `<think>`)
    /// become their ids; with `add_special`, BOS/EOS are added as the vocabulary asks
    /// (`add_bos`, `add_eos`).
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        self.added.segments(text, |segment| match segment {
            Segment::Token(id) => out.push(id),
            Segment::Text(t) => self.encode_plain(t, &mut out),
        });
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Encodes text that holds no added token.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.pre.normalize(text);
        let mut pieces = Vec::new();
        self.pre.split(&normalized, &mut pieces);
        let mut spelled = String::new();
        for piece in pieces {
            if self.pre.ignore_merges() {
                spelled.clear();
                bytelevel::encode_bytes(piece.as_bytes(), &mut spelled);
                if let Some(&id) = self.ids.get(spelled.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            self.bpe.encode(piece.as_bytes(), out);
        }
    }

    /// The bytes token `id` stands for: its byte-level text decoded, or, for a token that is
    /// not byte-level text (like `<｜User｜>`), its text as is. Control tokens written in
    /// ASCII (`<|im_end|>`) are their text either way.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        Some(&self.bytes[start..end])
    }

    /// The token's text as the vocabulary spells it ("Ġthe").
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the token spelled `text` (byte-level spelling), the lowest if repeated.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The bytes of `ids`, concatenated; ids out of range are skipped.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// The text of `ids`; invalid UTF-8 (only possible across the whole sequence, e.g. a
    /// character cut at the end) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token: the metadata's, else the one llama.cpp finds by text
    /// (`<|im_end|>`, `<|endoftext|>`, `<｜end▁of▁sentence｜>`, ...).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The `tokenizer.ggml.pre` this tokenizer was built with.
    pub fn pre_tokenizer(&self) -> &str {
        self.pre.name()
    }

    /// Whether generating `id` ends generation, as llama.cpp decides: EOS, EOT, and the
    /// tokens it ends on by text (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ..., and the
    /// FIM pad/repo/file-separator tokens).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }
}

#[cfg(test)]
mod tests;
