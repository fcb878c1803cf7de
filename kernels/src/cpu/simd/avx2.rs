//! AVX2 + FMA + F16C kernels: the integer dot products of each weight type with its 8-bit
//! activation type (the arithmetic of ggml's ggml_vec_dot_*_AVX2), and the float dots.
//!
//! The integer core is `_mm256_maddubs_epi16`: 32 unsigned × signed byte products, summed in
//! pairs to 16 i16, then `_mm256_madd_epi16` sums pairs again to 8 i32 (times a per-group
//! scale where the type has one). Signed weights use |w| and sign(w)·a, so the unsigned operand
//! is the weight. No i16 sum overflows: |w| ≤ 63 and |a| ≤ 127 bound a pair by 16002.
//!
//! Every function here is `unsafe` only because of its `target_feature`: the dispatcher in
//! `simd/mod.rs` hands them out only after detecting the features. Lengths are asserted.

use std::arch::x86_64::*;

use crate::quants::k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k, q8_k, QK_K};
use crate::quants::{q4_0, q4_1, q5_0, q5_1, q8_0, q8_1};

/// The f16 at `p`, widened by the F16C unit.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(f16_pair(u16::from_le_bytes([*p, *p.add(1)]) as u32))
}

/// The two f16 at `p` (a block's d and m, or Q8_1's d and s) widened: lanes [first, second].
#[inline(always)]
unsafe fn f16_pair_at(p: *const u8) -> __m128 {
    f16_pair(u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]))
}

/// Two f16 in a u32 → [low, high, 0, 0].
#[inline(always)]
unsafe fn f16_pair(bits: u32) -> __m128 {
    f16_quad(bits as u64)
}

/// Four f16 in a u64 → four f32, lowest first. In asm because the compiler, seeing that only
/// the low lanes of `vcvtph2ps` matter, turns any zero-extending move into `vpinsrw` on a
/// register of its choosing, which merges with that register's old value: it picked the
/// loop's accumulator, chaining every block to the previous one's sum (3x slower loops).
#[inline(always)]
unsafe fn f16_quad(bits: u64) -> __m128 {
    let out: __m128;
    std::arch::asm!(
        "vmovq {x}, {bits}",
        "vcvtph2ps {x}, {x}",
        bits = in(reg) bits,
        x = out(xmm_reg) out,
        options(pure, nomem, nostack, preserves_flags),
    );
    out
}

#[inline(always)]
unsafe fn f32_at(p: *const u8) -> f32 {
    f32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)])
}

/// The sum of 8 lanes.
#[inline(always)]
pub(in crate::cpu) unsafe fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then high nibbles (the order of
/// the weights in the 32-blocks: byte j holds weights j and j + 16).
/// The 16 bytes go to both halves in the load itself; one variable shift then moves the
/// upper half's high nibbles down (two vector operations where a shift and an insert took three).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let high_down = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(high_down, _mm256_set1_epi8(0x0f))
}

/// Byte j = 0xFF where bit j of the little-endian u32 at `p` is set, else 0.
#[inline(always)]
unsafe fn bit_mask_bytes(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(others, _mm256_set1_epi64x(-1))
}

/// Each 16-bit lane shifted right by `count` bits (AVX2 has no per-lane 16-bit variable shift).
#[inline(always)]
unsafe fn shr16(x: __m256i, count: impl Into<i64>) -> __m256i {
    _mm256_srl_epi16(x, _mm_cvtsi64_si128(count.into()))
}

/// acc + Σ u·s over 32 byte pairs (u unsigned ≤ 127, s signed), as 8 i32 partial sums:
/// `vpdpbusd` where VNNI (the kernels' AVX-512 variants), else `maddubs` + `madd` + add.
/// The same integers either way: no i16 pair sum of these operands saturates.
#[inline(always)]
unsafe fn add_dot_u8_i8<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(acc, u, s)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }
}

/// Σ u·s over 32 byte pairs (u unsigned ≤ 127, s signed), as 8 i32 partial sums.
#[inline(always)]
unsafe fn dot_u8_i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    add_dot_u8_i8::<VNNI>(_mm256_setzero_si256(), u, s)
}

/// acc + Σ x·y over 32 signed byte pairs, as 8 i32 partial sums.
#[inline(always)]
unsafe fn add_dot_i8_i8<const VNNI: bool>(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
    add_dot_u8_i8::<VNNI>(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Defines a kernel twice from one body: `$name` with AVX2's features, where the body's
/// constant `VNNI` is false, and `$vnni_name` with AVX-512 VNNI's, where it is true, so the
/// byte dot products above take `vpdpbusd`. Everything else compiles the same for both.
macro_rules! with_vnni_variant {
    ($(#[$attr:meta])* pub unsafe fn $name:ident / $vnni_name:ident ($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$attr])*
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            const VNNI: bool = false;
            $body
        }

        #[doc = concat!("[`", stringify!($name), "`] with AVX-512 VNNI.")]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $vnni_name($($arg: $ty),*) -> $ret {
            const VNNI: bool = true;
            $body
        }
    };
}

/// How far ahead of the block being computed the weights are prefetched. The hardware
/// prefetchers alone keep too few loads in flight when a matvec streams a matrix larger
/// than the caches: measured on a 107 MB q8_0 matrix, 8.6 GB/s without and 11.2 GB/s (the
/// machine reads 12) with 2 KiB of lead (benches/kernels.rs, matvec_q8_memory).
const PREFETCH_AHEAD: usize = 2048;

/// The lead for the kernels that go through their bytes fastest (the interleaved groups,
/// 16-bit float rows): 1 KiB beats 2 KiB there (matvec_q8_memory, one thread: q8_0 groups
/// 11.3-12.2 -> 14.7 GiB/s, q4_K groups 10.4-12.1 -> 13.5; F16 decode of SmolLM2 +11%),
/// where the row-by-row kernels lose a little.
const PREFETCH_AHEAD_FAST: usize = 1024;

/// Prefetches the cache lines `LEAD` bytes past a block of `bytes` at `p`. Only a hint:
/// addresses past the end of the row are never dereferenced.
#[inline(always)]
unsafe fn prefetch_ahead_by<const LEAD: usize>(p: *const u8, bytes: usize) {
    let mut offset = 0;
    while offset < bytes {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(LEAD + offset) as *const i8);
        offset += 64;
    }
}

#[inline(always)]
unsafe fn prefetch_ahead(p: *const u8, bytes: usize) {
    prefetch_ahead_by::<PREFETCH_AHEAD>(p, bytes)
}

