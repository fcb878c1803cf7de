//! The scale searches of the k-quant quantizers, eight groups at once: lane j of every
//! vector works on group j and performs exactly the scalar operations of
//! [`super::make_qkx2_quants`] / [`super::q6_k`]'s make_qx_quants in the same order (no fused
//! multiply-add, sums left to right, IEEE division and rounding per lane), so the result is
//! bit-identical to the scalar port and therefore to ggml. Where the scalar code branches
//! per group, the lanes compute both sides and keep one with a mask.
//!
//! The search is ~95% of a K-quant conversion: 21 trial scales × 3 passes over every weight.
//! Spreading groups over lanes (rather than a group's values) keeps each lane's order of
//! operations the scalar one, which a horizontal sum would not.

use std::arch::x86_64::*;

use super::ScaleGrid;

const LANES: usize = 8;
const MAX_GROUP: usize = 32;

/// Writes lane j of levels[i] (small non-negative integers held as floats) to out[j·n + i].
#[target_feature(enable = "avx2")]
unsafe fn store_levels(levels: &[__m256], n: usize, out: &mut [u8]) {
    for (i, &l) in levels.iter().enumerate().take(n) {
        let mut lane = [0i32; LANES];
        _mm256_storeu_si256(lane.as_mut_ptr().cast(), _mm256_cvtps_epi32(l));
        for (j, &v) in lane.iter().enumerate() {
            out[j * n + i] = v as u8;
        }
    }
}

#[inline(always)]
unsafe fn select(mask: __m256, if_true: __m256, if_false: __m256) -> __m256 {
    _mm256_blendv_ps(if_false, if_true, mask)
}

#[inline(always)]
unsafe fn round_ties_even(v: __m256) -> __m256 {
    _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
}

/// `S` vectors of 8 lanes used as one: the search's sums are serial chains (each lane must add
/// in the scalar order), so independent groups in extra vectors are what keeps the adders busy.
#[derive(Clone, Copy)]
struct Lanes<const S: usize>([__m256; S]);

macro_rules! lanes_ops {
    ($($name:ident => $op:expr;)*) => {
        impl<const S: usize> Lanes<S> {
            $(
                #[target_feature(enable = "avx2")]
                #[inline]
                unsafe fn $name(self, other: Self) -> Self {
                    let mut out = self.0;
                    for k in 0..S {
                        out[k] = $op(self.0[k], other.0[k]);
                    }
                    Lanes(out)
                }
            )*
        }
    };
}

lanes_ops! {
    add => _mm256_add_ps;
    sub => _mm256_sub_ps;
    mul => _mm256_mul_ps;
    div => _mm256_div_ps;
    and => _mm256_and_ps;
    xor => _mm256_xor_ps;
    min_ps => _mm256_min_ps;
    max_ps => _mm256_max_ps;
    lt => _mm256_cmp_ps::<_CMP_LT_OQ>;
    gt => _mm256_cmp_ps::<_CMP_GT_OQ>;
    eq => _mm256_cmp_ps::<_CMP_EQ_OQ>;
}

impl<const S: usize> Lanes<S> {
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn splat(v: f32) -> Self {
        Lanes([_mm256_set1_ps(v); S])
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn round(self) -> Self {
        let mut out = self.0;
        for v in out.iter_mut() {
            *v = round_ties_even(*v);
        }
        Lanes(out)
    }

    /// `if_true` where the mask lane is set, else `if_false`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn select(self, if_true: Self, if_false: Self) -> Self {
        let mut out = self.0;
        for k in 0..S {
            out[k] = select(self.0[k], if_true.0[k], if_false.0[k]);
        }
        Lanes(out)
    }

    /// Value i of the 8·S groups of `n` in `values`, lane j of vector k holding group 8k + j.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn transpose(values: &[f32], n: usize) -> [Self; MAX_GROUP] {
        assert!(n <= MAX_GROUP && values.len() == S * LANES * n);
        let mut t = [Lanes([_mm256_setzero_ps(); S]); MAX_GROUP];
        let group_starts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(n as i32));
        for (i, t) in t.iter_mut().enumerate().take(n) {
            for k in 0..S {
                // SAFETY: the largest index read is (8k + 7)n + i < 8Sn = values.len().
                t.0[k] = _mm256_i32gather_ps::<4>(values.as_ptr().add(k * LANES * n + i), group_starts);
            }
        }
        t
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store(self, out: &mut [f32]) {
        for k in 0..S {
            _mm256_storeu_ps(out[k * LANES..(k + 1) * LANES].as_mut_ptr(), self.0[k]);
        }
    }
}

