//! Q3_K: 3-bit weights. Each of the 16 groups of 16 weights has a signed 6-bit scale;
//! weight = d * scale * q with q in -4..4.
//!
//! Block (110 bytes): hmask: [u8; 32] | qs: [u8; 64] | scales: [u8; 12] | d: f16.
//! qs: the low 2 bits, packed like Q2_K (half h, byte l, shift 2s -> weight 128h + 32s + l).
//! hmask: byte l, bit 4h + s is the third bit of that same weight, and it is inverted:
//! a set bit means q = low bits, a clear bit means q = low bits - 4.

use super::QK_K;
use crate::quants::f16_at;

pub const BLOCK_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;

/// The 16 scales, 6 bits each, stored biased by 32 in 12 bytes: the low 4 bits of group g are
/// the low nibble of byte g (g < 8) or the high nibble of byte g - 8; the top 2 bits are at
/// shift 2 * (g / 4) in byte 8 + g % 4.
fn unpack_scales(packed: &[u8]) -> [i8; 16] {
    let mut scales = [0i8; 16];
    for (g, scale) in scales.iter_mut().enumerate() {
        let low = if g < 8 { packed[g] & 0x0f } else { packed[g - 8] >> 4 };
        let high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
        *scale = (low | (high << 4)) as i8 - 32;
    }
    scales
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

pub fn to_f32(src: &[u8], dst: &mut [f32]) {
    crate::quants::dequantize_row(src, dst, dequantize_block)
}

pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    crate::quants::dot_row(row, x, dequantize_block)
}