/// The 4 bytes at `p` (activation levels, or two i16 sums) in every 32-bit lane: what a
/// group kernel multiplies the same 4 bytes of 8 rows by.
#[inline(always)]
unsafe fn broadcast_4_bytes(p: *const u8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Number of blocks, after checking that weights and activations describe the same length.
fn blocks(row: &[u8], row_block: usize, act: &[u8], act_block: usize) -> usize {
    let n = row.len() / row_block;
    assert!(row.len() == n * row_block && act.len() == n * act_block, "vec_dot: {} weight bytes and {} activation bytes are not the same number of blocks", row.len(), act.len());
    n
}

// ---- 32-value blocks against Q8_0 / Q8_1

/// The four 32-block types against Q8_1. Each weight is d·q + c with an unsigned level q and
/// a per-block constant c: the stored minimum m (Q4_1, Q5_1), or a fixed offset times d
/// (-8·d for Q4_0, -16·d for Q5_0, so their levels also go unsigned into `maddubs`). The
/// constant's share, c·Σa, costs one multiply per block through Q8_1's s = d_a·Σq_a.
/// `levels(w)` gives a block's 32 levels in weight order.
///
/// Two rows at once: each activation block is loaded and its scales widened once for both,
/// and both rows' scales share one conversion and one multiply. One row alone is the pair
/// of that row with itself (in a matvec only the odd row of a range takes that path), so a
/// row gets the same bits whichever way it is computed.
#[inline(always)]
unsafe fn against_q8_1_pair<const VNNI: bool>(rows: [&[u8]; 2], act: &[u8], block_bytes: usize, offset: Option<f32>, levels: impl Fn(*const u8) -> __m256i) -> [f32; 2] {
    let n = blocks(rows[0], block_bytes, act, q8_1::BLOCK_BYTES);
    assert_eq!(rows[1].len(), rows[0].len(), "vec_dot pair: rows of different lengths");
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut constants = _mm_setzero_ps();
    for i in 0..n {
        let (w0, w1, a) = (rows[0].as_ptr().add(i * block_bytes), rows[1].as_ptr().add(i * block_bytes), act.as_ptr().add(i * q8_1::BLOCK_BYTES));
        prefetch_ahead(w0, block_bytes);
        prefetch_ahead(w1, block_bytes);
        let act_scales = f16_pair_at(a); // [da, s, 0, 0]
        let act_scales = _mm_unpacklo_ps(act_scales, act_scales); // [da, da, s, s]
        let weight_scales = match offset {
            // [d0, d1, d0, d1]
            Some(_) => f16_quad(u16::from_le_bytes([*w0, *w0.add(1)]) as u64 * 0x0001_0000_0001 | (u16::from_le_bytes([*w1, *w1.add(1)]) as u64 * 0x0001_0000_0001) << 16),
            // [d0, m0, d1, m1] → [d0, d1, m0, m1]
            None => {
                let dm = f16_quad(u32::from_le_bytes([*w0, *w0.add(1), *w0.add(2), *w0.add(3)]) as u64 | (u32::from_le_bytes([*w1, *w1.add(1), *w1.add(2), *w1.add(3)]) as u64) << 32);
                _mm_shuffle_ps::<0b11_01_10_00>(dm, dm)
            }
        };
        let products = _mm_mul_ps(weight_scales, act_scales); // [d0·da, d1·da, c0·s, c1·s]
        constants = _mm_add_ps(constants, products);
        let products = _mm256_castps128_ps256(products);
        let d = [_mm256_broadcastss_ps(_mm256_castps256_ps128(products)), _mm256_permutevar8x32_ps(products, _mm256_set1_epi32(1))];
        let x = load(a.add(4));
        for (r, w) in [w0, w1].into_iter().enumerate() {
            acc[r] = _mm256_fmadd_ps(d[r], _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(levels(w), x)), acc[r]);
        }
    }
    let scale = offset.unwrap_or(1.0);
    [hsum(acc[0]) + scale * _mm_cvtss_f32(_mm_movehl_ps(constants, constants)), hsum(acc[1]) + scale * _mm_cvtss_f32(_mm_shuffle_ps::<3>(constants, constants))]
}

with_vnni_variant! {
    pub unsafe fn q4_0_q8_1_pair / q4_0_q8_1_pair_vnni(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2] {
        against_q8_1_pair::<VNNI>([row0, row1], act, q4_0::BLOCK_BYTES, Some(-8.0), |w| nibbles(w.add(2)))
    }
}

with_vnni_variant! {
    pub unsafe fn q4_1_q8_1_pair / q4_1_q8_1_pair_vnni(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2] {
        against_q8_1_pair::<VNNI>([row0, row1], act, q4_1::BLOCK_BYTES, None, |w| nibbles(w.add(4)))
    }
}

with_vnni_variant! {
    pub unsafe fn q5_0_q8_1_pair / q5_0_q8_1_pair_vnni(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2] {
        against_q8_1_pair::<VNNI>([row0, row1], act, q5_0::BLOCK_BYTES, Some(-16.0), |w| five_bit_levels(w.add(2), w.add(6)))
    }
}

with_vnni_variant! {
    pub unsafe fn q5_1_q8_1_pair / q5_1_q8_1_pair_vnni(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2] {
        against_q8_1_pair::<VNNI>([row0, row1], act, q5_1::BLOCK_BYTES, None, |w| five_bit_levels(w.add(4), w.add(8)))
    }
}

/// The end of a group block against a Q8_1 block: `sums` (lane r: row r's Σ level·a) scaled
/// by the rows' f16 scales at `w` times the activation's d, and the rows' f16 offset factors
/// at `offsets` (their scales again for Q4_0/Q5_0, their mins for Q4_1) times the
/// activation's s gathered for the offset term.
#[inline(always)]
unsafe fn accumulate_group_block(w: *const u8, offsets: *const u8, a: *const u8, sums: __m256i, acc: &mut __m256, offset_acc: &mut __m256) {
    let weight_scales = _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i));
    let offset_factors = _mm256_cvtph_ps(_mm_loadu_si128(offsets as *const __m128i));
    let act_scales = f16_pair_at(a); // [da, s, 0, 0]
    let da = _mm256_broadcastss_ps(act_scales);
    let s = _mm256_broadcastss_ps(_mm_movehdup_ps(act_scales));
    *acc = _mm256_fmadd_ps(_mm256_mul_ps(weight_scales, da), _mm256_cvtepi32_ps(sums), *acc);
    *offset_acc = _mm256_fmadd_ps(offset_factors, s, *offset_acc);
}

