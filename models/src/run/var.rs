//! VAR's training run: the class-conditional loop (`classes`) with the frozen VQVAE's tokens,
//! label dropout (10%) and VAR's [`train_step`].

use std::path::PathBuf;

use infinity_autograd::{AdamW, AdamWConfig, LrSchedule, Params};
use infinity_runtime::collective::Collective;
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Error, Result, Tensor};

use super::classes::{self, Classes, Learner};
use super::folder::RunSettings;
use super::{Outcome, Progress};
use crate::data::SquareCrop;
use crate::train::StepStats;
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

/// The frozen VQVAE and the model's configuration: how VAR learns in the loop.
struct VarLearner {
    vae: VqVae,
    config: VarConfig,
    label_dropout: f32,
}

impl Learner for VarLearner {
    type Batch = VarBatch;

    fn encode(&self, images: &Tensor, labels: &[usize], rng: &mut Philox) -> Result<VarBatch> {
        VarBatch::encode(&self.vae, &self.config, images, labels, self.label_dropout, rng)
    }

    fn samples(batch: &VarBatch) -> usize {
        batch.labels.len()
    }

    fn step(
        &self,
        params: &mut Params,
        optimizer: &mut AdamW,
        batches: &[VarBatch],
        (lr, weight_decay, clip): (f64, f64, f32),
        world: &dyn Collective,
        _: &mut Philox,
    ) -> Result<StepStats> {
        train_step(params, optimizer, &self.config, batches, VarStepSettings { lr, weight_decay, clip }, world)
    }
}

impl VarRun {
    /// Trains from the run folder's latest checkpoint (or the start) up to `run.steps`, as rank
    /// `world.rank()` of `world` (each rank its share of every global batch; rank 0 writes the
    /// run folder and reports `progress`).
    pub fn train(&self, world: &dyn Collective, progress: &mut dyn Progress) -> Result<Outcome> {
        let (s, device) = (&self.run, &self.run.device);
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
        let params = VarTransformer::parameters(&weights, &config)?.to_device(device)?;
        drop(weights);
        let classes = Classes {
            settings: s,
            data: &self.data,
            command: COMMAND,
            stream: TRAINER_STREAM,
            side: config.image_size(),
            // The official augmentation: the shorter side to 1.125 × the size, a random crop.
            crop: SquareCrop::Random { scale: 1.125 },
            num_classes: config.num_classes,
            figures: (0..config.num_scales()).map(|k| format!("acc_{k}")).collect(),
            what: format!("VAR d{} from {source}, {}² images", config.depth, config.image_size()),
            lr: self.lr,
            adamw: self.adamw,
            weight_decay: self.weight_decay,
            clip: self.clip,
            accumulate: self.accumulate,
        };
        let vae = VqVae::with_config_on(&vae_weights, vae_config, device)?;
        let learner = VarLearner { vae, config, label_dropout: self.label_dropout };
        classes::train(classes, &learner, params, world, progress)
    }
}