/// make_qkx2_quants on 8·S groups of `n` ≤ 32 values (group j is x[j·n..(j+1)·n], likewise
/// `weights` and `levels`); each group's (scale, min) goes to scales[j], mins[j].
///
/// SAFETY of the caller: AVX2 is available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn make_qkx2_quants_lanes<const S: usize, const N: usize, const ABSOLUTE: bool>(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    levels: &mut [u8],
    grid: ScaleGrid,
    scales: &mut [f32],
    mins: &mut [f32],
) {
    // The group length and the residual are compile-time so the inner loops unroll.
    let n = N;
    assert!((1..=MAX_GROUP).contains(&n) && x.len() == S * LANES * n && weights.len() == x.len() && levels.len() == x.len());
    assert!(scales.len() == S * LANES && mins.len() == S * LANES);
    let xt = Lanes::<S>::transpose(x, n);
    let wt = Lanes::<S>::transpose(weights, n);
    let (x, w) = (&xt[..n], &wt[..n]);
    let zero = Lanes::<S>::splat(0.0);
    let nmax_v = Lanes::<S>::splat(nmax as f32);

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = w[0].mul(x[0]);
    for i in 1..n {
        min = x[i].lt(min).select(x[i], min);
        max = x[i].gt(max).select(x[i], max);
        sum_w = sum_w.add(w[i]);
        sum_x = sum_x.add(w[i].mul(x[i]));
    }
    min = min.gt(zero).select(zero, min);
    let flat = max.eq(min);
    let flat_min = min;
    // `min` moves whenever a trial wins, and later trials round and scale against the new one
    // (as ggml's loop does).
    let round_levels = |iscale: Lanes<S>, min: Lanes<S>, out: &mut [Lanes<S>; MAX_GROUP]| {
        for i in 0..n {
            out[i] = iscale.mul(x[i].sub(min)).round().max_ps(zero).min_ps(nmax_v);
        }
    };
    let abs_mask = Lanes::<S>::splat(f32::from_bits(0x7fff_ffff));
    let weighted_residual = |levels: &[Lanes<S>; MAX_GROUP], scale: Lanes<S>, min: Lanes<S>| {
        let mut error = zero;
        for i in 0..n {
            let diff = scale.mul(levels[i]).add(min).sub(x[i]);
            let diff = if ABSOLUTE { diff.and(abs_mask) } else { diff.mul(diff) };
            error = error.add(w[i].mul(diff));
        }
        error
    };

    // A trial's levels follow from its inverse scale and the min it rounded against, so the
    // lanes remember those two for the best trial and round once at the end (blending level
    // vectors per trial costs more than the search itself).
    let iscale = nmax_v.div(max.sub(min));
    let mut scale = Lanes::<S>::splat(1.0).div(iscale);
    let mut trial = [zero; MAX_GROUP];
    round_levels(iscale, min, &mut trial);
    let mut best_error = weighted_residual(&trial, scale, min);
    let (mut best_iscale, mut best_round_min) = (iscale, min);

    if grid.nstep >= 1 {
        for step in 0..=grid.nstep {
            let numerator = grid.rmin + grid.rdelta * step as f32 + nmax as f32;
            let iscale = Lanes::<S>::splat(numerator).div(max.sub(min));
            round_levels(iscale, min, &mut trial);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
            for i in 0..n {
                let wl = w[i].mul(trial[i]);
                sum_l = sum_l.add(wl);
                sum_l2 = sum_l2.add(wl.mul(trial[i]));
                sum_xl = sum_xl.add(wl.mul(x[i]));
            }
            let det = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
            let solvable = det.gt(zero);
            let this_scale = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(det);
            let this_min = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(det);
            let positive_min = this_min.gt(zero);
            let this_scale = positive_min.select(sum_xl.div(sum_l2), this_scale);
            let this_min = positive_min.select(zero, this_min);
            let error = weighted_residual(&trial, this_scale, this_min);
            let better = solvable.and(error.lt(best_error));
            best_iscale = better.select(iscale, best_iscale);
            best_round_min = better.select(min, best_round_min);
            best_error = better.select(error, best_error);
            scale = better.select(this_scale, scale);
            min = better.select(this_min, min);
        }
    }

    // A flat group's levels are all 0: an inverse scale of 0 rounds everything there.
    round_levels(flat.select(zero, best_iscale), best_round_min, &mut trial);
    for k in 0..S {
        let vectors: [__m256; MAX_GROUP] = std::array::from_fn(|i| trial[i].0[k]);
        store_levels(&vectors, n, &mut levels[k * LANES * n..(k + 1) * LANES * n]);
    }
    flat.select(zero, scale).store(scales);
    // Negation flips the sign bit (−0.0 for a min of 0, as the scalar `-min` gives).
    flat.select(flat_min, min).xor(Lanes::<S>::splat(-0.0)).store(mins);
}

