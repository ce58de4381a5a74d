//! Open-MAGVIT2's training run: the class-conditional loop (`classes`) with the frozen
//! tokenizer's sub-tokens, label dropout (10%) and the GPT's own dropouts.

use std::path::PathBuf;

use infinity_autograd::{AdamW, AdamWConfig, LrSchedule, Params};
use infinity_runtime::collective::Collective;
use infinity_runtime::io::open_checkpoint;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Error, Result, Tensor};

use super::classes::{self, Classes, Learner};
use super::folder::RunSettings;
use super::{Outcome, Progress};
use crate::data::SquareCrop;
use crate::magvit2::generate::check_pair;
use crate::magvit2::train::{ArBatch, train_step};
use crate::magvit2::{ArConfig, ArModel, Tokenizer, TokenizerConfig};
use crate::train::StepStats;

/// Key of the trainer's own Philox stream (label dropout, the GPT's dropouts).
const TRAINER_STREAM: u64 = 0x6f6d_322d_7472_6169;
const COMMAND: &str = "magvit2";

/// Where the generator's starting weights come from.
#[derive(Clone, Debug)]
pub enum Start {
    /// The official initialisation of this configuration.
    Scratch(ArConfig),
    /// A released AR `.ckpt` or safetensors to fine-tune.
    Checkpoint(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Magvit2Run {
    pub run: RunSettings,
    /// An ImageNet-style folder of class sub-folders.
    pub data: PathBuf,
    /// The frozen tokenizer (a tokenizer `.ckpt`, an AR `.ckpt`'s first stage, or safetensors).
    pub tokenizer: PathBuf,
    pub start: Start,
    /// The training images' side (256 for the released models).
    pub size: usize,
    pub lr: LrSchedule,
    pub adamw: AdamWConfig,
    pub weight_decay: f64,
    pub clip: f32,
    pub label_dropout: f32,
    pub accumulate: usize,
}

struct ArLearner {
    tokenizer: Tokenizer,
    config: ArConfig,
    label_dropout: f32,
}

impl Learner for ArLearner {
    type Batch = ArBatch;

    fn encode(&self, images: &Tensor, labels: &[usize], rng: &mut Philox) -> Result<ArBatch> {
        ArBatch::encode(&self.tokenizer, &self.config, images, labels, self.label_dropout, rng)
    }

    fn samples(batch: &ArBatch) -> usize {
        batch.labels.len()
    }

    fn step(
        &self,
        params: &mut Params,
        optimizer: &mut AdamW,
        batches: &[ArBatch],
        settings: (f64, f64, f32),
        world: &dyn Collective,
        rng: &mut Philox,
    ) -> Result<StepStats> {
        train_step(params, optimizer, &self.config, batches, settings, world, rng)
    }
}

impl Magvit2Run {
    /// Trains from the run folder's latest checkpoint (or the start) up to `run.steps`.
    pub fn train(&self, world: &dyn Collective, progress: &mut dyn Progress) -> Result<Outcome> {
        let (s, device) = (&self.run, &self.run.device);
        let tok_weights = open_checkpoint(&self.tokenizer, |_| true)?;
        let tok_config = TokenizerConfig::detect(&tok_weights)
            .map_err(|msg| Error::format(&self.tokenizer, format!("not an Open-MAGVIT2 tokenizer: {msg}")))?;
        let f = tok_config.downsample();
        if self.size == 0 || !self.size.is_multiple_of(f) {
            return Err(Error::setting(format!("image side {} is not a multiple of the tokenizer's {f}", self.size)));
        }
        let grid = self.size / f;
        let (weights, config, source) = match &self.start {
            Start::Scratch(config) => {
                let config = ArConfig { grid, ..config.clone() };
                (ArModel::initial_weights(&config, s.seed)?, config, "the official initialisation".to_string())
            }
            Start::Checkpoint(path) => {
                let w = open_checkpoint(path, |_| true)?;
                let config = ArModel::detect_config(&w, grid)?;
                (w, config, path.display().to_string())
            }
        };
        check_pair(&config, &tok_config)?;
        let params = ArModel::parameters(&weights, &config)?.to_device(device)?;
        drop(weights);
        let classes = Classes {
            settings: s,
            data: &self.data,
            command: COMMAND,
            stream: TRAINER_STREAM,
            side: self.size,
            // The official augmentation: the shorter side to the size, a random crop.
            crop: SquareCrop::Random { scale: 1.0 },
            num_classes: config.class_num,
            figures: vec!["acc_pre".into(), "acc_post".into()],
            what: format!(
                "Open-MAGVIT2 GPT (width {}, {} + {} layers) from {source}, {}² images",
                config.dim, config.spatial_layers, config.factorized_layers, self.size
            ),
            lr: self.lr,
            adamw: self.adamw,
            weight_decay: self.weight_decay,
            clip: self.clip,
            accumulate: self.accumulate,
        };
        let tokenizer = Tokenizer::with_config_on(&tok_weights, tok_config, device)?;
        drop(tok_weights);
        let learner = ArLearner { tokenizer, config, label_dropout: self.label_dropout };
        classes::train(classes, &learner, params, world, progress)
    }
}
