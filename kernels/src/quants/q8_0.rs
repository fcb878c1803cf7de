//! Q8_0: 32 weights share one f16 scale `d`; each weight is an i8 q standing for d * q.
//!
//! Block (34 bytes): d: f16 | qs: [i8; 32], in order.

use super::{f16_at, f16_bytes};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + QK;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    for (y, &q) in out.iter_mut().zip(&block[2..]) {
        *y = q as i8 as f32 * d;
    }
}

/// quantize_row_q8_0_ref: symmetric, d = amax / 127, q = round(x / d) with ties away from
/// zero (C's roundf, which is Rust's f32::round).
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let amax = x.iter().fold(0.0f32, |amax, v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bytes(d));
    for (q, &v) in out[2..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// The block as signed levels (the i8 bytes as they are) with scale d and offset 0 (see
/// `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    levels[..QK].copy_from_slice(&block[2..BLOCK_BYTES]);
    (scales[0], offsets[0]) = (f16_at(block, 0), 0.0);
}

row_functions!();
