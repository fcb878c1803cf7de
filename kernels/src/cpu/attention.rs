//! Causal multi-head attention of a batch of queries over a KV cache, with grouped
//! key/value heads (GQA): query head h reads key/value head h / (n_head / n_head_kv).

use std::cell::RefCell;

use half::f16;
use wide::f32x8;

use super::gemm::{pack_panel, tile, Tokens, MR, NR};
use super::pool::{SharedMut, ThreadPool};
use super::simd;
use super::vec::{dot, exp_shifted, grow};
use crate::dtype::DType;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The prefill's packed keys and widened values (see [`attention_tiled`]).
    static PREPARED_KV: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}


pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub v_head_dim: usize,
    /// The scores' factor, > 0 (1/√head_dim): the prefill takes the max of the unscaled scores.
    pub scale: f32,
}

/// Keys or values of one layer, head-major: head h's row for position p starts at
/// (h · capacity + p) · dim, so one head's positions are one contiguous stream.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvRows<'_> {
    /// Row `index` (of out.len() values) widened to f32.
    fn row_f32(&self, index: usize, out: &mut [f32]) {
        let dim = out.len();
        match self {
            KvRows::F32(rows) => out.copy_from_slice(&rows[index * dim..][..dim]),
            KvRows::F16(rows) => simd::to_f32(DType::F16)(bytemuck::cast_slice(&rows[index * dim..][..dim]), out),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvRows::F32(r) => r.len(),
            KvRows::F16(r) => r.len(),
        }
    }

    /// scores[p] = scale · q · row(start + p) for p < scores.len().
    fn scores(&self, q: &[f32], start: usize, scale: f32, scores: &mut [f32]) {
        let dim = q.len();
        #[cfg(target_arch = "x86_64")]
        if simd::isa().has_avx2() && dim % 8 == 0 {
            let n = scores.len();
            // SAFETY: AVX2 was detected; the rows read are the slice given (bounds-checked).
            unsafe {
                match self {
                    KvRows::F32(rows) => simd::avx2_scaled_scores_f32(q, &rows[start * dim..(start + n) * dim], scale, scores),
                    KvRows::F16(rows) => simd::avx2_scaled_scores_f16(q, &rows[start * dim..(start + n) * dim], scale, scores),
                }
            }
            return;
        }
        match self {
            KvRows::F32(rows) => {
                for (p, s) in scores.iter_mut().enumerate() {
                    *s = dot(q, &rows[(start + p) * dim..][..dim]) * scale;
                }
            }
            KvRows::F16(rows) => {
                let f16_dot = simd::dot_f32(DType::F16);
                for (p, s) in scores.iter_mut().enumerate() {
                    *s = f16_dot(bytemuck::cast_slice(&rows[(start + p) * dim..][..dim]), q) * scale;
                }
            }
        }
    }

    /// out = Σ_p weights[p] · row(start + p).
    fn weighted_sum(&self, weights: &[f32], start: usize, out: &mut [f32]) {
        let dim = out.len();
        #[cfg(target_arch = "x86_64")]
        if simd::isa().has_avx2() && dim % 8 == 0 {
            let n = weights.len();
            // SAFETY: AVX2 was detected; the rows read lie inside the slices (indexing below
            // checks the last one).
            unsafe {
                match self {
                    KvRows::F32(rows) => simd::avx2_weighted_sum_f32(weights, &rows[start * dim..(start + n) * dim], out),
                    KvRows::F16(rows) => simd::avx2_weighted_sum_f16(weights, &rows[start * dim..(start + n) * dim], out),
                }
            }
            return;
        }
        out.fill(0.0);
        for (p, &w) in weights.iter().enumerate() {
            match self {
                KvRows::F32(rows) => rows[(start + p) * dim..][..dim].iter().zip(out.iter_mut()).for_each(|(&v, o)| *o += w * v),
                KvRows::F16(rows) => rows[(start + p) * dim..][..dim].iter().zip(out.iter_mut()).for_each(|(&v, o)| *o += w * v.to_f32()),
            }
        }
    }
}

