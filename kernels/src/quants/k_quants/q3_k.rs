//! Q3_K: 3-bit weights. Each of the 16 groups of 16 weights has a signed 6-bit scale;
//! weight = d * scale * q with q in -4..4.
//!
//! Block (110 bytes): hmask: [u8; 32] | qs: [u8; 64] | scales: [u8; 12] | d: f16.
//! qs: the low 2 bits, packed like Q2_K (half h, byte l, shift 2s -> weight 128h + 32s + l).
//! hmask: byte l, bit 4h + s is the third bit of that same weight, and it is inverted:
//! a set bit means q = low bits, a clear bit means q = low bits - 4.

use super::{pack_2bit, GROUP_MAX_EPS, QK_K};
use crate::quants::{f16_at, f16_bytes, nearest_int};

pub const BLOCK_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;

/// The 16 scales, 6 bits each, stored biased by 32 in 12 bytes: the low 4 bits of group g are
/// the low nibble of byte g (g < 8) or the high nibble of byte g - 8; the top 2 bits are at
/// shift 2 * (g / 4) in byte 8 + g % 4.
pub(crate) fn unpack_scales(packed: &[u8]) -> [i8; 16] {
    let mut scales = [0i8; 16];
    for (g, scale) in scales.iter_mut().enumerate() {
        let low = if g < 8 { packed[g] & 0x0f } else { packed[g - 8] >> 4 };
        let high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
        *scale = (low | (high << 4)) as i8 - 32;
    }
    scales
}

/// Inverse of [`unpack_scales`], from the biased 6-bit values (scale + 32, in 0..64).
fn pack_scales(biased: &[u8; 16]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for (g, &s) in biased.iter().enumerate() {
        if g < 8 {
            packed[g] = s & 0x0f;
        } else {
            packed[g - 8] |= (s & 0x0f) << 4;
        }
        packed[8 + g % 4] |= (s >> 4) << (2 * (g / 4));
    }
    packed
}

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let hmask = &block[0..32];
    let qs = &block[32..96];
    let scales = unpack_scales(&block[96..108]);
    let d = f16_at(block, 108);
    for (g, group) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * scales[g] as f32;
        let (half, s, first) = (g / 8, (g % 8) / 2, 16 * (g % 2));
        for (l, y) in (first..first + 16).zip(group) {
            let low = ((qs[32 * half + l] >> (2 * s)) & 3) as i32;
            let high_set = hmask[l] & (1 << (4 * half + s)) != 0;
            let q = if high_set { low } else { low - 4 };
            *y = dl * q as f32;
        }
    }
}

/// ggml's make_q3_quants (its do_rmse branch, the only one the reference quantizer uses):
/// fits x ~ scale * l with l in -nmax..nmax for one group, returns the scale and leaves l + nmax
/// in `levels` (all 0 for a group that is all zero).
///
/// Starting from rounding at scale max / -nmax, it improves the fit coordinate-wise: for each
/// value in turn, the level that is best for it given the others' least-squares scale, kept
/// if it raises sum(w x l)^2 / sum(w l^2) (equivalently, lowers the weighted squared error of
/// the optimal scale). The weights are x^2, favouring the large values. At most 5 sweeps, and
/// it stops at the first sweep that changes nothing.
fn make_q3_quants(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = crate::quants::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -nmax as f32 / max;
    let mut l = [0i32; 16];
    let l = &mut l[..x.len()];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (l, &v) in l.iter_mut().zip(x) {
        *l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *l as f32;
        suml2 += w * *l as f32 * *l as f32;
    }
    for _sweep in 0..5 {
        let mut changed = false;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l[i] as f32;
            // the sums without value i
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (level, &l) in levels.iter_mut().zip(l.iter()) {
        *level = (l + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// quantize_row_q3_K_ref. Each group of 16 gets a signed scale from [`make_q3_quants`]; the
/// 16 scales are quantized to 6 bits (-32..32) against the one of largest magnitude, whose
/// sign is folded into d so that it lands on -32, the end with the extra level. The weights
/// are then re-rounded against the scales as they decode.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (j, (group, levels)) in x.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
        scales[j] = make_q3_quants(group, 4, levels);
    }
    let max_scale = crate::quants::signed_absmax(&scales);

    let (packed, d) = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // ggml stores nearest_int in an int8_t before clamping; |iscale * scale| <= 32 here,
        // so the truncation never bites, but it is kept.
        let biased: [u8; 16] =
            std::array::from_fn(|j| ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8);
        (pack_scales(&biased), f16_bytes(1.0 / iscale))
    } else {
        ([0u8; 12], f16_bytes(0.0))
    };
    requantize(x, f16_at(&d, 0), &unpack_scales(&packed), &mut levels);

    // The third bit goes to hmask (set means q >= 0, i.e. level >= 4), the low two to qs.
    let hmask = &mut out[0..32];
    hmask.fill(0);
    for (j, level) in levels.iter_mut().enumerate() {
        if *level > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *level -= 4;
        }
    }
    pack_2bit(&levels, &mut out[32..96]);
    out[96..108].copy_from_slice(&packed);
    out[108..110].copy_from_slice(&d);
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
            *l = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
}

row_functions!();
