//! The T5 encoder forward pass: token embedding, pre-RMSNorm blocks of unscaled self-attention
//! with a relative position bias (the table of block 0, shared by every block) and a gated
//! tanh-GELU FFN, then a final RMSNorm.
//!
//! Prompts run on their valid tokens only (ids ending with EOS, no padding): with the
//! reference's padding masked out, the valid rows do not depend on it. A batch is packed along
//! the token axis, so the projections run once over all prompts while each prompt attends to
//! its own tokens.
//!
//! The layers hold `Var`s and the forward is written once against them (as the transformer
//! and the BitVAE are): with constant weights it is inference and records nothing, on the CPU
//! or an accelerator ([`T5Encoder::open_on`]: GEMM operands bf16, the rest f32); built from a
//! training tape's leaves ([`T5Encoder::on_tape`]) the encoder trains with the transformer.

use std::collections::HashMap;
use std::path::Path;

use infinity_autograd::elementwise::{add, gelu_tanh, mul};
use infinity_autograd::index::{concat, embedding};
use infinity_autograd::matmul::{linear_rows, matmul};
use infinity_autograd::norm::rms_norm;
use infinity_autograd::reduce::softmax;
use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::T5Config;
use super::params::{gather, open_checkpoint};
use crate::params::{Source, tracked_source, trainable};

pub struct T5Encoder {
    pub config: T5Config,
    /// (vocab, d_model).
    embed: Var,
    /// (num_buckets, num_heads): block 0's relative position bias, used by all blocks.
    bias_table: Var,
    layers: Vec<Layer>,
    final_norm: Var,
}

struct Layer {
    attn_norm: Var,
    q: Var,
    k: Var,
    v: Var,
    o: Var,
    ffn_norm: Var,
    wi_0: Var,
    wi_1: Var,
    wo: Var,
}

/// T5's bucket (`_relative_position_bucket`, bidirectional) of `relative_position` = key
/// position − query position. Each direction gets half the buckets, keys after the query the
/// upper half. Within a half, distances below max_exact = half/2 have a bucket each; longer
/// ones share log-spaced buckets reaching `max_distance`, and everything beyond falls into the
/// half's last bucket.
///
/// The log step is evaluated in f32 in the reference's order (the n/max_exact quotient, its ln,
/// the division by the f32-rounded ln(max_distance/max_exact), the scaling, truncation), so
/// the distances where the exact value is an integer (n = 16, 32, 64 for flan-t5) land in the
/// same bucket as in the reference.
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let step = (n as f32 / max_exact as f32).ln() / log_range * (half - max_exact) as f32;
    base + (max_exact + step as usize).min(half - 1)
}

impl T5Encoder {
    /// Loads the encoder from a `.safetensors`/`.pth` file, a sharded checkpoint's
    /// `*.index.json`, or a Hugging Face folder holding either form.
    pub fn open(path: impl AsRef<Path>, config: T5Config) -> Result<Self> {
        Self::open_on(path, config, &Device::Cpu)
    }

    /// [`T5Encoder::open`] with the weights loaded onto `device`, where the encoder then runs.
    pub fn open_on(path: impl AsRef<Path>, config: T5Config, device: &Device) -> Result<Self> {
        Self::with_weights_on(&open_checkpoint(path.as_ref())?, config, device)
    }

    pub fn with_weights(weights: &Weights, config: T5Config) -> Result<Self> {
        Self::with_weights_on(weights, config, &Device::Cpu)
    }

    pub fn with_weights_on(weights: &Weights, config: T5Config, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = gather(weights, &config)?;
        p.place_on(device);
        Self::build(config, &mut |key| p.take(key).map(Var::constant))
    }

