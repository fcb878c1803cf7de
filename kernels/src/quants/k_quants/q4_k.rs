//! Q4_K: 4-bit weights. Each of the 8 groups of 32 weights has a 6-bit scale and a 6-bit min;
//! weight = d * scale * q - dmin * min.
//!
//! Block (144 bytes): d: f16 | dmin: f16 | scales: [u8; 12] | qs: [u8; 128].
//! scales: see [`scale_min_k4`]. qs: four strides of 32 bytes; stride c, byte l holds weight
//! 64c + l in its low nibble and weight 64c + 32 + l in its high nibble.

use super::{affine_k4_scales, quantize_affine_k4, quantize_affine_k4_row, scale_min_k4, AffineK4, ScaleGrid, K_SCALE_SIZE, QK_K};
use crate::quants::f16_at;

pub const BLOCK_BYTES: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let packed_scales = &block[4..16];
    let qs = &block[16..];
    for (j, group) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min_k4(j, packed_scales);
        let dl = d * scale as f32;
        let ml = dmin * min as f32;
        let (stride, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (y, &byte) in group.iter_mut().zip(stride) {
            *y = dl * ((byte >> shift) & 0x0f) as f32 - ml;
        }
    }
}

/// quantize_row_q4_K_ref: each group of 32 fitted as scale * l - min with l in 0..16 (see
/// [`quantize_affine_k4`]), the levels packed two to a byte.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    quantize_affine_k4(x, 15, GRID, |_, fit| pack(&fit, out));
}

pub fn from_f32(src: &[f32], dst: &mut [u8]) {
    quantize_affine_k4_row(src, dst, 15, GRID, pack);
}

const GRID: ScaleGrid = ScaleGrid { rmin: -1.0, rdelta: 0.1, nstep: 20 };

fn pack(fit: &AffineK4, out: &mut [u8; BLOCK_BYTES]) {
    out[0..2].copy_from_slice(&fit.d);
    out[2..4].copy_from_slice(&fit.dmin);
    out[4..16].copy_from_slice(&fit.scales);
    for (levels, qs) in fit.levels.chunks_exact(64).zip(out[16..].chunks_exact_mut(32)) {
        for (l, q) in qs.iter_mut().enumerate() {
            *q = levels[l] | (levels[l + 32] << 4);
        }
    }
}

pub fn to_f32(src: &[u8], dst: &mut [f32]) {
    crate::quants::dequantize_row(src, dst, dequantize_block)
}

pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    crate::quants::dot_row(row, x, dequantize_block)
}

/// The block as levels q, group j with scale d·scale_j and offset −dmin·min_j (see
/// `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    affine_k4_scales(block, scales, offsets);
    let qs = &block[16..];
    for (j, group) in levels.chunks_exact_mut(32).take(QK_K / 32).enumerate() {
        let (stride, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (l, &byte) in group.iter_mut().zip(stride) {
            *l = (byte >> shift) & 0x0f;
        }
    }
}
