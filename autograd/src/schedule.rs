//! Learning-rate and weight-decay schedules of the official trainer (`lr_wd_annealing`):
//! a linear warm-up from `warmup_start`·peak to the peak over `warmup_iters` iterations, then
//! an annealing of the ratio to the peak towards `end_ratio`; the weight decay follows a
//! half cosine from its start to its end value over the whole run.
//!
//! With progress p = (it − warmup) / (max_iters − 1 − warmup) ∈ [0, 1] after the warm-up:
//! - `Cosine`: end + (1 − end)·(½ + ½·cos(π·p))  (official `cos`)
//! - `Linear { hold }`: 1 while p < hold, then linear from 1 at p = hold to `end` at p = 1
//!   (official `lin`: hold 0.15, `lin0`: 0.05, `lin00`: 0)
//! - `Constant`: 1.

use std::f64::consts::PI;

use infinity_runtime::{Error, Result};

/// The shape of the learning rate after the warm-up (see the module header).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Annealing {
    Cosine,
    Linear { hold: f64 },
    Constant,
}

impl Annealing {
    /// The official `--sche` names: `cos`, `lin`, `lin0` and `lin00`.
    pub fn from_official(name: &str) -> Result<Self> {
        match name {
            "cos" => Ok(Annealing::Cosine),
            "lin" => Ok(Annealing::Linear { hold: 0.15 }),
            "lin0" => Ok(Annealing::Linear { hold: 0.05 }),
            "lin00" => Ok(Annealing::Linear { hold: 0.0 }),
            _ => Err(Error::invalid(
                "lr_schedule",
                &[],
                format!("unknown schedule '{name}' (expected cos, lin, lin0 or lin00)"),
            )),
        }
    }

    /// The ratio to the peak at progress `progress` ∈ [0, 1] after the warm-up.
    fn ratio(self, progress: f64, end: f64) -> f64 {
        match self {
            Annealing::Cosine => end + (1.0 - end) * (0.5 + 0.5 * (PI * progress).cos()),
            Annealing::Linear { hold } if progress < hold => 1.0,
            Annealing::Linear { hold } => end + (1.0 - end) * (1.0 - progress) / (1.0 - hold),
            Annealing::Constant => 1.0,
        }
    }
}

/// The learning rate per iteration (`lr_wd_annealing`'s lr part; its `wp0`, `wpe` are
/// `warmup_start`, `end_ratio`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_iters: usize,
    pub max_iters: usize,
    /// Fraction of the peak at iteration 0 (official default 0.005).
    pub warmup_start: f64,
    /// Fraction of the peak at the last iteration (official default 0.001; train.sh: 1).
    pub end_ratio: f64,
    pub annealing: Annealing,
}

impl LrSchedule {
    /// The learning rate of iteration `it` (0-based).
    pub fn lr(&self, it: usize) -> f64 {
        let ratio = if it < self.warmup_iters {
            self.warmup_start + (1.0 - self.warmup_start) * it as f64 / self.warmup_iters as f64
        } else {
            // A run with no iteration after the warm-up has nothing to anneal (the official
            // code would divide by zero); it stays at the peak.
            let span = self.max_iters.saturating_sub(1 + self.warmup_iters).max(1);
            self.annealing.ratio((it - self.warmup_iters) as f64 / span as f64, self.end_ratio)
        };
        ratio * self.peak
    }
}

/// The weight decay per iteration: a half cosine from `start` at iteration 0 to `end` at
/// the last iteration (constant when they are equal, as in train.sh).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WdSchedule {
    pub start: f64,
    pub end: f64,
    pub max_iters: usize,
}

impl WdSchedule {
    pub fn weight_decay(&self, it: usize) -> f64 {
        let progress = it as f64 / self.max_iters.saturating_sub(1).max(1) as f64;
        self.end + (self.start - self.end) * (0.5 + 0.5 * (PI * progress).cos())
    }
}
