//! The GGUF tensor formats, one module per type family, each bit-compatible with ggml
//! (block structs of ggml-common.h, dequantize_row_* and quantize_row_*_ref of ggml-quants.c).
//!
//! A block-quantized type is described by two functions on one block:
//! `dequantize_block(&[u8; BLOCK_BYTES], &mut [f32; QK])` and, where written,
//! `quantize_block(&[f32; QK], &mut [u8; BLOCK_BYTES])`. The row functions that the
//! dtype table points at ([`dequantize_row`], [`quantize_row`], [`dot_row`]) are built from
//! them, so dequantization and the dot product can never disagree about a layout.
//!
//! Blocks are read byte by byte (`from_le_bytes`): tensor data in a GGUF mmap is little-endian
//! and carries no alignment guarantee for the block structs.

use half::f16;

/// The three row functions the dtype table points at (`to_f32`, `from_f32`, `dot_f32`),
/// made from a block type's `dequantize_block` and `quantize_block`: every block type gets
/// them the same way, so they are written once.
macro_rules! row_functions {
    () => {
        pub fn to_f32(src: &[u8], dst: &mut [f32]) {
            $crate::quants::dequantize_row(src, dst, dequantize_block)
        }

        pub fn from_f32(src: &[f32], dst: &mut [u8]) {
            $crate::quants::quantize_row(src, dst, quantize_block)
        }

        pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
            $crate::quants::dot_row(row, x, dequantize_block)
        }
    };
}

pub mod float;
pub mod k_quants;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;

/// The f16 stored little-endian at `block[offset..offset + 2]`, widened to f32 (exact).
#[inline(always)]
pub(crate) fn f16_at(block: &[u8], offset: usize) -> f32 {
    f16::from_le_bytes([block[offset], block[offset + 1]]).to_f32()
}

/// f32 -> f16 little-endian bytes, rounding to nearest even like GGML_FP32_TO_FP16.
#[inline(always)]
pub(crate) fn f16_bytes(value: f32) -> [u8; 2] {
    f16::from_f32(value).to_le_bytes()
}

/// The 5-bit types keep each weight's fifth bit in a 32-bit little-endian mask: bit j
/// belongs to weight j.
#[inline(always)]
pub(crate) fn u32_at(block: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([block[offset], block[offset + 1], block[offset + 2], block[offset + 3]])
}

/// ggml's nearest_int: adds 1.5 * 2^23 so the float unit rounds the fraction away (to nearest,
/// ties to even) and reads the integer back from the mantissa. Valid for |x| < 2^22, where it
/// equals `round_ties_even`; kept in ggml's form so the quantizers stay bit-exact.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let shifted = (x + 12_582_912.0).to_bits() as i32;
    (shifted & 0x007f_ffff) - 0x0040_0000
}

/// The value of largest magnitude, sign kept; the first one wins ties (ggml's strict
/// `amax < fabsf(v)`). 0 for an all-zero block.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// (min, max) starting from (FLT_MAX, -FLT_MAX), as ggml's _1 quantizers do.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Number of whole blocks in a row of `n_values` stored in `n_bytes`; panics unless the two
/// lengths describe the same whole number of blocks.
#[inline]
pub(crate) fn blocks_in_row(n_values: usize, n_bytes: usize, qk: usize, block_bytes: usize) -> usize {
    let n_blocks = n_values / qk;
    assert!(
        n_values % qk == 0 && n_bytes == n_blocks * block_bytes,
        "row of {n_values} values in {n_bytes} bytes is not whole blocks of {qk} values in {block_bytes} bytes"
    );
    n_blocks
}

/// Dequantizes a row block by block.
#[inline(always)]
pub(crate) fn dequantize_row<const QK: usize, const BLOCK_BYTES: usize>(
    src: &[u8],
    dst: &mut [f32],
    dequantize_block: impl Fn(&[u8; BLOCK_BYTES], &mut [f32; QK]),
) {
    blocks_in_row(dst.len(), src.len(), QK, BLOCK_BYTES);
    for (block, out) in src.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(QK)) {
        dequantize_block(block.try_into().unwrap(), out.try_into().unwrap());
    }
}

/// Quantizes a row block by block.
#[inline(always)]
pub(crate) fn quantize_row<const QK: usize, const BLOCK_BYTES: usize>(
    src: &[f32],
    dst: &mut [u8],
    quantize_block: impl Fn(&[f32; QK], &mut [u8; BLOCK_BYTES]),
) {
    blocks_in_row(src.len(), dst.len(), QK, BLOCK_BYTES);
    for (values, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        quantize_block(values.try_into().unwrap(), out.try_into().unwrap());
    }
}

/// sum_i dequant(row)_i * x_i: blocks are decoded into a stack array of up to 256 values
/// (exactly the values `dequantize_row` gives) and dotted with their slice of x by the
/// SIMD-dispatched f32 dot, so nothing is allocated and the dot runs at vector width.
#[inline(always)]
pub(crate) fn dot_row<const QK: usize, const BLOCK_BYTES: usize>(
    row: &[u8],
    x: &[f32],
    dequantize_block: impl Fn(&[u8; BLOCK_BYTES], &mut [f32; QK]),
) -> f32 {
    const CHUNK: usize = 256;
    let blocks_per_chunk = (CHUNK / QK).max(1);
    blocks_in_row(x.len(), row.len(), QK, BLOCK_BYTES);
    let mut weights = [0.0f32; CHUNK];
    let mut sum = 0.0f32;
    for (blocks, xs) in row.chunks(BLOCK_BYTES * blocks_per_chunk).zip(x.chunks(QK * blocks_per_chunk)) {
        let weights = &mut weights[..xs.len()];
        for (block, out) in blocks.chunks_exact(BLOCK_BYTES).zip(weights.chunks_exact_mut(QK)) {
            dequantize_block(block.try_into().unwrap(), out.try_into().unwrap());
        }
        sum += crate::cpu::dot(weights, xs);
    }
    sum
}
