//! VAR's training run: each step draws its batches of square images from the class folders,
//! tokenises them with the frozen VQVAE, drops labels to the null class (10%), and takes one
//! [`train_step`]; then it logs the step and saves a checkpoint when one is due. Label dropout
//! draws from the trainer's stream, whose position is saved, so a resumed run takes the same
//! steps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use infinity_autograd::optim::official_groups;
use infinity_autograd::{AdamW, AdamWConfig, LrSchedule};
use infinity_runtime::collective::Collective;
use infinity_runtime::io::Weights;
use infinity_runtime::{Error, Result};

use super::folder::{RunFolder, RunSettings, RunState, announce, first_columns};
use super::{Outcome, PREFETCH, Progress};
use crate::data::{BatchOrder, Dataset, Loaded, Prefetch};
use crate::schedule::PixelBudget;
use crate::var::generate::check_pair;
use crate::var::train::{VarBatch, VarStepSettings, train_step};
use crate::var::{VarConfig, VarTransformer, VqVae, VqVaeConfig};

/// Key of the trainer's own Philox stream (label dropout), apart from the data order's.
const TRAINER_STREAM: u64 = 0x7661_722d_7472_6169;
const COMMAND: &str = "var";

/// Where the transformer's starting weights come from.
#[derive(Clone, Debug)]
pub enum Start {
    /// The official initialisation of this configuration.
    Scratch(VarConfig),
    /// A checkpoint (a released `var_dNN.pth` or safetensors) to fine-tune.
    Checkpoint(PathBuf),
}

/// A VAR run, every setting resolved.
#[derive(Clone, Debug)]
pub struct VarRun {
    pub run: RunSettings,
    /// An ImageNet-style folder of class sub-folders.
    pub data: PathBuf,
    /// The frozen VQVAE.
    pub vae: PathBuf,
    pub start: Start,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    pub weight_decay: f64,
    /// Largest global gradient norm; `f32::INFINITY` never clips.
    pub clip: f32,
    /// Probability of training a sample as the null class.
    pub label_dropout: f32,
    /// Micro-batches of `run.batch` images per step.
    pub accumulate: usize,
}

