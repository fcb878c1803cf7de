//! Q4_1: 32 weights share an f16 scale `d` and an f16 minimum `m`; each weight is a 4-bit q
//! standing for d * q + m.
//!
//! Block (20 bytes): d: f16 | m: f16 | qs: [u8; 16].
//! Byte j holds weight j (low nibble) and weight j + 16 (high nibble), as in Q4_0.

use super::{f16_at, f16_bytes, min_max};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 2 + QK / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..];
    for j in 0..QK / 2 {
        out[j] = (qs[j] & 0x0f) as f32 * d + m;
        out[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// quantize_row_q4_1_ref: 16 levels spread evenly from min to max.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    let level = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out[4 + j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
    }
}

/// The block as levels q with scale d and offset m (see `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    for j in 0..QK / 2 {
        levels[j] = block[4 + j] & 0x0f;
        levels[j + QK / 2] = block[4 + j] >> 4;
    }
    (scales[0], offsets[0]) = (f16_at(block, 0), f16_at(block, 2));
}

row_functions!();