/// Σ level·a of a group block of 4-bit levels (Q4_0, Q4_1) against a Q8_1 block: 4 chunks of
/// 32 bytes at `qs` holding bytes 4c..4c+4 of each row, low nibbles values 4c.., high
/// nibbles 16 + 4c... Eight `maddubs` products (each pair ≤ 2·15·127) add up in i16 without
/// overflow (≤ 30480). VNNI adds each product into the i32 sums directly.
#[inline(always)]
unsafe fn nibble_group_sums<const VNNI: bool>(qs: *const u8, a: *const u8) -> __m256i {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    let mut sums = _mm256_setzero_si256();
    for c in 0..4 {
        let quants = load(qs.add(32 * c));
        let lo = _mm256_and_si256(quants, low_nibbles);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(quants), low_nibbles);
        let a_lo = broadcast_4_bytes(a.add(4 + 4 * c));
        let a_hi = broadcast_4_bytes(a.add(4 + 16 + 4 * c));
        sums = if VNNI {
            _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(sums, lo, a_lo), hi, a_hi)
        } else {
            _mm256_add_epi16(sums, _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_maddubs_epi16(hi, a_hi)))
        };
    }
    if VNNI {
        sums
    } else {
        _mm256_madd_epi16(sums, _mm256_set1_epi16(1))
    }
}

/// The Q8_1 family's group kernels: per group block (8 rows of `block_bytes` each), the
/// type's `sums` of level·a (lane r: row r) against the activation block, accumulated by
/// [`accumulate_group_block`] with the rows' offset factors at `offsets_at` in the group
/// block; returns Σ + `offset_scale`·Σ offset·s (−8 or −16 where the offset is the scale
/// times that, 1 where the rows carry their mins).
#[inline(always)]
unsafe fn q8_1_group_kernel(group: &[u8], act: &[u8], block_bytes: usize, offsets_at: usize, offset_scale: f32, sums: impl Fn(*const u8, *const u8) -> __m256i) -> [f32; 8] {
    let group_block = 8 * block_bytes;
    let n = blocks(group, group_block, act, q8_1::BLOCK_BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut offset_acc = _mm256_setzero_ps();
    for i in 0..n {
        let (w, a) = (group.as_ptr().add(i * group_block), act.as_ptr().add(i * q8_1::BLOCK_BYTES));
        prefetch_ahead_by::<PREFETCH_AHEAD_FAST>(w, group_block);
        accumulate_group_block(w, w.add(offsets_at), a, sums(w, a), &mut acc, &mut offset_acc);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_fmadd_ps(offset_acc, _mm256_set1_ps(offset_scale), acc));
    out
}

with_vnni_variant! {
    /// Eight Q4_0 rows interleaved (`cpu::interleave`) against Q8_1 activations: lane r of every
    /// vector is row r. A block of the group is the 8 rows' f16 scales, then the nibbles
    /// ([`nibble_group_sums`]): a block costs one widening, one conversion and one fused
    /// multiply-add for all 8 rows.
    pub unsafe fn q4_0x8_q8_1 / q4_0x8_q8_1_vnni(group: &[u8], act: &[u8]) -> [f32; 8] {
        q8_1_group_kernel(group, act, q4_0::BLOCK_BYTES, 0, -8.0, |w, a| nibble_group_sums::<VNNI>(w.add(16), a))
    }
}

with_vnni_variant! {
    /// Eight Q4_1 rows interleaved against Q8_1 activations: as [`q4_0x8_q8_1`], with the 8
    /// rows' mins after their scales; w = d·level + m, so the offset term is Σ m·s.
    pub unsafe fn q4_1x8_q8_1 / q4_1x8_q8_1_vnni(group: &[u8], act: &[u8]) -> [f32; 8] {
        q8_1_group_kernel(group, act, q4_1::BLOCK_BYTES, 16, 1.0, |w, a| nibble_group_sums::<VNNI>(w.add(32), a))
    }
}

/// Nibbles at `qs` with the fifth bits of the little-endian u32 at `qh` on top.
#[inline(always)]
unsafe fn five_bit_levels(qh: *const u8, qs: *const u8) -> __m256i {
    _mm256_or_si256(nibbles(qs), _mm256_and_si256(bit_mask_bytes(qh), _mm256_set1_epi8(0x10)))
}

with_vnni_variant! {
    pub unsafe fn q4_0_q8_1 / q4_0_q8_1_vnni(row: &[u8], act: &[u8]) -> f32 {
        against_q8_1_pair::<VNNI>([row, row], act, q4_0::BLOCK_BYTES, Some(-8.0), |w| nibbles(w.add(2)))[0]
    }
}

with_vnni_variant! {
    pub unsafe fn q4_1_q8_1 / q4_1_q8_1_vnni(row: &[u8], act: &[u8]) -> f32 {
        against_q8_1_pair::<VNNI>([row, row], act, q4_1::BLOCK_BYTES, None, |w| nibbles(w.add(4)))[0]
    }
}

with_vnni_variant! {
    pub unsafe fn q5_0_q8_1 / q5_0_q8_1_vnni(row: &[u8], act: &[u8]) -> f32 {
        against_q8_1_pair::<VNNI>([row, row], act, q5_0::BLOCK_BYTES, Some(-16.0), |w| five_bit_levels(w.add(2), w.add(6)))[0]
    }
}

with_vnni_variant! {
    pub unsafe fn q5_1_q8_1 / q5_1_q8_1_vnni(row: &[u8], act: &[u8]) -> f32 {
        against_q8_1_pair::<VNNI>([row, row], act, q5_1::BLOCK_BYTES, None, |w| five_bit_levels(w.add(4), w.add(8)))[0]
    }
}

with_vnni_variant! {
    pub unsafe fn q8_0_q8_0 / q8_0_q8_0_vnni(row: &[u8], act: &[u8]) -> f32 {
        let n = blocks(row, q8_0::BLOCK_BYTES, act, q8_0::BLOCK_BYTES);
        let mut acc = _mm256_setzero_ps();
        for i in 0..n {
            let (w, a) = (row.as_ptr().add(i * q8_0::BLOCK_BYTES), act.as_ptr().add(i * q8_0::BLOCK_BYTES));
            prefetch_ahead(w, q8_0::BLOCK_BYTES);
            let d = _mm256_set1_ps(f16_at(w) * f16_at(a));
            let sums = add_dot_i8_i8::<VNNI>(_mm256_setzero_si256(), load(w.add(2)), load(a.add(2)));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
        }
        hsum(acc)
    }
}

/// Σ level·a of a group block of 5-bit levels (Q5_0, Q5_1) against a Q8_1 block: the 8 rows'
/// qh at `qh` (lane r: row r's fifth bits, bit j for value j), then the nibbles at `qs` as in
/// [`nibble_group_sums`], each level's fifth bit added from qh: byte e of lane r takes bit
/// 4c + e (low nibbles) or 16 + 4c + e (high) of qh. Levels reach 31, so i16 sums take four
/// products (≤ 31496), not eight.
#[inline(always)]
unsafe fn five_bit_group_sums<const VNNI: bool>(qh: *const u8, qs: *const u8, a: *const u8) -> __m256i {
    let low_nibbles = _mm256_set1_epi8(0x0f);
    let fifth_bit = _mm256_set1_epi8(0x10);
    // Within each lane, byte e tests bit e of the lane's byte 0 (low) or byte 2 (high).
    let byte0 = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    let byte2 = _mm256_add_epi8(byte0, _mm256_set1_epi8(2));
    let bit_e = _mm256_set1_epi32(0x0804_0201);
    let spread = |bits: __m256i, from: __m256i| {
        let masked = _mm256_and_si256(_mm256_shuffle_epi8(bits, from), bit_e);
        _mm256_and_si256(_mm256_cmpeq_epi8(masked, bit_e), fifth_bit)
    };
    let qh = load(qh);
    let mut sums = _mm256_setzero_si256();
    for half in 0..2 {
        let mut half_sums = _mm256_setzero_si256();
        for c in 2 * half..2 * half + 2 {
            let quants = load(qs.add(32 * c));
            let bits = _mm256_srlv_epi32(qh, _mm256_set1_epi32(4 * c as i32));
            let lo = _mm256_or_si256(_mm256_and_si256(quants, low_nibbles), spread(bits, byte0));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(quants), low_nibbles), spread(bits, byte2));
            let a_lo = broadcast_4_bytes(a.add(4 + 4 * c));
            let a_hi = broadcast_4_bytes(a.add(4 + 16 + 4 * c));
            if VNNI {
                sums = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(sums, lo, a_lo), hi, a_hi);
            } else {
                half_sums = _mm256_add_epi16(half_sums, _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_maddubs_epi16(hi, a_hi)));
            }
        }
        if !VNNI {
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(half_sums, _mm256_set1_epi16(1)));
        }
    }
    sums
}