/// `q`: n_tokens × (n_head·head_dim), token t at position pos0 + t.
/// `keys`/`values`: head-major caches of `capacity` positions per head (see [`KvRows`]),
/// positions 0..=pos0+n_tokens−1 written.
/// `out`: n_tokens × (n_head·v_head_dim). Token t attends to positions 0..=pos0+t.
#[allow(clippy::too_many_arguments)]
pub fn attention(pool: &ThreadPool, q: &[f32], keys: KvRows, values: KvRows, capacity: usize, pos0: usize, s: &AttentionShape, out: &mut [f32]) {
    let (hd, vd) = (s.head_dim, s.v_head_dim);
    let group = s.n_head / s.n_head_kv;
    let n_tokens = q.len() / (s.n_head * hd);
    assert_eq!(out.len(), n_tokens * s.n_head * vd);
    assert!(pos0 + n_tokens <= capacity, "attention past the cache");
    assert!(s.scale > 0.0, "attention scale {} is not positive", s.scale);
    assert!(keys.len() >= s.n_head_kv * capacity * hd && values.len() >= s.n_head_kv * capacity * vd);

    if n_tokens >= MR && vd % NR == 0 {
        attention_tiled(pool, q, keys, values, capacity, pos0, s, out);
        return;
    }
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
                // Room for the whole cache at once, so a growing context never reallocates.
                scores.reserve(capacity);
                scores.resize(n_ctx, 0.0);
                keys.scores(q_h, kv_h * capacity, s.scale, &mut scores);
                softmax(&mut scores);
                values.weighted_sum(&scores, kv_h * capacity, o);
            });
        }
    });
}

/// The prefill form: for each query head, blocks of MR tokens go through the matmul
/// micro-kernel twice, scores = Q·Kᵀ against keys packed NR positions to a panel, then
/// out = softmax(scores)·V over the values widened to f32 and cut into panels of NR columns
/// (one copy per KV head). Each key and value is loaded once per block of MR queries instead
/// of once per query.
#[allow(clippy::too_many_arguments)]
fn attention_tiled(pool: &ThreadPool, q: &[f32], keys: KvRows, values: KvRows, capacity: usize, pos0: usize, s: &AttentionShape, out: &mut [f32]) {
    let (hd, vd) = (s.head_dim, s.v_head_dim);
    let n_tokens = q.len() / (s.n_head * hd);
    let n_ctx = pos0 + n_tokens;
    let n_panels = n_ctx.div_ceil(NR);
    // Per KV head: keys as panels of NR positions (panel[i·NR + c] = element i of key c, past
    // n_ctx zero), and values widened to f32 as panels of NR columns (value_panel[p·NR + c] =
    // column c of position p), so both products read their panels as one sequential stream.
    // One task per (KV head, panel of positions); the buffers are kept between calls, as fresh
    // ones were page faults and a serial zeroing.
    let (panels_len, value_panel_len) = (n_panels * hd * NR, n_panels * NR * NR);
    let values_len = value_panel_len * (vd / NR);
    PREPARED_KV.with(|prepared| {
        let (packed_keys, values_f32) = &mut *prepared.borrow_mut();
        grow(packed_keys, s.n_head_kv * panels_len);
        grow(values_f32, s.n_head_kv * values_len);
        let (keys_out, values_out) = (SharedMut(packed_keys.as_mut_ptr()), SharedMut(values_f32.as_mut_ptr()));
        pool.for_ranges(s.n_head_kv * n_panels, 1, |tasks| SCORES.with(|rows| {
            // The scores' buffer, idle until the blocks below, holds a panel's keys (and one
            // value) meanwhile.
            let mut rows = rows.borrow_mut();
            grow(&mut rows, NR * hd + vd);
            let (key_rows, value) = rows.split_at_mut(NR * hd);
            let value = &mut value[..vd];
            for task in tasks {
                let (kv, panel) = (task / n_panels, task % n_panels);
                let positions = panel * NR..((panel + 1) * NR).min(n_ctx);
                for (c, p) in positions.clone().enumerate() {
                    keys.row_f32(kv * capacity + p, &mut key_rows[c * hd..][..hd]);
                }
                // SAFETY: task (kv, panel) alone writes this panel of keys, inside the buffer
                // grown above.
                let panel_out = unsafe { std::slice::from_raw_parts_mut(keys_out.at(kv * panels_len + panel * hd * NR), hd * NR) };
                pack_panel(key_rows, hd, positions.len(), hd, panel_out);
                for p in positions {
                    values.row_f32(kv * capacity + p, value);
                    for (j, columns) in value.chunks_exact(NR).enumerate() {
                        // SAFETY: task (kv, panel) alone writes its positions' NR columns of
                        // each value panel, inside the buffer grown above.
                        let at = kv * values_len + j * value_panel_len + p * NR;
                        unsafe { std::slice::from_raw_parts_mut(values_out.at(at), NR) }.copy_from_slice(columns);
                    }
                }
            }
        }));
        attend_in_blocks(pool, q, &packed_keys[..s.n_head_kv * panels_len], &values_f32[..s.n_head_kv * values_len], pos0, s, out);
    });
}

