//! The k-quants: super-blocks of QK_K = 256 weights split into sub-blocks of 16 or 32, each
//! sub-block with its own small integer scale (and for some types a min), those integer scales
//! in turn scaled by one or two f16 numbers for the whole super-block.
//!
//! Every layout here splits a super-block into halves of 128 weights and packs the low bits of
//! a half's weights in 32-byte (or 64-byte) strides: byte l of a stride carries weight l of
//! several consecutive 32-weight groups, at different bit shifts. So weights that share a byte
//! are 32 apart, never neighbours.
//!
//! Every type has a quantizer, a port of ggml's quantize_row_q*_K_ref that matches it byte for
//! byte (tests/kquant_quantizers.rs checks against ggml's own output). They all work in two
//! passes: first fit each sub-block's scale (and min) in f32 by a small search, then quantize
//! those sub-block scales to integers against one f16 super-block scale, and finally
//! re-quantize the weights against the scales as they will actually be decoded. Bit-exactness
//! needs ggml's exact order of f32 operations: every sum below accumulates left to right and
//! every product associates as written in C, with no fused multiply-add (the reference build
//! has none to contract into, and Rust never contracts).

#[cfg(target_arch = "x86_64")]
mod lanes_avx2;
pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_k;

use crate::quants::{f16_at, f16_bytes, nearest_int};

/// Weights per super-block.
pub const QK_K: usize = 256;

/// Bytes of the packed 6-bit scales and mins of Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// The 6-bit (scale, min) of 32-weight group j (0..8) of Q4_K / Q5_K (ggml's get_scale_min_k4).
/// Groups 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); groups 4..8 keep
/// their low 4 bits in the nibbles of bytes 8..12 and their top 2 bits in the otherwise unused
/// top 2 bits of bytes 0..8.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        let scale = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
        let min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        (scale, min)
    }
}

/// Q4_K / Q5_K group j's decoded scale d·scale_j and offset −dmin·min_j, for the 8 groups of
/// a block (its `levels` form: weight = scale·level + offset).
pub(crate) fn affine_k4_scales(block: &[u8], scales: &mut [f32], offsets: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    for j in 0..QK_K / 32 {
        let (scale, min) = scale_min_k4(j, &block[4..16]);
        (scales[j], offsets[j]) = (d * scale as f32, -(dmin * min as f32));
    }
}

/// Inverse of [`scale_min_k4`]: packs eight 6-bit (scale, min) pairs into 12 bytes.
pub(crate) fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..4 {
        packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
        packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        packed[j + 8] = (scales[j + 4] & 0x0f) | ((mins[j + 4] & 0x0f) << 4);
    }
    packed
}

/// Q2_K and Q3_K pack 2-bit levels (0..4) four to a byte: in half h, byte l carries weight
/// 128h + 32s + l at shift 2s.
pub(crate) fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for (levels, qs) in levels.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (l, q) in qs.iter_mut().enumerate() {
            *q = levels[l] | (levels[l + 32] << 2) | (levels[l + 64] << 4) | (levels[l + 96] << 6);
        }
    }
}

/// Below this largest magnitude ggml treats a group as all zero (its GROUP_MAX_EPS).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// The trial grid of [`make_qkx2_quants`]: inverse scales (nmax + rmin + rdelta * i) / range
/// for i in 0..=nstep, i.e. stretching the levels from slightly fewer than nmax steps
/// across the range to slightly more.
#[derive(Clone, Copy)]
pub(crate) struct ScaleGrid {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// How [`make_qkx2_quants`] weighs a residual: Q2_K, with only 4 levels, minimizes the
/// weighted absolute error (ggml's use_mad), the others the weighted squared error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Residual {
    Absolute,
    Squared,
}

