//! The sampling knobs of a generation: temperature, classifier-free guidance on logits, top-k /
//! top-p and greedy selection, per scale. The bits themselves are drawn by the op
//! `infinity_ops::bitwise::sample_bits`, with randomness from the Philox stream so that a seed
//! gives the same bits on every device.

pub use infinity_ops::bitwise::Sampling;
use infinity_runtime::{Error, Result};

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

    /// How scale `k`'s bits are drawn (top-k 1 is greedy; a larger k keeps both of a pair).
    pub fn at(&self, k: usize) -> Result<Sampling> {
        Ok(Sampling {
            cfg: self.cfg_at(k)?,
            tau: self.tau_at(k)?,
            top_p: self.top_p,
            greedy: self.greedy || self.top_k == 1,
        })
    }

    /// Refuses settings no generation can use, naming the setting as the command line does
    /// (`--tau`, `--cfg`, `--top-p`).
    pub fn validate(&self, num_scales: usize) -> Result<()> {
        for (name, v) in [("cfg", &self.cfg), ("tau", &self.tau)] {
            if v.is_empty() || (v.len() != 1 && v.len() != num_scales) {
                return Err(Error::setting(format!(
                    "--{name} takes 1 value or one per scale ({num_scales} here), not {}",
                    v.len()
                )));
            }
        }
        if let Some(t) = self.tau.iter().find(|&&t| !(t > 0.0 && t.is_finite())) {
            return Err(Error::setting(format!("--tau {t} must be a positive number")));
        }
        if let Some(w) = self.cfg.iter().find(|w| !w.is_finite()) {
            return Err(Error::setting(format!("--cfg {w} must be a finite number")));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::setting(format!("--top-p {} is outside [0, 1]", self.top_p)));
        }
        Ok(())
    }
}
