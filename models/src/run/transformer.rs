//! The transformer's training run: each step draws its micro-batches from the prefetching
//! loader, encodes their images with the frozen BitVAE (or takes cached latents), builds the
//! teacher-forcing targets with Bitwise Self-Correction's flips, reads or computes the text
//! features, replaces dropped captions with the null text, and takes one [`train_step`];
//! then it logs the step and saves a checkpoint when one is due. Every random draw comes from
//! the trainer's stream, whose position is saved, so a resumed run takes the same steps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use infinity_autograd::optim::official_groups;
use infinity_autograd::zero::{Optimizer, Zero1};
use infinity_autograd::{AdamW, AdamWConfig, LrSchedule, Params};
use infinity_ops::index::concat;
use infinity_runtime::collective::Collective;
use infinity_runtime::io::open_checkpoint;
use infinity_runtime::{Error, Result, Tensor};

use super::folder::{RunFolder, RunSettings, RunState, announce, first_columns, start};
use super::{Outcome, PREFETCH, Progress};
use crate::bitvae::{self, BitVae};
use crate::data::{BatchOrder, Dataset, FeatureCache, Loaded, Prefetch, Samples};
use crate::infinity::teacher::{Flips, teacher_forcing};
use crate::infinity::{Infinity, InfinityConfig, TokenLayout};
use crate::pipeline::{TextEncoder, check_fit};
use crate::schedule::PixelBudget;
use crate::t5::{self, T5Config, T5Encoder, T5Tokenizer};
use crate::train::{StepBatch, StepSettings, StepText, TEXT_ENCODER_PREFIX, TokenWeighting, null_text, train_step};

/// Key of the trainer's own Philox stream (BSC flips, caption dropout), apart from the data
/// order's stream of the same seed.
const TRAINER_STREAM: u64 = 0x7472_6169_6e65_7221;
/// Key of a text encoder's random initial weights, apart from the transformer's of the same seed.
const TEXT_ENCODER_SEED: u64 = 0x7465_7874_2d65_6e63;
const COMMAND: &str = "transformer";

/// Where the transformer's starting weights come from.
#[derive(Clone, Debug)]
pub enum Start {
    /// The official initialisation of this configuration.
    Scratch(InfinityConfig),
    /// A checkpoint (official .pth or safetensors) to fine-tune.
    Checkpoint(PathBuf),
}

/// A transformer run, every setting resolved.
#[derive(Clone, Debug)]
pub struct TransformerRun {
    pub run: RunSettings,
    /// The data set (see [`Dataset::open`]).
    pub data: PathBuf,
    /// The frozen BitVAE.
    pub vae: PathBuf,
    /// The T5 encoder's weights: frozen, or the starting point of `train_text_encoder`; `None`
    /// trains one from Hugging Face's initialisation.
    pub t5: Option<PathBuf>,
    pub t5_config: PathBuf,
    pub tokenizer: PathBuf,
    pub start: Start,
    pub pn: PixelBudget,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    pub weight_decay: f64,
    /// Largest global gradient norm; `f32::INFINITY` never clips.
    pub clip: f32,
    /// Bitwise Self-Correction's largest flip probability (0: off).
    pub bsc_strength: f32,
    /// Probability of training a sample on the null text instead of its caption.
    pub cond_drop: f32,
    pub weighting: TokenWeighting,
    /// Train the T5 encoder with the transformer (one parameter set, optimiser, checkpoint).
    pub train_text_encoder: bool,
    /// Keep each image's latent after its first encoding.
    pub cache_latents: bool,
    /// Micro-batches of `run.batch` images per step.
    pub accumulate: usize,
    /// Activation checkpointing per block.
    pub recompute_blocks: bool,
    /// ZeRO stage 1: AdamW's moments sharded over the ranks ([`Zero1`]).
    pub zero1: bool,
}

