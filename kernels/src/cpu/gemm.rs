//! The register-blocked f32 micro-kernel of the prefill matmul (BLIS's structure): a tile of
//! up to MR tokens × NR weight rows is accumulated in registers over a slice of k, reading
//! the weights from a packed panel (NR rows interleaved: panel[i·NR + c] is row c's element i)
//! and broadcasting one activation per token and step. With AVX2, 6 × 16 is 12 accumulator
//! registers plus 2 for the panel and 1 for the broadcast: all 16 ymm registers, and 12 FMAs
//! for 3 loads, which keeps both FMA ports busy.

use crate::dtype::DType;

/// Weight rows per panel: two 8-lane registers.
pub const NR: usize = 16;
/// Tokens per tile.
pub const MR: usize = 6;

/// Where a tile's activations come from.
#[derive(Clone, Copy)]
pub enum Tokens<'a> {
    /// Token t's element i at x[t·ldx + i]: rows of a row-major matrix.
    Rows { x: &'a [f32], ldx: usize },
    /// Token t's element i at x[i·MR + t]: a block of MR tokens packed by [`pack_tokens`], so
    /// the tile reads one sequential stream instead of MR strided ones.
    Packed(&'a [f32]),
}

/// out[t·ldo + c] = Σ_{i < kc} x(t, i) · panel[i·ldp + c] for t < mr ≤ MR and c < NR,
/// added to what `out` holds when `accumulate` (the k slices after the first).
///
/// # Safety
/// `out.add(t·ldo .. t·ldo + NR)` must be valid for reads and writes for t < mr, and no other
/// thread may touch those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(mr: usize, kc: usize, tokens: Tokens, panel: &[f32], ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    assert!(mr >= 1 && mr <= MR && ldp >= NR && kc >= 1 && panel.len() >= (kc - 1) * ldp + NR);
    match tokens {
        Tokens::Rows { x, ldx } => assert!(x.len() >= (mr - 1) * ldx + kc),
        Tokens::Packed(x) => assert!(x.len() >= kc * MR),
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        let panel = panel.as_ptr();
        let avx512 = super::simd::isa().has_avx512_vnni();
        macro_rules! by_height {
            ($kernel:ident, $packed:literal, $x:expr, $ldx:expr) => {
                match mr {
                    1 => $kernel::<1, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    2 => $kernel::<2, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    3 => $kernel::<3, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    4 => $kernel::<4, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    5 => $kernel::<5, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    _ => $kernel::<6, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                }
            };
        }
        match (tokens, avx512) {
            (Tokens::Rows { x, ldx }, false) => by_height!(tile_avx2, false, x.as_ptr(), ldx),
            (Tokens::Packed(x), false) => by_height!(tile_avx2, true, x.as_ptr(), MR),
            (Tokens::Rows { x, ldx }, true) => by_height!(tile_avx512, false, x.as_ptr(), ldx),
            (Tokens::Packed(x), true) => by_height!(tile_avx512, true, x.as_ptr(), MR),
        }
        return;
    }
    tile_scalar(mr, kc, tokens, panel, ldp, out, ldo, accumulate);
}

/// Tiles of `n_tokens` packed tokens against one full panel: block b of MR tokens (packed by
/// [`pack_tokens`]) at x[b·block_stride..], token t's outputs at out[t·ldo..][..NR]. One call
/// per panel and chunk of tokens rather than one per tile keeps the checks out of the loop.
///
/// # Safety
/// As [`tile`], for every t < n_tokens.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tiles_along_tokens(n_tokens: usize, kc: usize, x: &[f32], block_stride: usize, panel: &[f32], ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    let n_blocks = n_tokens.div_ceil(MR);
    assert!(n_blocks >= 1 && block_stride >= kc * MR && x.len() >= (n_blocks - 1) * block_stride + kc * MR);
    assert!(kc >= 1 && ldp >= NR && panel.len() >= (kc - 1) * ldp + NR);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        // The full blocks straight to the kernel; the sizes were checked once above.
        done = n_tokens / MR;
        let kernel = if super::simd::isa().has_avx512_vnni() { tile_avx512::<MR, true> } else { tile_avx2::<MR, true> };
        for b in 0..done {
            kernel(kc, x.as_ptr().add(b * block_stride), MR, panel.as_ptr(), ldp, out.add(b * MR * ldo), ldo, accumulate);
        }
    }
    for b in done..n_blocks {
        let mr = MR.min(n_tokens - b * MR);
        tile(mr, kc, Tokens::Packed(&x[b * block_stride..]), panel, ldp, out.add(b * MR * ldo), ldo, accumulate);
    }
}

