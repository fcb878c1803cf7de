//! The 8-bit micro-kernel of the prefill matmul: weights as unsigned levels with a scale and
//! an offset per 32 values (w = scale·u + offset, exact for the 4- and 5-bit types), tokens
//! as signed 8-bit values with a scale per 32 (Q8_1's d) and the block's d·Σq (Q8_1's s), so
//!
//!   Σ w·x = scale·d·Σ u·q + offset·s
//!
//! and Σ u·q is integer work: `maddubs` multiplies 32 byte pairs and adds neighbours into 16
//! i16 in one instruction, twice the multiply-adds per instruction of an f32 FMA.
//!
//! Layout of a panel of NR8 = 8 weight rows: for block b and group g of 4 values, 32 bytes
//! hold row r's 4 levels at 4r.. (so one load feeds 8 rows, and a token's 4 values are one
//! broadcast u32); scales and offsets are 8 f32 per block.

/// Weight rows per panel: the 8 i32 lanes of one register.
pub const NR8: usize = 8;
/// Tokens per tile.
pub const MR8: usize = 4;

/// A token row's activations as the kernel reads them.
pub struct Tokens<'a> {
    /// n_tokens × k signed levels.
    pub levels: &'a [i8],
    /// n_tokens × k/32: each block's scale d.
    pub scales: &'a [f32],
    /// n_tokens × k/32: each block's d·Σq.
    pub sums: &'a [f32],
    pub k: usize,
}

