//! The BitVAE's training run: each step takes a batch from the prefetching loader (random
//! crops of it in stage 1 with `crop`), the scales it quantizes over (stage 2: the pixel
//! budget's schedule for the batch's template; stage 1: the latent grid alone), and one
//! [`vae_train_step`] — with a discriminator, one [`vae_gan_train_step`], the discriminator
//! saved inside each checkpoint's folder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use infinity_autograd::checkpoint;
use infinity_autograd::optim::official_groups;
use infinity_autograd::{AdamW, AdamWConfig, LrSchedule};
use infinity_ops::index::concat;
use infinity_runtime::rng::philox_u32;
use infinity_runtime::{Error, Result, Tensor};
use serde_json::Value;

use super::folder::{RunFolder, RunSettings, announce, first_columns, run_state, saved_order, start};
use super::{Outcome, PREFETCH, Progress};
use crate::bitvae::{self, BitVae, BitVaeConfig};
use crate::data::{BatchOrder, Loaded, OrderState, Prefetch};
use crate::schedule::PixelBudget;
use crate::train_vae::{Adversary, Discriminator, VaeLossWeights, VaeStepSettings, vae_gan_train_step, vae_train_step};

/// Key of the crop positions' Philox stream.
const CROP_STREAM: u64 = 0x6372_6f70_7321;
/// The sub-folder of a checkpoint holding the discriminator's own checkpoint.
const DISCRIMINATOR_DIR: &str = "discriminator";
const COMMAND: &str = "vae";

/// Where the BitVAE's starting weights come from.
#[derive(Clone, Debug)]
pub enum Start {
    /// Random weights of this architecture.
    Scratch(BitVaeConfig),
    /// A checkpoint (official .pth or safetensors) to fine-tune.
    Checkpoint(PathBuf),
}

/// A PatchGAN discriminator trained alongside.
#[derive(Clone, Copy, Debug)]
pub struct DiscriminatorSettings {
    /// Width of its first conv.
    pub channels: usize,
    /// Weight of the adversarial loss in the VAE's loss.
    pub weight: f32,
    /// Steps taken before the adversarial loss enters the VAE's loss.
    pub start: u64,
}

/// A BitVAE run, every setting resolved.
#[derive(Clone, Debug)]
pub struct VaeRun {
    pub run: RunSettings,
    /// The images (see [`crate::data::Dataset::open`]); captions are not used.
    pub data: PathBuf,
    pub start: Start,
    pub pn: PixelBudget,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    pub weight_decay: f64,
    /// Largest global gradient norm; `f32::INFINITY` never clips.
    pub clip: f32,
    pub losses: VaeLossWeights,
    /// Stage 2: quantize over the scales of `pn` (else stage 1, the latent grid only).
    pub multiscale: bool,
    /// Stage 1: train on random square crops of this many pixels.
    pub crop: Option<usize>,
    pub discriminator: Option<DiscriminatorSettings>,
}

/// The multi-scale stage follows the pixel budgets' scale schedules, grids of 16-pixel
/// tokens: it needs patch 16.
pub fn check_patch(config: &BitVaeConfig, multiscale: bool) -> std::result::Result<(), String> {
    if multiscale && config.patch != 16 {
        return Err(format!(
            "--stage 2 follows the --pn scale schedules, which need patch 16 (this BitVAE has patch {}); use --stage 1",
            config.patch
        ));
    }
    Ok(())
}