/// The tiled attention proper, over keys and values prepared by [`attention_tiled`].
fn attend_in_blocks(pool: &ThreadPool, q: &[f32], packed_keys: &[f32], values_f32: &[f32], pos0: usize, s: &AttentionShape, out: &mut [f32]) {
    let (hd, vd) = (s.head_dim, s.v_head_dim);
    let group = s.n_head / s.n_head_kv;
    let n_tokens = q.len() / (s.n_head * hd);
    let n_ctx = pos0 + n_tokens;
    let panels_len = n_ctx.div_ceil(NR) * hd * NR;
    let value_panel_len = n_ctx.div_ceil(NR) * NR * NR;
    let n_blocks = n_tokens.div_ceil(MR);
    let out_ptr = SharedMut(out.as_mut_ptr());
    pool.for_ranges(s.n_head * n_blocks, 1, |tasks| {
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            for task in tasks {
                // Each head's blocks latest first: the last tasks handed out are then the
                // cheapest, so no thread waits long on another's last one.
                let (h, t0) = (task / n_blocks, (n_blocks - 1 - task % n_blocks) * MR);
                let mr = MR.min(n_tokens - t0);
                let kv = h / group;
                let width = (pos0 + t0 + mr).div_ceil(NR) * NR;
                grow(&mut scores, MR * width);
                let queries = &q[(t0 * s.n_head + h) * hd..];
                for panel in 0..width / NR {
                    let keys = &packed_keys[kv * panels_len + panel * hd * NR..][..hd * NR];
                    // SAFETY: rows t < mr of `scores` hold `width` values, NR of them from
                    // panel·NR on.
                    unsafe { tile(mr, hd, Tokens::Rows { x: queries, ldx: s.n_head * hd }, keys, NR, scores.as_mut_ptr().add(panel * NR), width, false) };
                }
                // The softmax's numerators e^(scale·(score − max)), scaled in the exp's own
                // pass; the division by their sum waits for the outputs, vd values a token
                // rather than one per visible position.
                let kc = pos0 + t0 + mr;
                let mut inverse_sums = [0f32; MR];
                for (t, inverse_sum) in inverse_sums[..mr].iter_mut().enumerate() {
                    let row = &mut scores[t * width..][..kc];
                    let visible = pos0 + t0 + t + 1;
                    let shift = s.scale * max(&row[..visible]);
                    *inverse_sum = 1.0 / exp_shifted(&mut row[..visible], s.scale, shift);
                    row[visible..].fill(0.0);
                }
                let values = &values_f32[kv * vd / NR * value_panel_len..][..vd / NR * value_panel_len];
                for (j, panel) in values.chunks_exact(value_panel_len).enumerate() {
                    // SAFETY: task (h, block) alone writes out[(t·n_head + h)·vd + j·NR ..][..NR]
                    // for its tokens t, inside the n_tokens · n_head · vd output.
                    unsafe { tile(mr, kc, Tokens::Rows { x: &scores, ldx: width }, panel, NR, out_ptr.at((t0 * s.n_head + h) * vd + j * NR), s.n_head * vd, false) };
                }
                for (t, &inverse_sum) in inverse_sums[..mr].iter().enumerate() {
                    // SAFETY: as for the tiles above, token t0 + t's vd outputs of head h.
                    scale(unsafe { std::slice::from_raw_parts_mut(out_ptr.at(((t0 + t) * s.n_head + h) * vd), vd) }, inverse_sum);
                }
            }
        });
    });
}

