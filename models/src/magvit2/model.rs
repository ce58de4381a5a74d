//! The Open-MAGVIT2 generator (`gpt.py`'s GPT with token factorization): Llama blocks (RMSNorm,
//! causal attention with 2-D RoPE, SwiGLU, no biases) over the sequence [class, token 0, …,
//! token N−2], each token embedded as pre_emb[pre] + post_emb[post]; then, per position, two
//! "factorized" blocks over the pair [h_n, pre_emb[pre_n]] whose slots feed the two heads:
//! slot 0 the 2^f0-way logits of the pre sub-token, slot 1 the 2^f1-way logits of the post
//! sub-token given the pre one.
//!
//! Written once against `Var` for every device: constant weights record nothing; tracked
//! weights (`on_tape`) record for backpropagation. Training applies the official dropouts
//! (token embeddings, attention and FFN outputs, 0.1 each) from a Philox stream.

use std::path::Path;

use infinity_autograd::attention::causal_attention;
use infinity_autograd::elementwise::{add, mul, mul_scalar, silu};
use infinity_autograd::index::{concat, embedding};
use infinity_autograd::matmul::linear;
use infinity_autograd::norm::rms_norm;
use infinity_autograd::rope::rope_interleaved;
use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_runtime::io::{Weights, open_checkpoint};
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::{ArConfig, Layout};
use crate::kv_cache::KvCache;
use crate::params::{Params, Source, Use, refuse_unexpected, tracked_source, trainable};

const EPS: f32 = 1e-5;
/// The official dropout of token embeddings, attention outputs and FFN outputs in training.
pub const DROPOUT: f32 = 0.1;

/// x with each element zeroed with probability `p` and the rest scaled by 1/(1 − p)
/// (`nn.Dropout` in training), from `rng`; x itself without a stream.
fn dropout(x: &Var, rng: &mut Option<&mut Philox>) -> Result<Var> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    let keep: Vec<f32> =
        rng.uniform(x.value().numel()).into_iter().map(|u| if u < DROPOUT { 0.0 } else { 1.0 }).collect();
    let mask = Tensor::from_vec(keep, x.shape())?.to_device(&x.value().device())?;
    mul_scalar(&mul(x, &Var::constant(mask))?, 1.0 / (1.0 - DROPOUT))
}

struct Block {
    wqkv: Var,
    wo: Var,
    w1: Var,
    w3: Var,
    w2: Var,
    attention_norm: Var,
    ffn_norm: Var,
    heads: usize,
}

impl Block {
    fn load(take: Source, name: &str, heads: usize) -> Result<Self> {
        let mut t = |k: &str| take(&format!("{name}.{k}"));
        Ok(Block {
            wqkv: t("attention.wqkv.weight")?,
            wo: t("attention.wo.weight")?,
            w1: t("feed_forward.w1.weight")?,
            w3: t("feed_forward.w3.weight")?,
            w2: t("feed_forward.w2.weight")?,
            attention_norm: t("attention_norm.weight")?,
            ffn_norm: t("ffn_norm.weight")?,
            heads,
        })
    }

    /// `x` (B, n, D) at rotary rows `rope` (cos, sin: (n, hd/2)) through the block; its keys and
    /// values join `cache`, and each query sees the keys up to its own position.
    fn forward(
        &self,
        x: &Var,
        rope: &(Tensor, Tensor),
        cache: &mut KvCache,
        rng: &mut Option<&mut Philox>,
    ) -> Result<Var> {
        let (b, n, d) = (x.dim(0)?, x.dim(1)?, x.dim(2)?);
        let (h, hd) = (self.heads, d / self.heads);
        let qkv = linear(&rms_norm(x, Some(&self.attention_norm), EPS)?, &self.wqkv, None)?;
        let part = |i: usize| qkv.narrow(2, i * d, d)?.reshape(&[b, n, h, hd])?.permute(&[0, 2, 1, 3]);
        let q = rope_interleaved(&part(0)?.contiguous()?, &rope.0, &rope.1)?;
        let k = rope_interleaved(&part(1)?.contiguous()?, &rope.0, &rope.1)?;
        let (k, v) = cache.append(k, part(2)?.contiguous()?)?;
        let o = causal_attention(&q, &k, &v, 1.0 / (hd as f32).sqrt())?.permute(&[0, 2, 1, 3])?.reshape(&[b, n, d])?;
        let x = add(x, &dropout(&linear(&o, &self.wo, None)?, rng)?)?;
        let f = rms_norm(&x, Some(&self.ffn_norm), EPS)?;
        let f = mul(&silu(&linear(&f, &self.w1, None)?)?, &linear(&f, &self.w3, None)?)?;
        add(&x, &dropout(&linear(&f, &self.w2, None)?, rng)?)
    }
}

