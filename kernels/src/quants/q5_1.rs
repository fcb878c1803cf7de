//! Q5_1: 32 weights share an f16 scale `d` and an f16 minimum `m`; each weight is a 5-bit q
//! standing for d * q + m.
//!
//! Block (24 bytes): d: f16 | m: f16 | qh: [u8; 4] | qs: [u8; 16].
//! Bits are split as in Q5_0: low nibbles interleaved in qs, fifth bit of weight j at bit j
//! of the little-endian u32 qh.

use super::{f16_at, f16_bytes, min_max, u32_at};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 2 + 4 + QK / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qh = u32_at(block, 4);
    let qs = &block[8..];
    let fifth_bit = |i: usize| (((qh >> i) & 1) << 4) as u8;
    for j in 0..QK / 2 {
        let q0 = (qs[j] & 0x0f) | fifth_bit(j);
        let q1 = (qs[j] >> 4) | fifth_bit(j + QK / 2);
        out[j] = q0 as f32 * d + m;
        out[j + QK / 2] = q1 as f32 * d + m;
    }
}

/// quantize_row_q5_1_ref: 32 levels spread evenly from min to max. Unlike Q4_1, ggml does
/// not clamp the level here ((x - min) * id + 0.5 stays below 32).
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    let level = |v: f32| ((v - min) * id + 0.5) as u8;
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (q0, q1) = (level(x[j]), level(x[j + QK / 2]));
        out[8 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + QK / 2);
    }
    out[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// The block as levels q with scale d and offset m (see `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let qh = u32_at(block, 4);
    let fifth_bit = |i: usize| (((qh >> i) & 1) << 4) as u8;
    for j in 0..QK / 2 {
        levels[j] = (block[8 + j] & 0x0f) | fifth_bit(j);
        levels[j + QK / 2] = (block[8 + j] >> 4) | fifth_bit(j + QK / 2);
    }
    (scales[0], offsets[0]) = (f16_at(block, 0), f16_at(block, 2));
}

row_functions!();
