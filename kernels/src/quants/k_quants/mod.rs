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
/// nmax, the scale grid and the bit packing of the levels).
pub(crate) fn quantize_affine_k4(x: &[f32; QK_K], nmax: i32, grid: ScaleGrid) -> AffineK4 {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    for (j, (group, levels)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let weights = magnitude_weights(group);
        (scales[j], mins[j]) = make_qkx2_quants(group, &weights, nmax, levels, grid, Residual::Squared);
    }
    let max_scale = positive_max(&scales);
    let max_min = positive_max(&mins);

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let quantized_scales: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
    let quantized_mins: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
    let packed = pack_scale_min_k4(&quantized_scales, &quantized_mins);
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);

    requantize_affine(x, nmax, (f16_at(&d, 0), f16_at(&dmin, 0)), &packed, &mut levels);
    AffineK4 { d, dmin, scales: packed, levels }
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
