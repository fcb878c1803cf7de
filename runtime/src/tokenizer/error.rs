//! What can be wrong with a vocabulary.

use std::fmt;

/// Why a [`Vocabulary`](super::Vocabulary) cannot become a [`Tokenizer`](super::Tokenizer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is not "gpt2" (byte-level BPE).
    UnsupportedModel { model: String },
    /// `tokenizer.ggml.pre` names no pre-tokenizer this tokenizer knows.
    UnknownPreTokenizer { pre: String, known: Vec<&'static str> },
    /// A built-in pre-tokenizer regex did not compile (a bug in this crate).
    PreTokenizerRegex { pre: String, message: String },
    /// The token list is empty.
    EmptyVocabulary,
    /// More tokens (or merges) than 32-bit ids can number.
    TooMany { what: &'static str, count: usize },
    /// `tokenizer.ggml.token_type` does not have one entry per token.
    TokenTypeCount { types: usize, tokens: usize },
    /// A token type that is none of 0..=6.
    InvalidTokenType { id: usize, value: i32 },
    /// A merge that is not two tokens separated by one space.
    MalformedMerge { index: usize, merge: String },
    /// A merge naming a string that is no token.
    MergeNamesNoToken { index: usize, merge: String, part: String },
    /// A merge whose result is no token.
    MergeResultNotInVocabulary { index: usize, merge: String, result: String },
    /// A special token id (bos, eos, eot) past the end of the vocabulary.
    SpecialIdOutOfRange { which: &'static str, id: u32, vocab_size: usize },
    /// `add_bos`/`add_eos` is set but the vocabulary names no such token.
    MissingSpecialToken { which: &'static str },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TokenizerError::*;
        match self {
            UnsupportedModel { model } => {
                write!(f, "tokenizer model '{model}' is not supported (only 'gpt2', byte-level BPE)")
            }
            UnknownPreTokenizer { pre, known } => {
                write!(f, "unknown pre-tokenizer '{pre}' (tokenizer.ggml.pre); known: {}", known.join(", "))
            }
            PreTokenizerRegex { pre, message } => write!(f, "pre-tokenizer '{pre}': regex does not compile: {message}"),
            EmptyVocabulary => write!(f, "the vocabulary has no tokens"),
            TooMany { what, count } => write!(f, "{count} {what} is more than 32-bit ids can number"),
            TokenTypeCount { types, tokens } => {
                write!(f, "{types} token types for {tokens} tokens (tokenizer.ggml.token_type must have one per token)")
            }
            InvalidTokenType { id, value } => write!(f, "token {id} has type {value}, which is none of 0..=6"),
            MalformedMerge { index, merge } => {
                write!(f, "merge {index} '{merge}' is not two tokens separated by one space")
            }
            MergeNamesNoToken { index, merge, part } => write!(f, "merge {index} '{merge}' names no token '{part}'"),
            MergeResultNotInVocabulary { index, merge, result } => {
                write!(f, "merge {index} '{merge}' makes '{result}', which is no token")
            }
            SpecialIdOutOfRange { which, id, vocab_size } => {
                write!(f, "{which} token id {id} is out of range (the vocabulary has {vocab_size} tokens)")
            }
            MissingSpecialToken { which } => {
                write!(f, "the vocabulary asks to add a {which} token but names none")
            }
        }
    }
}

impl std::error::Error for TokenizerError {}