with_vnni_variant! {
    /// Eight Q5_0 rows interleaved against Q8_1 activations: the 8 rows' scales, then their qh
    /// and nibbles ([`five_bit_group_sums`]); the offset term is −16·Σ d·s.
    pub unsafe fn q5_0x8_q8_1 / q5_0x8_q8_1_vnni(group: &[u8], act: &[u8]) -> [f32; 8] {
        q8_1_group_kernel(group, act, q5_0::BLOCK_BYTES, 0, -16.0, |w, a| five_bit_group_sums::<VNNI>(w.add(16), w.add(48), a))
    }
}

with_vnni_variant! {
    /// Eight Q5_1 rows interleaved against Q8_1 activations: as [`q5_0x8_q8_1`], with the 8
    /// rows' mins after their scales; the offset term is Σ m·s.
    pub unsafe fn q5_1x8_q8_1 / q5_1x8_q8_1_vnni(group: &[u8], act: &[u8]) -> [f32; 8] {
        q8_1_group_kernel(group, act, q5_1::BLOCK_BYTES, 16, 1.0, |w, a| five_bit_group_sums::<VNNI>(w.add(32), w.add(64), a))
    }
}

with_vnni_variant! {
    /// Eight Q8_0 rows interleaved (`cpu::interleave`) against Q8_0 activations, lane r holding
    /// row r: a block of the group is the 8 rows' f16 scales, then 8 chunks of 32 bytes holding
    /// bytes 4c..4c+4 of each row (values 4c..). The products of signed levels reach 2·127² per
    /// i16 pair, so each chunk widens to i32 on its own.
    pub unsafe fn q8_0x8_q8_0 / q8_0x8_q8_0_vnni(group: &[u8], act: &[u8]) -> [f32; 8] {
        const GROUP_BLOCK: usize = 8 * q8_0::BLOCK_BYTES;
        let n = blocks(group, GROUP_BLOCK, act, q8_0::BLOCK_BYTES);
        let mut acc = _mm256_setzero_ps();
        for i in 0..n {
            let (w, a) = (group.as_ptr().add(i * GROUP_BLOCK), act.as_ptr().add(i * q8_0::BLOCK_BYTES));
            prefetch_ahead_by::<PREFETCH_AHEAD_FAST>(w, GROUP_BLOCK);
            let mut sums = _mm256_setzero_si256();
            for c in 0..8 {
                let quants = load(w.add(16 + 32 * c));
                let a = broadcast_4_bytes(a.add(2 + 4 * c));
                sums = add_dot_i8_i8::<VNNI>(sums, quants, a);
            }
            let weight_scales = _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i));
            let da = _mm256_broadcastss_ps(f16_pair(u16::from_le_bytes([*a, *a.add(1)]) as u32));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(weight_scales, da), _mm256_cvtepi32_ps(sums), acc);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }
}

// ---- k-quants against Q8_K
//
// A Q8_K block: d: f32 at 0, qs at 4, bsums (i16 sums of each 16 qs) at 4 + 256.

const Q8K_QS: usize = 4;
const Q8K_BSUMS: usize = 4 + QK_K;

#[inline(always)]
unsafe fn bsum(a: *const u8, group: usize) -> i32 {
    let p = a.add(Q8K_BSUMS + 2 * group);
    i16::from_le_bytes([*p, *p.add(1)]) as i32
}