    /// The trainable parameters of a checkpoint in f32, under their Hugging Face names with
    /// `prefix` before each (so they can share one set with the transformer's).
    pub fn parameters(weights: &Weights, config: &T5Config, prefix: &str) -> Result<TrainParams> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = gather(weights, config)?;
        let keys: Vec<String> = own_entries(config).map(|(key, _)| key).collect();
        let params = trainable(&mut p, keys.iter().cloned())?;
        TrainParams::new(
            params
                .iter()
                .map(|(key, t)| Ok((format!("{prefix}{key}"), t.to_dtype(DType::F32)?)))
                .collect::<Result<_>>()?,
        )
    }

    /// The encoder on one training step's tape: every parameter is the tracked leaf named
    /// `prefix` + its Hugging Face key (as [`T5Encoder::parameters`] names them).
    pub fn on_tape(config: T5Config, params: &Tracked, prefix: &str) -> Result<Self> {
        config.validate().map_err(|msg| Error::invalid("t5.on_tape", &[], msg))?;
        let shapes: HashMap<String, Vec<usize>> =
            own_entries(&config).map(|(key, shape)| (format!("{prefix}{key}"), shape)).collect();
        let mut tracked = tracked_source("t5.on_tape", shapes, params);
        Self::build(config, &mut |key| tracked(&format!("{prefix}{key}")))
    }

    fn build(config: T5Config, take: Source) -> Result<Self> {
        let layers = (0..config.num_layers).map(|i| Layer::load(take, i)).collect::<Result<_>>()?;
        Ok(T5Encoder {
            embed: take("shared.weight")?,
            bias_table: take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?,
            layers,
            final_norm: take("encoder.final_layer_norm.weight")?,
            config,
        })
    }

    /// Random weights as Hugging Face initialises T5 (the initialisation for training from
    /// scratch; also for benchmarks and tests): normals with std 1 for the embedding,
    /// (d_model·d_kv)^−½ for the queries (T5 leaves its scores unscaled), d_model^−½ for keys,
    /// values, the position bias and the FFN input, (heads·d_kv)^−½ for the attention output,
    /// d_ff^−½ for the FFN output; norm weights 1.
    pub fn random_weights(config: &T5Config, seed: u64) -> Result<Weights> {
        let mut rng = Philox::new(seed);
        let (d, kv, ff) = (config.d_model as f32, config.d_kv as f32, config.d_ff as f32);
        let mut tensors = Vec::new();
        for (key, shape) in own_entries(config) {
            let n: usize = shape.iter().product();
            let std = if key.ends_with("layer_norm.weight") {
                None
            } else if key == "shared.weight" {
                Some(1.0)
            } else if key.ends_with(".q.weight") {
                Some((d * kv).powf(-0.5))
            } else if key.ends_with(".o.weight") {
                Some((config.num_heads as f32 * kv).powf(-0.5))
            } else if key.ends_with(".wo.weight") {
                Some(ff.powf(-0.5))
            } else {
                Some(d.powf(-0.5))
            };
            let values = match std {
                None => vec![1.0; n],
                Some(std) => rng.normal(n).into_iter().map(|x| x * std).collect(),
            };
            tensors.push((key, Tensor::from_vec::<f32>(values, &shape)?));
        }
        Weights::new("<random T5>", tensors, Default::default())
    }

    /// The encoder on [`T5Encoder::random_weights`].
    pub fn random(config: T5Config, seed: u64) -> Result<Self> {
        Self::with_weights(&Self::random_weights(&config, seed)?, config)
    }

    /// The last hidden state (L, d_model), on the encoder's device, of one prompt's tokens
    /// (content ids then EOS).
    pub fn encode(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.forward(ids, &[ids.len()])?.into_value())
    }

    /// The last hidden state (Lᵢ, d_model) of each prompt, computed on its own tokens.
    pub fn encode_batch(&self, prompts: &[&[u32]]) -> Result<Vec<Tensor>> {
        Ok(self.encode_vars(prompts)?.into_iter().map(Var::into_value).collect())
    }

    /// [`T5Encoder::encode_batch`] on `Var`s: tracked when the encoder is on a tape.
    pub fn encode_vars(&self, prompts: &[&[u32]]) -> Result<Vec<Var>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let ids = prompts.concat();
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let hidden = self.forward(&ids, &lens)?;
        let mut offset = 0;
        lens.iter()
            .map(|&len| {
                offset += len;
                hidden.narrow(0, offset - len, len)
            })
            .collect()
    }

    /// Encodes packed prompts (`ids` split into runs of `lens`) → (Σ lens, d_model).
    fn forward(&self, ids: &[u32], lens: &[usize]) -> Result<Var> {
        if lens.contains(&0) {
            return Err(Error::invalid("t5.encode", lens, "every prompt needs at least one token (its EOS)"));
        }
        let ids = Tensor::from_vec(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), &[ids.len()])?;
        let x = embedding(&self.embed, &ids.to_device(&self.embed.value().device())?)?;
        // A half-precision table is only ever a stored constant (training widens to f32).
        let mut x = if x.value().dtype() == DType::F32 { x } else { Var::constant(x.value().to_dtype(DType::F32)?) };
        let biases =
            lens.iter().map(|&len| position_bias(&self.bias_table, &self.config, len)).collect::<Result<Vec<_>>>()?;
        for layer in &self.layers {
            x = layer.forward(&x, lens, &biases, &self.config)?;
        }
        rms_norm(&x, Some(&self.final_norm), self.config.layer_norm_epsilon)
    }
}