/// The panel a tile reads from `n_rows` ≤ NR rows of f32 (row c's element i at
/// rows[c·ld + i]): panel[i·NR + c] for i < kc, the columns of missing rows zero.
pub fn pack_panel(rows: &[f32], ld: usize, n_rows: usize, kc: usize, panel: &mut [f32]) {
    assert!(n_rows <= NR && ld >= kc && panel.len() >= kc * NR);
    assert!(n_rows == 0 || rows.len() >= (n_rows - 1) * ld + kc);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if n_rows == NR && super::simd::isa().has_avx2() {
        done = kc / 8 * 8;
        // SAFETY: AVX2 is present; the reads stay inside the NR rows of `kc` and the writes
        // inside panel[..kc·NR] (both checked above).
        unsafe { pack_panel_avx2(rows.as_ptr(), ld, done, panel.as_mut_ptr()) };
    }
    for i in done..kc {
        let slot = &mut panel[i * NR..(i + 1) * NR];
        for (c, v) in slot.iter_mut().enumerate() {
            *v = if c < n_rows { rows[c * ld + i] } else { 0.0 };
        }
    }
}

/// [`pack_panel`] of NR rows and `kc` (a multiple of 8) values: 8×8 blocks transposed in
/// registers, where the scalar form writes one value at a time a panel row apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_panel_avx2(rows: *const f32, ld: usize, kc: usize, panel: *mut f32) {
    use std::arch::x86_64::*;
    for i0 in (0..kc).step_by(8) {
        for half in 0..NR / 8 {
            let mut r = [_mm256_setzero_ps(); 8];
            for (c, r) in r.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(rows.add((half * 8 + c) * ld + i0));
            }
            let columns = transpose_8x8(r);
            for (j, column) in columns.into_iter().enumerate() {
                _mm256_storeu_ps(panel.add((i0 + j) * NR + half * 8), column);
            }
        }
    }
}

/// [`pack_panel`] of NR full rows read straight from a float matrix's bytes (F32, F16 or
/// BF16 `dtype`; row c's element i at rows[c·ld + i·size]), widened to f32 on the way, with
/// no f32 copy of the rows in between: sixteen row streams in flight at once, where widening
/// one row at a time stalled on each row's first cache line. Returns false, doing nothing,
/// where only the two-step form applies (another type, no AVX2, or kc not a multiple of 8).
pub fn pack_panel_widening(dtype: DType, rows: &[u8], ld: usize, kc: usize, panel: &mut [f32]) -> bool {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return false;
    }
    let size = dtype.type_size();
    assert!(kc >= 1 && ld >= kc * size && rows.len() >= (NR - 1) * ld + kc * size && panel.len() >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if kc % 8 == 0 && super::simd::isa().has_avx2() {
        let (rows, panel) = (rows.as_ptr(), panel.as_mut_ptr());
        // SAFETY: AVX2 and F16C are present; the reads stay inside the NR rows of kc values
        // and the writes inside panel[..kc·NR] (both checked above).
        unsafe {
            match dtype {
                DType::F32 => pack_panel_widening_avx2::<WIDEN_F32>(rows, ld, kc, panel),
                DType::F16 => pack_panel_widening_avx2::<WIDEN_F16>(rows, ld, kc, panel),
                _ => pack_panel_widening_avx2::<WIDEN_BF16>(rows, ld, kc, panel),
            }
        }
        return true;
    }
    false
}