/// The transformer's text side: a frozen encoder whose features are cached on disk, or an
/// encoder training alongside, fed token ids.
enum Text {
    Frozen { encoder: Box<TextEncoder>, cache: FeatureCache },
    Trained { tokenizer: Box<T5Tokenizer>, config: T5Config },
}

impl Text {
    fn prompts(&self, captions: &[&str]) -> Result<Vec<StepText>> {
        match self {
            Text::Frozen { encoder, cache } => Ok(cache
                .features(captions, |c| Ok(encoder.encode(c)?.into_iter().map(|p| p.features).collect()))?
                .into_iter()
                .map(StepText::Features)
                .collect()),
            Text::Trained { tokenizer, .. } => {
                captions.iter().map(|c| Ok(StepText::Tokens(tokenizer.encode(c)?.ids))).collect()
            }
        }
    }

    fn trained(&self) -> Option<&T5Config> {
        match self {
            Text::Trained { config, .. } => Some(config),
            Text::Frozen { .. } => None,
        }
    }
}

/// BitVAE latents of the batch's images, on the device, kept per image path with `cache_latents`.
struct Latents {
    cache: Option<HashMap<PathBuf, Tensor>>,
}

impl Latents {
    fn encode(&mut self, vae: &BitVae, images: &Tensor, samples: &Samples, dataset: &Dataset) -> Result<Tensor> {
        let encode = |images: &Tensor| vae.encode(images);
        let Some(cache) = &mut self.cache else { return encode(images) };
        let mut rows = Vec::with_capacity(samples.items.len());
        for (i, &item) in samples.items.iter().enumerate() {
            let path = &dataset.items()[item].image;
            if !cache.contains_key(path) {
                cache.insert(path.clone(), encode(&images.narrow(0, i, 1)?)?);
            }
            rows.push(cache[path].clone());
        }
        concat(&rows.iter().collect::<Vec<_>>(), 0)
    }
}

