//! Arbitrary text through a real vocabulary: `Tokenizer::encode` on untrusted text (prompts,
//! rendered chat templates) with each pre-tokenizer, much faster than `tokenizer_vocab`, which
//! pays for building a tokenizer (regex compilation included) on every input.
//!
//! The vocabulary is SmolLM2's (49 152 tokens, 17 control), read from
//! `$RETORT_FUZZ_VOCAB` or `models-cache/SmolLM2-135M-Instruct.Q4_1.gguf`
//! (scripts/fetch-models.sh); without it, the tiny vocabulary of seeds/gguf/tiny_llama.gguf.
//! The first input byte picks the pre-tokenizer (the vocabulary's `pre` is replaced; each
//! tokenizer is built once); the rest, as lossy UTF-8, is the text.
//!
//! Checks: every id is below `vocab_size`; `StreamDecoder` fed token by token yields exactly
//! `decode`; and, when every byte has a token, the round trip `decode(encode(text)) == text`
//! for text already in NFC (which no pre-tokenizer changes).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use retort_models::gguf::GgufFile;
use retort_runtime::model::vocabulary_from_gguf;
use retort_runtime::tokenizer::{StreamDecoder, Tokenizer, Vocabulary};

struct Fixture {
    /// One tokenizer per known pre-tokenizer name.
    tokenizers: Vec<Tokenizer>,
    /// Every one of the 256 byte-level symbols is a token.
    all_bytes: bool,
}

fn vocabulary() -> Vocabulary {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var_os("RETORT_FUZZ_VOCAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models-cache/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let path = if path.exists() {
        path
    } else {
        eprintln!("tokenizer_encode: {} not found; using the tiny seed vocabulary", path.display());
        root.join("fuzz/seeds/gguf/tiny_llama.gguf")
    };
    let file = GgufFile::open_header(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("tokenizer_encode: vocabulary of {}", path.display());
    vocabulary_from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let vocab = vocabulary();
        let tokenizers: Vec<Tokenizer> = Tokenizer::known_pre_tokenizers()
            .into_iter()
            .map(|pre| Tokenizer::new(Vocabulary { pre: pre.to_owned(), ..vocab.clone() }).expect(pre))
            .collect();
        let mut shifted = 0u32;
        let all_bytes = (0u32..256).all(|b| {
            let cp = if matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            tokenizers[0].token_id(&char::from_u32(cp).unwrap().to_string()).is_some()
        });
        Fixture { tokenizers, all_bytes }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else { return };
    let f = fixture();
    let tok = &f.tokenizers[which as usize % f.tokenizers.len()];
    let text = String::from_utf8_lossy(text);

    let ids = tok.encode(&text, false);
    let n = tok.vocab_size();
    assert!(ids.iter().all(|&id| (id as usize) < n), "id out of range (vocab {n}): {ids:?}");

    let decoded = tok.decode(&ids);
    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(tok.token_bytes(id).expect("id in range")));
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, decoded, "StreamDecoder disagrees with decode for {ids:?}");

    // Some pre-tokenizers normalize (NFC): only NFC text must come back unchanged.
    if f.all_bytes && unicode_normalization::is_nfc(&text) {
        assert_eq!(decoded, text, "round trip with pre '{}': {ids:?}", tok.pre_tokenizer());
    }
});