/// In-place softmax, shifted by the max for stability.
pub fn softmax(x: &mut [f32]) {
    let inv = 1.0 / exp_shifted(x, 1.0, max(x));
    scale(x, inv);
}

/// The largest value. A NaN may be skipped here: it still reaches every output through exp.
fn max(x: &[f32]) -> f32 {
    let mut chunks = x.chunks_exact(8);
    let mut max8 = f32x8::splat(f32::NEG_INFINITY);
    for c in &mut chunks {
        max8 = max8.fast_max(f32x8::from(<[f32; 8]>::try_from(c).unwrap()));
    }
    chunks.remainder().iter().chain(&max8.to_array()).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// x[i] *= factor, eight lanes at a time.
fn scale(x: &mut [f32], factor: f32) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = f32x8::from(<[f32; 8]>::try_from(&*c).unwrap()) * factor;
        c.copy_from_slice(&v.to_array());
    }
    chunks.into_remainder().iter_mut().for_each(|v| *v *= factor);
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
        // one kv head: head-major and position-major are the same layout
        attention(&ThreadPool::new(2).unwrap(), &q, KvRows::F32(&k), KvRows::F32(&v), n_pos, pos0, &s, &mut out);
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

    /// Head-major caches with spare capacity, two KV heads of 64 (the vector path), f32 and
    /// f16 storage, against a naive f64 computation on the stored values; 5 tokens take the
    /// one-query-at-a-time form, 13 the tiled prefill form (two full blocks and a partial one).
    #[test]
    fn head_major_f32_and_f16_caches() {
        for n_tokens in [5, 13] {
            head_major_case(n_tokens);
        }
    }

    fn head_major_case(n_tokens: usize) {
        let s = AttentionShape { n_head: 4, n_head_kv: 2, head_dim: 64, v_head_dim: 64, scale: 0.125 };
        let (capacity, pos0) = (50, 17);
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 300.0;
        let k: Vec<f32> = (0..2 * capacity * 64).map(value).collect();
        let v: Vec<f32> = (0..2 * capacity * 64).map(|i| value(i + 5)).collect();
        let q: Vec<f32> = (0..n_tokens * 4 * 64).map(|i| value(i + 11)).collect();
        let (k16, v16): (Vec<f16>, Vec<f16>) = (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
        let pool = ThreadPool::new(2).unwrap();
        for f16_cache in [false, true] {
            let (keys, values, kf, vf): (KvRows, KvRows, Vec<f32>, Vec<f32>) = if f16_cache {
                (KvRows::F16(&k16), KvRows::F16(&v16), k16.iter().map(|x| x.to_f32()).collect(), v16.iter().map(|x| x.to_f32()).collect())
            } else {
                (KvRows::F32(&k), KvRows::F32(&v), k.clone(), v.clone())
            };
            let mut out = vec![0f32; n_tokens * 4 * 64];
            attention(&pool, &q, keys, values, capacity, pos0, &s, &mut out);
            for t in 0..n_tokens {
                for h in 0..4 {
                    let kv = h / 2;
                    let qh = &q[(t * 4 + h) * 64..][..64];
                    let row = |cache: &[f32], p: usize| cache[(kv * capacity + p) * 64..][..64].to_vec();
                    let scores: Vec<f64> = (0..=pos0 + t)
                        .map(|p| row(&kf, p).iter().zip(qh).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * 0.125)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for d in 0..64 {
                        let expect: f64 = scores.iter().enumerate().map(|(p, s)| (s - max).exp() / z * row(&vf, p)[d] as f64).sum();
                        let got = out[(t * 4 + h) * 64 + d] as f64;
                        assert!((got - expect).abs() < 1e-5, "n_tokens={n_tokens} f16={f16_cache} t={t} h={h} d={d}: {got} vs {expect}");
                    }
                }
            }
        }
    }
}