impl TransformerRun {
    /// Trains from the run folder's latest checkpoint (or the start) up to `run.steps`, as rank
    /// `world.rank()` of a data-parallel run over `world` ([`Single`] for one process): each
    /// rank trains on its share (`run.batch` images) of every global batch of `run.batch` ×
    /// ranks, the ranks average their gradients, and rank 0 alone writes the run folder and
    /// reports `progress`. The global batch order and the checkpoints are those of a one-rank
    /// run of the global batch, so a run resumes with any number of ranks that divides it.
    ///
    /// [`Single`]: infinity_runtime::collective::Single
    pub fn train(&self, world: &dyn Collective, progress: &mut dyn Progress) -> Result<Outcome> {
        let (s, device) = (&self.run, &self.run.device);
        let (rank, ranks) = (world.rank(), world.world_size());
        let lead = rank == 0;
        let (dataset, resume, step0) = start(s, &self.data, self.pn)?;
        let mut state = match &resume {
            Some(saved) => RunState::from_checkpoint(saved, COMMAND, s, TRAINER_STREAM, (rank, ranks))?,
            None => RunState::new(s, TRAINER_STREAM, rank),
        };
        let order = BatchOrder::new(&dataset, s.batch * ranks, s.seed, state.order)?.sharded(rank, ranks)?;
        let header = ["step,loss,lr,grad_norm".to_string()]
            .into_iter()
            .chain((0..self.pn.num_scales()).map(|k| format!("bit_acc_{k}")))
            .chain(["samples_per_s".to_string(), "tokens_per_s".to_string()])
            .collect::<Vec<_>>()
            .join(",");
        let mut folder = if lead { Some(RunFolder::open(s, &header, step0)?) } else { None };
        if step0 >= s.steps {
            return Ok(Outcome::AlreadyDone { step: step0 });
        }

        // The models: configurations first, so a mismatch is reported before the large reads.
        let start = Instant::now();
        let t5_config = T5Config::open(&self.t5_config)?;
        let vae_weights = bitvae::state_dict(&self.vae)?;
        let vae_config = bitvae::detect_config(&vae_weights)?;
        let (weights, mut config, source) = match &self.start {
            Start::Scratch(config) => {
                (Infinity::initial_weights(config, s.seed)?, config.clone(), "the official initialisation".to_string())
            }
            Start::Checkpoint(path) => {
                let w = open_checkpoint(path, |_| true)?;
                let config = Infinity::detect_config(&w)?;
                (w, config, path.display().to_string())
            }
        };
        let layout = check_fit(&config, &source, &vae_config, &self.vae, &t5_config, &self.t5_config)?;
        config.spatial_patchify = layout == TokenLayout::Patchify;
        let vae = BitVae::with_config_on(&vae_weights, vae_config, device)?;
        let mut params: Params = Infinity::parameters(&weights, &config)?;
        // The f32 master copies are all training needs: release the checkpoint's mapping.
        drop(weights);
        let text = if self.train_text_encoder {
            let t5_weights = match &self.t5 {
                Some(path) => t5::open_checkpoint(path)?,
                None => T5Encoder::random_weights(&t5_config, s.seed ^ TEXT_ENCODER_SEED)?,
            };
            let encoder = T5Encoder::parameters(&t5_weights, &t5_config, TEXT_ENCODER_PREFIX)?;
            let all = params.iter().chain(encoder.iter()).map(|(n, t)| (n.to_string(), t.clone()));
            params = Params::new(all.collect())?;
            let tokenizer = T5Tokenizer::open(&self.tokenizer)?.with_max_tokens(config.text_maxlen);
            Text::Trained { tokenizer: Box::new(tokenizer), config: t5_config }
        } else {
            let t5 = self.t5.as_ref().ok_or_else(|| Error::setting("a frozen text encoder needs --t5"))?;
            let encoder = TextEncoder::with_config(t5, t5_config, &self.tokenizer, device)?.for_transformer(&config);
            let identity = format!(
                "t5={} config={} tokenizer={} max_tokens={}",
                t5.display(),
                self.t5_config.display(),
                self.tokenizer.display(),
                encoder.max_tokens()
            );
            Text::Frozen { encoder: Box::new(encoder), cache: FeatureCache::new(s.out.join("text-cache"), identity)? }
        };
        // The f32 master weights, their gradients and AdamW's state all live on the device.
        let mut params = params.to_device(device)?;
        let mut adamw = AdamW::new(self.adamw, official_groups(&params))?;
        if let Some(saved) = &resume {
            saved.restore(&mut params, &mut adamw)?;
        }
        let mut optimizer = if self.zero1 {
            Optimizer::Zero1(Zero1::shard(adamw, &params, world)?)
        } else {
            Optimizer::Replicated(adamw)
        };
        let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
        let what = match &resume {
            Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
            None => format!("starting from {source}"),
        };
        let ranks_note = match (ranks, self.zero1) {
            (1, _) => String::new(),
            (_, false) => format!(" × {ranks} ranks"),
            (_, true) => format!(" × {ranks} ranks (AdamW's state sharded, ZeRO-1)"),
        };
        let intro = format!(
            "{what} on {device}: {n_params} parameters, {} items ({}), pn {}, batch {} × {} micro-batches{ranks_note}, \
             peak lr {:e}; models loaded in {:.2} s",
            dataset.items().len(),
            dataset.skip_report(),
            self.pn,
            s.batch,
            self.accumulate,
            self.lr.peak,
            start.elapsed().as_secs_f64()
        );
        if let Some(folder) = &mut folder {
            announce(folder, s, &intro, progress, step0)?;
        }

        let mut latents = Latents { cache: self.cache_latents.then(HashMap::new) };
        let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
        let run_start = Instant::now();
        let mut step = step0;
        while step < s.steps {
            let step_start = Instant::now();
            // Each micro-batch's prompts, targets and schedule; the step borrows them.
            let mut micro = Vec::with_capacity(self.accumulate);
            for _ in 0..self.accumulate {
                let Loaded { samples, images, order } = batches.next_batch()?;
                state.order = order;
                let schedule = samples.template.schedule(self.pn);
                let latent = latents.encode(&vae, &images, &samples, &dataset)?;
                let flips = if self.bsc_strength > 0.0 {
                    Flips::Random { strength: self.bsc_strength, rng: &mut state.rng }
                } else {
                    Flips::None
                };
                let targets = teacher_forcing(&latent, &schedule.grids, TokenLayout::of(&config), flips)?;
                let captions: Vec<&str> = samples.captions.iter().map(String::as_str).collect();
                let mut prompts = text.prompts(&captions)?;
                for (prompt, u) in prompts.iter_mut().zip(state.rng.uniform(captions.len())) {
                    if u < self.cond_drop {
                        let len = match prompt {
                            StepText::Features(t) => t.dim(0)?,
                            StepText::Tokens(ids) => ids.len(),
                        };
                        *prompt = StepText::Features(null_text(&params, len)?);
                    }
                }
                micro.push((prompts, targets, schedule));
            }
            let step_batches: Vec<StepBatch> = (micro.iter())
                .map(|(prompts, targets, schedule)| StepBatch {
                    prompts,
                    text_encoder: text.trained(),
                    targets,
                    schedule,
                })
                .collect();
            let lr = self.lr.lr(step as usize);
            let settings = StepSettings {
                lr,
                weight_decay: self.weight_decay,
                clip: self.clip,
                weighting: self.weighting,
                recompute_blocks: self.recompute_blocks,
            };
            let stats = train_step(&mut params, &mut optimizer, &config, &step_batches, settings, world)?;
            let seconds = step_start.elapsed().as_secs_f64();
            // Every rank trains on as many samples as this one: the global throughput.
            let samples: usize = ranks * micro.iter().map(|(prompts, ..)| prompts.len()).sum::<usize>();
            let tokens: usize =
                ranks * micro.iter().map(|(prompts, _, schedule)| prompts.len() * schedule.seq_len()).sum::<usize>();
            let (samples_per_s, tokens_per_s) = (samples as f64 / seconds, tokens as f64 / seconds);
            step += 1;
            // Under ZeRO-1 every rank takes part in gathering AdamW's state for a checkpoint.
            let checkpoint_state = if s.checkpoint_due(step) { optimizer.full_state(&params, world)? } else { None };
            let Some(folder) = &mut folder else { continue };

            let mut row = first_columns(step, stats.loss, lr, stats.grad_norm);
            row.extend(stats.scale_accuracy.iter().map(|acc| format!("{acc:.4}")));
            row.extend([format!("{samples_per_s:.3}"), format!("{tokens_per_s:.0}")]);
            folder.row(&row)?;
            let scale_loss: Vec<String> = stats.scale_loss.iter().map(|l| format!("{l:.4}")).collect();
            folder.log(&format!(
                "step {step} loss {:.4} lr {lr:.3e} grad_norm {:.3} bit_acc(last scale) {:.4} scale losses [{}] \
                 {:.2} s/step, {samples_per_s:.2} samples/s, {tokens_per_s:.0} tokens/s",
                stats.loss,
                stats.grad_norm,
                stats.scale_accuracy.last().copied().unwrap_or(0.0),
                scale_loss.join(" "),
                run_start.elapsed().as_secs_f64() / (step - step0) as f64
            ))?;
            progress.step(
                step,
                &format!("loss {:.4}, {samples_per_s:.2} samples/s, {tokens_per_s:.0} tokens/s", stats.loss),
            );
            if let Some(adamw) = checkpoint_state {
                folder.save(step, &params, &adamw, &state.to_json(COMMAND, s, ranks), progress)?;
            }
        }
        let outcome = Outcome::Trained {
            from: step0,
            to: step,
            seconds: run_start.elapsed().as_secs_f64(),
            skipped: dataset.skip_report(),
        };
        if let Some(folder) = &mut folder {
            folder.log(&outcome.to_string())?;
        }
        Ok(outcome)
    }
}
