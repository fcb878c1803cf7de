//! Q4_0: 32 weights share one f16 scale `d`; each weight is a 4-bit q in 0..16 standing for
//! d * (q - 8).
//!
//! Block (18 bytes): d: f16 | qs: [u8; 16].
//! Byte j holds weight j in its low nibble and weight j + 16 in its high nibble: the two
//! halves of the block are interleaved, not neighbouring weights.

use super::{f16_at, f16_bytes, signed_absmax};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + QK / 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qs = &block[2..];
    for j in 0..QK / 2 {
        out[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// quantize_row_q4_0_ref. The scale comes from the signed extreme, d = max / -8, so the
/// extreme lands exactly on q = 0 (-8) and the other side keeps 7 levels. Note ggml divides
/// by the f32 d, not by its f16 rounding.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16_bytes(d));
    // x * id is in [-8, 8]; adding 8.5 and truncating rounds to the nearest level.
    let level = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..QK / 2 {
        out[2 + j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
    }
}

/// The block as levels q with scale d and offset −8d (see `DType::levels`).
pub fn unpack_levels(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(block, 0);
    for j in 0..QK / 2 {
        levels[j] = block[2 + j] & 0x0f;
        levels[j + QK / 2] = block[2 + j] >> 4;
    }
    (scales[0], offsets[0]) = (d, -8.0 * d);
}

row_functions!();
