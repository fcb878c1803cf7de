//! Kernel variants by instruction set, chosen once per process from the CPU's features.
//!
//! Each weight type's integer dot product (`vec_dot`, weights · 8-bit activations of the
//! table's `vec_dot_type`) exists per instruction set; the scalar reference that every variant
//! is tested against is [`vec_dot_reference`]: dequantize both sides, dot in f64.
//! Where no variant exists for this CPU, callers keep activations in f32 and use the table's
//! exact `dot_f32`, so quantizing activations only ever happens where it is faster.
//!
//! `RETORT_ISA=scalar` forces the portable kernels; `avx2` or `avx512vnni` stop an AVX-512
//! machine at that rung (for comparisons and tests).

use std::sync::OnceLock;

use crate::dtype::DType;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(super) use avx2::hsum;
#[cfg(target_arch = "aarch64")]
mod neon;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C (x86-64 since Haswell / Zen).
    Avx2,
    /// Avx2's features plus AVX-512 F, BW and VL with VNNI (Cascade Lake, Ice Lake, Sapphire
    /// Rapids, Zen 4 and later): `vpdpbusd` multiplies bytes and adds into i32 lanes in one
    /// instruction where AVX2 takes `maddubs` + `madd`. Where no VNNI kernel exists, the
    /// AVX2 one runs.
    Avx512Vnni,
    /// Avx512Vnni's features plus AVX-512 BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and
    /// later): BF16 weights against BF16 activations in `vdpbf16ps`, as ggml does.
    Avx512Bf16,
    /// Advanced SIMD, baseline on aarch64.
    Neon,
}

impl Isa {
    /// Whether the AVX2 kernels run here (a subset of this instruction set's features).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512Bf16)
    }

    /// Whether the AVX-512 VNNI kernels (and the zmm f32 tile) run here.
    pub fn has_avx512_vnni(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::Avx512Bf16)
    }

    /// The x86 instruction sets in order, each a superset of the ones before.
    fn x86_rung(self) -> Option<u8> {
        match self {
            Isa::Avx2 => Some(1),
            Isa::Avx512Vnni => Some(2),
            Isa::Avx512Bf16 => Some(3),
            Isa::Scalar | Isa::Neon => None,
        }
    }

    /// Whether this CPU runs this instruction set's kernels: the chosen one, or one below it.
    pub fn runs_here(self) -> bool {
        match (self.x86_rung(), isa().x86_rung()) {
            (Some(wanted), Some(chosen)) => wanted <= chosen,
            _ => self == Isa::Scalar || self == isa(),
        }
    }

    /// Every instruction set this CPU runs, the chosen one last: the variants tests compare.
    pub fn supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Bf16, Isa::Neon].into_iter().filter(|isa| isa.runs_here()).collect()
    }
}

/// The instruction set the kernels use on this machine.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let isa = match std::env::var("RETORT_ISA").map(|v| v.to_ascii_lowercase()).as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if detect().has_avx2() => Isa::Avx2,
            Ok("avx512vnni") if detect().has_avx512_vnni() => Isa::Avx512Vnni,
            _ => detect(),
        };
        log::debug!("cpu kernels: {isa:?}");
        isa
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        let vnni = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni");
        return match (vnni, is_x86_feature_detected!("avx512bf16")) {
            (true, true) => Isa::Avx512Bf16,
            (true, false) => Isa::Avx512Vnni,
            _ => Isa::Avx2,
        };
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Isa::Neon;
    }
    Isa::Scalar
}

/// Asks for `bytes` to be brought into L2 ahead of their use (a hint: no effect on results;
/// only x86-64 issues one).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside the slice; it never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(bytes.as_ptr().add(line).cast()) };
    }
}