/// 32 levels (unsigned) × 32 activations, the first 16 products scaled by `scale_lo`, the
/// last 16 by `scale_hi`, as 8 i32 partial sums. `offset`·a is subtracted from each product
/// first (for types whose levels are stored biased).
#[inline(always)]
unsafe fn scaled_dot(levels: __m256i, a: __m256i, offset: Option<__m256i>, scale_lo: i16, scale_hi: i16) -> __m256i {
    let mut products = _mm256_maddubs_epi16(levels, a);
    if let Some(offset) = offset {
        products = _mm256_sub_epi16(products, _mm256_maddubs_epi16(offset, a));
    }
    let scales = _mm256_set_m128i(_mm_set1_epi16(scale_hi), _mm_set1_epi16(scale_lo));
    _mm256_madd_epi16(scales, products)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q2_k_q8_k(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q2_k::BLOCK_BYTES, act, q8_k::BLOCK_BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    let m3 = _mm256_set1_epi8(3);
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q2_k::BLOCK_BYTES), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead(w, q2_k::BLOCK_BYTES);
        let scales = std::slice::from_raw_parts(w, 16);
        let da = f32_at(a);
        let min_sum: i32 = (0..16).map(|g| (scales[g] >> 4) as i32 * bsum(a, g)).sum();
        mins -= da * f16_at(w.add(82)) * min_sum as f32;
        let mut sum = _mm256_setzero_si256();
        for half in 0..2 {
            let bits = load(w.add(16 + 32 * half));
            for s in 0..4 {
                let levels = _mm256_and_si256(shr16(bits, 2 * s as i16), m3);
                let g = 8 * half + 2 * s;
                let q8 = load(a.add(Q8K_QS + 128 * half + 32 * s));
                sum = _mm256_add_epi32(sum, scaled_dot(levels, q8, None, (scales[g] & 15) as i16, (scales[g + 1] & 15) as i16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(da * f16_at(w.add(80))), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q3_k_q8_k(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q3_k::BLOCK_BYTES, act, q8_k::BLOCK_BYTES);
    let mut acc = _mm256_setzero_ps();
    let m3 = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q3_k::BLOCK_BYTES), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead(w, q3_k::BLOCK_BYTES);
        let scales = q3_k::unpack_scales(std::slice::from_raw_parts(w.add(96), 12));
        // A clear high bit means level - 4: subtract 4·a there.
        let high_clear = _mm256_xor_si256(load(w), _mm256_set1_epi8(-1));
        let mut sum = _mm256_setzero_si256();
        for half in 0..2 {
            let bits = load(w.add(32 + 32 * half));
            for s in 0..4 {
                let levels = _mm256_and_si256(shr16(bits, 2 * s as i16), m3);
                let minus_4 = _mm256_slli_epi16(_mm256_and_si256(shr16(high_clear, (4 * half + s) as i16), one), 2);
                let g = 8 * half + 2 * s;
                let q8 = load(a.add(Q8K_QS + 128 * half + 32 * s));
                sum = _mm256_add_epi32(sum, scaled_dot(levels, q8, Some(minus_4), scales[g] as i16, scales[g + 1] as i16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(a) * f16_at(w.add(108))), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc)
}

/// Q4_K and Q5_K share everything but the fifth bit: 8 groups of 32 with 6-bit scales and
/// mins, groups 2c and 2c + 1 in the low and high nibbles of stride c.
#[inline(always)]
unsafe fn q45_k_q8_k<const FIFTH_BIT: bool>(row: &[u8], act: &[u8], block_bytes: usize) -> f32 {
    let n = blocks(row, block_bytes, act, q8_k::BLOCK_BYTES);
    let qs_offset = if FIFTH_BIT { 48 } else { 16 };
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * block_bytes), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead(w, block_bytes);
        let da = f32_at(a);
        let (scales, group_mins) = scales_and_mins_k4(w.add(4));
        // Σ_j min_j · Σ(a in group j): the 16 bsums summed in pairs are the 8 group sums.
        let bsums = _mm256_loadu_si256(a.add(Q8K_BSUMS) as *const __m256i);
        let group_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
        let min_dot = _mm_madd_epi16(group_mins, group_sums);
        mins = _mm_fmadd_ps(_mm_set1_ps(-da * f16_at(w.add(2))), _mm_cvtepi32_ps(min_dot), mins);
        let high = if FIFTH_BIT { load(w.add(16)) } else { _mm256_setzero_si256() };
        let mut sum = _mm256_setzero_si256();
        for c in 0..4 {
            let bits = load(w.add(qs_offset + 32 * c));
            let mut lo = _mm256_and_si256(bits, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if FIFTH_BIT {
                let bit = |j: i16| _mm256_slli_epi16(_mm256_and_si256(shr16(high, j), one), 4);
                lo = _mm256_or_si256(lo, bit(2 * c as i16));
                hi = _mm256_or_si256(hi, bit(2 * c as i16 + 1));
            }
            let q8 = a.add(Q8K_QS + 64 * c);
            let (s0, s1) = (broadcast_i16(scales, 2 * c), broadcast_i16(scales, 2 * c + 1));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s0, _mm256_maddubs_epi16(lo, load(q8))));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s1, _mm256_maddubs_epi16(hi, load(q8.add(32)))));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(da * f16_at(w)), _mm256_cvtepi32_ps(sum), acc);
    }
    let quad = _mm_add_ps(mins, _mm_movehl_ps(mins, mins));
    hsum(acc) + _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)))
}

/// The 8 six-bit scales and mins of a Q4_K/Q5_K block (12 packed bytes at `p`, see
/// `scale_min_k4`), unpacked with three masks on 32-bit words as ggml does: returns the
/// scales as 16 i16 (both 128-bit halves the same 8) and the mins as 8 i16.
#[inline(always)]
unsafe fn scales_and_mins_k4(p: *const u8) -> (__m256i, __m128i) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |k: usize| u32::from_le_bytes([*p.add(4 * k), *p.add(4 * k + 1), *p.add(4 * k + 2), *p.add(4 * k + 3)]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_0_3 = w0 & LOW6;
    let scales_4_7 = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_0_3 = w1 & LOW6;
    let mins_4_7 = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let widened = _mm256_cvtepu8_epi16(_mm_set_epi32(mins_4_7 as i32, mins_0_3 as i32, scales_4_7 as i32, scales_0_3 as i32));
    let scales = _mm256_castsi256_si128(widened);
    (_mm256_set_m128i(scales, scales), _mm256_extracti128_si256(widened, 1))
}

