//! Pre-tokenizers: how text is cut into pieces before BPE, chosen by `tokenizer.ggml.pre`.
//!
//! Each one reproduces the `normalizer` + `pre_tokenizer` of the model's upstream
//! `tokenizer.json` as Hugging Face `tokenizers` runs it:
//! - `Split(regex, behavior=Isolated)`: every match is a piece, and so is every non-empty gap
//!   between matches;
//! - `Digits(individual_digits=true)`: every numeric character (Rust's `char::is_numeric`,
//!   which is what HF uses) is a piece of its own;
//! - `ByteLevel(use_regex=true)`: a Split with the GPT-2 regex; with `use_regex=false` it only
//!   maps bytes to the byte-level alphabet, which [`super::bpe`] does implicitly;
//! - a `Sequence` applies each stage to every piece the previous stage produced, so a regex
//!   never sees across a piece boundary (`\s+(?!\S)` treats a piece end as the text end).
//!
//! The regexes are the upstream ones, verbatim. Their `\s+(?!\S)|\s+` tail needs look-ahead;
//! instead of a backtracking engine we match `\s+` and give back the run's last whitespace
//! character when the run is at least two characters long and a non-space follows it, which is
//! exactly what the look-ahead alternative does (see [`Split::split`]). Everything else runs in
//! `fancy_regex`'s wrapped `regex` engine, linear time and with leftmost-first alternation like
//! Oniguruma's. (The Unicode classes `\p{L}`, `\p{N}`, `\p{P}`, `\p{S}`, `\p{M}`, `\s` and
//! `char::is_numeric` were checked against HF `tokenizers` 0.23 over every code point: equal.)
//!
//! NFC: HF's normalizer runs on Unicode 9.0 data (its `unicode-normalization-alignments`
//! crate), so a character assigned later is, to it, a starter that never decomposes, reorders or
//! composes. [`PreTokenizer::normalize`] reproduces that by normalizing the stretches between
//! such characters and keeping those characters as they are, which is exact: a later character
//! blocks reordering and composition across it, and normalization is stable for characters
//! already assigned.

use std::borrow::Cow;

use fancy_regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// GPT-2's pattern, the one `ByteLevel(use_regex=true)` uses (HF `tokenizers`,
/// pre_tokenizers/byte_level.rs).
pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Qwen2 / Qwen2.5 / Qwen3 and the DeepSeek-R1 Qwen distills (upstream tokenizer.json:
/// `Split` with this regex, then `ByteLevel(use_regex=false)`, after an NFC normalizer).
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3 (upstream tokenizer.json: `Split` with this regex, then `ByteLevel(use_regex=false)`;
/// no normalizer; the BPE model has `ignore_merges: true`).
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek-V3 / R1 (the 671B models; upstream tokenizer.json: three `Split`s, then
/// `ByteLevel(use_regex=false)`; an empty normalizer Sequence).
pub(crate) const DEEPSEEK_V3_REGEXES: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];

/// Runs of characters that Unicode 9.0 had not assigned (HF's NFC leaves them alone).
const NEWER_THAN_UNICODE_9: &str = r"[^\p{age=9.0}]+";

/// The tail every pattern above but the first two DeepSeek-V3 ones ends with.
const WHITESPACE_TAIL: &str = r"|\s+(?!\S)|\s+";

/// What a `tokenizer.ggml.pre` name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// ByteLevel(use_regex=true) alone.
    Gpt2,
    /// Digits(individual_digits=true), then ByteLevel(use_regex=true).
    DigitsGpt2,
    /// NFC, Split(QWEN2_REGEX), ByteLevel(use_regex=false).
    Qwen2,
    /// Split(LLAMA3_REGEX), ByteLevel(use_regex=false); BPE ignore_merges.
    Llama3,
    /// Split × 3 (DEEPSEEK_V3_REGEXES), ByteLevel(use_regex=false).
    DeepseekV3,
}

/// The `tokenizer.ggml.pre` values this tokenizer knows, and what each one means.
const NAMES: &[(&str, Kind)] = &[
    ("gpt-2", Kind::Gpt2),
    ("smollm", Kind::DigitsGpt2),
    ("qwen2", Kind::Qwen2),
    ("deepseek-r1-qwen", Kind::Qwen2),
    ("llama-bpe", Kind::Llama3),
    ("llama3", Kind::Llama3),
    ("llama-v3", Kind::Llama3),
    ("deepseek-v3", Kind::DeepseekV3),
];

/// The names [`PreTokenizer::new`] accepts.
pub(crate) fn known_names() -> Vec<&'static str> {
    NAMES.iter().map(|(name, _)| *name).collect()
}

