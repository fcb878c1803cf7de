//! The 8-bit micro-kernel of the prefill matmul: weights as integer levels with a scale and
//! an offset per 32 values (w = scale·u + offset, exact for the 4-, 5- and 8-bit types), tokens
//! as signed 8-bit values with a scale per 32 (Q8_1's d) and the block's d·Σq (Q8_1's s), so
//!
//!   Σ w·x = scale·d·Σ u·q + offset·s
//!
//! and Σ u·q is integer work: `maddubs` multiplies 32 byte pairs and adds neighbours into 16
//! i16 in one instruction, twice the multiply-adds per instruction of an f32 FMA. Signed
//! levels (Q8_0) go in as |u| against sign(u)·q: two more instructions per product, still
//! fewer than f32 FMAs, as long as the CPU multiplies bytes as fast as it adds (no VNNI here).
//!
//! Layout of a panel of NR8 = 8 weight rows: for block b and group g of 4 values, 32 bytes
//! hold row r's 4 levels at 4r.. (so one load feeds 8 rows, and a token's 4 values are one
//! broadcast u32); scales and offsets are 8 f32 per block.

use crate::dtype::LevelRange;

/// Weight rows per panel: the 8 i32 lanes of one register.
pub const NR8: usize = 8;
/// Tokens per tile.
pub const MR8: usize = 4;

/// A batch's activations as the kernel reads them, packed so a tile streams one buffer:
/// tokens in blocks of MR8; within a block, each group of 4 values holds the MR8 tokens'
/// 4 levels side by side (16 bytes), and each 32-block's MR8 scales (and sums) side by side.
/// Buffers hold n_tokens rounded up to MR8 (padding tokens are zero).
pub struct Tokens<'a> {
    /// Signed levels, at [`Tokens::level_at`].
    pub levels: &'a [i8],
    /// Each block's scale d, at [`Tokens::block_at`].
    pub scales: &'a [f32],
    /// Each block's d·Σq, at [`Tokens::block_at`].
    pub sums: &'a [f32],
    pub k: usize,
}

impl Tokens<'_> {
    /// Where token t's level i lies in `levels`.
    pub fn level_at(k: usize, t: usize, i: usize) -> usize {
        ((t / MR8 * (k / 4) + i / 4) * MR8 + t % MR8) * 4 + i % 4
    }

    /// Where token t's scale and sum of 32-block b lie in `scales` and `sums`.
    pub fn block_at(k: usize, t: usize, b: usize) -> usize {
        (t / MR8 * (k / 32) + b) * MR8 + t % MR8
    }
}