/// out[t·ldo + r] (+)= Σ over `n_blocks` blocks from block `b0` of token t0 + t and row r of
/// the panel, for t < mr ≤ MR8, r < NR8. `max_level` bounds the weight levels (15 or 31): it
/// decides how many groups the i16 sums can take before they could overflow.
///
/// # Safety
/// As [`super::gemm::tile`]: out.add(t·ldo ..)[..NR8] valid and not shared, for t < mr.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // max_level picks AVX2 variants
pub unsafe fn tile_i8(mr: usize, tokens: &Tokens, t0: usize, b0: usize, n_blocks: usize, levels: &[u8], scales: &[f32], offsets: &[f32], max_level: u8, out: *mut f32, ldo: usize, accumulate: bool) {
    let nb = tokens.k / 32;
    assert!(mr >= 1 && mr <= MR8 && b0 + n_blocks <= nb && (t0 + mr) * tokens.k <= tokens.levels.len());
    assert!(levels.len() >= n_blocks * 32 * NR8 && scales.len() >= n_blocks * NR8 && offsets.len() >= n_blocks * NR8);
    assert!(tokens.scales.len() >= (t0 + mr) * nb && tokens.sums.len() >= (t0 + mr) * nb);
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx2 {
        let args = (tokens, t0, b0, n_blocks, levels, scales, offsets, out, ldo, accumulate);
        match (mr, max_level <= 15) {
            (1, true) => avx2::tile::<1, 8>(args),
            (2, true) => avx2::tile::<2, 8>(args),
            (3, true) => avx2::tile::<3, 8>(args),
            (_, true) => avx2::tile::<4, 8>(args),
            (1, false) => avx2::tile::<1, 4>(args),
            (2, false) => avx2::tile::<2, 4>(args),
            (3, false) => avx2::tile::<3, 4>(args),
            (_, false) => avx2::tile::<4, 4>(args),
        }
        return;
    }
    for t in 0..mr {
        let token = t0 + t;
        for r in 0..NR8 {
            let mut total = 0f32;
            for b in 0..n_blocks {
                let block = b0 + b;
                let mut dot = 0i32;
                for i in 0..32 {
                    let u = levels[(b * 8 + i / 4) * 32 + 4 * r + i % 4] as i32;
                    dot += u * tokens.levels[token * tokens.k + block * 32 + i] as i32;
                }
                total += scales[b * NR8 + r] * tokens.scales[token * nb + block] * dot as f32 + offsets[b * NR8 + r] * tokens.sums[token * nb + block];
            }
            let o = out.add(t * ldo + r);
            *o = if accumulate { *o + total } else { total };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Tokens, NR8};

    pub(super) type Args<'a> = (&'a Tokens<'a>, usize, usize, usize, &'a [u8], &'a [f32], &'a [f32], *mut f32, usize, bool);

    /// M tokens; the i16 sums are widened every FLUSH groups (8 for levels ≤ 15: 8 groups ·
    /// 2 pairs · 15 · 127 < 2¹⁵; 4 for levels ≤ 31).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize, const FLUSH: usize>((tokens, t0, b0, n_blocks, levels, scales, offsets, out, ldo, accumulate): Args) {
        let nb = tokens.k / 32;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); M];
        let token_levels: [*const i8; M] = std::array::from_fn(|t| tokens.levels.as_ptr().add((t0 + t) * tokens.k));
        for b in 0..n_blocks {
            let block = b0 + b;
            let mut wide = [_mm256_setzero_si256(); M];
            let mut narrow = [_mm256_setzero_si256(); M];
            for g in 0..8 {
                let w = _mm256_loadu_si256(levels.as_ptr().add((b * 8 + g) * 32) as *const __m256i);
                for t in 0..M {
                    let four = (token_levels[t].add(block * 32 + 4 * g) as *const i32).read_unaligned();
                    narrow[t] = _mm256_add_epi16(narrow[t], _mm256_maddubs_epi16(w, _mm256_set1_epi32(four)));
                }
                if (g + 1) % FLUSH == 0 {
                    for t in 0..M {
                        wide[t] = _mm256_add_epi32(wide[t], _mm256_madd_epi16(narrow[t], ones));
                        narrow[t] = _mm256_setzero_si256();
                    }
                }
            }
            let scale = _mm256_loadu_ps(scales.as_ptr().add(b * NR8));
            let offset = _mm256_loadu_ps(offsets.as_ptr().add(b * NR8));
            for t in 0..M {
                let at = (t0 + t) * nb + block;
                let d = _mm256_mul_ps(scale, _mm256_set1_ps(*tokens.scales.get_unchecked(at)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wide[t]), d, acc[t]);
                acc[t] = _mm256_fmadd_ps(offset, _mm256_set1_ps(*tokens.sums.get_unchecked(at)), acc[t]);
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
        let (k, n_tokens, n_blocks, b0) = (32 * 5, 6, 3, 2);
        let nb = k / 32;
        let token_levels: Vec<i8> = (0..n_tokens * k).map(|_| ((lcg(&mut seed) % 255) as i32 - 127) as i8).collect();
        let token_scales: Vec<f32> = (0..n_tokens * nb).map(|_| (lcg(&mut seed) % 1000) as f32 / 7e4).collect();
        let token_sums: Vec<f32> = (0..n_tokens * nb).map(|_| (lcg(&mut seed) % 1000) as f32 / 100.0 - 5.0).collect();
        let tokens = Tokens { levels: &token_levels, scales: &token_scales, sums: &token_sums, k };
        for max_level in [15u8, 31] {
            let levels: Vec<u8> = (0..n_blocks * 32 * NR8).map(|_| (lcg(&mut seed) % (max_level as u32 + 1)) as u8).collect();
            let scales: Vec<f32> = (0..n_blocks * NR8).map(|_| (lcg(&mut seed) % 1000) as f32 / 3e4).collect();
            let offsets: Vec<f32> = (0..n_blocks * NR8).map(|_| (lcg(&mut seed) % 1000) as f32 / 1e3 - 0.5).collect();
            for accumulate in [false, true] {
                for mr in 1..=MR8 {
                    let t0 = 1;
                    let ldo = NR8 + 1;
                    let mut out = vec![0.25f32; MR8 * ldo];
                    // SAFETY: MR8 rows of ldo ≥ NR8.
                    unsafe { tile_i8(mr, &tokens, t0, b0, n_blocks, &levels, &scales, &offsets, max_level, out.as_mut_ptr(), ldo, accumulate) };
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
                                let dot: f64 = (0..32).map(|i| levels[(b * 8 + i / 4) * 32 + 4 * r + i % 4] as f64 * token_levels[(t0 + t) * k + block * 32 + i] as f64).sum();
                                want += scales[b * NR8 + r] as f64 * token_scales[at] as f64 * dot + offsets[b * NR8 + r] as f64 * token_sums[at] as f64;
                            }
                            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "max_level={max_level} mr={mr} t={t} r={r}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
