//! The Infinity transformer: loading, per-prompt conditioning, the per-scale forward pass
//! through the KV cache, and the bitwise head.
//!
//! The model holds its parameters as `Var`s and its one forward is written against `Var`, for
//! every device. Loaded from a checkpoint (onto the CPU or an accelerator), the parameters are
//! constants and the forward records nothing: that is the inference path. Built with [`Infinity::on_tape`] from the leaves of a training
//! step's tape, the same forward records every op, and the logits of
//! [`Infinity::teacher_forced_logits`] can be backpropagated to the parameters. Data (text
//! features, next-scale inputs) always enters as constants.

use std::path::Path;

use infinity_autograd::elementwise::add;
use infinity_autograd::index::concat;
use infinity_autograd::matmul::linear;
use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_ops::attention::Packing;
use infinity_runtime::io::{Weights, open_checkpoint};
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::block::{Block, KvCache, TextKv, modulate};
use super::config::InfinityConfig;
use super::params::gather;
use super::rope::scale_table;
use super::text::{Conditioning, PackedText, TextPath};
use crate::params::{Source, tracked_source, trainable, truncated_normal};
use crate::schedule::Schedule;

pub struct Infinity {
    pub config: InfinityConfig,
    pub(super) text: TextPath,
    /// (1, 1, C): added to the start token only.
    pub(super) pos_start: Var,
    /// (15, C): one row per scale index, added once before the first block.
    pub(super) lvl_embed: Var,
    pub(super) word_embed_w: Var,
    pub(super) word_embed_b: Var,
    pub(super) blocks: Vec<Block>,
    pub(super) head_w: Var,
    pub(super) head_b: Var,
    /// Where the weights are, and so where the forward runs.
    device: Device,
    /// The dtype of GEMM and attention operands: f32 on the CPU, bf16 on an accelerator.
    operand: DType,
    /// Whether the teacher-forced forward keeps only each block's input on the tape and
    /// recomputes the block in the backward pass ([`Infinity::recompute_blocks`]).
    recompute_blocks: bool,
}

/// Per-batch state: the text's cross-attention K/V and the AdaLN table of every block, and
/// the KV caches.
pub struct Session<'a> {
    pub cond: &'a Conditioning,
    text_kv: Vec<TextKv>,
    ada: Vec<Var>,
    caches: Vec<KvCache>,
}

