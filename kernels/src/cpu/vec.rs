//! Elementwise f32 vector kernels.

use wide::f32x8;

/// Σ a[i]·b[i]. AVX2+FMA when `simd::isa()` chose them, else a scalar loop with eight
/// partial sums (which the compiler vectorizes with SSE).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        // SAFETY: `isa()` found AVX2 and FMA, the features this function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_scalar(a, b)
}

pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_tail, b_tail) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four independent accumulators hide the FMA latency.
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let off = i + 8 * j;
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(off)), _mm256_loadu_ps(pb.add(off)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let mut total = super::simd::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        total += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    total
}

/// Lengthens `buf` to at least `len`; never shortens it, so a scratch buffer kept between
/// calls of different sizes is not zeroed again each time it is needed longer.
pub(crate) fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// out[i] = a[i] + b[i].
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == out.len());
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// out[i] = silu(gate[i]) · up[i], silu(x) = x·σ(x): the SwiGLU of llama's feed-forward.
/// AVX2 where `simd::isa()` chose it ([`exp8`]), else eight lanes at a time with `wide`'s
/// portable vectors (SSE2 / NEON; its polynomial exp is within 2e-6 relative of the true
/// value, about 16 f32 ulp); tails with libm.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        // SAFETY: `isa()` found AVX2 and FMA; the lengths are equal (asserted).
        let done = unsafe { silu_mul_avx2(gate, up, out) };
        return silu_mul_tail(&gate[done..], &up[done..], &mut out[done..]);
    }
    silu_mul_portable(gate, up, out)
}

/// `wide`'s exp with its input capped at 87: past about 87.3 it returns 0, which made
/// silu(-100) come out as -100 (caught by `silu_mul_and_exp_match_libm`); and it takes NaN
/// to 0, where NaN should stay NaN.
fn portable_exp(x: f32x8) -> f32x8 {
    x.is_nan().blend(x, x.fast_min(f32x8::splat(87.0)).exp())
}

fn silu_mul_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let (g8, u8, o8) = (gate.chunks_exact(8), up.chunks_exact(8), out.chunks_exact_mut(8));
    for ((o, g), u) in o8.zip(g8).zip(u8) {
        let g = f32x8::from(<[f32; 8]>::try_from(g).unwrap());
        let u = f32x8::from(<[f32; 8]>::try_from(u).unwrap());
        o.copy_from_slice(&(g / (f32x8::ONE + portable_exp(-g)) * u).to_array());
    }
    let done = gate.len() / 8 * 8;
    silu_mul_tail(&gate[done..], &up[done..], &mut out[done..]);
}

fn silu_mul_tail(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// x[i] = exp(factor·x[i] - shift), returning Σ x[i] (the softmax numerator and
/// denominator; the factor lets the prefill scale its scores here instead of in a pass of
/// its own). Multiplied and subtracted apart, not fused, on every path: with factor 1 the
/// argument is exactly x[i] - shift, and every path gives the same bits.
pub fn exp_shifted(x: &mut [f32], factor: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::isa().has_avx2() {
        // SAFETY: `isa()` found AVX2 and FMA.
        let (done, sum) = unsafe { exp_shifted_avx2(x, factor, shift) };
        return sum + exp_shifted_tail(&mut x[done..], factor, shift);
    }
    exp_shifted_portable(x, factor, shift)
}

fn exp_shifted_portable(x: &mut [f32], factor: f32, shift: f32) -> f32 {
    let mut sum8 = f32x8::ZERO;
    let (factor8, shift8) = (f32x8::splat(factor), f32x8::splat(shift));
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let e = portable_exp(f32x8::from(<[f32; 8]>::try_from(&*c).unwrap()) * factor8 - shift8);
        c.copy_from_slice(&e.to_array());
        sum8 += e;
    }
    sum8.reduce_add() + exp_shifted_tail(chunks.into_remainder(), factor, shift)
}

fn exp_shifted_tail(x: &mut [f32], factor: f32, shift: f32) -> f32 {
    let mut sum = 0.0;
    for v in x {
        *v = (*v * factor - shift).exp();
        sum += *v;
    }
    sum
}

