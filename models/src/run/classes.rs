//! The training loop of the class-conditional generators (VAR, Open-MAGVIT2): batches of
//! square images from class folders, tokenised by the frozen tokenizer and trained on by the
//! model's step ([`Learner`]); metrics, logs and checkpoints in the run folder, whose data
//! position and trainer stream (label dropout, the model's own dropouts) a resumed run restores.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use infinity_autograd::optim::official_groups;
use infinity_autograd::{AdamW, AdamWConfig, LrSchedule, Params};
use infinity_runtime::collective::Collective;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Error, Result, Tensor};

use super::folder::{RunFolder, RunSettings, RunState, announce, first_columns};
use super::{Outcome, PREFETCH, Progress};
use crate::data::{BatchOrder, Dataset, Loaded, Prefetch, SquareCrop};
use crate::train::StepStats;

/// What a model brings to the loop.
pub(super) trait Learner {
    type Batch;
    /// The training data of images (B, 3, H, W) in [−1, 1] of classes `labels`: their tokens,
    /// labels dropped to the null class with the model's probability (draws from `rng`).
    fn encode(&self, images: &Tensor, labels: &[usize], rng: &mut Philox) -> Result<Self::Batch>;
    /// Samples in a batch.
    fn samples(batch: &Self::Batch) -> usize;
    /// One optimizer step on `batches` (micro-batches), drawing any dropout from `rng`.
    fn step(
        &self,
        params: &mut Params,
        optimizer: &mut AdamW,
        batches: &[Self::Batch],
        settings: (f64, f64, f32),
        world: &dyn Collective,
        rng: &mut Philox,
    ) -> Result<StepStats>;
}

/// A run's settings beside the model.
pub(super) struct Classes<'a> {
    pub settings: &'a RunSettings,
    pub data: &'a Path,
    pub command: &'static str,
    /// Key of the trainer's stream, apart from the data order's.
    pub stream: u64,
    /// The square images' side in pixels, and how they are cut.
    pub side: usize,
    pub crop: SquareCrop,
    /// The model's classes (the data may have fewer folders, not more).
    pub num_classes: usize,
    /// Names of the per-step figures after the loss (`metrics.csv` columns).
    pub figures: Vec<String>,
    /// What the opening line says about the model and where it starts from.
    pub what: String,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    pub weight_decay: f64,
    pub clip: f32,
    pub accumulate: usize,
}

/// Trains `params` (f32, on the run's device) from the run folder's latest checkpoint up to the
/// run's last step, as rank `world.rank()` of `world`.
pub(super) fn train<L: Learner>(
    c: Classes,
    learner: &L,
    mut params: Params,
    world: &dyn Collective,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let s = c.settings;
    let (rank, ranks) = (world.rank(), world.world_size());
    std::fs::create_dir_all(&s.out).map_err(|e| Error::io(&s.out, e))?;
    infinity_runtime::io::check_writable(&s.out)?;
    let dataset = Arc::new(Dataset::from_class_folders(c.data, c.side, c.crop)?);
    if dataset.classes().len() > c.num_classes {
        let msg = format!("{} class folders, but the model has {} classes", dataset.classes().len(), c.num_classes);
        return Err(Error::format(c.data, msg));
    }
    let resume = infinity_autograd::checkpoint::latest(&s.out)?;
    let step0 = resume.as_ref().map_or(0, |saved| saved.step);
    let mut state = match &resume {
        Some(saved) => RunState::from_checkpoint(saved, c.command, s, c.stream, (rank, ranks))?,
        None => RunState::new(s, c.stream, rank),
    };
    let order = BatchOrder::new(&dataset, s.batch * ranks, s.seed, state.order)?.sharded(rank, ranks)?;
    let header = ["step,loss,lr,grad_norm".to_string()]
        .into_iter()
        .chain(c.figures.iter().cloned())
        .chain(["samples_per_s".to_string()])
        .collect::<Vec<_>>()
        .join(",");
    let mut folder = if rank == 0 { Some(RunFolder::open(s, &header, step0)?) } else { None };
    if step0 >= s.steps {
        return Ok(Outcome::AlreadyDone { step: step0 });
    }
    let mut optimizer = AdamW::new(c.adamw, official_groups(&params))?;
    if let Some(saved) = &resume {
        saved.restore(&mut params, &mut optimizer)?;
    }
    let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
    let from = match &resume {
        Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
        None => "starting".to_string(),
    };
    let intro = format!(
        "{from} on {}: {} ({n_params} parameters), {} items in {} classes ({}), batch {} × {} micro-batches × \
         {ranks} ranks, peak lr {:e}",
        s.device,
        c.what,
        dataset.items().len(),
        dataset.classes().len(),
        dataset.skip_report(),
        s.batch,
        c.accumulate,
        c.lr.peak
    );
    if let Some(folder) = &mut folder {
        announce(folder, s, &intro, progress, step0)?;
    }

    let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
    let run_start = Instant::now();
    let mut step = step0;
    while step < s.steps {
        let step_start = Instant::now();
        let mut micro = Vec::with_capacity(c.accumulate);
        for _ in 0..c.accumulate {
            let Loaded { samples, images, order } = batches.next_batch()?;
            state.order = order;
            let labels: Vec<usize> =
                samples.items.iter().map(|&i| dataset.items()[i].class.unwrap_or_default()).collect();
            micro.push(learner.encode(&images, &labels, &mut state.rng)?);
        }
        let lr = c.lr.lr(step as usize);
        let stats =
            learner.step(&mut params, &mut optimizer, &micro, (lr, c.weight_decay, c.clip), world, &mut state.rng)?;
        let samples: usize = ranks * micro.iter().map(L::samples).sum::<usize>();
        let samples_per_s = samples as f64 / step_start.elapsed().as_secs_f64();
        step += 1;
        let Some(folder) = &mut folder else { continue };
        let mut row = first_columns(step, stats.loss, lr, stats.grad_norm);
        row.extend(stats.scale_accuracy.iter().map(|acc| format!("{acc:.4}")));
        row.push(format!("{samples_per_s:.3}"));
        folder.row(&row)?;
        folder.log(&format!(
            "step {step} loss {:.4} lr {lr:.3e} grad_norm {:.3} accuracy {:?} {:.2} s/step, {samples_per_s:.2} samples/s",
            stats.loss,
            stats.grad_norm,
            stats.scale_accuracy,
            run_start.elapsed().as_secs_f64() / (step - step0) as f64
        ))?;
        progress.step(step, &format!("loss {:.4}, {samples_per_s:.2} samples/s", stats.loss));
        folder.save(step, &params, &optimizer, &state.to_json(c.command, s, ranks), progress)?;
    }
    match &mut folder {
        Some(folder) => folder.finish(step0, step, run_start, &dataset),
        None => Ok(Outcome::Trained {
            from: step0,
            to: step,
            seconds: run_start.elapsed().as_secs_f64(),
            skipped: dataset.skip_report(),
        }),
    }
}
