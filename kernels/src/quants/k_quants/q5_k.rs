//! Q5_K: 5-bit weights. Each of the 8 groups of 32 weights has a 6-bit scale and a 6-bit min;
//! weight = d * scale * q - dmin * min.
//!
//! Block (176 bytes): d: f16 | dmin: f16 | scales: [u8; 12] | qh: [u8; 32] | qs: [u8; 128].
//! scales and the low 4 bits in qs are laid out as in Q4_K; the fifth bit of weight 32j + l
//! (group j) is bit j of qh[l].

use super::{affine_k4_scales, quantize_affine_k4, quantize_affine_k4_row, scale_min_k4, AffineK4, ScaleGrid, K_SCALE_SIZE, QK_K};
use crate::quants::f16_at;

pub const BLOCK_BYTES: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let packed_scales = &block[4..16];
    let qh = &block[16..48];
    let qs = &block[48..];
    for (j, group) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min_k4(j, packed_scales);
        let dl = d * scale as f32;
        let ml = dmin * min as f32;
        let (stride, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (l, y) in group.iter_mut().enumerate() {
            let q = ((stride[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
            *y = dl * q as f32 - ml;
        }
    }
}

/// quantize_row_q5_K_ref: each group of 32 fitted as scale * l - min with l in 0..32 (see
/// [`quantize_affine_k4`]); the low 4 bits of the levels packed as in Q4_K, the fifth in qh.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    quantize_affine_k4(x, 31, GRID, |_, fit| pack(&fit, out));
}

pub fn from_f32(src: &[f32], dst: &mut [u8]) {
    quantize_affine_k4_row(src, dst, 31, GRID, pack);
}

const GRID: ScaleGrid = ScaleGrid { rmin: -0.5, rdelta: 0.1, nstep: 15 };

fn pack(fit: &AffineK4, out: &mut [u8; BLOCK_BYTES]) {
    out[0..2].copy_from_slice(&fit.d);
    out[2..4].copy_from_slice(&fit.dmin);
    out[4..16].copy_from_slice(&fit.scales);
    let (qh, qs) = out[16..].split_at_mut(32);
    qh.fill(0);
    // groups 2c and 2c + 1 share stride c of qs; group j's fifth bits are bit j of qh
    for (c, (levels, qs)) in fit.levels.chunks_exact(64).zip(qs.chunks_exact_mut(32)).enumerate() {
        for (l, q) in qs.iter_mut().enumerate() {
            let (low, high) = (levels[l], levels[l + 32]);
            *q = (low & 0x0f) | ((high & 0x0f) << 4);
            qh[l] |= ((low >> 4) << (2 * c)) | ((high >> 4) << (2 * c + 1));
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
    let (qh, qs) = (&block[16..48], &block[48..]);
    for (j, group) in levels.chunks_exact_mut(32).take(QK_K / 32).enumerate() {
        let (stride, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        for (l, v) in group.iter_mut().enumerate() {
            *v = ((stride[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
        }
    }
}
