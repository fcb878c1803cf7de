//! Advanced SIMD (NEON) kernels for aarch64: the integer dot products of the 32-block types
//! with 8-bit activations, with the same arithmetic as the AVX2 ones (widening i8 multiplies,
//! pairwise adds into i32), in baseline NEON without the optional dot-product extension.
//! Compile-checked in CI for aarch64-unknown-linux-gnu; only the x86-64 variants run there.

use std::arch::aarch64::*;

use crate::quants::{q4_0, q4_1, q8_0, q8_1};

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    half::f16::from_le_bytes([*p, *p.add(1)]).to_f32()
}

/// Σ x·y over 16 signed byte pairs, as 4 i32 partial sums.
#[inline(always)]
unsafe fn dot16(x: int8x16_t, y: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(x), vget_low_s8(y));
    let hi = vmull_s8(vget_high_s8(x), vget_high_s8(y));
    vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

fn blocks(row: &[u8], row_block: usize, act: &[u8], act_block: usize) -> usize {
    let n = row.len() / row_block;
    assert!(row.len() == n * row_block && act.len() == n * act_block, "vec_dot: {} weight bytes and {} activation bytes are not the same number of blocks", row.len(), act.len());
    n
}

/// The 32 levels of a nibble-packed block: weights 0..16 (low nibbles), 16..32 (high).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let packed = vld1q_u8(p);
    (vandq_u8(packed, vdupq_n_u8(0x0f)), vshrq_n_u8(packed, 4))
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_0_q8_1(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q4_0::BLOCK_BYTES, act, q8_1::BLOCK_BYTES);
    let mut sum = 0.0f32;
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q4_0::BLOCK_BYTES), act.as_ptr().add(i * q8_1::BLOCK_BYTES));
        let (lo, hi) = nibbles(w.add(2));
        let eight = vdupq_n_s8(8);
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
        let ints = vaddq_s32(dot16(lo, vld1q_s8(a.add(4) as *const i8)), dot16(hi, vld1q_s8(a.add(20) as *const i8)));
        sum += vaddvq_s32(ints) as f32 * (f16_at(w) * f16_at(a));
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_1_q8_1(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q4_1::BLOCK_BYTES, act, q8_1::BLOCK_BYTES);
    let mut sum = 0.0f32;
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q4_1::BLOCK_BYTES), act.as_ptr().add(i * q8_1::BLOCK_BYTES));
        let (lo, hi) = nibbles(w.add(4));
        let ints = vaddq_s32(
            dot16(vreinterpretq_s8_u8(lo), vld1q_s8(a.add(4) as *const i8)),
            dot16(vreinterpretq_s8_u8(hi), vld1q_s8(a.add(20) as *const i8)),
        );
        sum += vaddvq_s32(ints) as f32 * (f16_at(w) * f16_at(a)) + f16_at(w.add(2)) * f16_at(a.add(2));
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q8_0_q8_0(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q8_0::BLOCK_BYTES, act, q8_0::BLOCK_BYTES);
    let mut sum = 0.0f32;
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q8_0::BLOCK_BYTES), act.as_ptr().add(i * q8_0::BLOCK_BYTES));
        let ints = vaddq_s32(
            dot16(vld1q_s8(w.add(2) as *const i8), vld1q_s8(a.add(2) as *const i8)),
            dot16(vld1q_s8(w.add(18) as *const i8), vld1q_s8(a.add(18) as *const i8)),
        );
        sum += vaddvq_s32(ints) as f32 * (f16_at(w) * f16_at(a));
    }
    sum
}
