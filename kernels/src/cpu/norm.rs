/// RMS norm of each `weight.len()`-wide group of `x`: out = x / sqrt(mean(x²) + eps) · weight.
/// The mean is accumulated in f64 so long rows lose nothing to rounding.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let group = weight.len();
    assert!(group > 0 && x.len() % group == 0 && x.len() == out.len());
    for (xs, os) in x.chunks_exact(group).zip(out.chunks_exact_mut(group)) {
        let mean_sq = sum_of_squares(xs) / group as f64;
        let scale = (1.0 / (mean_sq + eps as f64).sqrt()) as f32;
        for ((o, &v), &w) in os.iter_mut().zip(xs).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// Σ x² in f64, over four interleaved partial sums (which the compiler keeps in one vector
/// register) where one running sum would wait on each add's latency.
fn sum_of_squares(xs: &[f32]) -> f64 {
    let mut partial = [0f64; 4];
    let quads = xs.chunks_exact(4);
    let tail: f64 = quads.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    for quad in quads {
        for (p, &v) in partial.iter_mut().zip(quad) {
            *p += (v as f64) * (v as f64);
        }
    }
    (partial[0] + partial[1]) + (partial[2] + partial[3]) + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_weight_gives_unit_rms_per_group() {
        let x = [3.0f32, -4.0, 1.0, 1.0];
        let mut out = [0f32; 4];
        super::rms_norm(&x, &[1.0, 1.0], 0.0, &mut out);
        // groups (3,-4): rms = sqrt(12.5); (1,1): rms = 1
        let r = 12.5f32.sqrt();
        assert_eq!(out, [3.0 / r, -4.0 / r, 1.0, 1.0]);
    }
}