/// An integer dot product: weights of some type · activations quantized to `act_type`.
#[derive(Clone, Copy)]
pub struct VecDot {
    pub act_type: DType,
    pub dot: fn(row: &[u8], act: &[u8]) -> f32,
    /// Two rows against the same activations, where sharing them pays: the activation
    /// block and its scales are loaded once for both rows.
    pub pair: Option<fn(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2]>,
    /// A group of 8 rows interleaved at load (`cpu::interleave`) against the same
    /// activations, lane r holding row r: where it exists, the loader repacks the type.
    pub group: Option<fn(group: &[u8], act: &[u8]) -> [f32; 8]>,
}

/// Wraps a `target_feature` kernel of three arguments (two rows and the activations), as
/// [`checked`] does two.
#[cfg(target_arch = "x86_64")]
macro_rules! checked_pair {
    ($kernel:path) => {{
        fn call(row0: &[u8], row1: &[u8], act: &[u8]) -> [f32; 2] {
            // SAFETY: handed out only when `isa()` detected this kernel's target features.
            unsafe { $kernel(row0, row1, act) }
        }
        Some(call as fn(&[u8], &[u8], &[u8]) -> [f32; 2])
    }};
}

/// Wraps a `target_feature` kernel of two (or three) arguments in a safe fn pointer of the given type.
/// Only used below, after `isa()` has found the features the kernel is compiled for.
macro_rules! checked {
    ($kernel:path, fn($a:ty, $b:ty) $(-> $ret:ty)?) => {{
        fn call(a: $a, b: $b) $(-> $ret)? {
            // SAFETY: handed out only when `isa()` detected this kernel's target features.
            unsafe { $kernel(a, b) }
        }
        call as fn($a, $b) $(-> $ret)?
    }};
    ($kernel:path, fn($a:ty, $b:ty, $c:ty)) => {{
        fn call(a: $a, b: $b, c: $c) {
            // SAFETY: handed out only when `isa()` detected this kernel's target features.
            unsafe { $kernel(a, b, c) }
        }
        call as fn($a, $b, $c)
    }};
}

/// The fastest integer dot product of `dtype` weights on this CPU, if there is one.
pub fn vec_dot(dtype: DType) -> Option<VecDot> {
    vec_dot_for(isa(), dtype)
}

