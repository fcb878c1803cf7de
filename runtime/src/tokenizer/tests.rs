//! Unit tests on small made-up vocabularies: encoding rules, and hostile vocabularies that
//! must fail with an error naming what is wrong (never a panic).

use super::*;

/// A vocabulary with every byte (ids 0..256 = the bytes), a few merges, two control tokens and
/// one user-defined token.
fn tiny(pre: &str) -> Vocabulary {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bytelevel::BYTE_TO_CHAR[b as usize].to_string()).collect();
    let mut token_types = vec![1; 256];
    for (t, ty) in [
        ("Ġt", 1),    // 256
        ("he", 1),    // 257
        ("Ġthe", 1),  // 258
        ("<|im_start|>", 3), // 259
        ("<|im_end|>", 3),   // 260
        ("<think>", 4),      // 261
        ("12", 1),           // 262
        ("<|endoftext|>", 3), // 263
    ] {
        tokens.push(t.into());
        token_types.push(ty);
    }
    Vocabulary {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens,
        token_types,
        merges: vec!["Ġ t".into(), "h e".into(), "Ġt he".into(), "1 2".into()],
        bos: Some(259),
        eos: Some(260),
        eot: None,
        add_bos: false,
        add_eos: false,
    }
}

fn err(v: Vocabulary) -> TokenizerError {
    Tokenizer::new(v).expect_err("the vocabulary should be rejected")
}

#[test]
fn encodes_merges_and_added_tokens() {
    let t = Tokenizer::new(tiny("gpt-2")).unwrap();
    assert_eq!(t.encode(" the", false), [258]);
    assert_eq!(t.encode("<|im_start|>the<think>", false), [259, b't' as u32, 257, 261]);
    // A look-alike is plain text.
    assert_eq!(t.encode("<|im_start", false).len(), "<|im_start".len());
    // Digits stay together for gpt-2, are split for smollm.
    assert_eq!(t.encode("12", false), [262]);
    let s = Tokenizer::new(tiny("smollm")).unwrap();
    assert_eq!(s.encode("12", false), [b'1' as u32, b'2' as u32]);
}

#[test]
fn add_special_follows_the_vocabulary() {
    let mut v = tiny("gpt-2");
    v.add_bos = true;
    v.add_eos = true;
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.encode(" the", true), [259, 258, 260]);
    assert_eq!(t.encode(" the", false), [258]);
    assert_eq!(t.encode("", true), [259, 260]);
    let t = Tokenizer::new(tiny("gpt-2")).unwrap();
    assert_eq!(t.encode(" the", true), [258]);
}

#[test]
fn round_trips_any_text() {
    for pre in Tokenizer::known_pre_tokenizers() {
        let t = Tokenizer::new(tiny(pre)).unwrap();
        for text in ["", " ", "\n\n\n", "héllo wörld 123 你好 🙂\u{200d}👍🏽 \u{0}\u{fffd}", "a\r\n\tb  <think>  x"] {
            let ids = t.encode(text, false);
            let want = if pre == "qwen2" || pre == "deepseek-r1-qwen" {
                unicode_normalization::UnicodeNormalization::nfc(text).collect::<String>()
            } else {
                text.to_owned()
            };
            assert_eq!(t.decode(&ids), want, "{pre}: {text:?}");
        }
    }
}

#[test]
fn token_bytes_and_decode() {
    let t = Tokenizer::new(tiny("gpt-2")).unwrap();
    assert_eq!(t.token_bytes(258), Some(&b" the"[..]));
    assert_eq!(t.token_bytes(259), Some(&b"<|im_start|>"[..]));
    assert_eq!(t.token_bytes(10_000), None);
    assert_eq!(t.token_text(258), Some("Ġthe"));
    assert_eq!(t.token_id("Ġthe"), Some(258));
    assert_eq!(t.token_type(261), Some(TokenType::UserDefined));
    // Out-of-range ids are skipped; a cut character becomes U+FFFD only at the end.
    assert_eq!(t.decode(&[258, 99_999]), " the");
    assert_eq!(t.decode(&[0xE4, 0xBD, 0xA0]), "你");
    assert_eq!(t.decode(&[0xE4, 0xBD]), "\u{fffd}");
    assert_eq!(t.vocab_size(), 264);
}

#[test]
fn end_of_generation_like_llama_cpp() {
    let t = Tokenizer::new(tiny("gpt-2")).unwrap();
    assert!(t.is_end_of_generation(260)); // eos, also <|im_end|>
    assert!(t.is_end_of_generation(263)); // <|endoftext|>
    assert!(!t.is_end_of_generation(259));
    assert!(!t.is_end_of_generation(258));
    // No eot in the metadata: the first EOT-looking text, in byte order.
    assert_eq!(t.eot(), Some(263));
    let mut v = tiny("gpt-2");
    v.eot = Some(258);
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.eot(), Some(258));
    assert!(t.is_end_of_generation(258));
}

#[test]
fn tokenizer_is_shareable() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
}

#[test]
fn rejects_other_models() {
    let mut v = tiny("gpt-2");
    v.model = "llama".into();
    let e = err(v);
    assert!(matches!(e, TokenizerError::UnsupportedModel { .. }));
    assert!(e.to_string().contains("'llama'"), "{e}");
}

