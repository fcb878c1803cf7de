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

/// acc[t][c] = Σ_{i < kc} x[t·ldx + i] · panel[i·NR + c] for t < mr ≤ MR.
pub fn tile(mr: usize, kc: usize, x: &[f32], ldx: usize, panel: &[f32], acc: &mut [[f32; NR]; MR]) {
    assert!(mr >= 1 && mr <= MR && panel.len() >= kc * NR && x.len() >= (mr - 1) * ldx + kc);
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa() == super::simd::Isa::Avx2 {
        // SAFETY: AVX2 and FMA were detected; the bounds were asserted above.
        unsafe {
            match mr {
                1 => tile_avx2::<1>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
                2 => tile_avx2::<2>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
                3 => tile_avx2::<3>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
                4 => tile_avx2::<4>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
                5 => tile_avx2::<5>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
                _ => tile_avx2::<6>(kc, x.as_ptr(), ldx, panel.as_ptr(), acc),
            }
        }
        return;
    }
    tile_scalar(mr, kc, x, ldx, panel, acc);
}

pub fn tile_scalar(mr: usize, kc: usize, x: &[f32], ldx: usize, panel: &[f32], acc: &mut [[f32; NR]; MR]) {
    for (t, acc) in acc.iter_mut().enumerate().take(mr) {
        *acc = [0.0; NR];
        for i in 0..kc {
            let a = x[t * ldx + i];
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc += a * panel[i * NR + c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const M: usize>(kc: usize, x: *const f32, ldx: usize, panel: *const f32, acc: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); M];
    let mut hi = [_mm256_setzero_ps(); M];
    for i in 0..kc {
        let b_lo = _mm256_loadu_ps(panel.add(i * NR));
        let b_hi = _mm256_loadu_ps(panel.add(i * NR + 8));
        for t in 0..M {
            let a = _mm256_broadcast_ss(&*x.add(t * ldx + i));
            lo[t] = _mm256_fmadd_ps(a, b_lo, lo[t]);
            hi[t] = _mm256_fmadd_ps(a, b_hi, hi[t]);
        }
    }
    for t in 0..M {
        _mm256_storeu_ps(acc[t].as_mut_ptr(), lo[t]);
        _mm256_storeu_ps(acc[t].as_mut_ptr().add(8), hi[t]);
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
        for mr in 1..=MR {
            let (mut fast, mut slow) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
            tile(mr, kc, &x, ldx, &panel, &mut fast);
            tile_scalar(mr, kc, &x, ldx, &panel, &mut slow);
            for t in 0..mr {
                for c in 0..NR {
                    assert!((fast[t][c] - slow[t][c]).abs() < 1e-4, "mr={mr} t={t} c={c}");
                }
            }
        }
    }
}
