//! Rotary position embedding.

use std::cell::RefCell;

thread_local! {
    /// The last position's (cos θ_i, sin θ_i), per thread, and what they were computed for: a
    /// decode step rotates q and then k at the same position, which then share one table (the
    /// f64 sines and powers were 1.5% of a SmolLM2 decode step). Sized once, so decode steps
    /// allocate nothing.
    static COS_SIN: RefCell<Angles> = const { RefCell::new(Angles { of: None, factors: Vec::new(), cos_sin: Vec::new() }) };
}

/// A table of angles and what it was computed for.
struct Angles {
    /// (position, n_rot, freq_base, freq_scale), with `factors` the frequency factors.
    of: Option<(usize, usize, f32, f32)>,
    factors: Vec<f32>,
    cos_sin: Vec<(f32, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (x[2i], x[2i+1]).
    Interleaved,
    /// Pairs (x[i], x[i + n_rot/2]).
    Halves,
}

#[derive(Clone, Copy, Debug)]
pub struct RopeParams<'a> {
    pub style: RopeStyle,
    pub head_dim: usize,
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// θ_i is divided by freq_factors[i] (llama3-style scaling).
    pub freq_factors: Option<&'a [f32]>,
}

/// Rotates every head of one token's row `x` (a multiple of head_dim wide) by position
/// `pos`: pair i turns by θ_i = pos · freq_scale · base^(−2i/n_rot) / factor_i.
/// Angles are computed in f64: at position 10⁵ an f32 angle is already off by 10⁻².
pub fn rope(x: &mut [f32], pos: usize, p: &RopeParams) {
    let half = p.n_rot / 2;
    assert!(p.n_rot <= p.head_dim && x.len() % p.head_dim == 0);
    let of = Some((pos, p.n_rot, p.freq_base, p.freq_scale));
    COS_SIN.with(|table| {
        let Angles { of: computed_for, factors, cos_sin } = &mut *table.borrow_mut();
        if *computed_for != of || factors.as_slice() != p.freq_factors.unwrap_or(&[]) {
            factors.clear();
            factors.extend_from_slice(p.freq_factors.unwrap_or(&[]));
            cos_sin.clear();
            for i in 0..half {
                let inv_freq = (p.freq_base as f64).powf(-2.0 * i as f64 / p.n_rot as f64);
                let factor = p.freq_factors.map_or(1.0, |f| f[i] as f64);
                let theta = pos as f64 * p.freq_scale as f64 * inv_freq / factor;
                cos_sin.push((theta.cos() as f32, theta.sin() as f32));
            }
            *computed_for = of;
        }
        for head in x.chunks_exact_mut(p.head_dim) {
            for (i, &(c, s)) in cos_sin.iter().enumerate() {
                let (a, b) = match p.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_preserves_pair_norms_and_position_zero_is_identity() {
        let p = RopeParams { style: RopeStyle::Halves, head_dim: 4, n_rot: 4, freq_base: 10000.0, freq_scale: 1.0, freq_factors: None };
        let orig = [1.0f32, 2.0, 3.0, 4.0];
        let mut x = orig;
        rope(&mut x, 0, &p);
        assert_eq!(x, orig);
        rope(&mut x, 7, &p);
        // pair (0,2) turned by 7 rad
        let (c, s) = (7f64.cos() as f32, 7f64.sin() as f32);
        assert!((x[0] - (1.0 * c - 3.0 * s)).abs() < 1e-6);
        assert!((x[2] - (1.0 * s + 3.0 * c)).abs() < 1e-6);
        assert!(((x[1] * x[1] + x[3] * x[3]) - 20.0).abs() < 1e-4);
    }

    /// The angle table is reused only for the same position and parameters: rotations that
    /// follow one another with one of them changed get their own angles.
    #[test]
    fn a_rotation_never_reuses_another_ones_angles() {
        let base = RopeParams { style: RopeStyle::Interleaved, head_dim: 4, n_rot: 4, freq_base: 10000.0, freq_scale: 1.0, freq_factors: None };
        let factors = [2.0f32, 3.0];
        let variants = [
            (5, base),
            (6, base),
            (6, RopeParams { freq_factors: Some(&factors), ..base }),
            (6, base),
            (6, RopeParams { freq_base: 500.0, ..base }),
            (6, base),
            (6, RopeParams { freq_scale: 0.5, ..base }),
            (6, base),
            (6, RopeParams { n_rot: 2, ..base }),
        ];
        for (pos, p) in variants {
            let mut x = [1.0f32, 2.0, 3.0, 4.0];
            rope(&mut x, pos, &p);
            let theta = |i: usize| pos as f64 * p.freq_scale as f64 * (p.freq_base as f64).powf(-2.0 * i as f64 / p.n_rot as f64) / p.freq_factors.map_or(1.0, |f| f[i] as f64);
            let mut expected = [1.0f32, 2.0, 3.0, 4.0];
            for i in 0..p.n_rot / 2 {
                let (c, s) = (theta(i).cos() as f32, theta(i).sin() as f32);
                let (x0, x1) = (expected[2 * i], expected[2 * i + 1]);
                expected[2 * i] = x0 * c - x1 * s;
                expected[2 * i + 1] = x0 * s + x1 * c;
            }
            assert_eq!(x, expected, "position {pos}, {p:?}");
        }
    }
}
