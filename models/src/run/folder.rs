//! A run folder: `metrics.csv` (one row per step), `train.log` (the command, the opening line,
//! one line per step, each checkpoint), the checkpoints (`autograd::checkpoint`'s folders and
//! rotation) and, in each checkpoint's state, what a resumed run must match — the command,
//! its seed and batch size — and continue from: the data position.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use infinity_autograd::checkpoint::{self, Checkpoint};
use infinity_autograd::{AdamW, Params};
use infinity_runtime::io::{check_writable, write_atomically};
use infinity_runtime::rng::Philox;
use infinity_runtime::{Device, Error, Result};
use serde_json::{Value, json};

use super::{Outcome, Progress};
use crate::data::{Dataset, OrderState};
use crate::schedule::PixelBudget;

/// What every training run takes: where it is saved, its length, batch and randomness.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The run folder: checkpoints, `train.log`, `metrics.csv` (and caches).
    pub out: PathBuf,
    /// The step the run ends at (a resumed run continues up to it).
    pub steps: u64,
    /// Images per step and rank (per micro-batch for the transformer).
    pub batch: usize,
    /// Seed of the data order, the initial weights and every random draw of training.
    pub seed: u64,
    /// A checkpoint every this many steps, and after the last.
    pub save_every: u64,
    /// Checkpoints kept (the newest).
    pub keep: usize,
    /// Where the models and the whole step run; data loading stays on the host.
    pub device: Device,
    /// The command line that started the run, logged first in `train.log`.
    pub command: String,
}

impl RunSettings {
    /// Whether a checkpoint is due after `step`: every `save_every` steps and the last.
    pub fn checkpoint_due(&self, step: u64) -> bool {
        checkpoint_due(step, self.save_every, self.steps)
    }
}

fn checkpoint_due(step: u64, save_every: u64, last: u64) -> bool {
    step.is_multiple_of(save_every) || step == last
}

/// An open run folder.
pub(super) struct RunFolder {
    out: PathBuf,
    metrics: File,
    log: File,
    save_every: u64,
    last: u64,
    keep: usize,
}

impl RunFolder {
    /// Opens `settings.out` for a run resumed at `step0` with the `metrics.csv` columns
    /// `header`. Rows past `step0` (written after the checkpoint by an interrupted run) are
    /// dropped, so each step appears once.
    pub(super) fn open(settings: &RunSettings, header: &str, step0: u64) -> Result<Self> {
        let out = &settings.out;
        let path = out.join("metrics.csv");
        let old = match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.map_err(|e| Error::io(&path, e))?,
        };
        let mut lines = old.lines();
        let mut kept = format!("{header}\n");
        if let Some(first) = lines.next() {
            if first != header {
                let msg = format!("its columns are not this run's ({header}); use another --out");
                return Err(Error::format(&path, msg));
            }
            let done = |l: &&str| l.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s <= step0);
            for line in lines.filter(done) {
                kept += line;
                kept.push('\n');
            }
        }
        // Atomically: a write failing part-way (a full disk) must not cost the steps already logged.
        write_atomically(&path, |w| w.write_all(kept.as_bytes()))?;
        let append =
            |path: &Path| OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e));
        Ok(RunFolder {
            out: out.clone(),
            metrics: append(&path)?,
            log: append(&out.join("train.log"))?,
            save_every: settings.save_every,
            last: settings.steps,
            keep: settings.keep,
        })
    }

    /// Appends a line to `train.log`.
    pub(super) fn log(&mut self, line: &str) -> Result<()> {
        writeln!(self.log, "{line}").map_err(|e| Error::io(self.out.join("train.log"), e))
    }

    /// Appends a row to `metrics.csv`.
    pub(super) fn row(&mut self, fields: &[String]) -> Result<()> {
        writeln!(self.metrics, "{}", fields.join(",")).map_err(|e| Error::io(self.out.join("metrics.csv"), e))
    }

    /// Whether a checkpoint is due after `step` ([`RunSettings::checkpoint_due`]).
    pub(super) fn due(&self, step: u64) -> bool {
        checkpoint_due(step, self.save_every, self.last)
    }

    /// The folder the checkpoint after `step` goes to (`autograd::checkpoint`'s naming), for
    /// what a run saves inside it before [`RunFolder::save`] completes it.
    pub(super) fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.out.join(format!("step-{step:09}"))
    }

    /// Saves a checkpoint after `step` when one is due, and logs and reports it.
    pub(super) fn save(
        &mut self,
        step: u64,
        params: &Params,
        optimizer: &AdamW,
        state: &Value,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if self.due(step) {
            let dir = checkpoint::save(&self.out, step, params, optimizer, state, self.keep)?;
            let line = format!("saved {}", dir.display());
            self.log(&line)?;
            progress.note(&line);
        }
        Ok(())
    }

    /// The outcome of a run that took steps `from + 1 ..= to` since `started`, logged last.
    pub(super) fn finish(&mut self, from: u64, to: u64, started: Instant, dataset: &Dataset) -> Result<Outcome> {
        let outcome =
            Outcome::Trained { from, to, seconds: started.elapsed().as_secs_f64(), skipped: dataset.skip_report() };
        self.log(&outcome.to_string())?;
        Ok(outcome)
    }
}

