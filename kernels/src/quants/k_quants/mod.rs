//! The k-quants: super-blocks of QK_K = 256 weights split into sub-blocks of 16 or 32, each
//! sub-block with its own small integer scale (and for some types a min), those integer scales
//! in turn scaled by one or two f16 numbers for the whole super-block.
//!
//! Every layout here splits a super-block into halves of 128 weights and packs the low bits of
//! a half's weights in 32-byte (or 64-byte) strides: byte l of a stride carries weight l of
//! several consecutive 32-weight groups, at different bit shifts. So weights that share a byte
//! are 32 apart, never neighbours.
//!
//! Quantizers for Q2_K..Q6_K (ggml's quantize_row_q*_K_ref) are not written yet; Q8_K, the
//! activation format, has one.

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_k;

/// Weights per super-block.
pub const QK_K: usize = 256;

/// Bytes of the packed 6-bit scales and mins of Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// The 6-bit (scale, min) of 32-weight group j (0..8) of Q4_K / Q5_K (ggml's get_scale_min_k4).
/// Groups 0..4 sit in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); groups 4..8 keep
/// their low 4 bits in the nibbles of bytes 8..12 and their top 2 bits in the otherwise unused
/// top 2 bits of bytes 0..8.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        let scale = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
        let min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        (scale, min)
    }
}
