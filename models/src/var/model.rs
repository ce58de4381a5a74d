//! The VAR transformer (official models/var.py, basic_var.py): class embedding as start token
//! and AdaLN condition, absolute position and level embeddings, blocks of AdaLN-modulated
//! self-attention (L2-normalised q and k, a clamped learned scale per head, softmax scale 1)
//! and a tanh-GELU FFN, and an AdaLN before the head over the codebook.
//!
//! Written once against `Var` for every device, like the Infinity transformer: with constant
//! weights nothing is recorded. A sequence runs either whole, under the block-causal mask
//! (teacher forcing), or one scale at a time through per-block KV caches (generation); both
//! give the same logits.

use std::path::Path;

use infinity_autograd::adaln::{gated_residual, modulate};
use infinity_autograd::attention::attention;
use infinity_autograd::elementwise::{add, clamp, exp, gelu_tanh, mul, silu};
use infinity_autograd::index::{concat, embedding};
use infinity_autograd::matmul::linear;
use infinity_autograd::norm::l2_normalize;
use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_ops::attention::{QK_EPS, block_causal_mask};
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::VarConfig;
use crate::kv_cache::KvCache;
use crate::params::{Params, Source, Use, refuse_unexpected, tracked_source, trainable, truncated_normal};

/// LayerNorm ε of every norm (`norm_eps`).
const EPS: f32 = 1e-6;

/// Where a block's AdaLN table comes from.
enum Ada {
    /// SiLU → Linear(D, 6C) of the condition, per block.
    Own { w: Var, b: Var },
    /// The model's shared projection plus this block's learned offset `ada_gss` (6, C) (d36).
    Shared { gss: Var },
}

struct Block {
    ada: Ada,
    qkv_w: Var,
    /// `[q_bias | 0 | v_bias]`.
    qkv_b: Var,
    /// exp(min(scale_mul, ln 100)) per head, (1, H, 1, 1).
    head_scale: Var,
    proj_w: Var,
    proj_b: Var,
    fc1_w: Var,
    fc1_b: Var,
    fc2_w: Var,
    fc2_b: Var,
    heads: usize,
}

impl Block {
    fn load(take: Source, c: &VarConfig, i: usize) -> Result<Self> {
        let mut t = |name: &str| take(&format!("blocks.{i}.{name}"));
        let q_bias = t("attn.q_bias")?;
        let zeros = Var::constant(Tensor::zeros_on(q_bias.shape(), DType::F32, &q_bias.value().device())?);
        let qkv_b = concat(&[&q_bias, &zeros, &t("attn.v_bias")?], 0)?;
        let ada = if c.shared_aln {
            Ada::Shared { gss: t("ada_gss")?.reshape(&[6, c.embed_dim])? }
        } else {
            Ada::Own { w: t("ada_lin.1.weight")?, b: t("ada_lin.1.bias")? }
        };
        Ok(Block {
            ada,
            qkv_w: t("attn.mat_qkv.weight")?,
            qkv_b,
            head_scale: exp(&clamp(&t("attn.scale_mul_1H11")?, f32::NEG_INFINITY, 100f32.ln())?)?,
            proj_w: t("attn.proj.weight")?,
            proj_b: t("attn.proj.bias")?,
            fc1_w: t("ffn.fc1.weight")?,
            fc1_b: t("ffn.fc1.bias")?,
            fc2_w: t("ffn.fc2.weight")?,
            fc2_b: t("ffn.fc2.bias")?,
            heads: c.num_heads,
        })
    }