/// Where a run starts: its data set (opened from `data` at `pn`), the run folder's latest
/// checkpoint if any, and the step it holds (0 for a new run). Creates the run folder, refused
/// if it cannot be written.
pub(super) fn start(
    settings: &RunSettings,
    data: &Path,
    pn: PixelBudget,
) -> Result<(Arc<Dataset>, Option<Checkpoint>, u64)> {
    std::fs::create_dir_all(&settings.out).map_err(|e| Error::io(&settings.out, e))?;
    check_writable(&settings.out)?;
    let dataset = Arc::new(Dataset::open(data, pn)?);
    let resume = checkpoint::latest(&settings.out)?;
    let step0 = resume.as_ref().map_or(0, |c| c.step);
    Ok((dataset, resume, step0))
}

/// The columns every run's `metrics.csv` row starts with (`step,loss,lr,grad_norm`). `{:?}`
/// prints the shortest text that reads back as the same f32: runs compare exactly.
pub(super) fn first_columns(step: u64, loss: f32, lr: f64, grad_norm: f32) -> Vec<String> {
    vec![step.to_string(), format!("{loss:?}"), format!("{lr:e}"), format!("{grad_norm:?}")]
}

/// The run state every command saves: which command, its seed and global batch size (the
/// batch of each of `ranks` ranks together), and the data position.
pub(super) fn run_state(command: &str, settings: &RunSettings, ranks: usize, order: OrderState) -> Value {
    let batch = settings.batch * ranks;
    json!({ "command": command, "seed": settings.seed, "batch": batch, "order": order.to_json() })
}

pub(super) fn not_ours(saved: &Checkpoint, command: &str) -> Error {
    Error::format(&saved.dir, format!("not a checkpoint of infinity-train {command}"))
}

/// The data position of `saved`, refused when it was written by another command (runs of
/// the transformer command from before the field existed count as `transformer`) or by a
/// run with another seed or batch size (its data position would mean other batches).
pub(super) fn saved_order(
    saved: &Checkpoint,
    command: &str,
    settings: &RunSettings,
    ranks: usize,
) -> Result<OrderState> {
    let s = &saved.state;
    if s.get("command").and_then(Value::as_str).unwrap_or("transformer") != command {
        return Err(not_ours(saved, command));
    }
    let (seed, batch) = (s.get("seed").and_then(Value::as_u64), s.get("batch").and_then(Value::as_u64));
    if (seed, batch) != (Some(settings.seed), Some((settings.batch * ranks) as u64)) {
        let shown = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        let msg = format!(
            "saved by a run with --seed {} and a global batch of {} (--batch × ranks); resume with the same \
             values or use another --out",
            shown(seed),
            shown(batch)
        );
        return Err(Error::format(&saved.dir, msg));
    }
    let order = s.get("order").and_then(Value::as_str).ok_or_else(|| not_ours(saved, command))?;
    OrderState::from_json(order)
}

/// The opening line of a run, after the command line that started it, in `train.log`.
pub(super) fn announce(
    folder: &mut RunFolder,
    settings: &RunSettings,
    intro: &str,
    progress: &mut dyn super::Progress,
    step0: u64,
) -> Result<()> {
    folder.log(&format!("$ {}\n{intro}", settings.command))?;
    progress.start(intro, step0, settings.steps);
    Ok(())
}

/// Each rank of a data-parallel run draws from its own stream (as each of the official
/// trainer's processes does), keyed apart by this stride; rank 0's is the stream of a one-rank run.
const RANK_STREAM_STRIDE: u64 = 0x9e37_79b9_7f4a_7c15;

/// The run state a checkpoint carries besides parameters and optimizer: the data position
/// and the position of the trainer's own random stream (keyed by `stream`, apart from the
/// data order's stream of the same seed).
pub(super) struct RunState {
    pub(super) order: OrderState,
    pub(super) rng: Philox,
}

impl RunState {
    pub(super) fn new(settings: &RunSettings, stream: u64, rank: usize) -> Self {
        RunState { order: OrderState::default(), rng: Philox { seed: trainer_seed(settings, stream, rank), offset: 0 } }
    }

    pub(super) fn to_json(&self, command: &str, settings: &RunSettings, ranks: usize) -> Value {
        let mut state = run_state(command, settings, ranks, self.order);
        state["rng_offset"] = json!(self.rng.offset);
        state
    }

    /// The state `saved` holds, for `rank` of `ranks`: every rank draws as many numbers per
    /// step (their shares of a batch have one size), so rank 0's saved stream position is
    /// every rank's.
    pub(super) fn from_checkpoint(
        saved: &Checkpoint,
        command: &str,
        settings: &RunSettings,
        stream: u64,
        (rank, ranks): (usize, usize),
    ) -> Result<Self> {
        let order = saved_order(saved, command, settings, ranks)?;
        let offset = saved.state.get("rng_offset").and_then(Value::as_u64).ok_or_else(|| not_ours(saved, command))?;
        Ok(RunState { order, rng: Philox { seed: trainer_seed(settings, stream, rank), offset } })
    }
}

fn trainer_seed(settings: &RunSettings, stream: u64, rank: usize) -> u64 {
    settings.seed ^ stream ^ (rank as u64).wrapping_mul(RANK_STREAM_STRIDE)
}
