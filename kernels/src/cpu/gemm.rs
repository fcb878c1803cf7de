//! The register-blocked f32 micro-kernel of the prefill matmul (BLIS's structure): a tile of
//! up to MR tokens × NR weight rows is accumulated in registers over a slice of k, reading
//! the weights from a packed panel (NR rows interleaved: panel[i·NR + c] is row c's element i)
//! and broadcasting one activation per token and step. With AVX2, 6 × 16 is 12 accumulator
//! registers plus 2 for the panel and 1 for the broadcast: all 16 ymm registers, and 12 FMAs
//! for 3 loads, which keeps both FMA ports busy.


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
    if super::simd::isa() == super::simd::Isa::Avx2 {
        let panel = panel.as_ptr();
        macro_rules! by_height {
            ($packed:literal, $x:expr, $ldx:expr) => {
                match mr {
                    1 => tile_avx2::<1, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    2 => tile_avx2::<2, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    3 => tile_avx2::<3, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    4 => tile_avx2::<4, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    5 => tile_avx2::<5, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                    _ => tile_avx2::<6, $packed>(kc, $x, $ldx, panel, ldp, out, ldo, accumulate),
                }
            };
        }
        match tokens {
            Tokens::Rows { x, ldx } => by_height!(false, x.as_ptr(), ldx),
            Tokens::Packed(x) => by_height!(true, x.as_ptr(), MR),
        }
        return;
    }
    tile_scalar(mr, kc, tokens, panel, ldp, out, ldo, accumulate);
}

/// Tokens t0.. (n of them, zero past the end) of the n_tokens × k row-major `x`, packed for
/// [`Tokens::Packed`]: out[i·MR + t] = x[(t0 + t)·k + i].
pub fn pack_tokens(x: &[f32], k: usize, t0: usize, out: &mut [f32]) {
    let n = (x.len() / k).saturating_sub(t0).min(MR);
    let out = &mut out[..k * MR];
    if n < MR {
        out.fill(0.0);
    }
    for (t, row) in x[t0 * k..].chunks_exact(k).take(n).enumerate() {
        for (slot, &v) in out.chunks_exact_mut(MR).zip(row) {
            slot[t] = v;
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

/// M tokens; with PACKED the activations are [`Tokens::Packed`] (`ldx` unused), else rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const M: usize, const PACKED: bool>(kc: usize, x: *const f32, ldx: usize, panel: *const f32, ldp: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    for i in 0..kc {
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
}