/// q6_K's make_qx_quants (see [`super::q6_k`]) on 8 groups of `n` ≤ 32 values, group j at
/// x[j·n..(j+1)·n]. Returns each group's scale; levels + nmax go to `levels`.
///
/// A trial's levels follow from its inverse scale alone, so the lanes remember the winning
/// inverse scale and round once at the end instead of keeping level vectors per trial.
///
/// SAFETY of the caller: AVX2 is available.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn make_qx_quants_x8(x: &[f32], n: usize, nmax: i32, levels: &mut [u8]) -> [f32; LANES] {
    assert!((1..=MAX_GROUP).contains(&n) && x.len() == LANES * n && levels.len() == x.len());
    let xt = Lanes::<1>::transpose(x, n);
    let xt: [__m256; MAX_GROUP] = std::array::from_fn(|i| xt[i].0[0]);
    let x = &xt[..n];
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let (low, high) = (_mm256_set1_ps(-nmax as f32), _mm256_set1_ps((nmax - 1) as f32));
    let level = |iscale: __m256, v: __m256| _mm256_min_ps(_mm256_max_ps(round_ties_even(_mm256_mul_ps(iscale, v)), low), high);

    let (mut amax, mut max) = (zero, zero);
    for &v in x {
        let a = _mm256_and_ps(v, abs_mask);
        let larger = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, a);
        amax = select(larger, a, amax);
        max = select(larger, v, max);
    }
    let all_zero = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(max, abs_mask), _mm256_set1_ps(super::GROUP_MAX_EPS));

    // w = v² and w·v do not depend on the trial: computed once, rounded as the scalar
    // code's inline products are.
    let mut w = [zero; MAX_GROUP];
    let mut wv = [zero; MAX_GROUP];
    for i in 0..n {
        w[i] = _mm256_mul_ps(x[i], x[i]);
        wv[i] = _mm256_mul_ps(w[i], x[i]);
    }
    let weighted_sums = |iscale: __m256| {
        let (mut sumlx, mut suml2) = (zero, zero);
        for i in 0..n {
            let l = level(iscale, x[i]);
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wv[i], l));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w[i], l), l));
        }
        (sumlx, suml2)
    };

    let mut best_iscale = _mm256_div_ps(_mm256_set1_ps(-nmax as f32), max);
    let (sumlx, suml2) = weighted_sums(best_iscale);
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
    let mut scale = select(nonzero, _mm256_div_ps(sumlx, suml2), zero);
    let mut best = _mm256_mul_ps(scale, sumlx);
    for step in (-9..=9).filter(|&step| step != 0) {
        let iscale = _mm256_div_ps(_mm256_set1_ps(-(nmax as f32 + 0.1 * step as f32)), max);
        let (sumlx, suml2) = weighted_sums(iscale);
        let better = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2)),
        );
        best_iscale = select(better, iscale, best_iscale);
        let this_scale = _mm256_div_ps(sumlx, suml2);
        scale = select(better, this_scale, scale);
        best = select(better, _mm256_mul_ps(this_scale, sumlx), best);
    }

    let offset = _mm256_set1_ps(nmax as f32);
    let mut rounded = [zero; MAX_GROUP];
    for (r, &v) in rounded.iter_mut().zip(x) {
        *r = select(all_zero, zero, _mm256_add_ps(level(best_iscale, v), offset));
    }
    store_levels(&rounded, n, levels);
    let mut scales = [0f32; LANES];
    _mm256_storeu_ps(scales.as_mut_ptr(), select(all_zero, zero, scale));
    scales
}