/// ggml's make_qkx2_quants: fits x ~ scale * l - min with integer levels l in 0..=nmax and
/// min >= 0, minimizing the weighted residual. Returns (scale, min) and leaves the levels in
/// `levels`.
///
/// Rounding every x at the naive scale (range / nmax) is rarely the best fit: a slightly
/// different scale moves some values across a rounding boundary. So it tries each scale of
/// the grid, takes the levels that scale gives, solves the weighted least-squares (scale, min)
/// for those levels in closed form, and keeps whichever of all these has the least residual.
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    levels: &mut [u8],
    grid: ScaleGrid,
    residual: Residual,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    // The decoded value is scale * l - min with l >= 0: zero must stay reachable, so the
    // offset never goes above 0 (an all-positive group gets min 0).
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    round_levels(x, min, iscale, nmax, levels);
    let mut best_error = weighted_residual(x, weights, levels, scale, min, residual);
    if grid.nstep < 1 {
        return (scale, -min);
    }

    let mut trial = [0u8; 32];
    let trial = &mut trial[..x.len()];
    for step in 0..=grid.nstep {
        iscale = (grid.rmin + grid.rdelta * step as f32 + nmax as f32) / (max - min);
        round_levels(x, min, iscale, nmax, trial);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&v, &w), &l) in x.iter().zip(weights).zip(trial.iter()) {
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        // Least squares for (scale, offset) given the levels: the 2x2 normal equations. The
        // determinant is 0 when all weighted values share one level: no line to fit.
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                // the same constraint as above: refit the scale alone with offset 0
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let error = weighted_residual(x, weights, trial, this_scale, this_min, residual);
            if error < best_error {
                levels.copy_from_slice(trial);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// [`make_qkx2_quants`] for consecutive groups of `n` values: `x`, `weights` and `levels`
/// hold the groups one after another; `scales` and `mins` get one value per group. Groups go
/// through the AVX2 lanes 16 or 8 at a time (bit-identical), the rest one by one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants_groups(
    x: &[f32],
    weights: &[f32],
    n: usize,
    nmax: i32,
    levels: &mut [u8],
    grid: ScaleGrid,
    residual: Residual,
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let groups = x.len() / n;
    assert!(x.len() == groups * n && weights.len() == x.len() && levels.len() == x.len());
    assert!(scales.len() == groups && mins.len() == groups);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // the lanes are x86-only
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::isa().has_avx2() && (n == 16 || n == 32) {
        // 16 groups at a time where there are that many (two independent chains per step),
        // then 8.
        use lanes_avx2::make_qkx2_quants_lanes as lanes;
        while done + 8 <= groups {
            let count = if done + 32 <= groups { 32 } else if done + 16 <= groups { 16 } else { 8 };
            let (span, fits) = (done * n..(done + count) * n, done..done + count);
            let (x, w, l) = (&x[span.clone()], &weights[span.clone()], &mut levels[span]);
            let (s, m) = (&mut scales[fits.clone()], &mut mins[fits]);
            let absolute = residual == Residual::Absolute;
            // SAFETY: AVX2 was detected.
            unsafe {
                match (count, n, absolute) {
                    (32, 32, false) => lanes::<4, 32, false>(x, w, nmax, l, grid, s, m),
                    (32, 32, true) => lanes::<4, 32, true>(x, w, nmax, l, grid, s, m),
                    (32, _, false) => lanes::<4, 16, false>(x, w, nmax, l, grid, s, m),
                    (32, _, true) => lanes::<4, 16, true>(x, w, nmax, l, grid, s, m),
                    (16, 32, false) => lanes::<2, 32, false>(x, w, nmax, l, grid, s, m),
                    (16, 32, true) => lanes::<2, 32, true>(x, w, nmax, l, grid, s, m),
                    (16, _, false) => lanes::<2, 16, false>(x, w, nmax, l, grid, s, m),
                    (16, _, true) => lanes::<2, 16, true>(x, w, nmax, l, grid, s, m),
                    (_, 32, false) => lanes::<1, 32, false>(x, w, nmax, l, grid, s, m),
                    (_, 32, true) => lanes::<1, 32, true>(x, w, nmax, l, grid, s, m),
                    (_, _, false) => lanes::<1, 16, false>(x, w, nmax, l, grid, s, m),
                    (_, _, true) => lanes::<1, 16, true>(x, w, nmax, l, grid, s, m),
                }
            }
            done += count;
        }
    }
    for j in done..groups {
        let span = j * n..(j + 1) * n;
        (scales[j], mins[j]) = make_qkx2_quants(&x[span.clone()], &weights[span.clone()], nmax, &mut levels[span], grid, residual);
    }
}

/// l = round(iscale * (x - min)) clamped to 0..=nmax, for each x.
fn round_levels(x: &[f32], min: f32, iscale: f32, nmax: i32, levels: &mut [u8]) {
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    }
}

/// sum of w * |scale * l + min - x| (or its square), accumulated in order.
fn weighted_residual(x: &[f32], weights: &[f32], levels: &[u8], scale: f32, min: f32, residual: Residual) -> f32 {
    let mut error = 0.0f32;
    for ((&v, &w), &l) in x.iter().zip(weights).zip(levels) {
        let diff = scale * l as f32 + min - v;
        let diff = match residual {
            Residual::Absolute => diff.abs(),
            Residual::Squared => diff * diff,
        };
        error += w * diff;
    }
    error
}

