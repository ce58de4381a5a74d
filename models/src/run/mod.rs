//! Training runs: a run of steps of one model (the transformer, the BitVAE, VAR or Open-MAGVIT2) in a run folder
//! that it resumes from when started again, on the device of its settings. One loop per
//! model for every device; `infinity-train` only turns its flags into the settings here and
//! shows the [`Progress`].
//!
//! - [`folder`]: the run folder — `metrics.csv`, `train.log`, checkpoints and what a resumed
//!   run must find in them;
//! - [`transformer`]: the transformer's run (text features or a text encoder training along,
//!   frozen-VAE latents, Bitwise Self-Correction, caption dropout, micro-batches);
//! - [`vae`]: the BitVAE's run (random crops, the discriminator);
//! - [`var`]: VAR's class-conditional transformer on class folders (label dropout);
//! - [`magvit2`]: Open-MAGVIT2's generator likewise (and its dropouts).

mod classes;
pub mod folder;
pub mod magvit2;
pub mod transformer;
pub mod vae;
pub mod var;

use std::fmt;

pub use folder::RunSettings;

/// Batches the loader thread reads and decodes ahead of the step that will train on them.
const PREFETCH: usize = 2;

/// What a run reports while it trains.
pub trait Progress {
    /// The run's opening line (what it starts from, its size), before step `from + 1` of `to`.
    fn start(&mut self, intro: &str, from: u64, to: u64);
    /// Step `step` is done; `status` is a short summary of it (loss, throughput).
    fn step(&mut self, step: u64, status: &str);
    /// A line worth showing beside the progress (a checkpoint was saved).
    fn note(&mut self, line: &str);
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The run folder was already at the run's last step.
    AlreadyDone { step: u64 },
    Trained {
        /// The step it resumed from (0 for a new run) and the last it took.
        from: u64,
        to: u64,
        seconds: f64,
        /// The images the data set skipped, as [`crate::data::Dataset::skip_report`] tells.
        skipped: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::AlreadyDone { step } => write!(f, "already at step {step}"),
            Outcome::Trained { from, to, seconds, skipped } => {
                write!(f, "trained steps {}..{to} in {seconds:.2} s; {skipped}", from + 1)
            }
        }
    }
}