#[test]
fn rejects_unknown_pre_tokenizer_listing_known_ones() {
    let e = err(tiny("default"));
    let msg = e.to_string();
    assert!(msg.contains("'default'") && msg.contains("smollm") && msg.contains("deepseek-r1-qwen"), "{msg}");
}

#[test]
fn rejects_empty_vocabulary() {
    let v = Vocabulary { model: "gpt2".into(), pre: "gpt-2".into(), ..Default::default() };
    assert_eq!(err(v), TokenizerError::EmptyVocabulary);
}

#[test]
fn rejects_bad_token_types() {
    let mut v = tiny("gpt-2");
    v.token_types.pop();
    assert_eq!(err(v), TokenizerError::TokenTypeCount { types: 263, tokens: 264 });
    let mut v = tiny("gpt-2");
    v.token_types[7] = 9;
    let e = err(v);
    assert_eq!(e, TokenizerError::InvalidTokenType { id: 7, value: 9 });
    assert!(e.to_string().contains("token 7"), "{e}");
    // No types at all: every token normal.
    let mut v = tiny("gpt-2");
    v.token_types.clear();
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.token_type(259), Some(TokenType::Normal));
    assert_eq!(t.encode("<|im_end|>", false).len(), "<|im_end|>".len());
}

#[test]
fn rejects_bad_merges() {
    for bad in ["", "Ġt", "Ġ", " Ġ", "Ġt "] {
        let mut v = tiny("gpt-2");
        v.merges.insert(2, bad.into());
        let e = err(v);
        assert_eq!(e, TokenizerError::MalformedMerge { index: 2, merge: bad.into() }, "{bad:?}");
        assert!(e.to_string().contains("merge 2"), "{e}");
    }
    let mut v = tiny("gpt-2");
    v.merges.push("abc d".into());
    let e = err(v);
    assert_eq!(e.to_string(), "merge 4 'abc d' names no token 'abc'");
    let mut v = tiny("gpt-2");
    v.merges.push("x y".into());
    let e = err(v);
    assert!(matches!(e, TokenizerError::MergeResultNotInVocabulary { index: 4, .. }), "{e}");
    assert!(e.to_string().contains("'xy'"), "{e}");
    // A space in the second part cannot name a token.
    let mut v = tiny("gpt-2");
    v.merges.push("a b c".into());
    assert!(matches!(err(v), TokenizerError::MergeNamesNoToken { .. }));
}

#[test]
fn rejects_special_ids_out_of_range() {
    for which in ["bos", "eos", "eot"] {
        let mut v = tiny("gpt-2");
        match which {
            "bos" => v.bos = Some(264),
            "eos" => v.eos = Some(u32::MAX),
            _ => v.eot = Some(1_000_000),
        }
        let e = err(v);
        assert!(matches!(e, TokenizerError::SpecialIdOutOfRange { which: w, .. } if w == which), "{e}");
        assert!(e.to_string().starts_with(which), "{e}");
    }
    let mut v = tiny("gpt-2");
    v.bos = None;
    v.add_bos = true;
    assert_eq!(err(v), TokenizerError::MissingSpecialToken { which: "bos" });
}

#[test]
fn tolerates_duplicate_and_empty_tokens() {
    let mut v = tiny("gpt-2");
    v.tokens.push("Ġthe".into()); // 264, a duplicate of 258
    v.tokens.push(String::new()); // 265, empty
    v.tokens.push("<|im_start|>".into()); // 266, a duplicate control token
    v.token_types.extend([1, 3, 3]);
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.encode(" the", false), [258]);
    assert_eq!(t.encode("<|im_start|>", false), [259]);
    assert_eq!(t.token_id("Ġthe"), Some(258));
    assert_eq!(t.token_bytes(265), Some(&b""[..]));
    assert_eq!(t.decode(&[264, 265]), " the");
}

#[test]
fn vocabulary_without_byte_tokens_drops_unknown_bytes() {
    // Only "a" and "b" exist: other bytes vanish (HF's BPE without an unknown token).
    let v = Vocabulary {
        model: "gpt2".into(),
        pre: "gpt-2".into(),
        tokens: vec!["a".into(), "b".into(), "ab".into()],
        merges: vec!["a b".into()],
        ..Default::default()
    };
    let t = Tokenizer::new(v).unwrap();
    assert_eq!(t.encode("ab", false), [2]);
    assert_eq!(t.encode("aéb", false), [2]); // one piece; é's two bytes vanish, then "a b" merges
    assert_eq!(t.encode("a€b", false), [0, 1]); // three pieces
    assert_eq!(t.encode("€", false), Vec::<u32>::new());
}

#[test]
fn encodes_long_english_fast() {
    let t = Tokenizer::new(tiny("smollm")).unwrap();
    let text = "The quick brown fox jumps over the lazy dog, doesn't it? 1234 times.\n".repeat(800);
    let start = std::time::Instant::now();
    let ids = t.encode(&text, false);
    let took = start.elapsed();
    assert_eq!(t.decode(&ids), text);
    assert!(took.as_secs_f64() < 2.0, "{} bytes took {took:?}", text.len());
}
