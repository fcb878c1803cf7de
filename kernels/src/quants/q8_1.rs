//! Q8_1: the 8-bit activation format for the dot products of the types with a minimum
//! (Q4_1, Q5_1). Like Q8_0, plus `s` = d * Σq, so that the minimum's share of a dot product,
//! m * Σx, costs one multiply per block.
//!
//! Block (36 bytes): d: f16 | s: f16 | qs: [i8; 32], in order.

use super::{f16_at, f16_bytes};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 2 + 2 + QK;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    for (y, &q) in out.iter_mut().zip(&block[4..]) {
        *y = q as i8 as f32 * d;
    }
}

/// quantize_row_q8_1_ref: Q8_0's rounding; s from the rounded integers.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let amax = x.iter().fold(0.0f32, |amax, v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in out[4..].iter_mut().zip(x) {
        let level = (v * id).round() as i8;
        sum += level as i32;
        *q = level as u8;
    }
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(sum as f32 * d));
}

row_functions!();

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_1 is Q8_0 (checked bit for bit against gguf elsewhere) plus s = d * Σq.
    #[test]
    fn is_q8_0_plus_the_scaled_sum() {
        let mut seed = 3u32;
        for round in 0..200 {
            let x: [f32; QK] = std::array::from_fn(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * (round as f32 + 0.01)
            });
            let mut q8_1 = [0u8; BLOCK_BYTES];
            let mut q8_0 = [0u8; super::super::q8_0::BLOCK_BYTES];
            quantize_block(&x, &mut q8_1);
            super::super::q8_0::quantize_block(&x, &mut q8_0);
            assert_eq!(q8_1[..2], q8_0[..2], "d");
            assert_eq!(q8_1[4..], q8_0[2..], "qs");
            let d = x.iter().fold(0.0f32, |amax, v| amax.max(v.abs())) / 127.0;
            let sum: i32 = q8_0[2..].iter().map(|&q| q as i8 as i32).sum();
            assert_eq!(q8_1[2..4], f16_bytes(sum as f32 * d), "s");
        }
    }
}