impl Infinity {
    /// Loads a flat state dict (official `.pth` or safetensors, or a sharded checkpoint as the
    /// 8B is released: see [`open_checkpoint`]), detecting the configuration.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_on(path, &Device::Cpu)
    }

    /// [`Infinity::open`] onto `device`.
    pub fn open_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = open_checkpoint(path.as_ref(), |_| true)?;
        Self::with_config_on(&weights, Self::detect_config(&weights)?, device)
    }

    /// The configuration a state dict's shapes imply; the error names the file.
    pub fn detect_config(weights: &Weights) -> Result<InfinityConfig> {
        InfinityConfig::detect(&weights.shapes())
            .map_err(|msg| Error::format(weights.path(), format!("not a known Infinity transformer: {msg}")))
    }

    pub fn open_with_config(path: impl AsRef<Path>, config: InfinityConfig) -> Result<Self> {
        Self::with_config(&open_checkpoint(path.as_ref(), |_| true)?, config)
    }

    /// The model with constant weights (inference) on the CPU: linear weights stay in their
    /// stored dtype.
    pub fn with_config(weights: &Weights, config: InfinityConfig) -> Result<Self> {
        Self::with_config_on(weights, config, &Device::Cpu)
    }

    /// The model with constant weights on `device`, in its dtype policy
    /// (`models/src/params.rs`); each tensor is converted and placed as it is taken.
    pub fn with_config_on(weights: &Weights, config: InfinityConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = gather(weights, &config)?;
        p.place_on(device);
        let operand = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        Self::build(config, device, operand, &mut |key| p.take(key).map(Var::constant))
    }

    /// The trainable parameters of a checkpoint in f32 (master weights), in state-dict order,
    /// checked against `config` as loading checks them; the zero K-bias buffers are left out.
    pub fn parameters(weights: &Weights, config: &InfinityConfig) -> Result<TrainParams> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = gather(weights, config)?;
        trainable(&mut p, config.entries().into_iter().filter(|e| !e.buffer).map(|e| e.key))
    }

    /// The model on one training step's tape: every parameter is the tracked leaf of the same
    /// name (as [`Infinity::parameters`] names them), so the forward records and its output
    /// can be backpropagated. Build it anew for each step's tape.
    pub fn on_tape(config: InfinityConfig, params: &Tracked) -> Result<Self> {
        config.validate().map_err(|msg| Error::invalid("infinity.on_tape", &[], msg))?;
        let shapes = config.entries().into_iter().map(|e| (e.key, e.shape)).collect();
        // The forward runs where the parameters are, recorded in f32 (the tape's rules are).
        let device = params.get("lvl_embed.weight")?.value().device();
        Self::build(config, &device, DType::F32, &mut tracked_source("infinity.on_tape", shapes, params))
    }

    /// Activation checkpointing per block (the official `--checkpointing full-block`): the
    /// training forward keeps each block's input instead of its activations and recomputes
    /// them when the backward pass reaches the block. Same gradients, bit for bit; the
    /// activation memory of a step falls from every block's to one block's plus the blocks'
    /// inputs, for a second forward's time.
    pub fn recompute_blocks(mut self, on: bool) -> Self {
        self.recompute_blocks = on;
        self
    }

    fn build(config: InfinityConfig, device: &Device, operand: DType, take: Source) -> Result<Self> {
        let blocks = (0..config.depth).map(|i| Block::load(take, &config, i, operand)).collect::<Result<_>>()?;
        Ok(Infinity {
            text: TextPath::load(take, &config)?,
            pos_start: take("pos_start")?,
            lvl_embed: take("lvl_embed.weight")?,
            word_embed_w: take("word_embed.weight")?,
            word_embed_b: take("word_embed.bias")?,
            blocks,
            head_w: take("head.weight")?,
            head_b: take("head.bias")?,
            config,
            device: device.clone(),
            operand,
            recompute_blocks: false,
        })
    }

    /// The model on [`Infinity::random_weights`], for benchmarks and tests.
    pub fn random(config: InfinityConfig, seed: u64) -> Result<Self> {
        Self::with_config(&Self::random_weights(&config, seed)?, config)
    }

    /// A random state dict (normals scaled by 1/√fan-in, zero biases; positive per-head
    /// attention scales): what [`Infinity::random`] loads, or the start of a training run.
    pub fn random_weights(config: &InfinityConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("infinity.random", &[config.embed_dim], msg))?;
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries().into_iter().filter(|e| !e.buffer) {
            let n: usize = e.shape.iter().product();
            let values: Vec<f32> = if e.key.ends_with("scale_mul_1H11") {
                vec![4f32.ln(); n]
            } else if e.key.ends_with("bias") || e.key.ends_with("ca_norm.weight") || e.key == "text_norm.weight" {
                vec![if e.key.ends_with("weight") { 1.0 } else { 0.0 }; n]
            } else {
                let fan_in = *e.shape.last().unwrap_or(&1) as f32;
                rng.normal(n).into_iter().map(|x| x / fan_in.sqrt()).collect()
            };
            tensors.push((e.key, Tensor::from_vec(values, &e.shape)?));
        }
        Weights::new("<random Infinity>", tensors, Default::default())
    }

    /// The official initialisation for training from scratch (spec §4.9): every linear and
    /// embedding weight truncated-normal with std √(1/3C), biases zero; the residual branches'
    /// output projections scaled by 1/√(2·depth), the head by 0.02, the head's AdaLN by 1e-3
    /// and each block's AdaLN gains `ada_gss` (N(0,1)/√C) by 5e-6 (the gates, scripts/train.sh's
    /// `alng`) and 1e-3 (scales and shifts), so every block starts close to the identity.
    pub fn initial_weights(config: &InfinityConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("infinity.init", &[config.embed_dim], msg))?;
        let c = config.embed_dim as f32;
        let tini = (1.0 / (3.0 * c)).sqrt();
        let residual_out = 1.0 / (2.0 * config.depth as f32).sqrt();
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries().into_iter().filter(|e| !e.buffer) {
            let n: usize = e.shape.iter().product();
            let key = e.key.as_str();
            let values: Vec<f32> = if key.ends_with("scale_mul_1H11") {
                vec![4f32.ln(); n]
            } else if key.ends_with("norm.weight") {
                vec![1.0; n]
            } else if key.ends_with("bias") {
                vec![0.0; n]
            } else if key.ends_with("ada_gss") {
                // (1, 1, 6, C): rows 0..2 are the gates, 2..6 the scales and shifts.
                let gains = rng.normal(n);
                gains
                    .chunks(e.shape[3])
                    .enumerate()
                    .flat_map(|(row, r)| {
                        let m = if row < 2 { 5e-6 } else { 1e-3 };
                        r.iter().map(move |x| x / c.sqrt() * m).collect::<Vec<_>>()
                    })
                    .collect()
            } else if key == "cfg_uncond" {
                let t = config.text_channels as f32;
                truncated_normal(&mut rng, n, 1.2).into_iter().map(|x| x / t.sqrt()).collect()
            } else {
                let multiplier = if key == "head.weight" {
                    0.02
                } else if key == "head_nm.ada_lin.1.weight" {
                    1e-3
                } else if key.starts_with("block_chunks.")
                    && ["sa.proj.weight", "ca.proj.weight", "ffn.fc2.weight"].iter().any(|s| key.ends_with(s))
                {
                    residual_out
                } else {
                    1.0
                };
                truncated_normal(&mut rng, n, tini).into_iter().map(|x| x * multiplier).collect()
            };
            tensors.push((e.key, Tensor::from_vec(values, &e.shape)?));
        }
        Weights::new("<initial Infinity>", tensors, Default::default())
    }

    /// Where the weights are and the forward runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Conditioning for prompts given as T5 features (Lᵢ, text_channels), each ≥ 1 token, on
    /// any device (they are moved to the model's).
    pub fn condition(&self, prompts: &[Tensor]) -> Result<Conditioning> {
        self.text.condition(&PackedText::pack(prompts, &self.device)?)
    }

    /// [`Infinity::condition`] of features that may be tracked (a text encoder training along,
    /// on the model's device); constant features are moved to the model's device.
    pub fn condition_vars(&self, prompts: &[Var]) -> Result<Conditioning> {
        let placed = prompts
            .iter()
            .map(|p| if p.is_tracked() { Ok(p.clone()) } else { p.value().to_device(&self.device).map(Var::constant) })
            .collect::<Result<Vec<_>>>()?;
        self.text.condition(&PackedText::pack_vars(&placed)?)
    }

    /// Conditioning of the doubled CFG batch: the prompts, then for each prompt its negative
    /// prompt's features or, without one, the learned null text of the same length.
    pub fn condition_cfg(&self, prompts: &[Tensor], negatives: Option<&[Tensor]>) -> Result<Conditioning> {
        let mut all = prompts.to_vec();
        match negatives {
            Some(neg) if neg.len() == prompts.len() => all.extend_from_slice(neg),
            Some(neg) => {
                return Err(Error::invalid(
                    "infinity.condition_cfg",
                    &[neg.len()],
                    format!("{} negative prompts for {} prompts", neg.len(), prompts.len()),
                ));
            }
            None => {
                for p in prompts {
                    all.push(self.text.null_text(p.dim(0)?)?);
                }
            }
        }
        self.condition(&all)
    }

    /// The text-normalised, attention-pooled `cond` of packed features (for parity tests).
    pub fn pooled_text(&self, text: &PackedText) -> Result<(Tensor, Tensor)> {
        let packing = Packing::new(&text.lens, &text.features.value().device())?;
        let (normed, cond) = self.text.normalize_and_pool(text, &packing)?;
        Ok((normed.into_value(), cond.into_value()))
    }

    /// The state of one batch over `schedule`. With constant weights the KV caches are
    /// allocated for the whole schedule on the model's device and filled in place; with
    /// tracked weights they grow by recorded concatenations.
    pub fn session<'a>(&self, cond: &'a Conditioning, schedule: &Schedule) -> Result<Session<'a>> {
        let text_kv = self.blocks.iter().map(|b| b.text_kv(&cond.memory)).collect::<Result<_>>()?;
        let ada = self.blocks.iter().map(|b| b.ada(cond)).collect::<Result<_>>()?;
        let c = &self.config;
        let cache = || {
            if self.lvl_embed.is_tracked() {
                Ok(KvCache::recorded())
            } else {
                let rows = cond.cond.dim(0)?;
                KvCache::filled(rows, c.num_heads, schedule.seq_len(), c.head_dim(), self.operand, &self.device)
            }
        };
        let caches = self.blocks.iter().map(|_| cache()).collect::<Result<_>>()?;
        Ok(Session { cond, text_kv, ada, caches })
    }

    /// Start tokens (B, 1, C): cond + pos_start.
    pub fn start_tokens(&self, cond: &Conditioning) -> Result<Var> {
        add(&cond.cond.unsqueeze(1)?, &self.pos_start)
    }

    /// Token embeddings (B, n, C) of next-scale inputs (B, n, bits), on any device.
    pub fn embed(&self, inputs: &Tensor) -> Result<Var> {
        let inputs = inputs.to_dtype(self.operand)?.to_device(&self.device)?;
        linear(&Var::constant(inputs), &self.word_embed_w, Some(&self.word_embed_b))
    }

    /// Runs the tokens `x` (B, n, C) of scale `k` (grid `grid` of `schedule`) through every
    /// block, appending their keys and values to the session's caches. Returns the hidden
    /// states (B, n, C).
    pub fn forward_scale(&self, session: &mut Session, x: &Var, schedule: &Schedule, k: usize) -> Result<Var> {
        let grid = *schedule
            .grids
            .get(k)
            .ok_or_else(|| Error::invalid("infinity.forward_scale", &[k], "scale index past the schedule"))?;
        if k >= self.lvl_embed.dim(0)? {
            return Err(Error::invalid("infinity.forward_scale", &[k], "schedules have at most 15 scales"));
        }
        if x.rank() != 3 || x.dim(1)? != grid.0 * grid.1 || x.dim(2)? != self.config.embed_dim {
            return Err(Error::invalid(
                "infinity.forward_scale",
                x.shape(),
                format!("expected (B, {}, {}) for grid {grid:?}", grid.0 * grid.1, self.config.embed_dim),
            ));
        }
        if session.caches.first().is_some_and(|c| c.len() != schedule.offsets()[k]) {
            return Err(Error::invalid("infinity.forward_scale", &[k], "scales must run in order, each once"));
        }
        let (cos, sin) = scale_table(grid, schedule.full_grid, self.config.head_dim())?;
        let (cos, sin) = (cos.to_device(&self.device)?, sin.to_device(&self.device)?);
        let mut h = add(x, &self.lvl_embed.narrow(0, k, 1)?)?;
        let per_block = self.blocks.iter().zip(&session.text_kv).zip(&session.ada).zip(&mut session.caches);
        for (((block, text_kv), ada), cache) in per_block {
            h = block.forward(&h, &session.cond.packing, ada, text_kv, cache, &cos, &sin)?;
        }
        Ok(h)
    }

    /// Bit logits (B, n, 2·bits) from hidden states: pairs (bit 0, bit 1) per bit.
    pub fn logits(&self, cond: &Conditioning, hidden: &Var) -> Result<Var> {
        let part = |i: usize| cond.head_ada.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        linear(&modulate(hidden, &part(0)?, &part(1)?, self.operand)?, &self.head_w, Some(&self.head_b))
    }

    /// Teacher-forced logits (B, L, 2·bits) for next-scale inputs `inputs` (B, L − 1, bits) of
    /// scales 1.. of `schedule` (scale 0 is fed the start token).
    pub fn teacher_forced(&self, cond: &Conditioning, inputs: &Tensor, schedule: &Schedule) -> Result<Tensor> {
        Ok(self.teacher_forced_logits(cond, inputs, schedule)?.into_value())
    }

    /// [`Infinity::teacher_forced`] as a `Var`: the training forward. Running scale by scale
    /// through the KV cache equals the official block-causal masked pass (a token sees its own
    /// and earlier scales), and the cache's concatenations are recorded, so the backward
    /// matches too.
    pub fn teacher_forced_logits(&self, cond: &Conditioning, inputs: &Tensor, schedule: &Schedule) -> Result<Var> {
        let total = schedule.seq_len();
        if inputs.rank() != 3 || inputs.dim(1)? + 1 != total {
            return Err(Error::invalid(
                "infinity.teacher_forced",
                inputs.shape(),
                format!("expected (B, {}, bits)", total - 1),
            ));
        }
        if schedule.num_scales() > self.lvl_embed.dim(0)? {
            return Err(Error::invalid("infinity.teacher_forced", &[schedule.num_scales()], "at most 15 scales"));
        }
        // Scale k's tokens (the start token for scale 0) plus its level embedding.
        let embedded = self.embed(inputs)?;
        let offsets = schedule.offsets();
        let mut tokens = Vec::with_capacity(schedule.num_scales());
        for k in 0..schedule.num_scales() {
            let x = if k == 0 {
                self.start_tokens(cond)?
            } else {
                embedded.narrow(1, offsets[k] - 1, offsets[k + 1] - offsets[k])?
            };
            tokens.push(add(&x, &self.lvl_embed.narrow(0, k, 1)?)?);
        }
        let mut h = concat(&tokens.iter().collect::<Vec<_>>(), 1)?;
        let lens: Vec<usize> = schedule.tokens().collect();
        let tables = (schedule.grids.iter())
            .map(|&grid| {
                let (cos, sin) = scale_table(grid, schedule.full_grid, self.config.head_dim())?;
                Ok((cos.to_device(&self.device)?, sin.to_device(&self.device)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // Block after block over the whole sequence: a token's hidden state after block i
        // depends only on block i's inputs of its own and earlier scales, so this equals
        // running scale after scale through every block, and each block is one unit that
        // activation checkpointing can recompute.
        for block in &self.blocks {
            let (text_kv, ada) = (block.text_kv(&cond.memory)?, block.ada(cond)?);
            h = block.forward_sequence(&h, &cond.packing, &ada, &text_kv, &lens, &tables, self.recompute_blocks)?;
        }
        self.logits(cond, &h)
    }
}
