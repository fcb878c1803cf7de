//! Q2_K: 2-bit weights. Each of the 16 groups of 16 weights has a 4-bit scale and a 4-bit min;
//! weight = d * scale * q - dmin * min.
//!
//! Block (84 bytes): scales: [u8; 16] | qs: [u8; 64] | d: f16 | dmin: f16.
//! scales[g]: scale of group g in the low nibble, min in the high nibble.
//! qs: two halves of 32 bytes; in half h, byte l holds at bit shift 2s the weight
//! 128h + 32s + l (s = 0..4).

use super::QK_K;
use crate::quants::f16_at;

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

pub fn to_f32(src: &[u8], dst: &mut [f32]) {
    crate::quants::dequantize_row(src, dst, dequantize_block)
}

pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    crate::quants::dot_row(row, x, dequantize_block)
}
