//! Criterion bench of tokenization on the real SmolLM2 vocabulary: a repeated English
//! paragraph (piece cache warm) and text of never-seen words (cold).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use retort::models::gguf::GgufFile;
use retort::runtime::model::vocabulary_from_gguf;
use retort::runtime::tokenizer::Tokenizer;

fn tokenize(c: &mut Criterion) {
    let Some(path) = retort::models::real_models::real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let file = GgufFile::open_header(&path).unwrap();
    let tok = Tokenizer::new(vocabulary_from_gguf(&file).unwrap()).unwrap();
    let english = "The tokenizer splits text into pieces, merges bytes by rank and caches every piece it has \
        seen; it's meant to be fast. In 2024, 1,234 people wrote 56,789 lines of code!\n"
        .repeat(400);
    let fresh: String = (0..12_000).map(|i| format!("w{:x}q ", i * 7919)).collect();
    let mut group = c.benchmark_group("tokenize_smollm2");
    for (name, text) in [("english", &english), ("unseen_words", &fresh)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| b.iter(|| tok.encode(text, false)));
    }
    group.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