/// What Q4_K and Q5_K have in common: eight groups of 32, each fitted as
/// d * scale * l - dmin * min with 6-bit integer scale and min, levels l in 0..=nmax.
pub(crate) struct AffineK4 {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub levels: [u8; QK_K],
}

/// The shared part of quantize_row_q4_K_ref and quantize_row_q5_K_ref (which differ only in
/// nmax, the scale grid and the bit packing of the levels), for one or two consecutive
/// blocks in `x`: two at once give the lane search 16 groups. Each block's fit goes to
/// `emit(block index, fit)`.
/// Blocks fitted together: 4 give the lane search 32 groups, four independent chains.
const AFFINE_K4_BLOCKS: usize = 4;

pub(crate) fn quantize_affine_k4(x: &[f32], nmax: i32, grid: ScaleGrid, mut emit: impl FnMut(usize, AffineK4)) {
    assert!(x.len() % QK_K == 0 && x.len() <= AFFINE_K4_BLOCKS * QK_K, "whole blocks, at most {AFFINE_K4_BLOCKS}, not {} values", x.len());
    let n_groups = x.len() / 32;
    let mut weights = [0.0f32; AFFINE_K4_BLOCKS * QK_K];
    let mut levels = [0u8; AFFINE_K4_BLOCKS * QK_K];
    let mut scales = [0.0f32; AFFINE_K4_BLOCKS * QK_K / 32];
    let mut mins = [0.0f32; AFFINE_K4_BLOCKS * QK_K / 32];
    for (group, weights) in x.chunks_exact(32).zip(weights.chunks_exact_mut(32)) {
        weights.copy_from_slice(&magnitude_weights(group));
    }
    make_qkx2_quants_groups(x, &weights[..x.len()], 32, nmax, &mut levels[..x.len()], grid, Residual::Squared, &mut scales[..n_groups], &mut mins[..n_groups]);

    for b in 0..x.len() / QK_K {
        let (scales, mins) = (&scales[8 * b..8 * b + 8], &mins[8 * b..8 * b + 8]);
        let max_scale = positive_max(scales);
        let max_min = positive_max(mins);
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
        let quantized_scales: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
        let quantized_mins: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
        let packed = pack_scale_min_k4(&quantized_scales, &quantized_mins);
        let d = f16_bytes(max_scale / 63.0);
        let dmin = f16_bytes(max_min / 63.0);

        let x: &[f32; QK_K] = x[b * QK_K..(b + 1) * QK_K].try_into().unwrap();
        let mut block_levels: [u8; QK_K] = levels[b * QK_K..(b + 1) * QK_K].try_into().unwrap();
        requantize_affine(x, nmax, (f16_at(&d, 0), f16_at(&dmin, 0)), &packed, &mut block_levels);
        emit(b, AffineK4 { d, dmin, scales: packed, levels: block_levels });
    }
}

/// A row of Q4_K or Q5_K: blocks fitted two at a time by [`quantize_affine_k4`], each written
/// by `pack`.
pub(crate) fn quantize_affine_k4_row<const BLOCK_BYTES: usize>(
    src: &[f32],
    dst: &mut [u8],
    nmax: i32,
    grid: ScaleGrid,
    pack: impl Fn(&AffineK4, &mut [u8; BLOCK_BYTES]),
) {
    crate::quants::blocks_in_row(src.len(), dst.len(), QK_K, BLOCK_BYTES);
    for (x, out) in src.chunks(AFFINE_K4_BLOCKS * QK_K).zip(dst.chunks_mut(AFFINE_K4_BLOCKS * BLOCK_BYTES)) {
        quantize_affine_k4(x, nmax, grid, |b, fit| pack(&fit, (&mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES]).try_into().unwrap()));
    }
}

/// The weights of the Q4_K / Q5_K fit: the group's RMS plus |x|, so large values count more
/// but small ones are not ignored.
fn magnitude_weights(group: &[f32]) -> [f32; 32] {
    let mut sum_x2 = 0.0f32;
    for &v in group {
        sum_x2 += v * v;
    }
    let av_x = (sum_x2 / 32.0).sqrt();
    std::array::from_fn(|l| av_x + group[l].abs())
}

/// The largest value, or 0 when none is positive (ggml's `if (v > max) max = v` from 0).
pub(crate) fn positive_max(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |max, &v| if v > max { v } else { max })
}

