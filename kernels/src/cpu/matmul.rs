//! out = x · Wᵀ for a quantized weight W (rows of any dtype) and f32 activations x.
//!
//! Exact: every product is dequantized weight × f32 activation, summed in f32 — no
//! activation quantization. One token (decode) dots each weight row in place; several
//! tokens (prefill) dequantize a tile of weight rows once and reuse it for every token.

use std::cell::RefCell;

use rayon::prelude::*;

use super::vec::dot;
use crate::dtype::DType;

/// Weight rows dequantized at once in the prefill path: 16 rows of a 4k-wide layer are
/// 256 KiB, which stays in L2 while every token row streams past.
const TILE_ROWS: usize = 16;

thread_local! {
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x` is `n_tokens × k` (row-major), `w` holds `n_out` rows of `k` values of `dtype`,
/// `out` is `n_tokens × n_out`. Runs on the current rayon pool.
pub fn matmul(x: &[f32], n_tokens: usize, k: usize, w: &[u8], dtype: DType, n_out: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    let row_bytes = dtype.row_bytes(k).expect("row length fits the dtype's blocks");
    assert_eq!(x.len(), n_tokens * k);
    assert_eq!(w.len(), row_bytes * n_out);
    assert_eq!(out.len(), n_tokens * n_out);
    let traits = dtype.traits();
    let out_ptr = SharedOut(out.as_mut_ptr());

    // Each task owns a disjoint range of output columns [j0, j1) in every token row.
    let n_tasks = (n_out / TILE_ROWS).clamp(1, 4 * rayon::current_num_threads());
    let cols_per_task = n_out.div_ceil(n_tasks).next_multiple_of(TILE_ROWS).min(n_out.max(1));
    let n_tasks = n_out.div_ceil(cols_per_task.max(1));
    (0..n_tasks).into_par_iter().for_each(|task| {
        let (j0, j1) = (task * cols_per_task, ((task + 1) * cols_per_task).min(n_out));
        let store = |t: usize, j: usize, v: f32| {
            // SAFETY: (t, j) with j in this task's [j0, j1) is written by no other task,
            // and t < n_tokens, j < n_out keep it inside `out`.
            unsafe { *out_ptr.at(t * n_out + j) = v + bias.map_or(0.0, |b| b[j]) }
        };
        if n_tokens == 1 {
            for j in j0..j1 {
                store(0, j, (traits.dot_f32)(&w[j * row_bytes..(j + 1) * row_bytes], x));
            }
            return;
        }
        TILE.with(|tile| {
            let mut tile = tile.borrow_mut();
            tile.resize(TILE_ROWS * k, 0.0);
            for t0 in (j0..j1).step_by(TILE_ROWS) {
                let t1 = (t0 + TILE_ROWS).min(j1);
                for j in t0..t1 {
                    let dst = &mut tile[(j - t0) * k..(j - t0 + 1) * k];
                    (traits.to_f32)(&w[j * row_bytes..(j + 1) * row_bytes], dst);
                }
                for (t, xt) in x.chunks_exact(k).enumerate() {
                    for j in t0..t1 {
                        store(t, j, dot(&tile[(j - t0) * k..(j - t0 + 1) * k], xt));
                    }
                }
            }
        });
    });
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `store`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY of the caller: i is in bounds.
        unsafe { self.0.add(i) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain f64 triple loop over the dequantized weight, for every type whose
    /// quantizer exists and for both the one-token and many-token paths.
    #[test]
    fn matches_dequantized_reference() {
        let (k, n_out) = (256, 37);
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let w_f32: Vec<f32> = (0..k * n_out).map(|_| next()).collect();
        let bias: Vec<f32> = (0..n_out).map(|_| next()).collect();
        for &dtype in DType::ALL {
            let Some(quantize) = dtype.traits().from_f32 else { continue };
            let row_bytes = dtype.row_bytes(k).unwrap();
            let mut w = vec![0u8; row_bytes * n_out];
            for (src, dst) in w_f32.chunks_exact(k).zip(w.chunks_exact_mut(row_bytes)) {
                quantize(src, dst);
            }
            let mut deq = vec![0f32; k * n_out];
            for (src, dst) in w.chunks_exact(row_bytes).zip(deq.chunks_exact_mut(k)) {
                (dtype.traits().to_f32)(src, dst);
            }
            for n_tokens in [1, 3] {
                let x: Vec<f32> = (0..n_tokens * k).map(|_| next()).collect();
                let mut out = vec![0f32; n_tokens * n_out];
                matmul(&x, n_tokens, k, &w, dtype, n_out, Some(&bias), &mut out);
                for t in 0..n_tokens {
                    for j in 0..n_out {
                        let exact: f64 = (0..k).map(|i| deq[j * k + i] as f64 * x[t * k + i] as f64).sum::<f64>() + bias[j] as f64;
                        let got = out[t * n_out + j] as f64;
                        assert!((got - exact).abs() < 1e-4, "{} n_tokens={n_tokens} t={t} j={j}: {got} vs {exact}", dtype.name());
                    }
                }
            }
        }
    }
}