/// i16 lane `j` (< 8) of each 128-bit half, broadcast to all 16 lanes.
#[inline(always)]
unsafe fn broadcast_i16(v: __m256i, j: usize) -> __m256i {
    let lo = (2 * j) as i8;
    _mm256_shuffle_epi8(v, _mm256_set1_epi16(i16::from_le_bytes([lo as u8, lo as u8 + 1])))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_q8_k(row: &[u8], act: &[u8]) -> f32 {
    q45_k_q8_k::<false>(row, act, q4_k::BLOCK_BYTES)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_k_q8_k(row: &[u8], act: &[u8]) -> f32 {
    q45_k_q8_k::<true>(row, act, q5_k::BLOCK_BYTES)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_q8_k(row: &[u8], act: &[u8]) -> f32 {
    let n = blocks(row, q6_k::BLOCK_BYTES, act, q8_k::BLOCK_BYTES);
    let mut acc = _mm256_setzero_ps();
    let (m4, m2, bias) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    for i in 0..n {
        let (w, a) = (row.as_ptr().add(i * q6_k::BLOCK_BYTES), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead(w, q6_k::BLOCK_BYTES);
        let scales = std::slice::from_raw_parts(w.add(192), 16);
        let mut sum = _mm256_setzero_si256();
        for half in 0..2 {
            let low_a = load(w.add(64 * half));
            let low_b = load(w.add(64 * half + 32));
            let high = load(w.add(128 + 32 * half));
            let top = |s: i32| _mm256_slli_epi16(_mm256_and_si256(shr16(high, 2 * s as i16), m2), 4);
            let levels = [
                _mm256_or_si256(_mm256_and_si256(low_a, m4), top(0)),
                _mm256_or_si256(_mm256_and_si256(low_b, m4), top(1)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low_a, 4), m4), top(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low_b, 4), m4), top(3)),
            ];
            for (s, levels) in levels.into_iter().enumerate() {
                let g = 8 * half + 2 * s;
                let q8 = load(a.add(Q8K_QS + 128 * half + 32 * s));
                sum = _mm256_add_epi32(sum, scaled_dot(levels, q8, Some(bias), scales[g] as i8 as i16, scales[g + 1] as i8 as i16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(a) * f16_at(w.add(208))), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc)
}

/// Per 32-bit lane, the lane's byte `b` (< 4) in both i16 halves, as a byte shuffle: the low
/// byte of each half (`high == false`, zero-extended by the 0x80 above it) or the high byte
/// (`high`, for a sign-extending shift right by 8 after).
#[inline(always)]
unsafe fn lane_byte_in_halves(b: i32, high: bool) -> __m256i {
    let at = |lane: i32| {
        let byte = 4 * lane + b;
        let half = if high { (byte << 8) | 0x80 } else { byte | 0x8000 };
        half | (half << 16)
    };
    _mm256_setr_epi32(at(0), at(1), at(2), at(3), at(0), at(1), at(2), at(3))
}

/// Eight Q4_K rows interleaved (`cpu::interleave`) against Q8_K activations, lane r holding
/// row r. A group block: the 8 rows' d, their dmin, their 12 packed scale bytes as three
/// 32-byte words (lane r: row r's word), then 32 chunks of 32 bytes, chunk 8p + c holding bytes
/// 32p + 4c.. of each row's qs (low nibbles: values 64p + 4c.., sub-block 2p; high: 64p + 32
/// + 4c.., sub-block 2p + 1). The scales unpack lane-wise with ggml's three masks; each
/// sub-block's 8 chunk products add up in i16 (≤ 8·2·15·127 = 30480) and take their 8 rows'
/// scales in one `madd`, and the mins meet the activations' bsums the same way.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_kx8_q8_k(group: &[u8], act: &[u8]) -> [f32; 8] {
    const GROUP_BLOCK: usize = 8 * q4_k::BLOCK_BYTES;
    let n = blocks(group, GROUP_BLOCK, act, q8_k::BLOCK_BYTES);
    let (low6, low4, low2) = (_mm256_set1_epi32(0x3f3f_3f3f), _mm256_set1_epi32(0x0f0f_0f0f), _mm256_set1_epi32(0x0303_0303));
    let m4 = _mm256_set1_epi8(0x0f);
    let byte_of_lane = [lane_byte_in_halves(0, false), lane_byte_in_halves(1, false), lane_byte_in_halves(2, false), lane_byte_in_halves(3, false)];
    let mut acc = _mm256_setzero_ps();
    let mut min_acc = _mm256_setzero_ps();
    for i in 0..n {
        let (w, a) = (group.as_ptr().add(i * GROUP_BLOCK), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead_by::<PREFETCH_AHEAD_FAST>(w, GROUP_BLOCK);
        let (w0, w1, w2) = (load(w.add(32)), load(w.add(64)), load(w.add(96)));
        let scales = [
            _mm256_and_si256(w0, low6),
            _mm256_or_si256(_mm256_and_si256(w2, low4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w0, 6), low2), 4)),
        ];
        let mins = [
            _mm256_and_si256(w1, low6),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), low4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w1, 6), low2), 4)),
        ];
        let sub_block = |words: &[__m256i; 2], j: usize| _mm256_shuffle_epi8(words[j / 4], byte_of_lane[j % 4]);
        let mut sums = _mm256_setzero_si256();
        let mut min_sums = _mm256_setzero_si256();
        for p in 0..4 {
            let (mut lo_sums, mut hi_sums) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for c in 0..8 {
                let quants = load(w.add(128 + 32 * (8 * p + c)));
                let lo = _mm256_and_si256(quants, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(quants), m4);
                let q8 = a.add(Q8K_QS + 64 * p + 4 * c);
                lo_sums = _mm256_add_epi16(lo_sums, _mm256_maddubs_epi16(lo, broadcast_4_bytes(q8)));
                hi_sums = _mm256_add_epi16(hi_sums, _mm256_maddubs_epi16(hi, broadcast_4_bytes(q8.add(32))));
            }
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(lo_sums, sub_block(&scales, 2 * p)));
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(hi_sums, sub_block(&scales, 2 * p + 1)));
        }
        for j in 0..8 {
            // bsums 2j and 2j + 1 (the sub-block's two halves) against the min in both i16 halves.
            let bsum_pair = broadcast_4_bytes(a.add(Q8K_BSUMS + 4 * j));
            min_sums = _mm256_add_epi32(min_sums, _mm256_madd_epi16(sub_block(&mins, j), bsum_pair));
        }
        let da = _mm256_set1_ps(f32_at(a));
        let d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i)), da);
        let dmin = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(w.add(16) as *const __m128i)), da);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
        min_acc = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(min_sums), min_acc);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc, min_acc));
    out
}