/// `vec_dot` for a given instruction set; None where this CPU does not run it.
pub fn vec_dot_for(isa: Isa, dtype: DType) -> Option<VecDot> {
    if !isa.runs_here() {
        return None;
    }
    match isa {
        Isa::Scalar => None,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2_vec_dot(dtype),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => vnni_vec_dot(dtype).or_else(|| avx2_vec_dot(dtype)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => bf16_vec_dot(dtype).or_else(|| vnni_vec_dot(dtype)).or_else(|| avx2_vec_dot(dtype)),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon_vec_dot(dtype),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// A `VecDot` row of the tables below: `dtype`'s kernels against its `vec_dot_type`.
fn kernels(dtype: DType, dot: fn(&[u8], &[u8]) -> f32, pair: Option<fn(&[u8], &[u8], &[u8]) -> [f32; 2]>, group: Option<fn(&[u8], &[u8]) -> [f32; 8]>) -> VecDot {
    VecDot { act_type: dtype.traits().vec_dot_type, dot, pair, group }
}

/// A row of the x86 tables below: a weight type's row dot, then its pair and 8-row group
/// kernels where it has them (`-` where not), as safe fn pointers.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_row {
    ($dtype:expr, $dot:path, $pair:tt, $group:tt) => {
        kernels($dtype, checked!($dot, fn(&[u8], &[u8]) -> f32), x86_row!(@pair $pair), x86_row!(@group $group))
    };
    (@pair -) => { None };
    (@pair $pair:path) => { checked_pair!($pair) };
    (@group -) => { None };
    (@group $group:path) => { Some(checked!($group, fn(&[u8], &[u8]) -> [f32; 8])) };
}

/// The AVX2 kernels, one row per weight type.
#[cfg(target_arch = "x86_64")]
fn avx2_vec_dot(dtype: DType) -> Option<VecDot> {
    use avx2::*;
    Some(match dtype {
        DType::Q4_0 => x86_row!(dtype, q4_0_q8_1, q4_0_q8_1_pair, q4_0x8_q8_1),
        DType::Q4_1 => x86_row!(dtype, q4_1_q8_1, q4_1_q8_1_pair, q4_1x8_q8_1),
        DType::Q5_0 => x86_row!(dtype, q5_0_q8_1, q5_0_q8_1_pair, q5_0x8_q8_1),
        DType::Q5_1 => x86_row!(dtype, q5_1_q8_1, q5_1_q8_1_pair, q5_1x8_q8_1),
        DType::Q8_0 => x86_row!(dtype, q8_0_q8_0, -, q8_0x8_q8_0),
        DType::Q2_K => x86_row!(dtype, q2_k_q8_k, -, -),
        DType::Q3_K => x86_row!(dtype, q3_k_q8_k, -, -),
        DType::Q4_K => x86_row!(dtype, q4_k_q8_k, -, q4_kx8_q8_k),
        DType::Q5_K => x86_row!(dtype, q5_k_q8_k, -, -),
        DType::Q6_K => x86_row!(dtype, q6_k_q8_k, -, q6_kx8_q8_k),
        _ => return None,
    })
}

/// The AVX-512 VNNI kernels, where they differ from AVX2's: the types whose byte products
/// add straight into i32 sums (the k-quants scale i16 sums per sub-block, where `vpdpbusd`
/// has nothing to save).
#[cfg(target_arch = "x86_64")]
fn vnni_vec_dot(dtype: DType) -> Option<VecDot> {
    use avx2::*;
    Some(match dtype {
        DType::Q4_0 => x86_row!(dtype, q4_0_q8_1_vnni, q4_0_q8_1_pair_vnni, q4_0x8_q8_1_vnni),
        DType::Q4_1 => x86_row!(dtype, q4_1_q8_1_vnni, q4_1_q8_1_pair_vnni, q4_1x8_q8_1_vnni),
        DType::Q5_0 => x86_row!(dtype, q5_0_q8_1_vnni, q5_0_q8_1_pair_vnni, q5_0x8_q8_1_vnni),
        DType::Q5_1 => x86_row!(dtype, q5_1_q8_1_vnni, q5_1_q8_1_pair_vnni, q5_1x8_q8_1_vnni),
        DType::Q8_0 => x86_row!(dtype, q8_0_q8_0_vnni, -, q8_0x8_q8_0_vnni),
        _ => return None,
    })
}

/// The AVX-512 BF16 kernel: BF16 rows against BF16 activations.
#[cfg(target_arch = "x86_64")]
fn bf16_vec_dot(dtype: DType) -> Option<VecDot> {
    (dtype == DType::BF16).then(|| kernels(dtype, checked!(avx512::bf16_bf16, fn(&[u8], &[u8]) -> f32), None, None))
}

/// The NEON kernels: row dots of the 32-value types.
#[cfg(target_arch = "aarch64")]
fn neon_vec_dot(dtype: DType) -> Option<VecDot> {
    let dot = match dtype {
        DType::Q4_0 => checked!(neon::q4_0_q8_1, fn(&[u8], &[u8]) -> f32),
        DType::Q4_1 => checked!(neon::q4_1_q8_1, fn(&[u8], &[u8]) -> f32),
        DType::Q8_0 => checked!(neon::q8_0_q8_0, fn(&[u8], &[u8]) -> f32),
        _ => return None,
    };
    Some(kernels(dtype, dot, None, None))
}

/// The fastest quantizer of activations to `act_type` (an 8-bit `vec_dot_type`). The vector
/// ones round halves to even where the reference rounds them away from zero; any other
/// value is the reference's.
pub fn quantize_activations(act_type: DType) -> fn(&[f32], &mut [u8]) {
    match (isa().has_avx2(), act_type) {
        #[cfg(target_arch = "x86_64")]
        (true, DType::Q8_0) => checked!(avx2::quantize_q8_0, fn(&[f32], &mut [u8])),
        #[cfg(target_arch = "x86_64")]
        (true, DType::Q8_1) => checked!(avx2::quantize_q8_1, fn(&[f32], &mut [u8])),
        _ => act_type.traits().from_f32.expect("activation types have quantizers"),
    }
}

/// The fastest decoder of a `dtype` row to f32 (the table's values, bit for bit).
pub fn to_f32(dtype: DType) -> fn(&[u8], &mut [f32]) {
    match (isa().has_avx2(), dtype) {
        #[cfg(target_arch = "x86_64")]
        (true, DType::F16) => checked!(avx2::f16_to_f32, fn(&[u8], &mut [f32])),
        #[cfg(target_arch = "x86_64")]
        (true, DType::BF16) => checked!(avx2::bf16_to_f32, fn(&[u8], &mut [f32])),
        _ => dtype.traits().to_f32,
    }
}

/// The fastest dot of a `dtype` row with f32 activations (exact: no activation rounding).
pub fn dot_f32(dtype: DType) -> fn(&[u8], &[f32]) -> f32 {
    dot_f32_for(isa(), dtype)
}

/// [`dot_f32`] for a given instruction set (the table's where this CPU does not run it).
pub fn dot_f32_for(isa: Isa, dtype: DType) -> fn(&[u8], &[f32]) -> f32 {
    match (isa.has_avx2() && isa.runs_here(), dtype) {
        #[cfg(target_arch = "x86_64")]
        (true, DType::F16) => checked!(avx2::f16_f32, fn(&[u8], &[f32]) -> f32),
        #[cfg(target_arch = "x86_64")]
        (true, DType::BF16) => checked!(avx2::bf16_f32, fn(&[u8], &[f32]) -> f32),
        _ => dtype.traits().dot_f32,
    }
}

/// [`dot_f32`] of each of a run of rows (`out.len()` rows of `x.len()` values) into `out`, in
/// one call, where this CPU has such a kernel (the 16-bit floats on AVX2): exact decode of
/// F16 and BF16 files, whose rows are too short for a call each to be free.
pub fn dot_rows_f32(dtype: DType) -> Option<fn(rows: &[u8], x: &[f32], out: &mut [f32])> {
    match (isa().has_avx2(), dtype) {
        #[cfg(target_arch = "x86_64")]
        (true, DType::F16) => Some(checked!(avx2::f16_rows_f32, fn(&[u8], &[f32], &mut [f32]))),
        #[cfg(target_arch = "x86_64")]
        (true, DType::BF16) => Some(checked!(avx2::bf16_rows_f32, fn(&[u8], &[f32], &mut [f32]))),
        _ => None,
    }
}

/// out = Σ_p w[p] · rows[p·dim..][..dim] (dim = out.len(), a multiple of 8): the value
/// half of attention.
///
/// # Safety
/// AVX2, FMA and F16C must be present (`isa().has_avx2()`).
#[cfg(target_arch = "x86_64")]
pub unsafe fn avx2_weighted_sum_f32(w: &[f32], rows: &[f32], out: &mut [f32]) {
    avx2::weighted_sum_f32(w, rows, out)
}

/// [`avx2_weighted_sum_f32`] over f16 rows.
///
/// # Safety
/// As [`avx2_weighted_sum_f32`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn avx2_weighted_sum_f16(w: &[f32], rows: &[half::f16], out: &mut [f32]) {
    avx2::weighted_sum_f16(w, rows, out)
}

/// out[p] = scale · (q · rows[p·dim..][..dim]) (dim = q.len(), a multiple of 8): the key
/// half of attention.
///
/// # Safety
/// As [`avx2_weighted_sum_f32`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn avx2_scaled_scores_f32(q: &[f32], rows: &[f32], scale: f32, out: &mut [f32]) {
    avx2::scaled_scores_f32(q, rows, scale, out)
}