pub struct ArModel {
    pub config: ArConfig,
    pre_emb: Var,
    post_emb: Var,
    class_emb: Var,
    spatial: Vec<Block>,
    factorized: Vec<Block>,
    norm: Var,
    heads: [Var; 2],
    /// cos and sin (1 + N, hd/2) of every position: row 0 (the class token) all zero, row
    /// 1 + y·g + x the 2-D angles.
    rope: (Tensor, Tensor),
    device: Device,
}

/// A generation's state: the spatial blocks' caches and the tokens run so far.
pub struct Session {
    caches: Vec<KvCache>,
    len: usize,
}

/// Logits of the two sub-tokens, (B, N, 2^f0) and (B, N, 2^f1).
pub struct Logits {
    pub pre: Var,
    pub post: Var,
}

/// The rotary table of `precompute_freqs_cis_2d(grid, head_dim, 10000, cls_token_num=1)` in f32:
/// (cos, sin) of shape (1 + grid², head_dim/2).
pub fn rope_table(grid: usize, head_dim: usize) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let freqs: Vec<f32> = (0..half / 2).map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / half as f32)).collect();
    let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
    for y in 0..grid {
        for x in 0..grid {
            let angles = freqs.iter().map(|w| y as f32 * w).chain(freqs.iter().map(|w| x as f32 * w));
            for a in angles {
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let rows = 1 + grid * grid;
    Ok((Tensor::from_vec(cos, &[rows, half])?, Tensor::from_vec(sin, &[rows, half])?))
}

impl ArModel {
    /// Loads the GPT of a released AR `.ckpt` or of safetensors, for images of `grid` × `grid`
    /// tokens (16 for the released 256² models).
    pub fn open_on(path: impl AsRef<Path>, grid: usize, device: &Device) -> Result<Self> {
        let weights = open_checkpoint(path.as_ref(), |_| true)?;
        let config = Self::detect_config(&weights, grid)?;
        Self::with_config_on(&weights, config, device)
    }

    pub fn detect_config(weights: &Weights, grid: usize) -> Result<ArConfig> {
        ArConfig::detect(weights, grid)
            .map_err(|msg| Error::format(weights.path(), format!("not an Open-MAGVIT2 AR model: {msg}")))
    }

    pub fn with_config_on(weights: &Weights, config: ArConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let layout = Layout::of(weights);
        let entries = config.entries();
        let mut p = Params::new(weights);
        for e in &entries {
            let use_ = match e.key.as_str() {
                k if k.contains("emb") => Use::Rows,
                _ if e.shape.len() == 2 => Use::AsStored,
                _ => Use::F32,
            };
            p.insert(weights, &e.key, &layout.ar_key(&e.key), &e.shape, use_)?;
        }
        if layout == Layout::Plain {
            let expected =
                |k: &str| k.starts_with("encoder.") || k.starts_with("decoder.") || entries.iter().any(|e| e.key == k);
            refuse_unexpected(weights, expected, "Open-MAGVIT2 AR model")?;
        }
        p.place_on(device);
        Self::build(config, device, &mut |key| p.take(key).map(Var::constant))
    }

    /// The trainable parameters of a checkpoint in f32, official names without `transformer.`.
    pub fn parameters(weights: &Weights, config: &ArConfig) -> Result<TrainParams> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let layout = Layout::of(weights);
        let mut p = Params::new(weights);
        let entries = config.entries();
        for e in &entries {
            p.insert(weights, &e.key, &layout.ar_key(&e.key), &e.shape, Use::F32)?;
        }
        trainable(&mut p, entries.into_iter().map(|e| e.key))
    }

    /// The model on one training step's tape.
    pub fn on_tape(config: ArConfig, params: &Tracked) -> Result<Self> {
        config.validate().map_err(|msg| Error::invalid("magvit2.on_tape", &[], msg))?;
        let shapes = config.entries().into_iter().map(|e| (e.key, e.shape)).collect();
        let device = params.get("norm.weight")?.value().device();
        Self::build(config, &device, &mut tracked_source("magvit2.on_tape", shapes, params))
    }

    /// The official initialisation: every linear and embedding N(0, 0.02²), RMSNorm weights 1,
    /// the two heads zero.
    pub fn initial_weights(config: &ArConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("magvit2.init", &[config.dim], msg))?;
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries() {
            let n: usize = e.shape.iter().product();
            let values = if e.key.ends_with("norm.weight") {
                vec![1.0; n]
            } else if e.key.starts_with("head.") {
                vec![0.0; n]
            } else {
                rng.normal(n).into_iter().map(|x| x * 0.02).collect()
            };
            tensors.push((e.key, Tensor::from_vec(values, &e.shape)?));
        }
        Weights::new("<initial Open-MAGVIT2 GPT>", tensors, Default::default())
    }

    fn build(config: ArConfig, device: &Device, take: Source) -> Result<Self> {
        let h = config.n_head;
        let spatial = (0..config.spatial_layers)
            .map(|i| Block::load(take, &format!("spatial_blocks.{i}"), h))
            .collect::<Result<_>>()?;
        let factorized = (0..config.factorized_layers)
            .map(|i| Block::load(take, &format!("factorized_blocks.{i}"), h))
            .collect::<Result<_>>()?;
        let (cos, sin) = rope_table(config.grid, config.head_dim())?;
        Ok(ArModel {
            pre_emb: take("pre_emb.weight")?,
            post_emb: take("post_emb.weight")?,
            class_emb: take("class_emb.embedding_table.weight")?,
            spatial,
            factorized,
            norm: take("norm.weight")?,
            heads: [take("head.0.weight")?, take("head.1.weight")?],
            rope: (cos.to_device(device)?, sin.to_device(device)?),
            config,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rows `start..start + n` of the rotary table.
    fn rope_rows(&self, start: usize, n: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.rope.0.narrow(0, start, n)?, self.rope.1.narrow(0, start, n)?))
    }

    /// Rows of an embedding table for ids (B, n) on the host, as f32 (B, n, D).
    fn lookup(&self, table: &Var, ids: &Tensor) -> Result<Var> {
        let e = embedding(table, &ids.to_device(&self.device)?)?;
        if e.value().dtype() == DType::F32 { Ok(e) } else { e.value().to_dtype(DType::F32).map(Var::constant) }
    }

    /// Class embeddings (B, 1, D) of `labels`; `class_num` is the null class.
    fn classes(&self, labels: &[usize]) -> Result<Var> {
        if let Some(&bad) = labels.iter().find(|&&l| l > self.config.class_num) {
            let n = self.config.class_num;
            return Err(Error::invalid(
                "magvit2.classes",
                &[bad],
                format!("class {bad} is out of range (0..{n}, {n} = null)"),
            ));
        }
        let ids = Tensor::from_vec(labels.iter().map(|&l| l as i64).collect(), &[labels.len(), 1])?;
        self.lookup(&self.class_emb, &ids)
    }

    /// Head `slot`'s logits of the factorized blocks' output `h` (…, D).
    fn head(&self, h: &Var, slot: usize) -> Result<Var> {
        linear(&rms_norm(h, Some(&self.norm), EPS)?, &self.heads[slot], None)
    }

    /// Teacher-forced logits of the sub-tokens `pre`, `post` (B, N) I64 of images of `labels`
    /// (already dropped to the null class where the trainer drops them); with `rng`, the
    /// official dropouts of training.
    pub fn teacher_forced(
        &self,
        labels: &[usize],
        pre: &Tensor,
        post: &Tensor,
        mut rng: Option<&mut Philox>,
    ) -> Result<Logits> {
        let n = self.config.tokens();
        let b = labels.len();
        if pre.shape() != [b, n] || post.shape() != [b, n] {
            return Err(Error::invalid(
                "magvit2.teacher_forced",
                pre.shape(),
                format!("expected sub-tokens ({b}, {n})"),
            ));
        }
        let tokens = add(&self.lookup(&self.pre_emb, pre)?, &self.lookup(&self.post_emb, post)?)?;
        let x = concat(&[&self.classes(labels)?, &tokens.narrow(1, 0, n - 1)?], 1)?;
        let mut h = dropout(&x, &mut rng)?;
        let rope = self.rope_rows(0, n)?;
        for block in &self.spatial {
            h = block.forward(&h, &rope, &mut KvCache::default(), &mut rng)?;
        }
        // Per position the pair [h_n, pre_emb[pre_n]], as B·N sequences of 2.
        let d = self.config.dim;
        let pre_emb = self.lookup(&self.pre_emb, pre)?;
        let pair = concat(&[&h.reshape(&[b * n, 1, d])?, &pre_emb.reshape(&[b * n, 1, d])?], 1)?;
        let rope2 = self.rope_rows(0, 2)?;
        let mut f = pair;
        for block in &self.factorized {
            f = block.forward(&f, &rope2, &mut KvCache::default(), &mut rng)?;
        }
        let slot = |i: usize| f.narrow(1, i, 1)?.reshape(&[b, n, d]);
        Ok(Logits { pre: self.head(&slot(0)?, 0)?, post: self.head(&slot(1)?, 1)? })
    }

    /// A fresh generation: empty caches, at the class position.
    pub fn session(&self) -> Session {
        Session { caches: self.spatial.iter().map(|_| KvCache::default()).collect(), len: 0 }
    }

    /// The spatial context of the next position: the class embeddings of `labels` at step 0,
    /// then the embedding of the previous token's sub-tokens (rows, 1) each; (rows, 1, D).
    pub fn context(
        &self,
        session: &mut Session,
        labels: &[usize],
        previous: Option<(&Tensor, &Tensor)>,
    ) -> Result<Var> {
        let step = session.len;
        if step >= self.config.tokens() || (step == 0) != previous.is_none() {
            return Err(Error::invalid("magvit2.context", &[step], "steps run in order, the class first"));
        }
        let mut x = match previous {
            None => self.classes(labels)?,
            Some((pre, post)) => add(&self.lookup(&self.pre_emb, pre)?, &self.lookup(&self.post_emb, post)?)?,
        };
        let rope = self.rope_rows(step, 1)?;
        for (block, cache) in self.spatial.iter().zip(&mut session.caches) {
            x = block.forward(&x, &rope, cache, &mut None)?;
        }
        session.len += 1;
        Ok(x)
    }

    /// The logits (rows, 2^f0) of the pre sub-token from the context `h` (rows, 1, D), and the
    /// factorized blocks' caches for the post sub-token.
    pub fn pre_logits(&self, h: &Var) -> Result<(Tensor, Vec<KvCache>)> {
        let mut caches: Vec<KvCache> = self.factorized.iter().map(|_| KvCache::default()).collect();
        let rope = self.rope_rows(0, 1)?;
        let mut f = h.clone();
        for (block, cache) in self.factorized.iter().zip(&mut caches) {
            f = block.forward(&f, &rope, cache, &mut None)?;
        }
        Ok((self.head(&f, 0)?.into_value().reshape(&[h.dim(0)?, self.config.vocab()[0]])?, caches))
    }

    /// The logits (rows, 2^f1) of the post sub-token given the sampled pre sub-tokens (rows, 1).
    pub fn post_logits(&self, caches: &mut [KvCache], pre: &Tensor) -> Result<Tensor> {
        let rope = self.rope_rows(1, 1)?;
        let mut f = self.lookup(&self.pre_emb, pre)?;
        for (block, cache) in self.factorized.iter().zip(caches.iter_mut()) {
            f = block.forward(&f, &rope, cache, &mut None)?;
        }
        self.head(&f, 1)?.into_value().reshape(&[pre.dim(0)?, self.config.vocab()[1]])
    }
}
