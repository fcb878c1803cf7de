//! Q2_K: 2-bit weights. Each of the 16 groups of 16 weights has a 4-bit scale and a 4-bit min;
//! weight = d * scale * q - dmin * min.
//!
//! Block (84 bytes): scales: [u8; 16] | qs: [u8; 64] | d: f16 | dmin: f16.
//! scales[g]: scale of group g in the low nibble, min in the high nibble.
//! qs: two halves of 32 bytes; in half h, byte l holds at bit shift 2s the weight
//! 128h + 32s + l (s = 0..4).

use super::{make_qkx2_quants_groups, pack_2bit, positive_max, Residual, ScaleGrid, QK_K};
use crate::quants::{f16_at, f16_bytes, nearest_int};

pub const BLOCK_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 + 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let scales = &block[0..16];
    let qs = &block[16..80];
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    for (g, group) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * (scales[g] & 0x0f) as f32;
        let ml = dmin * (scales[g] >> 4) as f32;
        // group g is weights 16g.., in half g / 8, at shift 2 * s with s = (g % 8) / 2
        let (half, shift, first) = (g / 8, 2 * ((g % 8) / 2), 16 * (g % 2));
        for (l, y) in (first..first + 16).zip(group) {
            let q = (qs[32 * half + l] >> shift) & 3;
            *y = dl * q as f32 - ml;
        }
    }
}

/// quantize_row_q2_K_ref. Each group of 16 is fitted as scale * l - min (l in 0..4) by
/// [`make_qkx2_quants`], weighting each value by its magnitude and minimizing the absolute
/// rather than squared error (with 4 levels, squares let a few large values drag the fit).
/// The 16 scales and the 16 mins are then each quantized to 4 bits against the largest of
/// them, and the weights re-rounded against what decodes.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    const GRID: ScaleGrid = ScaleGrid { rmin: -0.5, rdelta: 0.1, nstep: 15 };
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    let weights: [f32; QK_K] = std::array::from_fn(|i| x[i].abs());
    make_qkx2_quants_groups(x, &weights, 16, 3, &mut levels, GRID, Residual::Absolute, &mut scales, &mut mins);
    let max_scale = positive_max(&scales);
    let max_min = positive_max(&mins);

    // Low nibble: the scale; high nibble: the min. Scaled by the largest, they round to at
    // most 15; like ggml this does not clamp, so anything odd wraps the same way.
    let mut packed = [0u8; QK_K / 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (p, &scale) in packed.iter_mut().zip(&scales) {
            *p = nearest_int(iscale * scale) as u8;
        }
        max_scale / 15.0
    } else {
        0.0
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (p, &min) in packed.iter_mut().zip(&mins) {
            *p |= (nearest_int(iscale * min) << 4) as u8;
        }
        max_min / 15.0
    } else {
        0.0
    };
    let (d, dmin) = (f16_bytes(d), f16_bytes(dmin));
    requantize(x, (f16_at(&d, 0), f16_at(&dmin, 0)), &packed, &mut levels);

    out[0..16].copy_from_slice(&packed);
    pack_2bit(&levels, &mut out[16..80]);
    out[80..82].copy_from_slice(&d);
    out[82..84].copy_from_slice(&dmin);
}

/// Re-rounds each weight against the scale and min its group will decode with; a group
/// whose decoded scale is 0 keeps the levels of its fit.
fn requantize(x: &[f32; QK_K], (d, dmin): (f32, f32), packed: &[u8; QK_K / 16], levels: &mut [u8; QK_K]) {
    for ((group, levels), &sm) in x.chunks_exact(16).zip(levels.chunks_exact_mut(16)).zip(packed) {
        let dl = d * (sm & 0x0f) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * (sm >> 4) as f32;
        for (l, &v) in levels.iter_mut().zip(group) {
            *l = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
        }
    }
}

row_functions!();