    /// The block's AdaLN table (B, 6, C), rows [γ1, γ2, scale1, scale2, shift1, shift2], from
    /// SiLU(cond) (B, D) — or from the shared projection's table.
    fn ada_table(&self, silu_cond: &Var, shared: Option<&Var>) -> Result<Var> {
        let (b, c) = (silu_cond.dim(0)?, self.proj_w.dim(0)?);
        match (&self.ada, shared) {
            (Ada::Own { w, b: bias }, _) => linear(silu_cond, w, Some(bias))?.reshape(&[b, 6, c]),
            (Ada::Shared { gss }, Some(table)) => add(table, gss),
            (Ada::Shared { .. }, None) => Err(Error::invalid("var.block", &[b], "shared AdaLN without its table")),
        }
    }

    /// `x` (B, n, C) through the block; its keys and values join `cache` and its queries see
    /// every key there, under `mask` (n, cached + n) when given.
    fn forward(&self, x: &Var, ada: &Var, cache: &mut KvCache, mask: Option<&Tensor>) -> Result<Var> {
        let (b, n, c) = (x.dim(0)?, x.dim(1)?, x.dim(2)?);
        let (h, hd) = (self.heads, c / self.heads);
        let row = |i: usize| ada.narrow(1, i, 1).and_then(|r| r.squeeze(1));
        let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (row(0)?, row(1)?, row(2)?, row(3)?, row(4)?, row(5)?);

        let a = modulate(x, &scale1, &shift1, EPS, DType::F32)?;
        let qkv = linear(&a, &self.qkv_w, Some(&self.qkv_b))?;
        let part = |i: usize| qkv.narrow(2, i * c, c)?.reshape(&[b, n, h, hd])?.permute(&[0, 2, 1, 3]);
        let q = mul(&l2_normalize(&part(0)?, QK_EPS)?, &self.head_scale)?;
        let (k, v) = cache.append(l2_normalize(&part(1)?, QK_EPS)?, part(2)?.contiguous()?)?;
        let o = attention(&q, &k, &v, mask, 1.0)?.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let x = gated_residual(x, &linear(&o, &self.proj_w, Some(&self.proj_b))?, &gamma1)?;

        let f = modulate(&x, &scale2, &shift2, EPS, DType::F32)?;
        let f = gelu_tanh(&linear(&f, &self.fc1_w, Some(&self.fc1_b))?)?;
        gated_residual(&x, &linear(&f, &self.fc2_w, Some(&self.fc2_b))?, &gamma2)
    }
}

pub struct VarTransformer {
    pub config: VarConfig,
    /// (1, 1, C): added to the start token.
    pos_start: Var,
    /// (1, L, C): one row per token of the whole pyramid.
    pos_1lc: Var,
    word_embed_w: Var,
    word_embed_b: Var,
    /// (classes + 1, C): the last row is the null class.
    class_emb: Var,
    /// (scales, C).
    lvl_embed: Var,
    shared_ada: Option<(Var, Var)>,
    blocks: Vec<Block>,
    head_nm_w: Var,
    head_nm_b: Var,
    head_w: Var,
    head_b: Var,
    device: Device,
}

/// The per-batch state of a generation: the condition and the blocks' AdaLN tables and caches.
pub struct Session {
    cond: Var,
    tables: Vec<Var>,
    caches: Vec<KvCache>,
    /// Tokens run so far.
    len: usize,
}