/// Eight Q6_K rows interleaved against Q8_K activations, lane r holding row r. A group
/// block: the 16 i8 scales as 4 words, the levels recoded as 16 runs of three vectors
/// (`cpu::interleave`, one run per scale: 4 vectors of levels, 6-bit unsigned, stored + 32),
/// the 8 rows' d. The −32 comes back through the activations' bsums, Σ scale·32·bsum per 16
/// values. Two chunk products add up in i16 (≤ 2·2·63·128 = 32256) before their scale
/// multiplies in.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_kx8_q8_k(group: &[u8], act: &[u8]) -> [f32; 8] {
    const GROUP_BLOCK: usize = 8 * q6_k::BLOCK_BYTES;
    const SCALES: usize = 0;
    const LEVELS: usize = 8 * 16;
    const D: usize = LEVELS + 8 * q6_k::LEVEL_BYTES;
    let n = blocks(group, GROUP_BLOCK, act, q8_k::BLOCK_BYTES);
    let (low6, top2) = (_mm256_set1_epi8(0x3f), _mm256_set1_epi8(0xc0u8 as i8));
    let byte_of_lane = [lane_byte_in_halves(0, true), lane_byte_in_halves(1, true), lane_byte_in_halves(2, true), lane_byte_in_halves(3, true)];
    let mut acc = _mm256_setzero_ps();
    for i in 0..n {
        let (w, a) = (group.as_ptr().add(i * GROUP_BLOCK), act.as_ptr().add(i * q8_k::BLOCK_BYTES));
        prefetch_ahead_by::<PREFETCH_AHEAD_FAST>(w, GROUP_BLOCK);
        let mut sums = _mm256_setzero_si256();
        let mut bias_sums = _mm256_setzero_si256();
        for word in 0..4 {
            // Scales 4·word + j of the 8 rows, sign-extended into both i16 halves of each lane.
            let scale_word = load(w.add(SCALES + 32 * word));
            let scale: [__m256i; 4] = std::array::from_fn(|j| _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(scale_word, byte_of_lane[j])));
            for j in (0..4).step_by(2) {
                // Σ scale·bsum over two scales: the pair of scales against the pair of bsums.
                let pair = _mm256_blend_epi16::<0b1010_1010>(scale[j], scale[j + 1]);
                let bsum_pair = broadcast_4_bytes(a.add(Q8K_BSUMS + 2 * (4 * word + j)));
                bias_sums = _mm256_add_epi32(bias_sums, _mm256_madd_epi16(pair, bsum_pair));
            }
            for (j, scale) in scale.into_iter().enumerate() {
                let g = 4 * word + j;
                let run = w.add(LEVELS + 96 * g);
                let (v0, v1, v2) = (load(run), load(run.add(32)), load(run.add(64)));
                let tops = _mm256_or_si256(_mm256_srli_epi16::<2>(_mm256_and_si256(v2, top2)), _mm256_and_si256(v1, top2));
                let tops = _mm256_or_si256(_mm256_srli_epi16::<2>(tops), _mm256_and_si256(v0, top2));
                let levels = [_mm256_and_si256(v0, low6), _mm256_and_si256(v1, low6), _mm256_and_si256(v2, low6), _mm256_srli_epi16::<2>(tops)];
                let q8 = a.add(Q8K_QS + 16 * g);
                let product = |t: usize| _mm256_maddubs_epi16(levels[t], broadcast_4_bytes(q8.add(4 * t)));
                let (first, second) = (_mm256_add_epi16(product(0), product(1)), _mm256_add_epi16(product(2), product(3)));
                sums = _mm256_add_epi32(sums, _mm256_add_epi32(_mm256_madd_epi16(first, scale), _mm256_madd_epi16(second, scale)));
            }
        }
        let d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(w.add(D) as *const __m128i)), _mm256_set1_ps(f32_at(a)));
        let biased = _mm256_sub_epi32(sums, _mm256_slli_epi32::<5>(bias_sums));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(biased), acc);
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc);
    out
}

// ---- float weights against f32 activations

/// Σ w·x for 16-bit float weights, `widen` turning 8 of them into 8 floats. Four
/// accumulators: decode streams these rows from memory, and one FMA chain would hold the
/// loads back by the FMA latency.
#[inline(always)]
unsafe fn wide_dot(row: &[u8], x: &[f32], widen: impl Fn(__m128i) -> __m256, widen_one: impl Fn(u16) -> f32) -> f32 {
    assert_eq!(row.len(), 2 * x.len(), "16-bit float dot: {} bytes for {} values", row.len(), x.len());
    let n = x.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        prefetch_ahead_by::<PREFETCH_AHEAD_FAST>(row.as_ptr().add(2 * i), 64);
        for (j, acc) in acc.iter_mut().enumerate() {
            let w = widen(_mm_loadu_si128(row.as_ptr().add(2 * (i + 8 * j)) as *const __m128i));
            *acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let w = widen(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i));
        acc[0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.as_ptr().add(i)), acc[0]);
        i += 8;
    }
    let mut total = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        total += widen_one(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) * x[i];
        i += 1;
    }
    total
}

#[inline(always)]
unsafe fn widen_f16(h: __m128i) -> __m256 {
    _mm256_cvtph_ps(h)
}

