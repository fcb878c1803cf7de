//! The unquantized types: F32, F16 (IEEE half) and BF16 (the top 16 bits of an f32).
//! A "block" is one value, stored little-endian.

use half::f16;

use crate::cpu::dot;

/// Values decoded onto the stack at a time by the dot products.
const CHUNK: usize = 256;

fn decode_row<const WIDTH: usize>(src: &[u8], dst: &mut [f32], decode: impl Fn([u8; WIDTH]) -> f32) {
    assert_eq!(src.len(), dst.len() * WIDTH, "{} values need {} bytes, got {}", dst.len(), dst.len() * WIDTH, src.len());
    for (bytes, out) in src.chunks_exact(WIDTH).zip(dst) {
        *out = decode(bytes.try_into().unwrap());
    }
}

fn encode_row<const WIDTH: usize>(src: &[f32], dst: &mut [u8], encode: impl Fn(f32) -> [u8; WIDTH]) {
    assert_eq!(dst.len(), src.len() * WIDTH, "{} values need {} bytes, got {}", src.len(), src.len() * WIDTH, dst.len());
    for (&value, out) in src.iter().zip(dst.chunks_exact_mut(WIDTH)) {
        out.copy_from_slice(&encode(value));
    }
}

fn dot_row<const WIDTH: usize>(row: &[u8], x: &[f32], decode: impl Fn([u8; WIDTH]) -> f32) -> f32 {
    assert_eq!(row.len(), x.len() * WIDTH, "{} values need {} bytes, got {}", x.len(), x.len() * WIDTH, row.len());
    let mut values = [0.0f32; CHUNK];
    let mut sum = 0.0f32;
    for (bytes, xs) in row.chunks(CHUNK * WIDTH).zip(x.chunks(CHUNK)) {
        let values = &mut values[..xs.len()];
        decode_row(bytes, values, &decode);
        sum += dot(values, xs);
    }
    sum
}

// ---- F32

pub fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    decode_row(src, dst, f32::from_le_bytes)
}

pub fn f32_from_f32(src: &[f32], dst: &mut [u8]) {
    encode_row(src, dst, f32::to_le_bytes)
}

pub fn f32_dot(row: &[u8], x: &[f32]) -> f32 {
    dot_row(row, x, f32::from_le_bytes)
}

// ---- F16

fn f16_decode(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

/// Round to nearest even, overflow to inf, like ggml_fp32_to_fp16_row.
fn f16_encode(value: f32) -> [u8; 2] {
    f16::from_f32(value).to_le_bytes()
}

pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    decode_row(src, dst, f16_decode)
}

pub fn f16_from_f32(src: &[f32], dst: &mut [u8]) {
    encode_row(src, dst, f16_encode)
}

pub fn f16_dot(row: &[u8], x: &[f32]) -> f32 {
    dot_row(row, x, f16_decode)
}

// ---- BF16

fn bf16_decode(bytes: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(bytes) as u32) << 16)
}

/// ggml_compute_fp32_to_bf16: a NaN keeps its top bits and is forced quiet (setting the
/// mantissa's top bit also keeps a NaN whose payload lived only in the dropped low bits from
/// turning into inf); everything else rounds to nearest, ties to even, on the 16 dropped bits.
pub fn fp32_to_bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let round_to_even = 0x7fff + ((bits >> 16) & 1);
    // No overflow: the largest finite magnitude 0x7f7fffff rounds up to inf, 0x7f80...
    ((bits + round_to_even) >> 16) as u16
}

fn bf16_encode(value: f32) -> [u8; 2] {
    fp32_to_bf16_bits(value).to_le_bytes()
}

pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    decode_row(src, dst, bf16_decode)
}

pub fn bf16_from_f32(src: &[f32], dst: &mut [u8]) {
    encode_row(src, dst, bf16_encode)
}

pub fn bf16_dot(row: &[u8], x: &[f32]) -> f32 {
    dot_row(row, x, bf16_decode)
}
