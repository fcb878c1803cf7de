//! Criterion benches of the CPU kernels, on one thread, per weight type:
//! - `matvec_q8`: one token with 8-bit activations (decode's path), on a matrix that stays in
//!   L2 (compute-bound) and one of 64 MiB of f32-equivalent that streams from memory;
//! - `matmul_exact`: f32 activations, 1 token and 64 tokens (prefill's GEMM);
//! - `matvec_exact_memory`: one token of f32 activations against float rows streamed from
//!   memory (F16 and BF16 decode);
//! - `matmul_prefill_f16`: a 512-token prompt through SmolLM2's matrix shapes in F16 (the
//!   exact path's GEMM at full size); throughput in multiply-adds (elements/s x 2 = FLOP/s);
//! - `matmul_8bit`: 64 tokens with 8-bit activations (prefill in run and bench), for the
//!   types with integer levels, next to `matmul_exact` on the same shape;
//! - `quantize_activations`: one 4096-wide row to each 8-bit activation type.
//! Throughput is weight bytes per second, comparable with `retort bandwidth`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use retort::kernels::cpu::{self, simd, Layout, Matrix, ThreadPool};
use retort::kernels::DType;

fn weights(dtype: DType, k: usize, rows: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..k * rows).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let row_bytes = dtype.row_bytes(k).unwrap();
    let mut w = vec![0u8; row_bytes * rows];
    for (src, dst) in values.chunks_exact(k).zip(w.chunks_exact_mut(row_bytes)) {
        (dtype.traits().from_f32.unwrap())(src, dst);
    }
    w
}

/// `w` (row-major rows of k) interleaved as the loader repacks it.
fn interleaved(dtype: DType, k: usize, w: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; w.len()];
    cpu::interleave::interleave(dtype, dtype.row_bytes(k).unwrap(), w, &mut out);
    out
}

fn weight_types() -> impl Iterator<Item = DType> {
    DType::ALL.iter().copied().filter(|t| !matches!(t, DType::Q8_1 | DType::Q8_K))
}

fn matvec_q8(c: &mut Criterion) {
    let pool = ThreadPool::new(1).unwrap();
    for (label, k, rows) in [("l2", 1536, 256), ("memory", 1536, 65536)] {
        let mut group = c.benchmark_group(format!("matvec_q8_{label}_{k}x{rows}"));
        for dtype in weight_types() {
            let Some(kernel) = simd::vec_dot(dtype) else { continue };
            let w = weights(dtype, k, rows);
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut xq = vec![0u8; kernel.act_type.row_bytes(k).unwrap()];
            cpu::quantize_activations(&x, kernel.act_type, &mut xq);
            let mut out = vec![0f32; rows];
            let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
            group.throughput(Throughput::Bytes(w.len() as u64));
            group.bench_function(dtype.name(), |b| b.iter(|| cpu::matvec_quantized(&pool, &xq, kernel, matrix, None, &mut out)));
            if kernel.group.is_some() {
                let interleaved = interleaved(dtype, k, &w);
                let matrix = Matrix { bytes: &interleaved, layout: Layout::Interleaved8, ..matrix };
                group.bench_function(format!("{}_interleaved", dtype.name()), |b| b.iter(|| cpu::matvec_quantized(&pool, &xq, kernel, matrix, None, &mut out)));
            }
        }
        group.finish();
    }
}

fn matmul_exact(c: &mut Criterion) {
    let (k, rows) = (1536, 1536);
    let pool = ThreadPool::new(1).unwrap();
    let mut group = c.benchmark_group("matmul_exact_1536x1536");
    for dtype in weight_types() {
        let w = weights(dtype, k, rows);
        let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
        for n_tokens in [1usize, 64] {
            let x = vec![0.5f32; n_tokens * k];
            let mut out = vec![0f32; n_tokens * rows];
            group.throughput(Throughput::Bytes((w.len() * n_tokens) as u64));
            group.bench_with_input(BenchmarkId::new(dtype.name(), n_tokens), &n_tokens, |b, &n| {
                b.iter(|| cpu::matmul(&pool, &x, n, matrix, None, &mut out))
            });
        }
    }
    group.finish();
}

/// One token of f32 activations against a float matrix streamed from memory (F16 decode's
/// path), rows as long as SmolLM2's.
fn matvec_exact_memory(c: &mut Criterion) {
    let (k, rows) = (576, 131072);
    let pool = ThreadPool::new(1).unwrap();
    let mut group = c.benchmark_group(format!("matvec_exact_memory_{k}x{rows}"));
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        let w = weights(dtype, k, rows);
        let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; rows];
        group.throughput(Throughput::Bytes(w.len() as u64));
        group.bench_function(dtype.name(), |b| b.iter(|| cpu::matmul(&pool, &x, 1, matrix, None, &mut out)));
    }
    group.finish();
}

fn matmul_prefill_f16(c: &mut Criterion) {
    let n_tokens = 512;
    let pool = ThreadPool::new(1).unwrap();
    let mut group = c.benchmark_group("matmul_prefill_f16_512");
    group.sample_size(10);
    for (k, rows) in [(576, 576), (576, 1536), (1536, 576)] {
        let w = weights(DType::F16, k, rows);
        let matrix = Matrix { bytes: &w, dtype: DType::F16, k, rows, layout: Layout::Rows };
        let x: Vec<f32> = (0..n_tokens * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; n_tokens * rows];
        group.throughput(Throughput::Elements((n_tokens * k * rows) as u64));
        group.bench_function(format!("{k}x{rows}"), |b| b.iter(|| cpu::matmul(&pool, &x, n_tokens, matrix, None, &mut out)));
    }
    group.finish();
}

fn matmul_8bit(c: &mut Criterion) {
    let (k, rows, n_tokens) = (1536, 1536, 64);
    let pool = ThreadPool::new(1).unwrap();
    let mut group = c.benchmark_group("matmul_8bit_1536x1536");
    for dtype in weight_types().filter(|t| t.traits().levels.is_some()) {
        let w = weights(dtype, k, rows);
        let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
        let x: Vec<f32> = (0..n_tokens * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut out = vec![0f32; n_tokens * rows];
        group.throughput(Throughput::Bytes((w.len() * n_tokens) as u64));
        group.bench_with_input(BenchmarkId::new(dtype.name(), n_tokens), &n_tokens, |b, &n| {
            b.iter(|| assert!(cpu::matmul_8bit(&pool, &x, n, matrix, None, &mut out)))
        });
    }
    group.finish();
}

fn quantize_activations(c: &mut Criterion) {
    let k = 4096;
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut group = c.benchmark_group("quantize_activations_4096");
    for act_type in [DType::Q8_0, DType::Q8_1, DType::Q8_K] {
        let mut out = vec![0u8; act_type.row_bytes(k).unwrap()];
        group.bench_function(act_type.name(), |b| b.iter(|| cpu::quantize_activations(&x, act_type, &mut out)));
    }
    group.finish();
}

criterion_group!(benches, matvec_q8, matmul_exact, matvec_exact_memory, matmul_prefill_f16, matmul_8bit, quantize_activations);
criterion_main!(benches);
