//! Hostile vocabularies through `Tokenizer::new`, then arbitrary text through `encode`,
//! `decode` and `StreamDecoder`. A GGUF's `tokenizer.ggml.*` metadata is untrusted: the
//! constructor must reject a bad vocabulary with an error, never panic, and whatever it accepts
//! must encode any text without panicking.
//!
//! The input drives a `Vocabulary` builder: the model and pre-tokenizer names (mostly valid
//! ones), optionally the whole 256-symbol byte-level alphabet, tokens that are arbitrary
//! strings, concatenations of earlier tokens (so merges can name them), well-known special
//! texts or empty, token types (none, arbitrary i32s, mostly normal, or the wrong count),
//! merges (mostly well-formed pairs of existing tokens, some arbitrary strings), special ids in
//! and out of range and the add_bos/add_eos flags. The rest of the input is the text.
//!
//! Checks on an accepted vocabulary:
//! - every id `encode` returns is below `vocab_size`;
//! - `StreamDecoder` fed token by token yields exactly `decode` (its documented contract);
//! - round trip: with the full byte alphabet, no control/user-defined tokens, and a text the
//!   pre-tokenizer does not normalize (already NFC), `decode(encode(text)) == text`.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use retort_runtime::tokenizer::{StreamDecoder, Tokenizer, Vocabulary};

const SPECIAL_TEXTS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<think>",
    "</think>",
    "<｜User｜>",
    "<｜end▁of▁sentence｜>",
    "<|fim_pad|>",
    "<|file_sep|>",
    "Ġ",
    "ĊĊ",
];
const MAX_TOKENS: usize = 96;
const MAX_MERGES: usize = 96;
const MAX_TOKEN_CHARS: usize = 12;

/// The GPT-2 byte-level alphabet: printable Latin-1 stands for itself, the other 68 bytes
/// take U+0100.. in order.
fn byte_level_alphabet() -> Vec<String> {
    let mut shifted = 0u32;
    (0u32..256)
        .map(|b| {
            let is_self = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if is_self {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(cp).unwrap().to_string()
        })
        .collect()
}

fn short_string(u: &mut Unstructured) -> Result<String> {
    let n = u.int_in_range(0..=MAX_TOKEN_CHARS)?;
    let mut s = String::new();
    for _ in 0..n {
        // Bias towards the byte-level alphabet and ASCII, but allow any char.
        let c = match u.int_in_range(0..=3)? {
            0 => char::from(u.int_in_range(0x20u8..=0x7E)?),
            1 => char::from_u32(u.int_in_range(0x100u32..=0x143)?).unwrap(),
            2 => char::from(u.int_in_range(0xA1u8..=0xFF)?),
            _ => u.arbitrary::<char>()?,
        };
        s.push(c);
    }
    Ok(s)
}

struct Case {
    vocab: Vocabulary,
    text: String,
    /// The round-trip property is expected to hold.
    round_trip: bool,
}

fn build(u: &mut Unstructured) -> Result<Case> {
    let model = if u.ratio(1, 32)? { short_string(u)? } else { "gpt2".to_owned() };
    let known = Tokenizer::known_pre_tokenizers();
    let pre = if u.ratio(1, 32)? { short_string(u)? } else { (*u.choose(&known)?).to_owned() };

    let full_alphabet = u.ratio(3, 4)?;
    let mut tokens: Vec<String> = if full_alphabet { byte_level_alphabet() } else { Vec::new() };
    // (left, right) token indices whose concatenation was added as a token.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let n_extra = u.int_in_range(0..=MAX_TOKENS)?;
    for _ in 0..n_extra {
        let t = match u.int_in_range(0..=7)? {
            0..=3 if !tokens.is_empty() => {
                let l = u.choose_index(tokens.len())?;
                let r = u.choose_index(tokens.len())?;
                pairs.push((l, r));
                format!("{}{}", tokens[l], tokens[r])
            }
            4 => (*u.choose(SPECIAL_TEXTS)?).to_owned(),
            5 if u.ratio(1, 4)? => String::new(),
            _ => short_string(u)?,
        };
        tokens.push(t);
    }
    let n = tokens.len();

    let mut all_normal = true;
    let token_types: Vec<i32> = match u.int_in_range(0..=7)? {
        0..=2 => Vec::new(),
        3 => {
            all_normal = false;
            let len = u.int_in_range(0..=n + 2)?;
            (0..len).map(|_| u.arbitrary()).collect::<Result<_>>()?
        }
        _ => (0..n)
            .map(|_| {
                let t = if u.ratio(7, 8)? { 1 } else { u.int_in_range(-1..=7)? };
                all_normal &= t == 1;
                Ok(t)
            })
            .collect::<Result<_>>()?,
    };

    let n_merges = u.int_in_range(0..=MAX_MERGES)?;
    let mut merges = Vec::with_capacity(n_merges);
    for _ in 0..n_merges {
        let m = if !pairs.is_empty() && u.ratio(7, 8)? {
            let &(l, r) = u.choose(&pairs)?;
            format!("{} {}", tokens[l], tokens[r])
        } else if n > 0 && u.ratio(1, 2)? {
            // Two existing tokens whose concatenation may or may not be a token.
            let l = u.choose_index(n)?;
            let r = u.choose_index(n)?;
            format!("{} {}", tokens[l], tokens[r])
        } else {
            short_string(u)?
        };
        merges.push(m);
    }

    let special = |u: &mut Unstructured| -> Result<Option<u32>> {
        Ok(match u.int_in_range(0..=5)? {
            0 => None,
            1 => Some(u.arbitrary()?),
            _ if n > 0 => Some(u.choose_index(n)? as u32),
            _ => None,
        })
    };
    let bos = special(u)?;
    let eos = special(u)?;
    let eot = special(u)?;
    let add_bos = u.arbitrary()?;
    let add_eos = u.arbitrary()?;

    let rest = u.bytes(u.len())?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let round_trip = full_alphabet && all_normal && unicode_normalization::is_nfc(&text);
    Ok(Case {
        vocab: Vocabulary { model, pre, tokens, token_types, merges, bos, eos, eot, add_bos, add_eos },
        text,
        round_trip,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(case) = build(&mut u) else { return };
    let Ok(tok) = Tokenizer::new(case.vocab) else { return };

    for add_special in [false, true] {
        let ids = tok.encode(&case.text, add_special);
        let n = tok.vocab_size();
        assert!(ids.iter().all(|&id| (id as usize) < n), "id out of range in {ids:?} (vocab {n})");

        let decoded = tok.decode(&ids);
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(tok.token_bytes(id).expect("id in range")));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, decoded, "StreamDecoder disagrees with decode for {ids:?}");

        if case.round_trip && !add_special {
            assert_eq!(decoded, case.text, "round trip failed: ids {ids:?}");
        }
    }
});
