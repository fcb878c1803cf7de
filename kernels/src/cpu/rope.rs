//! Rotary position embedding: one token's angles ([`angles`]), computed once per position
//! and shared by every head and layer that rotates at it, and the rotation ([`rotate`]).

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

/// (cos θ_i, sin θ_i) of position `pos` for the n_rot/2 pairs, into `out`: pair i turns by
/// θ_i = pos · freq_scale · base^(−2i/n_rot) / factor_i. Angles are computed in f64: at
/// position 10⁵ an f32 angle is already off by 10⁻².
pub fn angles(pos: usize, p: &RopeParams, out: &mut [(f32, f32)]) {
    assert_eq!(out.len(), p.n_rot / 2, "angles of {} pairs", p.n_rot / 2);
    for (i, cos_sin) in out.iter_mut().enumerate() {
        let inv_freq = (p.freq_base as f64).powf(-2.0 * i as f64 / p.n_rot as f64);
        let factor = p.freq_factors.map_or(1.0, |f| f[i] as f64);
        let theta = pos as f64 * p.freq_scale as f64 * inv_freq / factor;
        *cos_sin = (theta.cos() as f32, theta.sin() as f32);
    }
}

/// Rotates every head of one token's row `x` (a multiple of head_dim wide) by the angles
/// of its position (from [`angles`]).
pub fn rotate(x: &mut [f32], angles: &[(f32, f32)], style: RopeStyle, head_dim: usize) {
    let half = angles.len();
    assert!(2 * half <= head_dim && x.len() % head_dim == 0);
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in angles.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Halves => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`angles`] and [`rotate`] for one token at `pos`.
    fn rope(x: &mut [f32], pos: usize, p: &RopeParams) {
        let mut cos_sin = vec![(0f32, 0f32); p.n_rot / 2];
        angles(pos, p, &mut cos_sin);
        rotate(x, &cos_sin, p.style, p.head_dim);
    }

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
}