impl VarTransformer {
    /// Loads a released flat state dict (`var_dNN.pth` or safetensors), detecting the
    /// configuration.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_on(path, &Device::Cpu)
    }

    pub fn open_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = Weights::open(path)?;
        Self::with_config_on(&weights, Self::detect_config(&weights)?, device)
    }

    /// The configuration a state dict's shapes imply; the error names the file.
    pub fn detect_config(weights: &Weights) -> Result<VarConfig> {
        VarConfig::detect(&weights.shapes())
            .map_err(|msg| Error::format(weights.path(), format!("not a VAR transformer: {msg}")))
    }

    /// The model with constant weights on `device` (linear weights bf16 on an accelerator).
    /// The stored buffers (level indices, mask, zero K-bias) are accepted and rebuilt, not read.
    pub fn with_config_on(weights: &Weights, config: VarConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = Params::new(weights);
        let entries = config.entries();
        for e in entries.iter().filter(|e| !e.buffer) {
            let use_ = match e.key.as_str() {
                "class_emb.weight" => Use::Rows,
                k if e.shape.len() == 2 && k.ends_with(".weight") && k != "lvl_embed.weight" => Use::AsStored,
                _ => Use::F32,
            };
            p.insert(weights, &e.key, &e.key, &e.shape, use_)?;
        }
        refuse_unexpected(weights, |k| entries.iter().any(|e| e.key == k), "VAR transformer")?;
        p.place_on(device);
        Self::build(config, device, &mut |key| p.take(key).map(Var::constant))
    }

    /// The trainable parameters of a checkpoint in f32 (master weights), in state-dict order,
    /// checked as loading checks them; the buffers are left out.
    pub fn parameters(weights: &Weights, config: &VarConfig) -> Result<TrainParams> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let entries = config.entries();
        let mut p = Params::new(weights);
        for e in entries.iter().filter(|e| !e.buffer) {
            p.insert(weights, &e.key, &e.key, &e.shape, Use::F32)?;
        }
        refuse_unexpected(weights, |k| entries.iter().any(|e| e.key == k), "VAR transformer")?;
        trainable(&mut p, entries.into_iter().filter(|e| !e.buffer).map(|e| e.key))
    }

    /// The model on one training step's tape: every parameter the tracked leaf of its name
    /// (as [`VarTransformer::parameters`] names them). Build it anew for each step's tape.
    pub fn on_tape(config: VarConfig, params: &Tracked) -> Result<Self> {
        config.validate().map_err(|msg| Error::invalid("var.on_tape", &[], msg))?;
        let shapes = config.entries().into_iter().filter(|e| !e.buffer).map(|e| (e.key, e.shape)).collect();
        let device = params.get("lvl_embed.weight")?.value().device();
        Self::build(config, &device, &mut tracked_source("var.on_tape", shapes, params))
    }

    /// The official initialisation (`init_weights(init_adaln=0.5, init_adaln_gamma=1e-5,
    /// init_head=0.02, init_std=-1)` after the constructor's): linear and embedding weights and
    /// the position tables truncated-normal with std √(1/3C), biases zero; the residual
    /// branches' output projections divided by √(2·depth); the head × 0.02 and the head's
    /// AdaLN × 0.5; each block's AdaLN × 0.5 for its scales and shifts and × 1e-5 for its gates
    /// (the shared AdaLN's per-block offsets N(0, 1)/√C alike); attention scales 4.
    pub fn initial_weights(config: &VarConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("var.init", &[config.embed_dim], msg))?;
        let c = config.embed_dim;
        let std = (1.0 / (3.0 * c as f32)).sqrt();
        let residual = 1.0 / (2.0 * config.depth as f32).sqrt();
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries().into_iter().filter(|e| !e.buffer) {
            let n: usize = e.shape.iter().product();
            let key = e.key.as_str();
            // Rows of a (6C, ·) AdaLN output or of a (…, 6, C) offset: the first 2C are the gates.
            let gates_then = |values: Vec<f32>, per_row: usize, rows_of_gates: usize| -> Vec<f32> {
                values
                    .chunks(per_row)
                    .enumerate()
                    .flat_map(|(r, row)| {
                        let m = if r < rows_of_gates { 1e-5 } else { 0.5 };
                        row.iter().map(move |x| x * m).collect::<Vec<_>>()
                    })
                    .collect()
            };
            let values: Vec<f32> = if key.ends_with("scale_mul_1H11") {
                vec![4f32.ln(); n]
            } else if key.ends_with("bias") {
                vec![0.0; n]
            } else if key.ends_with("ada_gss") {
                let raw = rng.normal(n).into_iter().map(|x| x / (c as f32).sqrt()).collect();
                gates_then(raw, c, 2)
            } else {
                let w = truncated_normal(&mut rng, n, std);
                if key.ends_with("ada_lin.1.weight") && key.starts_with("blocks.") || key == "shared_ada_lin.1.weight" {
                    gates_then(w, c, 2 * c)
                } else {
                    let m = match key {
                        "head.weight" => 0.02,
                        "head_nm.ada_lin.1.weight" => 0.5,
                        k if k.ends_with("attn.proj.weight") || k.ends_with("ffn.fc2.weight") => residual,
                        _ => 1.0,
                    };
                    w.into_iter().map(|x| x * m).collect()
                }
            };
            tensors.push((e.key, Tensor::from_vec(values, &e.shape)?));
        }
        Weights::new("<initial VAR>", tensors, Default::default())
    }

    fn build(config: VarConfig, device: &Device, take: Source) -> Result<Self> {
        let shared_ada = if config.shared_aln {
            Some((take("shared_ada_lin.1.weight")?, take("shared_ada_lin.1.bias")?))
        } else {
            None
        };
        let blocks = (0..config.depth).map(|i| Block::load(take, &config, i)).collect::<Result<_>>()?;
        Ok(VarTransformer {
            pos_start: take("pos_start")?,
            pos_1lc: take("pos_1LC")?,
            word_embed_w: take("word_embed.weight")?,
            word_embed_b: take("word_embed.bias")?,
            class_emb: take("class_emb.weight")?,
            lvl_embed: take("lvl_embed.weight")?,
            shared_ada,
            blocks,
            head_nm_w: take("head_nm.ada_lin.1.weight")?,
            head_nm_b: take("head_nm.ada_lin.1.bias")?,
            head_w: take("head.weight")?,
            head_b: take("head.bias")?,
            config,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The class embeddings (B, C) of `labels` (the null class is `num_classes`): the start
    /// token and the AdaLN condition.
    pub fn condition(&self, labels: &[usize]) -> Result<Var> {
        if let Some(&bad) = labels.iter().find(|&&l| l > self.config.num_classes) {
            return Err(Error::invalid(
                "var.condition",
                &[bad],
                format!(
                    "class {bad} is out of range (0..{}, {} = null)",
                    self.config.num_classes, self.config.num_classes
                ),
            ));
        }
        let ids = Tensor::from_vec(labels.iter().map(|&l| l as i64).collect(), &[labels.len()])?;
        let emb = embedding(&self.class_emb, &ids.to_device(&self.device)?)?;
        if emb.value().dtype() == DType::F32 { Ok(emb) } else { emb.value().to_dtype(DType::F32).map(Var::constant) }
    }

    fn tables(&self, cond: &Var) -> Result<Vec<Var>> {
        let s = silu(cond)?;
        let shared = match &self.shared_ada {
            Some((w, b)) => Some(linear(&s, w, Some(b))?.reshape(&[cond.dim(0)?, 6, self.config.embed_dim])?),
            None => None,
        };
        self.blocks.iter().map(|blk| blk.ada_table(&s, shared.as_ref())).collect()
    }

    /// lvl_embed(scale) + pos_1LC of the tokens of scale `k`: (1, n, C).
    fn level_positions(&self, k: usize) -> Result<Var> {
        let start: usize = self.config.patch_nums[..k].iter().map(|p| p * p).sum();
        let n = self.config.patch_nums[k].pow(2);
        add(&self.lvl_embed.narrow(0, k, 1)?.unsqueeze(0)?, &self.pos_1lc.narrow(1, start, n)?)
    }

    /// Input tokens of scale `k` (B, n, C): for scale 0 the start token cond + pos_start, else
    /// word_embed of the next-scale input `rows` (B, n, Cvae); plus the level and position.
    fn scale_tokens(&self, cond: &Var, rows: Option<&Tensor>, k: usize) -> Result<Var> {
        let x = match rows {
            None => add(&cond.unsqueeze(1)?, &self.pos_start)?,
            Some(r) => {
                let r = Var::constant(r.to_dtype(DType::F32)?.to_device(&self.device)?);
                linear(&r, &self.word_embed_w, Some(&self.word_embed_b))?
            }
        };
        add(&x, &self.level_positions(k)?)
    }

    /// Codebook logits (B, n, V) of hidden states (B, n, C).
    fn logits(&self, cond: &Var, hidden: &Var) -> Result<Var> {
        let c = self.config.embed_dim;
        let ada = linear(&silu(cond)?, &self.head_nm_w, Some(&self.head_nm_b))?;
        let (scale, shift) = (ada.narrow(1, 0, c)?, ada.narrow(1, c, c)?);
        linear(&modulate(hidden, &scale, &shift, EPS, DType::F32)?, &self.head_w, Some(&self.head_b))
    }

    /// Teacher-forced logits (B, L, V) of `labels` and the next-scale inputs (B, L − 1, Cvae)
    /// of scales 1.. (`VqVae::teacher_input`): logits[b, l] predicts token l.
    pub fn teacher_forced(&self, labels: &[usize], inputs: &Tensor) -> Result<Var> {
        let (l, pn) = (self.config.seq_len(), &self.config.patch_nums);
        if inputs.rank() != 3
            || inputs.dim(0)? != labels.len()
            || inputs.dim(1)? + 1 != l
            || inputs.dim(2)? != self.config.cvae
        {
            return Err(Error::invalid(
                "var.teacher_forced",
                inputs.shape(),
                format!("expected ({}, {}, {})", labels.len(), l - 1, self.config.cvae),
            ));
        }
        let cond = self.condition(labels)?;
        let mut tokens = vec![self.scale_tokens(&cond, None, 0)?];
        let mut start = 0;
        for (k, p) in pn.iter().enumerate().skip(1) {
            tokens.push(self.scale_tokens(&cond, Some(&inputs.narrow(1, start, p * p)?), k)?);
            start += p * p;
        }
        let mut h = concat(&tokens.iter().collect::<Vec<_>>(), 1)?;
        let mask = block_causal_mask(&pn.iter().map(|p| p * p).collect::<Vec<_>>())?.to_device(&self.device)?;
        for (block, ada) in self.blocks.iter().zip(self.tables(&cond)?) {
            h = block.forward(&h, &ada, &mut KvCache::default(), Some(&mask))?;
        }
        self.logits(&cond, &h)
    }

    /// A generation over the rows of `labels` (the CFG batch: conditional rows, then null).
    pub fn session(&self, labels: &[usize]) -> Result<Session> {
        let cond = self.condition(labels)?;
        let tables = self.tables(&cond)?;
        Ok(Session { cond, tables, caches: self.blocks.iter().map(|_| KvCache::default()).collect(), len: 0 })
    }

    /// Logits (rows, pn², V) of scale `k` from its next-scale input `rows` (rows, pn², Cvae)
    /// (`None` at scale 0), the tokens joining the session's caches.
    pub fn forward_scale(&self, session: &mut Session, rows: Option<&Tensor>, k: usize) -> Result<Tensor> {
        let offset: usize = self.config.patch_nums.iter().take(k).map(|p| p * p).sum();
        if k >= self.config.num_scales() || session.len != offset || (k == 0) != rows.is_none() {
            return Err(Error::invalid(
                "var.forward_scale",
                &[k],
                "scales must run in order, each once, scale 0 without input",
            ));
        }
        let mut h = self.scale_tokens(&session.cond, rows, k)?;
        for ((block, ada), cache) in self.blocks.iter().zip(&session.tables).zip(&mut session.caches) {
            h = block.forward(&h, ada, cache, None)?;
        }
        session.len += self.config.patch_nums[k].pow(2);
        Ok(self.logits(&session.cond, &h)?.into_value())
    }
}