/// e^x in 8 lanes, bit for bit what [`portable_exp`] computes (`wide`'s exp, Agner Fog's
/// vectorclass algorithm, without fused multiply-adds as `wide` builds it for x86-64):
/// x = r·ln 2 + t with ln 2 in two parts, e^t by a degree-5 polynomial (Estrin's scheme),
/// 2^r put in the exponent bits. The same bits on every path, so the 8-bit decode's
/// logits do not depend on which one ran (they move by the size of int8 rounding flips
/// with any change of rounding, see tests/smollm2_reference.rs). x is capped at 87 (as in
/// `portable_exp`); below -87.3 the result is 0, NaN stays NaN.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let (mul, add, sub, set) = (|a, b| _mm256_mul_ps(a, b), |a, b| _mm256_add_ps(a, b), |a, b| _mm256_sub_ps(a, b), |v: f32| _mm256_set1_ps(v));
    // The cap keeps NaN: min returns its second operand, x, when either is NaN.
    let capped = _mm256_min_ps(set(87.0), x);
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(mul(capped, set(std::f32::consts::LOG2_E)));
    let t = sub(capped, mul(r, set(0.693_359_375)));
    let t = sub(t, mul(r, set(-2.121_944_4e-4)));
    let (t2, t4) = (mul(t, t), mul(mul(t, t), mul(t, t)));
    let (p0, p1, p2, p3, p4, p5) = (set(1.0 / 2.0), set(1.0 / 6.0), set(1.0 / 24.0), set(1.0 / 120.0), set(1.0 / 720.0), set(1.0 / 5040.0));
    let poly = add(mul(add(mul(p3, t), p2), t2), add(mul(add(mul(p5, t), p4), t4), add(mul(p1, t), p0)));
    let e_t = add(mul(poly, t2), t);
    let two_to_r = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_castps_si256(add(r, set(127.0 + 8_388_608.0)))));
    let e = mul(add(e_t, set(1.0)), two_to_r);
    // Out of range (|x| >= 87.3, infinities) is 0, as in `wide`; the capped large x are not.
    let in_range = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(set(-0.0), capped), set(87.3));
    let e = _mm256_and_ps(in_range, e);
    // NaN in, NaN out.
    _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// [`silu_mul`] over whole groups of 8; returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = gate.len() / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for i in (0..n).step_by(8) {
        let g = _mm256_loadu_ps(gate.as_ptr().add(i));
        let sigmoid_denominator = _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        let silu = _mm256_div_ps(g, sigmoid_denominator);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
    }
    n
}

