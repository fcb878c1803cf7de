//! Q6_K: 6-bit weights. Each of the 16 groups of 16 weights has a signed 8-bit scale;
//! weight = d * scale * (q - 32).
//!
//! Block (210 bytes): ql: [u8; 128] | qh: [u8; 64] | scales: [i8; 16] | d: f16.
//! Per half h of 128 weights, weight 128h + 32s + l (s = 0..4, l = 0..32) has
//! its low 4 bits in ql[64h + 32(s % 2) + l], low nibble for s < 2, high nibble for s >= 2,
//! and its top 2 bits at shift 2s in qh[32h + l].

use super::{GROUP_MAX_EPS, QK_K};
use crate::quants::{f16_at, f16_bytes, nearest_int, signed_absmax};

pub const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let levels = six_bit_levels(&block[..LEVEL_BYTES]);
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    for (g, (group, levels)) in out.chunks_exact_mut(16).zip(levels.chunks_exact(16)).enumerate() {
        // ggml evaluates d * scale * q left to right: d * scale is rounded first.
        let dl = d * scales[g] as i8 as f32;
        for (y, &q) in group.iter_mut().zip(levels) {
            *y = dl * (q as i32 - 32) as f32;
        }
    }
}

/// Bytes of a block's levels (ql, then qh).
pub const LEVEL_BYTES: usize = QK_K / 2 + QK_K / 4;

/// A block's 256 six-bit levels (stored + 32, 0..64) in value order, from its ql and qh.
pub fn six_bit_levels(ql_qh: &[u8]) -> [u8; QK_K] {
    let (ql, qh) = ql_qh[..LEVEL_BYTES].split_at(QK_K / 2);
    let mut levels = [0u8; QK_K];
    for ((levels, ql), qh) in levels.chunks_exact_mut(128).zip(ql.chunks_exact(64)).zip(qh.chunks_exact(32)) {
        for l in 0..32 {
            let (low_a, low_b, high) = (ql[l], ql[l + 32], qh[l]);
            levels[l] = (low_a & 0x0f) | ((high & 3) << 4);
            levels[l + 32] = (low_b & 0x0f) | (((high >> 2) & 3) << 4);
            levels[l + 64] = (low_a >> 4) | (((high >> 4) & 3) << 4);
            levels[l + 96] = (low_b >> 4) | ((high >> 6) << 4);
        }
    }
    levels
}

/// The inverse of [`six_bit_levels`]: 256 levels (< 64) into ql and qh.
pub fn pack_six_bit_levels(levels: &[u8; QK_K], ql_qh: &mut [u8]) {
    let (ql, qh) = ql_qh[..LEVEL_BYTES].split_at_mut(QK_K / 2);
    for ((levels, ql), qh) in levels.chunks_exact(128).zip(ql.chunks_exact_mut(64)).zip(qh.chunks_exact_mut(32)) {
        for l in 0..32 {
            let q = [levels[l], levels[l + 32], levels[l + 64], levels[l + 96]];
            ql[l] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            ql[l + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            qh[l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}

/// ggml's make_qx_quants in the form the reference quantizer uses (rmse_type 1, no importance
/// weights): fits x ~ scale * l with l in -nmax..nmax for one group, returns the scale and
/// leaves l + nmax in `levels` (all 0 for a group that is all zero).
///
/// Rounding at the scale that maps the extreme to -nmax is not the least-squares optimum, so
/// it also tries the 18 inverse scales (nmax + 0.1 i) / -max, i = -9..=9 (without 0), and for
/// each set of levels takes the optimal scale sum(w x l) / sum(w l^2); the levels whose fit
/// explains the most, max sum(w x l)^2 / sum(w l^2), win. The weights are x^2.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -nmax as f32 / max;
    round_levels(x, nmax, iscale, levels);
    let (sumlx, suml2) = weighted_sums(x, nmax, iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&step| step != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = weighted_sums(x, nmax, iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            round_levels(x, nmax, iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The signed level of v at inverse scale iscale: round(iscale * v) in -nmax..nmax.
fn level(v: f32, nmax: i32, iscale: f32) -> i32 {
    nearest_int(iscale * v).clamp(-nmax, nmax - 1)
}

/// levels[i] = level(x[i]) + nmax.
fn round_levels(x: &[f32], nmax: i32, iscale: f32, levels: &mut [u8]) {
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (level(v, nmax, iscale) + nmax) as u8;
    }
}

/// (sum w x l, sum w l^2) with w = x^2, accumulated in order.
fn weighted_sums(x: &[f32], nmax: i32, iscale: f32) -> (f32, f32) {
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for &v in x {
        let l = level(v, nmax, iscale) as f32;
        let w = v * v;
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    (sumlx, suml2)
}

/// quantize_row_q6_K_ref. Each group of 16 gets a signed scale from [`make_qx_quants`]; the
/// 16 scales are quantized to i8 against the one of largest magnitude, whose sign is folded
/// into d so that it lands on -128, and the weights are re-rounded against the scales as they
/// decode. A block whose scales are all (near) zero is stored as all zero bytes.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // the lanes are x86-only
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd::isa().has_avx2() {
        for (half, (x, levels)) in x.chunks_exact(128).zip(levels.chunks_exact_mut(128)).enumerate() {
            // SAFETY: AVX2 was detected.
            let s = unsafe { super::lanes_avx2::make_qx_quants_x8(x, 16, 32, levels) };
            scales[8 * half..8 * half + 8].copy_from_slice(&s);
        }
        done = QK_K / 16;
    }
    for j in done..QK_K / 16 {
        let span = 16 * j..16 * (j + 1);
        scales[j] = make_qx_quants(&x[span.clone()], 32, &mut levels[span]);
    }
    let max_scale = signed_absmax(&scales);
    if max_scale.abs() < GROUP_MAX_EPS {
        out.fill(0);
        return;
    }

    let iscale = -128.0 / max_scale;
    let d = f16_bytes(1.0 / iscale);
    let int_scales: [i8; 16] = std::array::from_fn(|j| nearest_int(iscale * scales[j]).min(127) as i8);
    requantize(x, f16_at(&d, 0), &int_scales, &mut levels);

    pack_six_bit_levels(&levels, &mut out[..LEVEL_BYTES]);
    let rest = &mut out[LEVEL_BYTES..];
    for (s, &scale) in rest[0..16].iter_mut().zip(&int_scales) {
        *s = scale as u8;
    }
    rest[16..18].copy_from_slice(&d);
}

/// Re-rounds each weight against its group's scale as it decodes; a group whose decoded
/// scale is 0 keeps the levels of its fit.
fn requantize(x: &[f32; QK_K], d: f32, scales: &[i8; 16], levels: &mut [u8; QK_K]) {
    for ((group, levels), &scale) in x.chunks_exact(16).zip(levels.chunks_exact_mut(16)).zip(scales) {
        let dl = d * scale as f32;
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in levels.iter_mut().zip(group) {
            *l = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
        }
    }
}

row_functions!();