/// One stage of a pre-tokenizer sequence.
#[derive(Debug)]
enum Stage {
    Digits,
    Split(Split),
}

/// A `Split(regex, Isolated)`.
#[derive(Debug)]
struct Split {
    /// The pattern without its `\s+(?!\S)|\s+` tail, and with `|(\s+)` in its place when
    /// `whitespace_tail` is set.
    regex: Regex,
    whitespace_tail: bool,
}

impl Split {
    fn new(pattern: &str) -> Result<Split, String> {
        let (source, whitespace_tail) = match pattern.strip_suffix(WHITESPACE_TAIL) {
            Some(body) => (format!(r"{body}|(\s+)"), true),
            None => (pattern.to_owned(), false),
        };
        let regex = Regex::new(&source).map_err(|e| e.to_string())?;
        Ok(Split { regex, whitespace_tail })
    }

    /// Appends the pieces of `text` to `out`: matches and the gaps between them.
    fn split<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        let mut pos = 0; // where the next search starts
        let mut emitted = 0; // end of what is already in `out`
        while pos < text.len() {
            let Some((start, mut end)) = self.find(text, pos) else { break };
            if self.whitespace_tail && end < text.len() && self.is_tail_match(text, start, end) {
                // `\s+(?!\S)` would have stopped one character early (when that leaves at
                // least one), so that the last space goes with what follows.
                let last = text[start..end].chars().next_back().map_or(0, char::len_utf8);
                if end - last > start {
                    end -= last;
                }
            }
            if start > emitted {
                out.push(&text[emitted..start]);
            }
            out.push(&text[start..end]);
            emitted = end;
            pos = end;
        }
        if emitted < text.len() {
            out.push(&text[emitted..]);
        }
    }

    fn find(&self, text: &str, pos: usize) -> Option<(usize, usize)> {
        // The patterns have no look-around, so fancy_regex hands them whole to `regex`, which
        // cannot fail at run time; treat an error like no match rather than panic.
        match self.regex.find_from_pos(text, pos) {
            Ok(Some(m)) if m.end() > m.start() => Some((m.start(), m.end())),
            _ => None,
        }
    }

    /// Whether the match at `start..end` came from the `(\s+)` alternative. Only an
    /// all-whitespace match can have; asking for captures only then keeps the common path fast.
    fn is_tail_match(&self, text: &str, start: usize, end: usize) -> bool {
        if !text[start..end].chars().all(char::is_whitespace) {
            return false;
        }
        match self.regex.captures_from_pos(text, start) {
            Ok(Some(caps)) => caps.get(1).is_some_and(|g| g.start() == start && g.end() == end),
            _ => false,
        }
    }
}

