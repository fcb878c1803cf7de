//! Criterion benches of the CPU kernels: matmul of every dtype against f32 activations,
//! one token (decode) and 64 tokens (prefill), at a SmolLM2 feed-forward shape.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use retort::kernels::{cpu, DType};

fn matmul(c: &mut Criterion) {
    let (k, n_out) = (576, 1536);
    let weights_f32: Vec<f32> = (0..k * n_out).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut group = c.benchmark_group("matmul_576x1536");
    for &dtype in DType::ALL {
        let Some(quantize) = dtype.traits().from_f32 else { continue };
        let row_bytes = dtype.row_bytes(k).unwrap();
        let mut w = vec![0u8; row_bytes * n_out];
        for (src, dst) in weights_f32.chunks_exact(k).zip(w.chunks_exact_mut(row_bytes)) {
            quantize(src, dst);
        }
        for n_tokens in [1usize, 64] {
            let x = vec![0.5f32; n_tokens * k];
            let mut out = vec![0f32; n_tokens * n_out];
            group.throughput(Throughput::Bytes(w.len() as u64));
            group.bench_with_input(BenchmarkId::new(dtype.name(), n_tokens), &n_tokens, |b, &n| {
                pool.install(|| b.iter(|| cpu::matmul(&x, n, k, &w, dtype, n_out, None, &mut out)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