/// The float types of [`pack_panel_widening_avx2`], as its const parameter.
#[cfg(target_arch = "x86_64")]
const WIDEN_F32: u8 = 0;
#[cfg(target_arch = "x86_64")]
const WIDEN_F16: u8 = 1;
#[cfg(target_arch = "x86_64")]
const WIDEN_BF16: u8 = 2;

/// [`pack_panel_widening`] for `FLOAT` (one of the WIDEN_ constants).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn pack_panel_widening_avx2<const FLOAT: u8>(rows: *const u8, ld: usize, kc: usize, panel: *mut f32) {
    use std::arch::x86_64::*;
    let size = if FLOAT == WIDEN_F32 { 4 } else { 2 };
    for i0 in (0..kc).step_by(8) {
        for half in 0..NR / 8 {
            let mut r = [_mm256_setzero_ps(); 8];
            for (c, r) in r.iter_mut().enumerate() {
                let at = rows.add((half * 8 + c) * ld + i0 * size);
                *r = if FLOAT == WIDEN_F32 {
                    _mm256_loadu_ps(at.cast())
                } else if FLOAT == WIDEN_F16 {
                    _mm256_cvtph_ps(_mm_loadu_si128(at.cast()))
                } else {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(at.cast()))))
                };
            }
            let columns = transpose_8x8(r);
            for (j, column) in columns.into_iter().enumerate() {
                _mm256_storeu_ps(panel.add((i0 + j) * NR + half * 8), column);
            }
        }
    }
}

/// Eight rows of eight values in, their eight columns out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose_8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    // s[j] holds column j (rows 0-3) in its lower 128 bits and column j + 4 in its upper;
    // s[j + 4] the same for rows 4-7.
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
        _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
        _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
        _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
        _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
    ]
}

/// Tokens t0.. (n of them, zero past the end) of the n_tokens × k row-major `x`, packed for
/// [`Tokens::Packed`]: out[i·MR + t] = x[(t0 + t)·k + i].
pub fn pack_tokens(x: &[f32], k: usize, t0: usize, out: &mut [f32]) {
    let n = (x.len() / k).saturating_sub(t0).min(MR);
    let out = &mut out[..k * MR];
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if n == MR && super::simd::isa().has_avx2() {
        // Eight values of each token at a time, while a ninth follows: the column stores are
        // eight wide and each overlaps the next by two, the last ending inside `out`.
        done = k.saturating_sub(1) / 8 * 8;
        // SAFETY: AVX2 is present; rows t0..t0 + MR of x hold k values each and the stores
        // end at (done - 1)·MR + 8 ≤ k·MR.
        unsafe { pack_tokens_avx2(x[t0 * k..].as_ptr(), k, done, out.as_mut_ptr()) };
    }
    for (slot, i) in out[done * MR..].chunks_exact_mut(MR).zip(done..) {
        for (t, v) in slot.iter_mut().enumerate() {
            *v = if t < n { x[(t0 + t) * k + i] } else { 0.0 };
        }
    }
}

/// [`pack_tokens`] of a full block of MR rows, values 0..`kc` (a multiple of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_tokens_avx2(x: *const f32, k: usize, kc: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    for i0 in (0..kc).step_by(8) {
        let mut r = [_mm256_setzero_ps(); 8];
        for (t, r) in r.iter_mut().take(MR).enumerate() {
            *r = _mm256_loadu_ps(x.add(t * k + i0));
        }
        let columns = transpose_8x8(r);
        for (j, column) in columns.into_iter().enumerate() {
            _mm256_storeu_ps(out.add((i0 + j) * MR), column);
        }
    }
}