impl VaeRun {
    /// Trains from the run folder's latest checkpoint (or the start) up to `run.steps`.
    pub fn train(&self, progress: &mut dyn Progress) -> Result<Outcome> {
        let (s, device) = (&self.run, &self.run.device);
        let (dataset, resume, step0) = start(s, &self.data, self.pn)?;
        let order_state = match &resume {
            Some(saved) => saved_order(saved, COMMAND, s, 1)?,
            None => OrderState::default(),
        };
        let order = BatchOrder::new(&dataset, s.batch, s.seed, order_state)?;
        let header = match self.discriminator {
            Some(_) => "step,loss,lr,grad_norm,reconstruction,commitment,entropy,disc_loss,gen_adv",
            None => "step,loss,lr,grad_norm,reconstruction,commitment,entropy",
        };
        let mut folder = RunFolder::open(s, header, step0)?;
        if step0 >= s.steps {
            return Ok(Outcome::AlreadyDone { step: step0 });
        }

        let start = Instant::now();
        let (weights, config, source) = match &self.start {
            Start::Scratch(config) => {
                check_patch(config, self.multiscale).map_err(Error::setting)?;
                (BitVae::random_weights(config, s.seed)?, config.clone(), "random init".to_string())
            }
            Start::Checkpoint(path) => {
                let w = bitvae::state_dict(path)?;
                let config = bitvae::detect_config(&w)?;
                check_patch(&config, self.multiscale).map_err(|e| Error::format(path, e))?;
                (w, config, path.display().to_string())
            }
        };
        // The f32 master weights, their gradients and AdamW's state all live on the device.
        let mut params = BitVae::parameters(&weights, &config)?.to_device(device)?;
        drop(weights);
        let mut optimizer = AdamW::new(self.adamw, official_groups(&params))?;
        let mut discriminator = (self.discriminator)
            .map(|d| -> Result<Discriminator> {
                let mut disc = Discriminator::new(d.channels, s.seed, self.adamw)?;
                disc.params = disc.params.to_device(device)?;
                Ok(disc)
            })
            .transpose()?;
        if let Some(saved) = &resume {
            saved.restore(&mut params, &mut optimizer)?;
            if let Some(d) = &mut discriminator {
                let dir = saved.dir.join(DISCRIMINATOR_DIR);
                let inner = checkpoint::latest(&dir)?
                    .ok_or_else(|| Error::format(&dir, "no discriminator checkpoint to resume"))?;
                inner.restore(&mut d.params, &mut d.optimizer)?;
            }
        }
        let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
        let what = match &resume {
            Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
            None => format!("starting from {source}"),
        };
        let adversary = match (&discriminator, self.discriminator) {
            (Some(d), Some(settings)) => {
                let n: usize = d.params.iter().map(|(_, t)| t.numel()).sum();
                format!(", discriminator {n} parameters (weight {} after step {})", settings.weight, settings.start)
            }
            _ => String::new(),
        };
        let intro = format!(
            "{what} on {device}: BitVAE {}, {n_params} parameters{adversary}, stage {}, {} items ({}), pn {}, batch {}, \
             lr {:e}; loaded in {:.2} s",
            config.to_json(),
            if self.multiscale { 2 } else { 1 },
            dataset.items().len(),
            dataset.skip_report(),
            self.pn,
            s.batch,
            self.lr.peak,
            start.elapsed().as_secs_f64()
        );
        announce(&mut folder, s, &intro, progress, step0)?;

        let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
        let run_start = Instant::now();
        let mut step = step0;
        while step < s.steps {
            let Loaded { samples, images, order } = batches.next_batch()?;
            let images = match self.crop {
                Some(size) => random_crops(&images, size, s.seed, step)?,
                None => images,
            };
            let grids = if self.multiscale {
                samples.template.schedule(self.pn).grids
            } else {
                vec![(images.dim(2)? / config.patch, images.dim(3)? / config.patch)]
            };
            let lr = self.lr.lr(step as usize);
            let settings =
                VaeStepSettings { lr, weight_decay: self.weight_decay, clip: self.clip, losses: self.losses };
            let (stats, gan) = match (&mut discriminator, self.discriminator) {
                (Some(discriminator), Some(d)) => {
                    let weight = if step >= d.start { d.weight } else { 0.0 };
                    let adversary = Adversary { discriminator, weight };
                    let (stats, gan) =
                        vae_gan_train_step(&mut params, &mut optimizer, &config, &images, &grids, settings, adversary)?;
                    (stats, Some(gan))
                }
                _ => (vae_train_step(&mut params, &mut optimizer, &config, &images, &grids, settings)?, None),
            };
            step += 1;

            let mut row = first_columns(step, stats.loss, lr, stats.grad_norm);
            row.extend([
                format!("{:?}", stats.reconstruction),
                format!("{:?}", stats.commitment),
                format!("{:?}", stats.entropy),
            ]);
            let mut adversarial = String::new();
            if let Some(gan) = gan {
                row.extend([format!("{:?}", gan.disc_loss), format!("{:?}", gan.gen_adv)]);
                adversarial = format!(" disc_loss {:.4} gen_adv {:.4}", gan.disc_loss, gan.gen_adv);
            }
            folder.row(&row)?;
            folder.log(&format!(
                "step {step} loss {:.4} (reconstruction {:.4} commitment {:.4} entropy {:.4}{adversarial}) lr {lr:.3e} \
                 grad_norm {:.3} {:.2} s/step",
                stats.loss,
                stats.reconstruction,
                stats.commitment,
                stats.entropy,
                stats.grad_norm,
                run_start.elapsed().as_secs_f64() / (step - step0) as f64
            ))?;
            progress.step(step, &format!("loss {:.4}", stats.loss));
            // The discriminator goes into the folder the checkpoint is about to fill, before
            // `latest.json` points there, so the folder it names is always complete.
            if let Some(d) = &discriminator
                && folder.due(step)
            {
                let dir = folder.checkpoint_dir(step).join(DISCRIMINATOR_DIR);
                checkpoint::save(&dir, step, &d.params, &d.optimizer, &Value::Null, 1)?;
            }
            folder.save(step, &params, &optimizer, &run_state(COMMAND, s, 1, order), progress)?;
        }
        folder.finish(step0, step, run_start, &dataset)
    }
}

/// A `size`² crop of each image at a position drawn from the crop stream at (`seed`, `step`),
/// so a resumed run crops exactly as the uninterrupted one.
fn random_crops(images: &Tensor, size: usize, seed: u64, step: u64) -> Result<Tensor> {
    let (n, h, w) = (images.dim(0)?, images.dim(2)?, images.dim(3)?);
    if size > h || size > w {
        return Err(Error::setting(format!("--crop {size} is larger than the {h}×{w} training images")));
    }
    let draw = |i: usize, axis: u64, room: usize| {
        let u = philox_u32(seed ^ CROP_STREAM, (step * n as u64 + i as u64) * 2 + axis);
        ((u as u64 * (room as u64 + 1)) >> 32) as usize
    };
    let crops = (0..n)
        .map(|i| images.narrow(0, i, 1)?.narrow(2, draw(i, 0, h - size), size)?.narrow(3, draw(i, 1, w - size), size))
        .collect::<Result<Vec<_>>>()?;
    concat(&crops.iter().collect::<Vec<_>>(), 0)
}
