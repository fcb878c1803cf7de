//! Q8_K: the 8-bit activation format of the k-quant dot products. One f32 scale for 256 i8
//! weights, weight = d * q, plus the sums of each 16 consecutive q (bsums) that let a dot
//! product with a type that has mins subtract them without touching every weight.
//!
//! Block (292 bytes): d: f32 | qs: [i8; 256] | bsums: [i16; 16].

use super::QK_K;
use crate::quants::nearest_int;

pub const BLOCK_BYTES: usize = 4 + QK_K + QK_K / 16 * 2;

pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    for (y, &q) in out.iter_mut().zip(&block[4..4 + QK_K]) {
        *y = d * q as i8 as f32;
    }
}

/// quantize_row_q8_K_ref. Scaled from the signed extreme m: iscale = -127 / m maps it to
/// -127 exactly, so q stays in -127..=127. One deviation: for an all-zero block ggml leaves
/// bsums unwritten; here they are written as 0.
pub fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) {
    out.fill(0);
    let max = crate::quants::signed_absmax(x);
    if max == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    let qs = &mut out[4..4 + QK_K];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let mut bsums = [0u8; QK_K / 16 * 2];
    for (sum_bytes, group) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
        let sum: i16 = group.iter().map(|&q| q as i8 as i16).sum();
        sum_bytes.copy_from_slice(&sum.to_le_bytes());
    }
    out[4 + QK_K..].copy_from_slice(&bsums);
    out[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

row_functions!();