/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_scalar(mr: usize, kc: usize, tokens: Tokens, panel: &[f32], ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    let x = |t: usize, i: usize| match tokens {
        Tokens::Rows { x, ldx } => x[t * ldx + i],
        Tokens::Packed(x) => x[i * MR + t],
    };
    for t in 0..mr {
        let mut acc = [0f32; NR];
        for i in 0..kc {
            let a = x(t, i);
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc += a * panel[i * ldp + c];
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            let o = out.add(t * ldo + c);
            *o = if accumulate { *o + acc } else { *acc };
        }
    }
}

/// [`tile_avx2`] with AVX-512: a panel step of NR = 16 rows is one zmm register, so a token
/// takes one FMA per step where AVX2 takes two. Each lane sums the same products in the same
/// order as AVX2's, so the two tiles agree bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<const M: usize, const PACKED: bool>(kc: usize, x: *const f32, ldx: usize, panel: *const f32, ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    for t in 0..M {
        _mm_prefetch::<_MM_HINT_ET0>(out.add(t * ldo) as *const i8);
    }
    let mut acc = [_mm512_setzero_ps(); M];
    for i in 0..kc {
        let b = _mm512_loadu_ps(panel.add(i * ldp));
        for t in 0..M {
            let at = if PACKED { i * MR + t } else { t * ldx + i };
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(at)), b, acc[t]);
        }
    }
    for t in 0..M {
        let o = out.add(t * ldo);
        let sum = if accumulate { _mm512_add_ps(acc[t], _mm512_loadu_ps(o)) } else { acc[t] };
        _mm512_storeu_ps(o, sum);
    }
}

