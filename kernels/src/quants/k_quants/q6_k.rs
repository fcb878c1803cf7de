//! Q6_K: 6-bit weights. Each of the 16 groups of 16 weights has a signed 8-bit scale;
//! weight = d * scale * (q - 32).
//!
//! Block (210 bytes): ql: [u8; 128] | qh: [u8; 64] | scales: [i8; 16] | d: f16.
//! Per half h of 128 weights, weight 128h + 32s + l (s = 0..4, l = 0..32) has
//! its low 4 bits in ql[64h + 32(s % 2) + l], low nibble for s < 2, high nibble for s >= 2,
//! and its top 2 bits at shift 2s in qh[32h + l].

use super::QK_K;
use crate::quants::f16_at;

pub const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let ql = &block[0..128];
    let qh = &block[128..192];
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    for (g, group) in out.chunks_exact_mut(16).enumerate() {
        // ggml evaluates d * scale * q left to right: d * scale is rounded first.
        let dl = d * scales[g] as i8 as f32;
        let (half, s, first) = (g / 8, (g % 8) / 2, 16 * (g % 2));
        for (l, y) in (first..first + 16).zip(group) {
            let low = (ql[64 * half + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0f;
            let high = (qh[32 * half + l] >> (2 * s)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
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
