//! Kernels only AVX-512 has an instruction for: BF16 pairs multiplied and added into f32
//! lanes (`vdpbf16ps`, AVX-512 BF16). The VNNI variants of the integer dots are the AVX2
//! bodies compiled again (`avx2.rs`, `with_vnni_variant!`).

use std::arch::x86_64::*;

/// How far ahead of the values being multiplied the row is prefetched: decode streams BF16
/// rows from memory, as it does F16 ones (see `avx2.rs`, PREFETCH_AHEAD_FAST).
const PREFETCH_AHEAD: usize = 1024;

/// The BF16 values at `p` where `mask` has a bit (bit j: value j), zero elsewhere. A
/// function with the kernel's features rather than a closure: closures do not take them, and
/// a 512-bit value passed out of one would cross a call with another ABI.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn load(p: *const u8, mask: __mmask32) -> __m512bh {
    std::mem::transmute(_mm512_maskz_loadu_epi16(mask, p as *const i16))
}

/// acc + Σ of the products of each BF16 pair of `w` and `a`, per f32 lane (`vdpbf16ps`).
/// Written in asm so both operands are registers: the compiler folds a load into the memory
/// form, whose compressed displacement the emulator the tests run on (Bochs 3.0) scales
/// wrongly, reading the wrong bytes; the register form is the same instruction to hardware.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dot_pairs(acc: __m512, w: __m512bh, a: __m512bh) -> __m512 {
    let mut acc = acc;
    std::arch::asm!("vdpbf16ps {acc}, {w}, {a}", acc = inout(zmm_reg) acc, w = in(zmm_reg) w, a = in(zmm_reg) a, options(pure, nomem, nostack, preserves_flags));
    acc
}

/// Σ w·a of a BF16 row against BF16 activations (the f32 activations rounded to BF16, as
/// ggml's BF16 vec_dot_type): `vdpbf16ps` takes 32 pairs a step, each product exact in f32.
/// Four accumulators so the loads are not held back by the instruction's latency; the tail
/// goes through masked loads (zero beyond the row).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn bf16_bf16(row: &[u8], act: &[u8]) -> f32 {
    assert!(row.len() == act.len() && row.len() % 2 == 0, "bf16 dot: {} weight bytes against {} activation bytes", row.len(), act.len());
    let n = row.len() / 2;
    let (w, a) = (row.as_ptr(), act.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 128 <= n {
        for line in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(2 * i + PREFETCH_AHEAD + 64 * line) as *const i8);
        }
        for (j, acc) in acc.iter_mut().enumerate() {
            let at = 2 * (i + 32 * j);
            *acc = dot_pairs(*acc, load(w.add(at), !0), load(a.add(at), !0));
        }
        i += 128;
    }
    while i < n {
        let mask = if n - i >= 32 { !0 } else { (1u32 << (n - i)) - 1 };
        acc[0] = dot_pairs(acc[0], load(w.add(2 * i), mask), load(a.add(2 * i), mask));
        i += 32;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}