/// out[t·ldo + r] (+)= Σ over `n_blocks` blocks from block `b0` of token t0 + t (t0 a multiple
/// of MR8) and row r of the panel, for t < mr ≤ MR8, r < NR8. `range` is what the weight levels are: unsigned up
/// to 15 or 31 (which decides how many groups the i16 sums can take before they could
/// overflow), or signed bytes.
///
/// # Safety
/// As [`super::gemm::tile`]: out.add(t·ldo ..)[..NR8] valid and not shared, for t < mr.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_i8(mr: usize, tokens: &Tokens, t0: usize, b0: usize, n_blocks: usize, levels: &[u8], scales: &[f32], offsets: &[f32], range: LevelRange, out: *mut f32, ldo: usize, accumulate: bool) {
    let nb = tokens.k / 32;
    let k = tokens.k;
    assert!(mr >= 1 && mr <= MR8 && t0 % MR8 == 0 && b0 + n_blocks <= nb && Tokens::level_at(k, t0 + MR8 - 1, k - 1) < tokens.levels.len());
    assert!(levels.len() >= n_blocks * 32 * NR8 && scales.len() >= n_blocks * NR8 && offsets.len() >= n_blocks * NR8);
    assert!(Tokens::block_at(k, t0 + MR8 - 1, nb - 1) < tokens.scales.len().min(tokens.sums.len()));
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        let args = (tokens, t0, b0, n_blocks, levels, scales, offsets, out, ldo, accumulate);
        if super::simd::isa().has_avx512_vnni() {
            // `vpdpbusd` adds into i32 lanes: no i16 sums to flush.
            match (mr, range == LevelRange::Signed) {
                (1, false) => avx2::tile_vnni::<1, 8>(args),
                (2, false) => avx2::tile_vnni::<2, 8>(args),
                (3, false) => avx2::tile_vnni::<3, 8>(args),
                (_, false) => avx2::tile_vnni::<4, 8>(args),
                (1, true) => avx2::tile_vnni::<1, 1>(args),
                (2, true) => avx2::tile_vnni::<2, 1>(args),
                (3, true) => avx2::tile_vnni::<3, 1>(args),
                (_, true) => avx2::tile_vnni::<4, 1>(args),
            }
            return;
        }
        // How many groups the i16 sums take before they are widened: 8 for levels ≤ 15
        // (8 groups · 2 pairs · 15 · 127 < 2¹⁵), 4 for levels ≤ 31, 1 for signed bytes.
        let flush = match range {
            LevelRange::Unsigned(max) if max <= 15 => 8,
            LevelRange::Unsigned(max) => {
                assert!(max <= 31, "levels up to {max} overflow the i16 sums");
                4
            }
            LevelRange::Signed => 1,
        };
        match (mr, flush) {
            (1, 8) => avx2::tile::<1, 8>(args),
            (2, 8) => avx2::tile::<2, 8>(args),
            (3, 8) => avx2::tile::<3, 8>(args),
            (_, 8) => avx2::tile::<4, 8>(args),
            (1, 4) => avx2::tile::<1, 4>(args),
            (2, 4) => avx2::tile::<2, 4>(args),
            (3, 4) => avx2::tile::<3, 4>(args),
            (_, 4) => avx2::tile::<4, 4>(args),
            (1, _) => avx2::tile::<1, 1>(args),
            (2, _) => avx2::tile::<2, 1>(args),
            (3, _) => avx2::tile::<3, 1>(args),
            (_, _) => avx2::tile::<4, 1>(args),
        }
        return;
    }
    let level = |u: u8| if range == LevelRange::Signed { u as i8 as i32 } else { u as i32 };
    for t in 0..mr {
        let token = t0 + t;
        for r in 0..NR8 {
            let mut total = 0f32;
            for b in 0..n_blocks {
                let block = b0 + b;
                let mut dot = 0i32;
                for i in 0..32 {
                    let u = level(levels[(b * 8 + i / 4) * 32 + 4 * r + i % 4]);
                    dot += u * tokens.levels[Tokens::level_at(k, token, block * 32 + i)] as i32;
                }
                let at = Tokens::block_at(k, token, block);
                total += scales[b * NR8 + r] * tokens.scales[at] * dot as f32 + offsets[b * NR8 + r] * tokens.sums[at];
            }
            let o = out.add(t * ldo + r);
            *o = if accumulate { *o + total } else { total };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Tokens, MR8, NR8};

    pub(super) type Args<'a> = (&'a Tokens<'a>, usize, usize, usize, &'a [u8], &'a [f32], &'a [f32], *mut f32, usize, bool);

    /// M tokens; the i16 sums are widened every FLUSH groups. FLUSH = 1 means signed levels:
    /// |u| · sign(u)·q, whose pair sums (up to 2 · 127 · 127) leave no room for a second.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize, const FLUSH: usize>(args: Args) {
        tile_body::<M, FLUSH, false>(args)
    }

    /// [`tile`] with AVX-512 VNNI: each group's products go straight into the i32 sums, so
    /// FLUSH only tells signed levels (1) from unsigned ones.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_vnni<const M: usize, const FLUSH: usize>(args: Args) {
        tile_body::<M, FLUSH, true>(args)
    }

    #[inline(always)]
    unsafe fn tile_body<const M: usize, const FLUSH: usize, const VNNI: bool>((tokens, t0, b0, n_blocks, levels, scales, offsets, out, ldo, accumulate): Args) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); M];
        // This block of tokens: group j's MR8 × 4 levels at 16·j, block b's scales at MR8·b.
        let token_levels = tokens.levels.as_ptr().add(Tokens::level_at(tokens.k, t0, 0));
        let first_block = Tokens::block_at(tokens.k, t0, 0);
        let (token_scales, token_sums) = (tokens.scales.as_ptr().add(first_block), tokens.sums.as_ptr().add(first_block));
        for b in 0..n_blocks {
            let block = b0 + b;
            let mut wide = [_mm256_setzero_si256(); M];
            let mut narrow = [_mm256_setzero_si256(); M];
            for g in 0..8 {
                let w = _mm256_loadu_si256(levels.as_ptr().add((b * 8 + g) * 32) as *const __m256i);
                let unsigned_w = if FLUSH == 1 { _mm256_sign_epi8(w, w) } else { w };
                for t in 0..M {
                    let four = (token_levels.add(((block * 8 + g) * MR8 + t) * 4) as *const i32).read_unaligned();
                    let mut x = _mm256_set1_epi32(four);
                    if FLUSH == 1 {
                        x = _mm256_sign_epi8(x, w);
                    }
                    if VNNI {
                        wide[t] = _mm256_dpbusd_epi32(wide[t], unsigned_w, x);
                    } else {
                        narrow[t] = _mm256_add_epi16(narrow[t], _mm256_maddubs_epi16(unsigned_w, x));
                    }
                }
                if !VNNI && (g + 1) % FLUSH == 0 {
                    for t in 0..M {
                        wide[t] = _mm256_add_epi32(wide[t], _mm256_madd_epi16(narrow[t], ones));
                        narrow[t] = _mm256_setzero_si256();
                    }
                }
            }
            let scale = _mm256_loadu_ps(scales.as_ptr().add(b * NR8));
            let offset = _mm256_loadu_ps(offsets.as_ptr().add(b * NR8));
            for t in 0..M {
                let at = block * MR8 + t;
                let d = _mm256_mul_ps(scale, _mm256_set1_ps(*token_scales.add(at)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wide[t]), d, acc[t]);
                acc[t] = _mm256_fmadd_ps(offset, _mm256_set1_ps(*token_sums.add(at)), acc[t]);
            }
        }
        for t in 0..M {
            let o = out.add(t * ldo);
            let v = if accumulate { _mm256_add_ps(acc[t], _mm256_loadu_ps(o)) } else { acc[t] };
            _mm256_storeu_ps(o, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// The dispatched kernel against a plain f64 evaluation of Σ (scale·u + offset)·d·q,
    /// for both level ranges, every mr, a block offset, and accumulation.
    #[test]
    fn tile_matches_the_formula() {
        let mut seed = 3u64;
        let (k, n_tokens, n_blocks, b0): (usize, usize, usize, usize) = (32 * 5, 8, 3, 2);
        let nb = k / 32;
        // A third of them ±127, where products peak.
        let token_levels: Vec<i8> = (0..n_tokens * k).map(|_| [127, -127, ((lcg(&mut seed) % 255) as i32 - 127) as i8][lcg(&mut seed) as usize % 3]).collect();
        let token_scales: Vec<f32> = (0..n_tokens * nb).map(|_| (lcg(&mut seed) % 1000) as f32 / 7e4).collect();
        let token_sums: Vec<f32> = (0..n_tokens * nb).map(|_| (lcg(&mut seed) % 1000) as f32 / 100.0 - 5.0).collect();
        let padded = n_tokens.div_ceil(MR8) * MR8;
        let (mut packed_levels, mut packed_scales, mut packed_sums) = (vec![0i8; padded * k], vec![0f32; padded * nb], vec![0f32; padded * nb]);
        for t in 0..n_tokens {
            for i in 0..k {
                packed_levels[Tokens::level_at(k, t, i)] = token_levels[t * k + i];
            }
            for b in 0..nb {
                packed_scales[Tokens::block_at(k, t, b)] = token_scales[t * nb + b];
                packed_sums[Tokens::block_at(k, t, b)] = token_sums[t * nb + b];
            }
        }
        let tokens = Tokens { levels: &packed_levels, scales: &packed_scales, sums: &packed_sums, k };
        for range in [LevelRange::Unsigned(15), LevelRange::Unsigned(31), LevelRange::Signed] {
            let level = |u: u8| if range == LevelRange::Signed { u as i8 as f64 } else { u as f64 };
            let levels: Vec<u8> = (0..n_blocks * 32 * NR8)
                .map(|_| match range {
                    LevelRange::Unsigned(max) => (lcg(&mut seed) % (max as u32 + 1)) as u8,
                    // −127..=127, the extremes often: they are where sums could overflow.
                    LevelRange::Signed => [127i8, -127, (lcg(&mut seed) % 255) as i8][lcg(&mut seed) as usize % 3] as u8,
                })
                .collect();
            let scales: Vec<f32> = (0..n_blocks * NR8).map(|_| (lcg(&mut seed) % 1000) as f32 / 3e4).collect();
            let offsets: Vec<f32> = (0..n_blocks * NR8).map(|_| (lcg(&mut seed) % 1000) as f32 / 1e3 - 0.5).collect();
            for accumulate in [false, true] {
                for mr in 1..=MR8 {
                    let t0 = MR8; // the second block of tokens
                    let ldo = NR8 + 1;
                    let mut out = vec![0.25f32; MR8 * ldo];
                    // SAFETY: MR8 rows of ldo ≥ NR8.
                    unsafe { tile_i8(mr, &tokens, t0, b0, n_blocks, &levels, &scales, &offsets, range, out.as_mut_ptr(), ldo, accumulate) };
                    for t in 0..MR8 {
                        for r in 0..ldo {
                            let got = out[t * ldo + r] as f64;
                            if t >= mr || r >= NR8 {
                                assert_eq!(got, 0.25, "wrote outside the tile");
                                continue;
                            }
                            let mut want = if accumulate { 0.25 } else { 0.0 };
                            for b in 0..n_blocks {
                                let block = b0 + b;
                                let at = (t0 + t) * nb + block;
                                let dot: f64 = (0..32).map(|i| level(levels[(b * 8 + i / 4) * 32 + 4 * r + i % 4]) * token_levels[(t0 + t) * k + block * 32 + i] as f64).sum();
                                want += scales[b * NR8 + r] as f64 * token_scales[at] as f64 * dot + offsets[b * NR8 + r] as f64 * token_sums[at] as f64;
                            }
                            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{range:?} mr={mr} t={t} r={r}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
