//! Causal multi-head attention of a batch of queries over a KV cache, with grouped
//! key/value heads (GQA): query head h reads key/value head h / (n_head / n_head_kv).

use std::cell::RefCell;

use super::pool::ThreadPool;
use super::vec::dot;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub v_head_dim: usize,
    pub scale: f32,
}

/// `q`: n_tokens × (n_head·head_dim), token t at position pos0 + t.
/// `k_cache`/`v_cache`: positions 0..=pos0+n_tokens−1 already written, rows of
/// n_head_kv·head_dim (keys) and n_head_kv·v_head_dim (values).
/// `out`: n_tokens × (n_head·v_head_dim). Token t attends to positions 0..=pos0+t.
pub fn attention(pool: &ThreadPool, q: &[f32], k_cache: &[f32], v_cache: &[f32], pos0: usize, s: &AttentionShape, out: &mut [f32]) {
    let (hd, vd) = (s.head_dim, s.v_head_dim);
    let (k_row, v_row) = (s.n_head_kv * hd, s.n_head_kv * vd);
    let group = s.n_head / s.n_head_kv;
    let n_tokens = q.len() / (s.n_head * hd);
    assert_eq!(out.len(), n_tokens * s.n_head * vd);
    assert!(k_cache.len() >= (pos0 + n_tokens) * k_row && v_cache.len() >= (pos0 + n_tokens) * v_row);

    // One task per (token, head): each writes its own v_head_dim slice of `out`.
    let out_ptr = out.as_mut_ptr() as usize;
    pool.for_ranges(n_tokens * s.n_head, 1, |tasks| {
        for i in tasks {
            // SAFETY: task i alone writes out[i·vd .. (i+1)·vd], which lies inside `out`
            // (asserted length n_tokens · n_head · vd).
            let o = unsafe { std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(i * vd), vd) };
            let (t, h) = (i / s.n_head, i % s.n_head);
            let kv_h = h / group;
            let q_h = &q[(t * s.n_head + h) * hd..][..hd];
            let n_ctx = pos0 + t + 1;
            SCORES.with(|scores| {
                let mut scores = scores.borrow_mut();
                scores.clear();
                // Room for the whole cache at once, so a growing context never reallocates.
                scores.reserve(k_cache.len() / k_row);
                scores.extend((0..n_ctx).map(|p| dot(q_h, &k_cache[p * k_row + kv_h * hd..][..hd]) * s.scale));
                softmax(&mut scores);
                o.fill(0.0);
                for (p, &w) in scores.iter().enumerate() {
                    let v = &v_cache[p * v_row + kv_h * vd..][..vd];
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o += w * v;
                    }
                }
            });
        }
    });
}

/// In-place softmax, shifted by the max for stability.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two query heads sharing one KV head; a naive f64 computation is the reference.
    #[test]
    fn matches_naive_causal_attention_with_gqa() {
        let s = AttentionShape { n_head: 2, n_head_kv: 1, head_dim: 3, v_head_dim: 2, scale: 0.5 };
        let (pos0, n_tokens) = (2, 2);
        let n_pos = pos0 + n_tokens;
        let k: Vec<f32> = (0..n_pos * 3).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let v: Vec<f32> = (0..n_pos * 2).map(|i| ((i * 5 % 13) as f32 - 6.0) / 6.0).collect();
        let q: Vec<f32> = (0..n_tokens * 2 * 3).map(|i| ((i * 3 % 7) as f32 - 3.0) / 3.0).collect();
        let mut out = vec![0f32; n_tokens * 2 * 2];
        attention(&ThreadPool::new(2).unwrap(), &q, &k, &v, pos0, &s, &mut out);
        for t in 0..n_tokens {
            for h in 0..2 {
                let qh = &q[(t * 2 + h) * 3..][..3];
                let scores: Vec<f64> = (0..=pos0 + t)
                    .map(|p| (0..3).map(|d| qh[d] as f64 * k[p * 3 + d] as f64).sum::<f64>() * 0.5)
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for d in 0..2 {
                    let expect: f64 = scores.iter().enumerate().map(|(p, s)| (s - max).exp() / z * v[p * 2 + d] as f64).sum();
                    assert!((out[(t * 2 + h) * 2 + d] as f64 - expect).abs() < 1e-6);
                }
            }
        }
    }
}