impl VarRun {
    /// Trains from the run folder's latest checkpoint (or the start) up to `run.steps`, as rank
    /// `world.rank()` of `world` (each rank its share of every global batch; rank 0 writes the
    /// run folder and reports `progress`).
    pub fn train(&self, world: &dyn Collective, progress: &mut dyn Progress) -> Result<Outcome> {
        let (s, device) = (&self.run, &self.run.device);
        let (rank, ranks) = (world.rank(), world.world_size());
        // The configurations first, so a mismatch is reported before the large reads.
        let vae_weights = Weights::open(&self.vae)?;
        let vae_config = VqVaeConfig::detect(&vae_weights.shapes())
            .map_err(|msg| Error::format(&self.vae, format!("not a VAR VQVAE: {msg}")))?;
        let (weights, config, source) = match &self.start {
            Start::Scratch(config) => {
                (VarTransformer::initial_weights(config, s.seed)?, config.clone(), "the official initialisation".into())
            }
            Start::Checkpoint(path) => {
                let w = Weights::open(path)?;
                let config = VarTransformer::detect_config(&w)?;
                (w, config, path.display().to_string())
            }
        };
        check_pair(&config, &vae_config)?;
        let budget = match config.image_size() {
            256 => PixelBudget::P006M,
            512 => PixelBudget::P025M,
            size => return Err(Error::setting(format!("no pixel budget trains {size}² images"))),
        };
        std::fs::create_dir_all(&s.out).map_err(|e| Error::io(&s.out, e))?;
        infinity_runtime::io::check_writable(&s.out)?;
        let dataset = Arc::new(Dataset::from_class_folders(&self.data, budget)?);
        if dataset.classes().len() > config.num_classes {
            return Err(Error::format(
                &self.data,
                format!("{} class folders, but the model has {} classes", dataset.classes().len(), config.num_classes),
            ));
        }
        let resume = infinity_autograd::checkpoint::latest(&s.out)?;
        let step0 = resume.as_ref().map_or(0, |c| c.step);
        let mut state = match &resume {
            Some(saved) => RunState::from_checkpoint(saved, COMMAND, s, TRAINER_STREAM, (rank, ranks))?,
            None => RunState::new(s, TRAINER_STREAM, rank),
        };
        let order = BatchOrder::new(&dataset, s.batch * ranks, s.seed, state.order)?.sharded(rank, ranks)?;
        let header = ["step,loss,lr,grad_norm".to_string()]
            .into_iter()
            .chain((0..config.num_scales()).map(|k| format!("acc_{k}")))
            .chain(["samples_per_s".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        let mut folder = if rank == 0 { Some(RunFolder::open(s, &header, step0)?) } else { None };
        if step0 >= s.steps {
            return Ok(Outcome::AlreadyDone { step: step0 });
        }

        let start = Instant::now();
        let vae = VqVae::with_config_on(&vae_weights, vae_config, device)?;
        let mut params = VarTransformer::parameters(&weights, &config)?.to_device(device)?;
        drop(weights);
        let mut optimizer = AdamW::new(self.adamw, official_groups(&params))?;
        if let Some(saved) = &resume {
            saved.restore(&mut params, &mut optimizer)?;
        }
        let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
        let what = match &resume {
            Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
            None => format!("starting from {source}"),
        };
        let intro = format!(
            "{what} on {device}: VAR d{} ({n_params} parameters, {}² images), {} items in {} classes ({}), batch {} × {} \
             micro-batches × {ranks} ranks, peak lr {:e}; models loaded in {:.2} s",
            config.depth,
            config.image_size(),
            dataset.items().len(),
            dataset.classes().len(),
            dataset.skip_report(),
            s.batch,
            self.accumulate,
            self.lr.peak,
            start.elapsed().as_secs_f64()
        );
        if let Some(folder) = &mut folder {
            announce(folder, s, &intro, progress, step0)?;
        }

        let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
        let run_start = Instant::now();
        let mut step = step0;
        while step < s.steps {
            let step_start = Instant::now();
            let mut micro = Vec::with_capacity(self.accumulate);
            for _ in 0..self.accumulate {
                let Loaded { samples, images, order } = batches.next_batch()?;
                state.order = order;
                let labels: Vec<usize> =
                    samples.items.iter().map(|&i| dataset.items()[i].class.unwrap_or_default()).collect();
                micro.push(VarBatch::encode(&vae, &config, &images, &labels, self.label_dropout, &mut state.rng)?);
            }
            let lr = self.lr.lr(step as usize);
            let settings = VarStepSettings { lr, weight_decay: self.weight_decay, clip: self.clip };
            let stats = train_step(&mut params, &mut optimizer, &config, &micro, settings, world)?;
            let samples: usize = ranks * micro.iter().map(|b| b.labels.len()).sum::<usize>();
            let samples_per_s = samples as f64 / step_start.elapsed().as_secs_f64();
            step += 1;
            let Some(folder) = &mut folder else { continue };
            let mut row = first_columns(step, stats.loss, lr, stats.grad_norm);
            row.extend(stats.scale_accuracy.iter().map(|acc| format!("{acc:.4}")));
            row.push(format!("{samples_per_s:.3}"));
            folder.row(&row)?;
            folder.log(&format!(
                "step {step} loss {:.4} lr {lr:.3e} grad_norm {:.3} acc(last scale) {:.4} {:.2} s/step, {samples_per_s:.2} samples/s",
                stats.loss,
                stats.grad_norm,
                stats.scale_accuracy.last().copied().unwrap_or(0.0),
                run_start.elapsed().as_secs_f64() / (step - step0) as f64
            ))?;
            progress.step(step, &format!("loss {:.4}, {samples_per_s:.2} samples/s", stats.loss));
            folder.save(step, &params, &optimizer, &state.to_json(COMMAND, s, ranks), progress)?;
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
}
