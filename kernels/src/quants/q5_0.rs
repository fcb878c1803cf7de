//! Q5_0: 32 weights share one f16 scale `d`; each weight is a 5-bit q in 0..32 standing for
//! d * (q - 16).
//!
//! Block (22 bytes): d: f16 | qh: [u8; 4] | qs: [u8; 16].
//! qs holds the low 4 bits like Q4_0 (byte j: weight j low nibble, weight j + 16 high nibble);
//! qh, read as a little-endian u32, holds the fifth bit of weight j at bit j.

use super::{f16_at, f16_bytes, signed_absmax, u32_at};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 4 + QK / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qh = u32_at(block, 2);
    let qs = &block[6..];
    let fifth_bit = |i: usize| (((qh >> i) & 1) << 4) as u8;
    for j in 0..QK / 2 {
        let q0 = (qs[j] & 0x0f) | fifth_bit(j);
        let q1 = (qs[j] >> 4) | fifth_bit(j + QK / 2);
        out[j] = (q0 as i32 - 16) as f32 * d;
        out[j + QK / 2] = (q1 as i32 - 16) as f32 * d;
    }
}

/// quantize_row_q5_0_ref: as Q4_0 with 32 levels, d = max / -16.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bytes(d));
    let level = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (q0, q1) = (level(x[j]), level(x[j + QK / 2]));
        out[6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + QK / 2);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// The block as levels q with scale d and offset −16d (see `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(block, 0);
    let qh = u32_at(block, 2);
    let fifth_bit = |i: usize| (((qh >> i) & 1) << 4) as u8;
    for j in 0..QK / 2 {
        levels[j] = (block[6 + j] & 0x0f) | fifth_bit(j);
        levels[j + QK / 2] = (block[6 + j] >> 4) | fifth_bit(j + QK / 2);
    }
    (scales[0], offsets[0]) = (d, -16.0 * d);
}

row_functions!();