#[inline(always)]
unsafe fn widen_bf16(h: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_f32(row: &[u8], x: &[f32]) -> f32 {
    wide_dot(row, x, |h| widen_f16(h), |h| half::f16::from_bits(h).to_f32())
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_f32(row: &[u8], x: &[f32]) -> f32 {
    wide_dot(row, x, |h| widen_bf16(h), |h| f32::from_bits((h as u32) << 16))
}

/// [`wide_dot`] of each row of `rows` (`out.len()` rows of `x.len()` values) into `out`: one
/// call for a run of rows, so decode pays no call per row (F16 decode reads ~200,000 rows a
/// token on SmolLM2).
#[inline(always)]
unsafe fn wide_dots(rows: &[u8], x: &[f32], out: &mut [f32], widen: impl Fn(__m128i) -> __m256 + Copy, widen_one: impl Fn(u16) -> f32 + Copy) {
    let row_bytes = 2 * x.len();
    assert_eq!(rows.len(), row_bytes * out.len(), "16-bit float rows: {} bytes for {} rows of {}", rows.len(), out.len(), x.len());
    if row_bytes == 0 {
        return out.fill(0.0);
    }
    for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
        *o = wide_dot(row, x, widen, widen_one);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_rows_f32(rows: &[u8], x: &[f32], out: &mut [f32]) {
    wide_dots(rows, x, out, |h| widen_f16(h), |h| half::f16::from_bits(h).to_f32())
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_rows_f32(rows: &[u8], x: &[f32], out: &mut [f32]) {
    wide_dots(rows, x, out, |h| widen_bf16(h), |h| f32::from_bits((h as u32) << 16))
}

/// The 16-bit floats of `row` widened to f32: `widen` turns 8 of them into 8 floats.
#[inline(always)]
unsafe fn widen_row(row: &[u8], out: &mut [f32], widen: impl Fn(__m128i) -> __m256, widen_one: impl Fn(u16) -> f32) {
    assert_eq!(row.len(), 2 * out.len(), "{} bytes for {} values", row.len(), out.len());
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(out.as_mut_ptr().add(i), widen(_mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i)));
        i += 8;
    }
    for (i, o) in out.iter_mut().enumerate().skip(i) {
        *o = widen_one(u16::from_le_bytes([row[2 * i], row[2 * i + 1]]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_to_f32(row: &[u8], out: &mut [f32]) {
    widen_row(row, out, |h| widen_f16(h), |h| half::f16::from_bits(h).to_f32())
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bf16_to_f32(row: &[u8], out: &mut [f32]) {
    widen_row(row, out, |h| widen_bf16(h), |h| f32::from_bits((h as u32) << 16))
}

// ---- activation quantization

/// One 32-value block to Q8_0 (`with_sum` false: d | qs) or Q8_1 (true: d | s | qs), as
/// quantize_row_q8_0/q8_1_ref but rounding halves to even (the vector unit's rounding; ggml's
/// AVX2 quantizer does the same). Lengths are the caller's: 32 values in, 34 or 36 bytes out.
#[inline(always)]
unsafe fn quantize_block_q8(x: *const f32, out: *mut u8, with_sum: bool) {
    let v = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))];
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut max = _mm256_and_ps(v[0], abs_mask);
    for v in &v[1..] {
        max = _mm256_max_ps(max, _mm256_and_ps(*v, abs_mask));
    }
    let quad = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
    let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
    let amax = _mm_cvtss_f32(_mm_max_ss(pair, _mm_movehdup_ps(pair)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // A plain loop, not `array::map`: a closure handed to std code is compiled without this
    // function's target features, and its intrinsics became calls (10% of prefill).
    let mut ints = [_mm256_setzero_si256(); 4];
    for (int, &v) in ints.iter_mut().zip(&v) {
        *int = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, id)));
    }
    let qs_offset = if with_sum { 4 } else { 2 };
    if with_sum {
        let total = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
        let quad = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        let pair = _mm_add_epi32(quad, _mm_shuffle_epi32(quad, 0b01_00_11_10));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(pair, _mm_shuffle_epi32(pair, 0b10_11_00_01)));
        let s = half::f16::from_f32(sum as f32 * d).to_le_bytes();
        *out.add(2) = s[0];
        *out.add(3) = s[1];
    }
    // i32 → i16 → i8 packs interleave the 128-bit lanes; the permute restores the order.
    let words = [_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3])];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.add(qs_offset) as *mut __m256i, ordered);
    let d_bytes = half::f16::from_f32(d).to_le_bytes();
    *out = d_bytes[0];
    *out.add(1) = d_bytes[1];
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let n = x.len() / q8_0::QK;
    assert!(x.len() == n * q8_0::QK && out.len() == n * q8_0::BLOCK_BYTES, "quantize_q8_0: {} values into {} bytes", x.len(), out.len());
    for i in 0..n {
        quantize_block_q8(x.as_ptr().add(i * q8_0::QK), out.as_mut_ptr().add(i * q8_0::BLOCK_BYTES), false);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    let n = x.len() / q8_1::QK;
    assert!(x.len() == n * q8_1::QK && out.len() == n * q8_1::BLOCK_BYTES, "quantize_q8_1: {} values into {} bytes", x.len(), out.len());
    for i in 0..n {
        quantize_block_q8(x.as_ptr().add(i * q8_1::QK), out.as_mut_ptr().add(i * q8_1::BLOCK_BYTES), true);
    }
}

// ---- attention

/// out = Σ_p w[p] · rows[p·dim ..][..dim] for dim = out.len(), a multiple of 8: 32 columns
/// at a time stay in four accumulator registers while every row streams past once.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum_f32(w: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = out.len();
    weighted_sum(w, out, rows.len(), |p, c| _mm256_loadu_ps(rows.as_ptr().add(p * dim + c)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum_f16(w: &[f32], rows: &[half::f16], out: &mut [f32]) {
    let dim = out.len();
    weighted_sum(w, out, rows.len(), |p, c| _mm256_cvtph_ps(_mm_loadu_si128(rows.as_ptr().add(p * dim + c) as *const __m128i)))
}

#[inline(always)]
unsafe fn weighted_sum(w: &[f32], out: &mut [f32], rows_len: usize, load: impl Fn(usize, usize) -> __m256) {
    let dim = out.len();
    assert!(dim % 8 == 0 && rows_len >= w.len() * dim, "weighted_sum: {} rows of {dim} in {rows_len} values", w.len());
    let mut c = 0;
    while c < dim {
        let lanes = ((dim - c) / 8).min(4);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (p, &wp) in w.iter().enumerate() {
            let weight = _mm256_set1_ps(wp);
            for (j, acc) in acc.iter_mut().enumerate().take(lanes) {
                *acc = _mm256_fmadd_ps(weight, load(p, c + 8 * j), *acc);
            }
        }
        for (j, acc) in acc.iter().enumerate().take(lanes) {
            _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * j), *acc);
        }
        c += 8 * lanes;
    }
}

/// out[p] = scale · (q · row p) for the out.len() rows of q.len() (a multiple of 8) values
/// in `rows`: the key half of attention. Four rows at a time share each load of q, and their
/// four sums are reduced together.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scaled_scores_f32(q: &[f32], rows: &[f32], scale: f32, out: &mut [f32]) {
    let dim = q.len();
    scaled_scores(q, rows.len(), scale, out, |p, c| _mm256_loadu_ps(rows.as_ptr().add(p * dim + c)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scaled_scores_f16(q: &[f32], rows: &[half::f16], scale: f32, out: &mut [f32]) {
    let dim = q.len();
    scaled_scores(q, rows.len(), scale, out, |p, c| _mm256_cvtph_ps(_mm_loadu_si128(rows.as_ptr().add(p * dim + c) as *const __m128i)))
}

#[inline(always)]
unsafe fn scaled_scores(q: &[f32], rows_len: usize, scale: f32, out: &mut [f32], load: impl Fn(usize, usize) -> __m256) {
    let dim = q.len();
    let n = out.len();
    assert!(dim % 8 == 0 && rows_len >= n * dim, "scores: {n} rows of {dim} in {rows_len} values");
    let mut p = 0;
    while p + 4 <= n {
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..dim).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(c));
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(qv, load(p + j, c), *acc);
            }
        }
        // [a0+a1.., b0+b1.., a.., b..] pairs, then quads: lane j of each half holds part of row j.
        let ab = _mm256_hadd_ps(acc[0], acc[1]);
        let cd = _mm256_hadd_ps(acc[2], acc[3]);
        let abcd = _mm256_hadd_ps(ab, cd);
        let sums = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
        _mm_storeu_ps(out.as_mut_ptr().add(p), _mm_mul_ps(sums, _mm_set1_ps(scale)));
        p += 4;
    }
    while p < n {
        let mut acc = _mm256_setzero_ps();
        for c in (0..dim).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), load(p, c), acc);
        }
        out[p] = hsum(acc) * scale;
        p += 1;
    }
}