/// The additive attention bias (heads, len, len) of a prompt of `len` tokens from the bias
/// `table` (num_buckets, heads): entry (h, i, j) is the table's row for the bucket of j − i,
/// column h.
fn position_bias(table: &Var, c: &T5Config, len: usize) -> Result<Var> {
    let mut buckets = Vec::with_capacity(len * len);
    for i in 0..len as i64 {
        for j in 0..len as i64 {
            let bucket =
                relative_position_bucket(j - i, c.relative_attention_num_buckets, c.relative_attention_max_distance);
            buckets.push(bucket as i64);
        }
    }
    let buckets = Tensor::from_vec(buckets, &[len * len])?.to_device(&table.value().device())?;
    let rows = embedding(table, &buckets)?;
    rows.reshape(&[len, len, c.num_heads])?.permute(&[2, 0, 1])
}

/// The encoder's own entries (the tied embedding under its first name only), as (key, shape).
fn own_entries(config: &T5Config) -> impl Iterator<Item = (String, Vec<usize>)> {
    config.entries().into_iter().filter(|e| e.alias_of.is_none()).map(|e| (e.key, e.shape))
}

impl Layer {
    fn load(take: Source, i: usize) -> Result<Self> {
        let attn = format!("encoder.block.{i}.layer.0.SelfAttention");
        let ffn = format!("encoder.block.{i}.layer.1.DenseReluDense");
        Ok(Layer {
            attn_norm: take(&format!("encoder.block.{i}.layer.0.layer_norm.weight"))?,
            q: take(&format!("{attn}.q.weight"))?,
            k: take(&format!("{attn}.k.weight"))?,
            v: take(&format!("{attn}.v.weight"))?,
            o: take(&format!("{attn}.o.weight"))?,
            ffn_norm: take(&format!("encoder.block.{i}.layer.1.layer_norm.weight"))?,
            wi_0: take(&format!("{ffn}.wi_0.weight"))?,
            wi_1: take(&format!("{ffn}.wi_1.weight"))?,
            wo: take(&format!("{ffn}.wo.weight"))?,
        })
    }

    /// One block on packed tokens `x` (N, d_model): each prompt (a run of `lens`) attends to its
    /// own tokens with its own position bias. Prompts are short, so the scores are formed
    /// whole, which lets the position bias learn.
    fn forward(&self, x: &Var, lens: &[usize], biases: &[Var], c: &T5Config) -> Result<Var> {
        let h = rms_norm(x, Some(&self.attn_norm), c.layer_norm_epsilon)?;
        let (q, k, v) =
            (linear_rows(&h, &self.q, None)?, linear_rows(&h, &self.k, None)?, linear_rows(&h, &self.v, None)?);
        let mut outs = Vec::with_capacity(lens.len());
        let mut offset = 0;
        for (&len, bias) in lens.iter().zip(biases) {
            // (len, heads·d_kv) rows of this prompt → (heads, len, d_kv).
            let heads = |t: &Var| t.narrow(0, offset, len)?.reshape(&[len, c.num_heads, c.d_kv])?.permute(&[1, 0, 2]);
            // T5 does not scale the scores by 1/√d_kv: its initialisation accounts for it.
            let scores = add(&matmul(&heads(&q)?, &heads(&k)?.transpose(1, 2)?)?, bias)?;
            let a = matmul(&softmax(&scores, 2)?, &heads(&v)?)?;
            outs.push(a.permute(&[1, 0, 2])?.reshape(&[len, c.inner_dim()])?);
            offset += len;
        }
        let attended = concat(&outs.iter().collect::<Vec<_>>(), 0)?;
        let x = add(x, &linear_rows(&attended, &self.o, None)?)?;
        let h = rms_norm(&x, Some(&self.ffn_norm), c.layer_norm_epsilon)?;
        let gated = mul(&gelu_tanh(&linear_rows(&h, &self.wi_0, None)?)?, &linear_rows(&h, &self.wi_1, None)?)?;
        add(&x, &linear_rows(&gated, &self.wo, None)?)
    }
}
