//! Picking the next token from logits, in llama.cpp's default order:
//! repetition penalty → top-k → top-p → min-p → temperature → draw.
//! A temperature of zero (or below) is greedy: the arg-max after the penalty.

/// Sampling settings, with llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f32,
    /// 0.0 keeps every token.
    pub min_p: f32,
    /// 1.0 is no penalty.
    pub repeat_penalty: f32,
    /// How many of the latest tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> SamplerConfig {
        SamplerConfig { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplerConfig {
    /// Rejects values that have no meaning (NaN, negative probabilities, ...).
    pub fn validate(&self) -> Result<(), String> {
        let bad = |flag: &str, v: f32, range: &str| Err(format!("{flag} {v} is outside {range}"));
        if !self.temperature.is_finite() {
            return bad("--temp", self.temperature, "the finite numbers");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("--top-p", self.top_p, "[0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("--min-p", self.min_p, "[0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("--repeat-penalty", self.repeat_penalty, "the positive numbers");
        }
        Ok(())
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    /// (token, logit or probability), reused across calls.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler { rng: Rng::new(config.seed), config, candidates: Vec::new() }
    }

    /// The next token given the logits and the tokens so far (prompt and generated).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.config;
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        apply_repeat_penalty(&mut self.candidates, history, c.repeat_penalty, c.repeat_last_n);
        if c.temperature <= 0.0 {
            return argmax(&self.candidates);
        }
        let cands = &mut self.candidates;
        // Highest logit first: top-k, top-p and min-p all cut from the top.
        cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if c.top_k > 0 {
            cands.truncate(c.top_k.max(1));
        }
        softmax_in_place(cands);
        if c.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = cands
                .iter()
                .position(|&(_, p)| {
                    cumulative += p;
                    cumulative >= c.top_p
                })
                .map_or(cands.len(), |i| i + 1);
            cands.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            let threshold = cands[0].1 * c.min_p;
            let keep = cands.iter().take_while(|&&(_, p)| p >= threshold).count();
            cands.truncate(keep.max(1));
        }
        // Temperature on the survivors: p^(1/T), renormalized, equals softmax(logit / T).
        let inv_t = 1.0 / c.temperature;
        for (_, p) in cands.iter_mut() {
            *p = p.ln() * inv_t;
        }
        softmax_in_place(cands);
        let u = self.rng.next_f32();
        let mut cumulative = 0.0;
        for &(t, p) in cands.iter() {
            cumulative += p;
            if u < cumulative {
                return t;
            }
        }
        cands.last().expect("at least one candidate").0
    }
}

/// CTRL-style penalty as in llama.cpp: a recent token's positive logit is divided by the
/// penalty, a negative one multiplied, so the penalty always lowers it.
fn apply_repeat_penalty(cands: &mut [(u32, f32)], history: &[u32], penalty: f32, last_n: usize) {
    if penalty == 1.0 || last_n == 0 {
        return;
    }
    let recent = &history[history.len().saturating_sub(last_n)..];
    let mut seen = std::collections::HashSet::with_capacity(recent.len());
    for &t in recent {
        if seen.insert(t) {
            if let Some((_, l)) = cands.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// First index of the largest value (ties go to the lower token id, as llama.cpp).
pub fn argmax(cands: &[(u32, f32)]) -> u32 {
    let mut best = cands[0];
    for &c in &cands[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

fn softmax_in_place(cands: &mut [(u32, f32)]) {
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (_, v) in cands.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for (_, v) in cands.iter_mut() {
        *v /= sum;
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same stream on every
/// platform and version, so a seed always gives the same text.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([splitmix(), splitmix(), splitmix(), splitmix()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 bits.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.9, -1.0, 0.5, 2.0]
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repeat_penalty_can_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, repeat_penalty: 1.5, ..Default::default() });
        // token 1 (3.0 -> 2.0) falls below token 2 (2.9)
        assert_eq!(s.sample(&logits(), &[1]), 2);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_differs() {
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() });
            (0..64).map(|_| s.sample(&logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_min_p_cut_the_tail() {
        let mut s = Sampler::new(SamplerConfig { temperature: 5.0, top_k: 1, ..Default::default() });
        assert!((0..50).all(|_| s.sample(&logits(), &[]) == 1));
        // min-p 0.8: only tokens within 80% of the best probability survive (1 and 2).
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.8, seed: 3, ..Default::default() });
        let drawn: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(drawn, [1, 2].into_iter().collect());
        // top-p 0.5: token 1 alone holds ~37%, with token 2 ~71% ≥ 0.5: only {1, 2}.
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.5, min_p: 0.0, seed: 4, ..Default::default() });
        let drawn: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&logits(), &[])).collect();
        assert_eq!(drawn, [1, 2].into_iter().collect());
    }

    #[test]
    fn rejects_meaningless_settings() {
        assert!(SamplerConfig { top_p: 1.5, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { temperature: f32::NAN, ..Default::default() }.validate().is_err());
        assert!(SamplerConfig { repeat_penalty: 0.0, ..Default::default() }.validate().is_err());
    }
}