/// [`avx2_scaled_scores_f32`] over f16 rows.
///
/// # Safety
/// As [`avx2_weighted_sum_f32`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn avx2_scaled_scores_f16(q: &[f32], rows: &[half::f16], scale: f32, out: &mut [f32]) {
    avx2::scaled_scores_f16(q, rows, scale, out)
}

/// What every `vec_dot` variant computes: Σ dequant(row)_i · dequant(act)_i, here in f64.
pub fn vec_dot_reference(dtype: DType, row: &[u8], act_type: DType, act: &[u8]) -> f64 {
    let n = row.len() / dtype.type_size() * dtype.block_size();
    let (mut w, mut a) = (vec![0f32; n], vec![0f32; n]);
    (dtype.traits().to_f32)(row, &mut w);
    (act_type.traits().to_f32)(act, &mut a);
    w.iter().zip(&a).map(|(&w, &a)| w as f64 * a as f64).sum()
}

/// Q8_1 carries s = d·Σq rounded to f16, and the kernels use it for the weights' minimum
/// term m·Σa: a rounding of up to 2⁻¹¹·|s| per block that dequantizing cannot see. This
/// bounds it from the dequantized values (|m| ≤ the block's largest |w|), for tests.
#[cfg(test)]
pub(crate) fn q8_1_sum_rounding(act_type: DType, w: &[f32], a: &[f32]) -> f64 {
    if act_type != DType::Q8_1 {
        return 0.0;
    }
    w.chunks(32)
        .zip(a.chunks(32))
        .map(|(w, a)| {
            let w_max = w.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            w_max * a.iter().map(|&v| v as f64).sum::<f64>().abs() * 2f64.powi(-10)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; dtype.row_bytes(x.len()).unwrap()];
        (dtype.traits().from_f32.unwrap())(x, &mut out);
        out
    }

    /// Σ |w_i · a_i|: the scale of the f32 rounding a dot product may carry.
    fn tolerance(dtype: DType, row: &[u8], act_type: DType, act: &[u8]) -> f64 {
        let n = act.len() / act_type.type_size() * act_type.block_size();
        let (mut w, mut a) = (vec![0f32; n], vec![0f32; n]);
        (dtype.traits().to_f32)(row, &mut w);
        (act_type.traits().to_f32)(act, &mut a);
        let magnitude = w.iter().zip(&a).map(|(&w, &a)| (w as f64 * a as f64).abs()).sum::<f64>() + 1e-30;
        1e-5 * magnitude + q8_1_sum_rounding(act_type, &w, &a)
    }

    /// Every variant this CPU runs, for every weight type, on random rows (including rows
    /// with outliers, all-zero and constant blocks) against the f64 reference. The integer
    /// sums are exact, so the only error is f32 rounding of the per-block scaling.
    #[test]
    fn vec_dot_variants_match_the_reference() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for isa in Isa::supported() {
            let (mut checked, mut paired) = (0, 0);
            for &dtype in DType::ALL {
                let Some(kernel) = vec_dot_for(isa, dtype) else { continue };
                for (n, scale) in [(256, 1.0), (512, 3.0), (2048, 0.01), (256 * 7, 100.0)] {
                    let mut w = random(n, &mut seed, scale);
                    w[3] *= 50.0; // an outlier
                    w[40..72].fill(0.0); // a zero block
                    w[96..128].fill(0.25 * scale);
                    let x = random(n, &mut seed, 2.0);
                    let row = quantize(dtype, &w);
                    let act = quantize(kernel.act_type, &x);
                    let expected = vec_dot_reference(dtype, &row, kernel.act_type, &act);
                    let row_tolerance = tolerance(dtype, &row, kernel.act_type, &act);
                    let got = (kernel.dot)(&row, &act) as f64;
                    assert!((got - expected).abs() <= row_tolerance, "{isa:?} {dtype} n={n}: {got} vs {expected}");
                    checked += 1;
                    if let Some(pair) = kernel.pair {
                        // The row as either of the pair, next to a row of other weights: the
                        // same bits as the row alone, in either slot.
                        let other = quantize(dtype, &random(n, &mut seed, scale));
                        let other_alone = (kernel.dot)(&other, &act);
                        assert_eq!(pair(&row, &other, &act), [got as f32, other_alone], "{isa:?} {dtype} n={n}: pair (row, other)");
                        assert_eq!(pair(&other, &row, &act), [other_alone, got as f32], "{isa:?} {dtype} n={n}: pair (other, row)");
                        paired += 1;
                    }
                }
            }
            // AVX2 (and so AVX-512) has a variant for every block weight type (10 types × 4
            // shapes), AVX-512 BF16 one for BF16 too.
            if isa.has_avx2() {
                assert_eq!(checked, if isa == Isa::Avx512Bf16 { 44 } else { 40 }, "{isa:?}: vec_dot variants checked");
                assert_eq!(paired, 16, "{isa:?}: pair kernels (Q4_0, Q4_1, Q5_0, Q5_1) checked");
            }
        }
    }

    /// An instruction set this CPU does not run hands out no kernel (the fn pointers are safe
    /// to call only where their features are present); the ones it runs include the chosen
    /// one and the scalar reference.
    #[test]
    fn only_instruction_sets_this_cpu_runs_hand_out_kernels() {
        let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Avx512Bf16, Isa::Neon];
        for isa in all.into_iter().filter(|isa| !isa.runs_here()) {
            assert!(DType::ALL.iter().all(|&dtype| vec_dot_for(isa, dtype).is_none()), "{isa:?} is not run here but handed out a kernel");
        }
        let supported = Isa::supported();
        assert!(supported.contains(&Isa::Scalar) && supported.last() == Some(&isa()), "{supported:?}");
    }

    /// The AVX-512 VNNI kernels give the AVX2 kernels' results bit for bit (the same integer
    /// sums, scaled in the same order): rows, pairs and 8-row groups, on a CPU that has both.
    #[test]
    fn vnni_kernels_equal_the_avx2_ones() {
        if !Isa::supported().contains(&Isa::Avx512Vnni) {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare (scripts/test-avx512.sh runs this on an emulated one)");
            return;
        }
        let mut seed = 42u64;
        let mut compared = 0;
        for &dtype in DType::ALL {
            let (Some(avx2), Some(vnni)) = (vec_dot_for(Isa::Avx2, dtype), vec_dot_for(Isa::Avx512Vnni, dtype)) else { continue };
            for (n, scale) in [(256, 1.0), (2048, 30.0)] {
                let rows: Vec<Vec<u8>> = (0..8)
                    .map(|r| {
                        let mut w = random(n, &mut seed, scale);
                        w[r] *= 60.0; // an outlier, in a different place in each row
                        quantize(dtype, &w)
                    })
                    .collect();
                let act = quantize(avx2.act_type, &random(n, &mut seed, 2.0));
                for row in &rows {
                    assert_eq!((vnni.dot)(row, &act).to_bits(), (avx2.dot)(row, &act).to_bits(), "{dtype} n={n}: row dot");
                }
                if let (Some(a), Some(v)) = (avx2.pair, vnni.pair) {
                    assert_eq!(v(&rows[0], &rows[1], &act), a(&rows[0], &rows[1], &act), "{dtype} n={n}: pair");
                }
                if let (Some(a), Some(v)) = (avx2.group, vnni.group) {
                    let mut group = vec![0u8; 8 * rows[0].len()];
                    crate::cpu::interleave::interleave(dtype, rows[0].len(), &rows.concat(), &mut group);
                    assert_eq!(v(&group, &act).map(f32::to_bits), a(&group, &act).map(f32::to_bits), "{dtype} n={n}: group");
                }
                compared += 1;
            }
        }
        assert_eq!(compared, 20, "every type with a VNNI kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the k-quants' AVX2 ones) at 2 lengths");
    }

    #[test]
    fn float_dots_match_the_table() {
        let mut seed = 99u64;
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            for n in [0, 1, 15, 16, 17, 100, 1000] {
                let row = quantize(dtype, &random(n, &mut seed, 4.0));
                let x = random(n, &mut seed, 1.0);
                let expected = (dtype.traits().dot_f32)(&row, &x) as f64;
                let magnitude: f64 = x.iter().map(|v| v.abs() as f64 * 2.0).sum::<f64>() + 1e-30;
                let got = dot_f32(dtype)(&row, &x) as f64;
                assert!((got - expected).abs() <= 1e-5 * magnitude, "{dtype} n={n}: {got} vs {expected}");
                if let Some(dot_rows) = dot_rows_f32(dtype) {
                    // Three rows: this one between two others, each its own dot.
                    let (before, after) = (quantize(dtype, &random(n, &mut seed, 4.0)), quantize(dtype, &random(n, &mut seed, 4.0)));
                    let mut out = [f32::NAN; 3];
                    dot_rows(&[before.clone(), row.clone(), after.clone()].concat(), &x, &mut out);
                    for (r, got) in [&before, &row, &after].into_iter().zip(out) {
                        assert_eq!(got, dot_f32(dtype)(r, &x), "{dtype} n={n}: the rows kernel differs from the row kernel");
                    }
                }
            }
        }
    }

    /// Row decoders are bit-identical to the table's, tails included; special values too.
    #[test]
    fn row_decoders_match_the_table() {
        let mut seed = 5u64;
        for dtype in DType::ALL.iter().copied().filter(|d| d.block_size() == 1) {
            for n in [0, 1, 7, 8, 9, 100, 1000] {
                let mut row = quantize(dtype, &random(n, &mut seed, 4.0));
                if n > 8 && dtype != DType::F32 {
                    // +inf, -0.0 and a NaN in the 16-bit formats' encodings
                    let specials: [u16; 3] = if dtype == DType::F16 { [0x7c00, 0x8000, 0x7e01] } else { [0x7f80, 0x8000, 0x7fc1] };
                    for (i, bits) in specials.into_iter().enumerate() {
                        row[2 * i..2 * i + 2].copy_from_slice(&bits.to_le_bytes());
                    }
                }
                let (mut want, mut got) = (vec![0f32; n], vec![1f32; n]);
                (dtype.traits().to_f32)(&row, &mut want);
                to_f32(dtype)(&row, &mut got);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{dtype} n={n}");
            }
        }
    }

    /// The vector quantizers against the table's reference on random rows: same scales,
    /// and levels that differ (by one) only where x·(1/d) is within rounding of a half.
    #[test]
    fn activation_quantizers_match_the_reference() {
        let mut seed = 7u64;
        for act_type in [DType::Q8_0, DType::Q8_1, DType::Q8_K] {
            for (n, scale) in [(256, 1.0), (4096, 3.0), (8960, 1e-3)] {
                let mut x = random(n, &mut seed, scale);
                x[5] = 0.0;
                if n > 64 {
                    x[32..64].fill(0.0);
                }
                let reference = quantize(act_type, &x);
                let mut fast = vec![0u8; reference.len()];
                quantize_activations(act_type)(&x, &mut fast);
                let (mut r, mut f) = (vec![0f32; n], vec![0f32; n]);
                (act_type.traits().to_f32)(&reference, &mut r);
                (act_type.traits().to_f32)(&fast, &mut f);
                let block = act_type.block_size();
                let mut differing = 0;
                for i in 0..n {
                    let step = x[i / block * block..][..block].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    assert!((r[i] - f[i]).abs() <= step * 1.001, "{act_type} n={n} i={i}: {} vs {}", f[i], r[i]);
                    differing += (r[i] != f[i]) as usize;
                }
                assert!(differing * 1000 <= n, "{act_type}: {differing} of {n} levels differ");
            }
        }
    }

    #[test]
    fn activation_types_are_the_tables() {
        for &dtype in DType::ALL {
            if let Some(kernel) = vec_dot(dtype) {
                assert_eq!(kernel.act_type, dtype.traits().vec_dot_type);
                assert_ne!(kernel.act_type, DType::F32);
            }
        }
    }
}