/// M tokens; with PACKED the activations are [`Tokens::Packed`] (`ldx` unused), else rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const M: usize, const PACKED: bool>(kc: usize, x: *const f32, ldx: usize, panel: *const f32, ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    // The output rows are needed only after the loop: ask for them now, so they arrive from
    // L2 or L3 while the loop runs instead of stalling the stores at its end.
    for t in 0..M {
        _mm_prefetch::<_MM_HINT_ET0>(out.add(t * ldo) as *const i8);
        _mm_prefetch::<_MM_HINT_ET0>(out.add(t * ldo + NR - 1) as *const i8);
    }
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    for i in 0..kc {
        if PACKED {
            // The packed tokens a few lines ahead: each tile starts a new stream, which the
            // hardware prefetcher meets only after its first misses.
            _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(i * MR + 64) as *const i8);
        }
        let b_lo = _mm256_loadu_ps(panel.add(i * ldp));
        let b_hi = _mm256_loadu_ps(panel.add(i * ldp + 8));
        for t in 0..M {
            let at = if PACKED { i * MR + t } else { t * ldx + i };
            let a = _mm256_broadcast_ss(&*x.add(at));
            lo[t] = _mm256_fmadd_ps(a, b_lo, lo[t]);
            hi[t] = _mm256_fmadd_ps(a, b_hi, hi[t]);
        }
    }
    for t in 0..M {
        let (o_lo, o_hi) = (out.add(t * ldo), out.add(t * ldo + 8));
        if accumulate {
            lo[t] = _mm256_add_ps(lo[t], _mm256_loadu_ps(o_lo));
            hi[t] = _mm256_add_ps(hi[t], _mm256_loadu_ps(o_hi));
        }
        _mm256_storeu_ps(o_lo, lo[t]);
        _mm256_storeu_ps(o_hi, hi[t]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_tile_matches_scalar() {
        let kc = 37;
        let ldx = 50;
        let x: Vec<f32> = (0..MR * ldx).map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.0).collect();
        let panel: Vec<f32> = (0..kc * NR).map(|i| ((i * 104729) % 97) as f32 / 40.0 - 1.2).collect();
        let ldo = NR + 3;
        let rows = Tokens::Rows { x: &x, ldx };
        // The same MR tokens packed: rows of kc out of ldx.
        let dense: Vec<f32> = (0..MR).flat_map(|t| x[t * ldx..t * ldx + kc].to_vec()).collect();
        let mut packed = vec![f32::NAN; kc * MR];
        pack_tokens(&dense, kc, 0, &mut packed);
        for accumulate in [false, true] {
            for mr in 1..=MR {
                let start: Vec<f32> = (0..MR * ldo).map(|i| (i % 7) as f32 - 3.0).collect();
                let (mut fast, mut slow, mut from_packed) = (start.clone(), start.clone(), start.clone());
                // SAFETY: MR rows of ldo ≥ NR elements each.
                unsafe {
                    tile(mr, kc, rows, &panel, NR, fast.as_mut_ptr(), ldo, accumulate);
                    tile_scalar(mr, kc, rows, &panel, NR, slow.as_mut_ptr(), ldo, accumulate);
                    tile(mr, kc, Tokens::Packed(&packed), &panel, NR, from_packed.as_mut_ptr(), ldo, accumulate);
                }
                for t in 0..MR {
                    for c in 0..ldo {
                        let i = t * ldo + c;
                        if t >= mr || c >= NR {
                            assert_eq!((fast[i], slow[i], from_packed[i]), (start[i], start[i], start[i]), "mr={mr} wrote outside the tile at t={t} c={c}");
                        } else {
                            assert!((fast[i] - slow[i]).abs() < 1e-4, "mr={mr} accumulate={accumulate} t={t} c={c}");
                            assert_eq!(from_packed[i], fast[i], "packed tokens, mr={mr} accumulate={accumulate} t={t} c={c}");
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 tile gives the AVX2 tile's sums bit for bit, on a CPU that has both.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tile_equals_the_avx2_one() {
        if !crate::cpu::simd::isa().has_avx512_vnni() {
            eprintln!("no AVX-512 on this CPU: nothing to compare (scripts/test-avx512.sh runs this on an emulated one)");
            return;
        }
        let kc = 37;
        let panel: Vec<f32> = (0..kc * NR).map(|i| ((i * 7919) % 101) as f32 / 30.0 - 1.7).collect();
        let x: Vec<f32> = (0..kc * MR).map(|i| ((i * 104729) % 89) as f32 / 20.0 - 2.1).collect();
        for accumulate in [false, true] {
            let start: Vec<f32> = (0..MR * NR).map(|i| i as f32 * 0.125).collect();
            let (mut avx2, mut avx512) = (start.clone(), start.clone());
            // SAFETY: both features were found; MR rows of NR outputs, kc steps of x and panel.
            unsafe {
                tile_avx2::<MR, true>(kc, x.as_ptr(), MR, panel.as_ptr(), NR, avx2.as_mut_ptr(), NR, accumulate);
                tile_avx512::<MR, true>(kc, x.as_ptr(), MR, panel.as_ptr(), NR, avx512.as_mut_ptr(), NR, accumulate);
            }
            assert!(avx2.iter().zip(&avx512).all(|(a, b)| a.to_bits() == b.to_bits()), "accumulate={accumulate}");
        }
    }

    #[test]
    fn packing_puts_every_value_where_the_tile_reads_it() {
        for k in [1, 7, 8, 9, 16, 17, 64, 70] {
            for n_tokens in [1, 5, 6, 7, 12, 13] {
                let x: Vec<f32> = (0..n_tokens * k).map(|i| i as f32 + 0.5).collect();
                for t0 in (0..n_tokens).step_by(MR) {
                    let mut out = vec![f32::NAN; k * MR];
                    pack_tokens(&x, k, t0, &mut out);
                    for i in 0..k {
                        for t in 0..MR {
                            let want = if t0 + t < n_tokens { x[(t0 + t) * k + i] } else { 0.0 };
                            assert_eq!(out[i * MR + t], want, "tokens: k={k} n_tokens={n_tokens} t0={t0} i={i} t={t}");
                        }
                    }
                }
            }
        }
        for kc in [1, 8, 13, 64] {
            let ld = kc + 3;
            let rows: Vec<f32> = (0..NR * ld).map(|i| i as f32 - 7.25).collect();
            for n_rows in 0..=NR {
                let mut panel = vec![f32::NAN; kc * NR];
                pack_panel(&rows[..n_rows.max(1) * ld], ld, n_rows, kc, &mut panel);
                for i in 0..kc {
                    for c in 0..NR {
                        let want = if c < n_rows { rows[c * ld + i] } else { 0.0 };
                        assert_eq!(panel[i * NR + c], want, "panel: kc={kc} n_rows={n_rows} i={i} c={c}");
                    }
                }
            }
        }
    }

    /// Widening while packing gives what widening each row and then packing gives, for
    /// every float type: rows wider than the slice, at an offset inside them.
    #[test]
    fn widening_packing_matches_widening_then_packing() {
        let (k, k0, kc) = (72, 16, 48);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let size = dtype.type_size();
            let values: Vec<f32> = (0..NR * k).map(|i| (i as f32 * 0.37).sin() * 100.0).collect();
            let row_bytes = dtype.row_bytes(k).unwrap();
            let mut bytes = vec![0u8; NR * row_bytes];
            for (src, dst) in values.chunks_exact(k).zip(bytes.chunks_exact_mut(row_bytes)) {
                (dtype.traits().from_f32.unwrap())(src, dst);
            }
            let mut rows = vec![0f32; NR * kc];
            for (c, row) in rows.chunks_exact_mut(kc).enumerate() {
                (dtype.traits().to_f32)(&bytes[c * row_bytes + k0 * size..][..kc * size], row);
            }
            let mut expected = vec![f32::NAN; kc * NR];
            pack_panel(&rows, kc, NR, kc, &mut expected);
            let mut got = vec![f32::NAN; kc * NR];
            if pack_panel_widening(dtype, &bytes[k0 * size..], row_bytes, kc, &mut got) {
                assert!(got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype}");
            } else {
                assert!(!crate::cpu::simd::isa().has_avx2(), "AVX2 declined a multiple of 8");
            }
        }
        let q8_0 = vec![0u8; NR * DType::Q8_0.row_bytes(64).unwrap()];
        assert!(!pack_panel_widening(DType::Q8_0, &q8_0, DType::Q8_0.row_bytes(64).unwrap(), 32, &mut [0f32; 32 * NR]), "a block type is not widened");
    }

    #[test]
    fn tiles_along_tokens_match_one_tile_at_a_time() {
        let kc = 40;
        let panel: Vec<f32> = (0..kc * NR).map(|i| ((i * 104729) % 97) as f32 / 40.0 - 1.2).collect();
        for n_tokens in [1, 5, 6, 7, 12, 20] {
            let x: Vec<f32> = (0..n_tokens * kc).map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.0).collect();
            let n_blocks = n_tokens.div_ceil(MR);
            // Blocks a stride of kc·MR + 5 apart, as blocks of a longer k would be.
            let stride = kc * MR + 5;
            let mut packed = vec![0f32; n_blocks * stride];
            for b in 0..n_blocks {
                pack_tokens(&x, kc, b * MR, &mut packed[b * stride..]);
            }
            for accumulate in [false, true] {
                let start: Vec<f32> = (0..n_tokens * NR).map(|i| (i % 5) as f32).collect();
                let (mut along, mut single) = (start.clone(), start.clone());
                // SAFETY: n_tokens rows of NR outputs.
                unsafe {
                    tiles_along_tokens(n_tokens, kc, &packed, stride, &panel, NR, along.as_mut_ptr(), NR, accumulate);
                    for b in 0..n_blocks {
                        let mr = MR.min(n_tokens - b * MR);
                        tile_scalar(mr, kc, Tokens::Packed(&packed[b * stride..]), &panel, NR, single.as_mut_ptr().add(b * MR * NR), NR, accumulate);
                    }
                }
                for (i, (a, s)) in along.iter().zip(&single).enumerate() {
                    assert!((a - s).abs() < 1e-4, "n_tokens={n_tokens} accumulate={accumulate} at {i}: {a} vs {s}");
                }
            }
        }
    }
}