/// Re-rounds each weight against its group's scale and min as the decoder will see them
/// (f16 super-scales times the integer sub-scales), which is what it will actually be
/// multiplied by; a group whose decoded scale is 0 keeps the levels of its fit.
fn requantize_affine(x: &[f32; QK_K], nmax: i32, (d, dmin): (f32, f32), packed: &[u8; K_SCALE_SIZE], levels: &mut [u8; QK_K]) {
    for (j, (group, levels)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let (scale, min) = scale_min_k4(j, packed);
        let dl = d * scale as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * min as f32;
        for (l, &v) in levels.iter_mut().zip(group) {
            *l = nearest_int((v + ml) / dl).clamp(0, nmax) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups that stress every branch of the search: random, all positive (min clamps to 0),
    /// constant (flat), all zero, one outlier, tiny magnitudes, and exact ties for rounding.
    fn awkward_groups(n: usize, seed: &mut u32) -> Vec<f32> {
        let mut next = || {
            *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (*seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let mut x = Vec::new();
        for kind in 0..27 {
            let group: Vec<f32> = (0..n)
                .map(|i| match kind % 8 {
                    0 => next(),
                    1 => next().abs() + 0.1,
                    2 => 0.25,
                    3 => 0.0,
                    4 => if i == 3 { 40.0 } else { next() * 0.01 },
                    5 => next() * 1e-20,
                    6 => (i % 4) as f32 * 0.5,
                    _ => -next().abs() - 1.0,
                })
                .collect();
            x.extend(group);
        }
        x
    }

    #[test]
    fn lane_search_is_bit_identical_to_the_scalar_search() {
        let mut seed = 7u32;
        let cases = [
            (32, 15, ScaleGrid { rmin: -1.0, rdelta: 0.1, nstep: 20 }, Residual::Squared),
            (32, 31, ScaleGrid { rmin: -0.5, rdelta: 0.1, nstep: 15 }, Residual::Squared),
            (16, 3, ScaleGrid { rmin: -0.5, rdelta: 0.1, nstep: 15 }, Residual::Absolute),
            (32, 15, ScaleGrid { rmin: -1.0, rdelta: 0.1, nstep: 0 }, Residual::Squared),
        ];
        for round in 0..20 {
            for &(n, nmax, grid, residual) in &cases {
                let x = awkward_groups(n, &mut seed);
                let weights: Vec<f32> = x.iter().enumerate().map(|(i, v)| if round % 2 == 0 { v.abs() } else { v.abs() + (i % 5) as f32 * 0.1 }).collect();
                let groups = x.len() / n;
                let (mut levels, mut scales, mut mins) = (vec![0u8; x.len()], vec![0f32; groups], vec![0f32; groups]);
                make_qkx2_quants_groups(&x, &weights, n, nmax, &mut levels, grid, residual, &mut scales, &mut mins);
                for j in 0..groups {
                    let span = j * n..(j + 1) * n;
                    let mut want_levels = vec![0u8; n];
                    let (scale, min) = make_qkx2_quants(&x[span.clone()], &weights[span.clone()], nmax, &mut want_levels, grid, residual);
                    assert_eq!((scales[j].to_bits(), mins[j].to_bits()), (scale.to_bits(), min.to_bits()), "n={n} nmax={nmax} group {j}: ({}, {}) vs ({scale}, {min})", scales[j], mins[j]);
                    assert_eq!(&levels[span], &want_levels[..], "n={n} nmax={nmax} group {j}");
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lane_q6_k_search_is_bit_identical_to_the_scalar_search() {
        if !crate::cpu::simd::isa().has_avx2() {
            return;
        }
        let mut seed = 11u32;
        for _ in 0..20 {
            for n in [16, 32] {
                let x = awkward_groups(n, &mut seed);
                for (chunk, groups) in x.chunks_exact(8 * n).enumerate() {
                    let mut levels = vec![0u8; 8 * n];
                    // SAFETY: AVX2 was detected.
                    let scales = unsafe { lanes_avx2::make_qx_quants_x8(groups, n, 32, &mut levels) };
                    for j in 0..8 {
                        let mut want = vec![0u8; n];
                        let scale = q6_k::make_qx_quants(&groups[j * n..(j + 1) * n], 32, &mut want);
                        assert_eq!(scales[j].to_bits(), scale.to_bits(), "n={n} chunk {chunk} group {j}: {} vs {scale}", scales[j]);
                        assert_eq!(&levels[j * n..(j + 1) * n], &want[..], "n={n} chunk {chunk} group {j}");
                    }
                }
            }
        }
    }
}