/// A pre-tokenizer: an optional NFC normalizer and a sequence of splitting stages.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    name: String,
    /// For NFC: runs of characters assigned after Unicode 9.0 (None: no normalizer).
    nfc: Option<Regex>,
    ignore_merges: bool,
    stages: Vec<Stage>,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` name; `Ok(None)` for a name it does not
    /// know, `Err` if a regex does not compile (a bug here, not in the vocabulary).
    pub(crate) fn new(name: &str) -> Result<Option<PreTokenizer>, String> {
        let Some(&(_, kind)) = NAMES.iter().find(|(n, _)| *n == name) else { return Ok(None) };
        let split = |p: &str| Split::new(p).map(Stage::Split);
        let (nfc, ignore_merges, stages) = match kind {
            Kind::Gpt2 => (false, false, vec![split(GPT2_REGEX)?]),
            Kind::DigitsGpt2 => (false, false, vec![Stage::Digits, split(GPT2_REGEX)?]),
            Kind::Qwen2 => (true, false, vec![split(QWEN2_REGEX)?]),
            Kind::Llama3 => (false, true, vec![split(LLAMA3_REGEX)?]),
            Kind::DeepseekV3 => (false, false, DEEPSEEK_V3_REGEXES.iter().map(|p| split(p)).collect::<Result<_, _>>()?),
        };
        let nfc = if nfc { Some(Regex::new(NEWER_THAN_UNICODE_9).map_err(|e| e.to_string())?) } else { None };
        Ok(Some(PreTokenizer { name: name.to_owned(), nfc, ignore_merges, stages }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the BPE model looks a whole piece up in the vocabulary before merging
    /// (HF `BPE.ignore_merges`, set by Llama 3).
    pub(crate) fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// The normalized form of `text`: NFC as HF computes it, where the upstream tokenizer
    /// normalizes (see the module docs for the Unicode 9.0 detail).
    pub(crate) fn normalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Some(newer) = &self.nfc else { return Cow::Borrowed(text) };
        // Text in NFC by current data is in NFC by 9.0 data too (the older data decomposes,
        // reorders and composes no more than the current one does).
        if is_nfc_quick(text.chars()) == IsNormalized::Yes {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        while let Ok(Some(m)) = newer.find_from_pos(text, last) {
            out.extend(text[last..m.start()].nfc());
            out.push_str(m.as_str());
            last = m.end();
        }
        out.extend(text[last..].nfc());
        Cow::Owned(out)
    }

    /// Cuts already-normalized `text` into pieces, appended to `out`.
    pub(crate) fn split<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) {
        let mut current: Vec<&'a str> = vec![text];
        let mut next: Vec<&'a str> = Vec::new();
        for stage in &self.stages {
            next.clear();
            for piece in &current {
                match stage {
                    Stage::Digits => split_digits(piece, &mut next),
                    Stage::Split(s) => s.split(piece, &mut next),
                }
            }
            std::mem::swap(&mut current, &mut next);
        }
        out.extend(current.into_iter().filter(|p| !p.is_empty()));
    }
}

/// `Digits(individual_digits=true)`: each numeric character alone, the rest in between kept.
fn split_digits<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            if i > start {
                out.push(&text[start..i]);
            }
            let end = i + c.len_utf8();
            out.push(&text[i..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(pre).unwrap().unwrap();
        let norm = p.normalize(text);
        let mut out = Vec::new();
        p.split(&norm, &mut out);
        out.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn every_name_compiles() {
        for name in known_names() {
            assert!(PreTokenizer::new(name).unwrap().is_some(), "{name}");
        }
        assert!(PreTokenizer::new("no-such").unwrap().is_none());
    }

    #[test]
    fn gpt2_whitespace_lookahead() {
        assert_eq!(pieces("gpt-2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces("gpt-2", "a b  "), ["a", " b", "  "]);
        assert_eq!(pieces("gpt-2", "a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(pieces("gpt-2", "I'm 42"), ["I", "'m", " 42"]);
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(pieces("smollm", "x 1234y"), ["x", " ", "1", "2", "3", "4", "y"]);
    }

    #[test]
    fn qwen2_and_llama3() {
        assert_eq!(pieces("qwen2", "Hello  world\n\n 12345"), ["Hello", " ", " world", "\n\n", " ", "1", "2", "3", "4", "5"]);
        assert_eq!(pieces("llama-bpe", "x 12345"), ["x", " ", "123", "45"]);
        assert_eq!(pieces("qwen2", "IT'S"), ["IT", "'S"]);
        // NFC: e + combining acute becomes é.
        assert_eq!(pieces("qwen2", "e\u{301}"), ["\u{e9}"]);
        // ...but not across a mark newer than Unicode 9.0 (U+1AC1, 14.0), which HF's
        // normalizer does not know: to it that is a starter.
        let q = PreTokenizer::new("qwen2").unwrap().unwrap();
        assert_eq!(q.normalize("e\u{1ac1}\u{301}"), "e\u{1ac1}\u{301}");
        assert_eq!(q.normalize("e\u{301}\u{1ac1}x\u{301}"), "\u{e9}\u{1ac1}x\u{301}");
        assert_eq!(q.normalize("\u{2126}"), "\u{3a9}"); // OHM SIGN → OMEGA
    }

    #[test]
    fn deepseek_v3_three_splits() {
        assert_eq!(pieces("deepseek-v3", "ab 12345你好x"), ["ab", " ", "123", "45", "你好", "x"]);
    }
}
