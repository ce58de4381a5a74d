//! Drawing bits from logit pairs: temperature, classifier-free guidance on logits, top-k /
//! top-p and greedy selection, with randomness from the Philox stream so that a seed gives the
//! same bits on every device.

use infinity_runtime::rng::{Philox, philox_u32, u32_to_unit_f32};
use infinity_runtime::{Error, Result, Tensor};

/// Sampling knobs; `cfg` and `tau` hold one value per scale, or a single value for all.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    pub cfg: Vec<f32>,
    pub tau: Vec<f32>,
    /// 0 disables; 1 keeps only the larger logit (greedy); ≥ 2 keeps both of a pair (no-op).
    pub top_k: usize,
    /// Nucleus mass; a bit is set to its majority value when the minority's probability is
    /// ≤ 1 − top_p. 0 (or ≥ 1) disables.
    pub top_p: f32,
    pub greedy: bool,
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// The official generator's defaults: cfg 3, τ 1, top-k 900 (a no-op), top-p 0.97.
    fn default() -> Self {
        SamplingConfig { cfg: vec![3.0], tau: vec![1.0], top_k: 900, top_p: 0.97, greedy: false, seed: 0 }
    }
}

fn per_scale(name: &'static str, values: &[f32], k: usize) -> Result<f32> {
    match values {
        [v] => Ok(*v),
        _ => values
            .get(k)
            .copied()
            .ok_or_else(|| Error::invalid(name, &[values.len()], format!("no value for scale {k}"))),
    }
}

impl SamplingConfig {
    pub fn cfg_at(&self, k: usize) -> Result<f32> {
        per_scale("sampling.cfg", &self.cfg, k)
    }

    pub fn tau_at(&self, k: usize) -> Result<f32> {
        per_scale("sampling.tau", &self.tau, k)
    }

    /// Without guidance at every scale the unconditional half is never computed.
    pub fn uses_cfg(&self) -> bool {
        self.cfg.iter().any(|&w| w != 1.0)
    }

    pub fn validate(&self, num_scales: usize) -> Result<()> {
        for (name, v) in [("cfg", &self.cfg), ("tau", &self.tau)] {
            if v.is_empty() || (v.len() != 1 && v.len() != num_scales) {
                return Err(Error::invalid("sampling", &[v.len()], format!("{name} needs 1 or {num_scales} values")));
            }
        }
        if self.tau.iter().any(|&t| !(t > 0.0 && t.is_finite())) || self.cfg.iter().any(|w| !w.is_finite()) {
            return Err(Error::invalid("sampling", &[], "tau must be positive and cfg finite"));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::invalid("sampling", &[], format!("top_p {} is outside [0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// The bit of one logit pair `(l0, l1)` (bit 0 scores the −1 code) given a uniform `u`.
pub fn sample_pair(l0: f32, l1: f32, cfg: &SamplingConfig, u: f32) -> u8 {
    if cfg.greedy || cfg.top_k == 1 {
        return u8::from(l1 > l0);
    }
    let p1 = 1.0 / (1.0 + (l0 - l1).exp());
    let majority = u8::from(p1 > 0.5);
    if cfg.top_p > 0.0 && cfg.top_p < 1.0 && p1.min(1.0 - p1) <= 1.0 - cfg.top_p {
        return majority;
    }
    u8::from(u < p1)
}

/// Bits (B, n, d) from CFG-combined logits (B, n, 2d). Pair `i` uses stream position
/// `rng.offset + i`; the stream advances by B·n·d whatever was drawn, so positions do not
/// depend on which bits happened to be deterministic.
pub fn sample_bits(logits: &Tensor, cfg: &SamplingConfig, rng: &mut Philox) -> Result<Tensor> {
    let (b, n, v) = (logits.dim(0)?, logits.dim(1)?, logits.dim(2)?);
    let l = logits.to_vec::<f32>()?;
    let base = rng.offset;
    let bits: Vec<u8> = l
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| sample_pair(pair[0], pair[1], cfg, u32_to_unit_f32(philox_u32(rng.seed, base + i as u64))))
        .collect();
    rng.offset += bits.len() as u64;
    Tensor::from_vec(bits, &[b, n, v / 2])
}

/// logits / τ, then w·cond + (1 − w)·uncond when the batch holds both halves.
pub fn guide(raw: &Tensor, batch: usize, w: f32, tau: f32, with_uncond: bool) -> Result<Tensor> {
    let v = raw.to_vec::<f32>()?;
    let per = v.len() / raw.dim(0)?;
    let out: Vec<f32> = if with_uncond {
        let (c, u) = v.split_at(batch * per);
        c.iter().zip(u).map(|(&c, &u)| w * (c / tau) + (1.0 - w) * (u / tau)).collect()
    } else {
        v.iter().map(|&x| x / tau).collect()
    };
    Tensor::from_vec(out, &[batch, raw.dim(1)?, raw.dim(2)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_makes_confident_bits_deterministic() {
        let c = SamplingConfig::default();
        // p1 = sigmoid(4) ≈ 0.982: minority 0.018 ≤ 0.03 → always 1, even for u near 1.
        assert_eq!(sample_pair(0.0, 4.0, &c, 0.999), 1);
        // p1 = sigmoid(1) ≈ 0.73: sampled.
        assert_eq!(sample_pair(0.0, 1.0, &c, 0.9), 0);
        assert_eq!(sample_pair(0.0, 1.0, &c, 0.5), 1);
        let greedy = SamplingConfig { greedy: true, ..c };
        assert_eq!(sample_pair(0.3, 0.3, &greedy, 0.0), 0); // ties go to bit 0
    }

    #[test]
    fn sampled_frequency_follows_the_probability() {
        let c = SamplingConfig { top_p: 0.0, ..Default::default() };
        let logits = Tensor::from_vec([0.0f32, 0.5].repeat(20_000), &[1, 20_000, 2]).unwrap();
        let bits = sample_bits(&logits, &c, &mut Philox::new(9)).unwrap().to_vec::<u8>().unwrap();
        let freq = bits.iter().map(|&b| b as f64).sum::<f64>() / bits.len() as f64;
        let p1 = 1.0 / (1.0 + (-0.5f64).exp());
        assert!((freq - p1).abs() < 0.01, "{freq} vs {p1}");
    }

    #[test]
    fn guidance_combines_halves() {
        let raw = Tensor::from_vec(vec![2.0f32, 4.0, 1.0, 1.0], &[2, 1, 2]).unwrap();
        let g = guide(&raw, 1, 3.0, 2.0, true).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(g, [3.0 * 1.0 - 2.0 * 0.5, 3.0 * 2.0 - 2.0 * 0.5]);
    }
}