/// [`exp_shifted`] over whole groups of 8; returns how many values it did and their sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(x: &mut [f32], factor: f32, shift: f32) -> (usize, f32) {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    let (factor, shift) = (_mm256_set1_ps(factor), _mm256_set1_ps(shift));
    let mut sum = _mm256_setzero_ps();
    for i in (0..n).step_by(8) {
        let p = x.as_mut_ptr().add(i);
        let e = exp8(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p), factor), shift));
        _mm256_storeu_ps(p, e);
        sum = _mm256_add_ps(sum, e);
    }
    // Summed as `wide`'s reduce_add does on x86-64 (each half in order, then the halves),
    // so the softmax denominator has the portable form's bits too.
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    (n, lanes[..4].iter().sum::<f32>() + lanes[4..].iter().sum::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_and_exp_match_libm() {
        // The dispatched forms (AVX2 here) and the portable ones.
        for (silu_mul, exp_shifted) in [(silu_mul as fn(&[f32], &[f32], &mut [f32]), exp_shifted as fn(&mut [f32], f32, f32) -> f32), (silu_mul_portable, exp_shifted_portable)] {
            check_silu_mul_and_exp(silu_mul, exp_shifted);
        }
    }

    fn check_silu_mul_and_exp(silu_mul: fn(&[f32], &[f32], &mut [f32]), exp_shifted: fn(&mut [f32], f32, f32) -> f32) {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) / 20.0).collect();
        let up: Vec<f32> = (0..1003).map(|i| 1.0 + i as f32 / 1000.0).collect();
        let mut out = vec![0f32; x.len()];
        silu_mul(&x, &up, &mut out);
        for i in 0..x.len() {
            let exact = x[i] as f64 / (1.0 + (-x[i] as f64).exp()) * up[i] as f64;
            assert!((out[i] as f64 - exact).abs() <= 1e-6 * exact.abs().max(1e-3), "silu i={i}: {} vs {exact}", out[i]);
        }
        let mut e = x.clone();
        let sum = exp_shifted(&mut e, 1.0, 25.0);
        let exact_sum: f64 = x.iter().map(|&v| (v as f64 - 25.0).exp()).sum();
        for i in 0..x.len() {
            let exact = (x[i] as f64 - 25.0).exp();
            assert!((e[i] as f64 - exact).abs() <= 2e-6 * exact, "exp i={i}: {} vs {exact}", e[i]);
        }
        assert!((sum as f64 - exact_sum).abs() <= 1e-5 * exact_sum);
        // A factor, as the prefill's attention scale: e^(x/8 - 3).
        let mut e = x.clone();
        let sum = exp_shifted(&mut e, 0.125, 3.0);
        let exact_sum: f64 = x.iter().map(|&v| (v as f64 * 0.125 - 3.0).exp()).sum();
        for i in 0..x.len() {
            let exact = (x[i] as f64 * 0.125 - 3.0).exp();
            assert!((e[i] as f64 - exact).abs() <= 2e-6 * exact, "scaled exp i={i}: {} vs {exact}", e[i]);
        }
        assert!((sum as f64 - exact_sum).abs() <= 1e-5 * exact_sum);

        // Over the whole range where e^x is a normal float, past it, and NaN.
        let x: Vec<f32> = (0..1740).map(|i| -87.0 + i as f32 * 0.1).collect();
        let mut e = x.clone();
        exp_shifted(&mut e, 1.0, 0.0);
        for (&x, &e) in x.iter().zip(&e) {
            let exact = (x as f64).exp();
            assert!((e as f64 - exact).abs() <= 2e-6 * exact, "exp({x}): {e} vs {exact}");
        }
        let mut edges = [-1000.0, 1000.0, f32::NAN, f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0];
        exp_shifted(&mut edges, 1.0, 0.0);
        assert!(edges[0] >= 0.0 && edges[0] < 1e-37, "e^-1000 = {}", edges[0]);
        assert!(edges[1] > 1e37, "e^1000 = {}", edges[1]);
        assert!(edges[2].is_nan(), "e^NaN = {}", edges[2]);
        assert!(edges[3] >= 0.0 && edges[3] < 1e-37, "e^-inf = {}", edges[3]);
        let (gate, up) = ([-1000.0f32, 1000.0, f32::NAN, 0.0, 3.0, -3.0, 20.0, -20.0], [2.0f32; 8]);
        let mut out = [0f32; 8];
        silu_mul(&gate, &up, &mut out);
        assert!(out[0].abs() < 1e-30 && out[1] == 2000.0 && out[2].is_nan() && out[3] == 0.0, "silu at the edges: {out:?}");
    }

    /// The AVX2 forms compute the portable forms' bits, so decode does not depend on which ran.
    #[test]
    fn dispatched_and_portable_forms_agree_bit_for_bit() {
        let x: Vec<f32> = (0..20011).map(|i| (i as f32 - 10000.0) * 0.00937).chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 87.0, 87.29, 87.31, -87.29, -87.31, 1e-30, -0.0]).collect();
        let up: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 / 3.0).collect();
        let (mut fast, mut portable) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        silu_mul(&x, &up, &mut fast);
        silu_mul_portable(&x, &up, &mut portable);
        for i in 0..x.len() {
            assert_eq!(fast[i].to_bits(), portable[i].to_bits(), "silu({}) · {}: {} vs {}", x[i], up[i], fast[i], portable[i]);
        }
        for (factor, shift) in [(1.0, 0.0), (1.0, 3.5), (0.125, 0.7)] {
            let (mut fast, mut portable) = (x.clone(), x.clone());
            let (sum_fast, sum_portable) = (exp_shifted(&mut fast, factor, shift), exp_shifted_portable(&mut portable, factor, shift));
            for i in 0..x.len() {
                assert_eq!(fast[i].to_bits(), portable[i].to_bits(), "exp({factor}·{} - {shift}): {} vs {}", x[i], fast[i], portable[i]);
            }
            assert!(sum_fast.is_nan() && sum_portable.is_nan(), "a NaN input makes the sum NaN on both forms");
            let finite = &x[..20011];
            let (mut fast, mut portable) = (finite.to_vec(), finite.to_vec());
            assert_eq!(exp_shifted(&mut fast, factor, shift).to_bits(), exp_shifted_portable(&mut portable, factor, shift).to_bits(), "softmax denominators, {factor}, {shift}");
        }
    }

    #[test]
    fn dot_matches_f64_reference_at_every_length() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for n in 0..200 {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let tol = 1e-5 * (n as f64).max(1.0);
            assert!((dot(&a, &b) as f64 - exact).abs() < tol, "dispatched dot, n={n}");
            assert!((dot_scalar(&a, &b) as f64 - exact).abs() < tol, "scalar dot, n={n}");
        }
    }
}
