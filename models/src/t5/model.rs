//! The T5 encoder forward pass: token embedding, pre-RMSNorm blocks of unscaled self-attention
//! with a relative position bias (the table of block 0, shared by every block) and a gated
//! tanh-GELU FFN, then a final RMSNorm.
//!
//! Prompts run on their valid tokens only (ids ending with EOS, no padding): with the
//! reference's padding masked out, the valid rows do not depend on it. A batch is packed along
//! the token axis, so the projections run once over all prompts while each prompt attends to
//! its own tokens.

use std::path::Path;

use infinity_ops::attention::attention;
use infinity_ops::elementwise::{add, gelu_tanh, mul};
use infinity_ops::index::{concat, embedding};
use infinity_ops::matmul::linear;
use infinity_ops::norm::rms_norm;
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::config::T5Config;
use super::params::{gather, open_checkpoint};
use crate::params::Params;

pub struct T5Encoder {
    pub config: T5Config,
    /// (vocab, d_model).
    embed: Tensor,
    /// (num_buckets, num_heads), row-major: block 0's relative position bias, used by all blocks.
    bias_table: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Tensor,
}

struct Layer {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    wi_0: Tensor,
    wi_1: Tensor,
    wo: Tensor,
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
        Self::with_weights(&open_checkpoint(path.as_ref())?, config)
    }

    pub fn with_weights(weights: &Weights, config: T5Config) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = gather(weights, &config)?;
        let layers = (0..config.num_layers).map(|i| Layer::load(&mut p, i)).collect::<Result<_>>()?;
        Ok(T5Encoder {
            embed: p.take("shared.weight")?,
            bias_table: p
                .take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?
                .to_vec::<f32>()?,
            layers,
            final_norm: p.take("encoder.final_layer_norm.weight")?,
            config,
        })
    }

    /// Random weights (normals scaled by 1/√fan-in, unit norm weights), for benchmarks and tests.
    pub fn random(config: T5Config, seed: u64) -> Result<Self> {
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries().into_iter().filter(|e| e.alias_of.is_none()) {
            let n: usize = e.shape.iter().product();
            let values = if e.shape.len() == 1 {
                vec![1.0; n]
            } else {
                let scale = 1.0 / (e.shape[1] as f32).sqrt();
                rng.normal(n).into_iter().map(|x| x * scale).collect()
            };
            tensors.push((e.key, Tensor::from_vec::<f32>(values, &e.shape)?));
        }
        Self::with_weights(&Weights::new("<random T5>", tensors, Default::default())?, config)
    }

    /// The last hidden state (L, d_model) of one prompt's tokens (content ids then EOS).
    pub fn encode(&self, ids: &[u32]) -> Result<Tensor> {
        self.forward(ids, &[ids.len()])
    }

    /// The last hidden state (Lᵢ, d_model) of each prompt, computed on its own tokens.
    pub fn encode_batch(&self, prompts: &[&[u32]]) -> Result<Vec<Tensor>> {
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
    fn forward(&self, ids: &[u32], lens: &[usize]) -> Result<Tensor> {
        if lens.contains(&0) {
            return Err(Error::invalid("t5.encode", lens, "every prompt needs at least one token (its EOS)"));
        }
        let ids = Tensor::from_vec(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), &[ids.len()])?;
        let mut x = embedding(&self.embed, &ids)?.to_dtype(DType::F32);
        let biases = lens.iter().map(|&len| self.position_bias(len)).collect::<Result<Vec<_>>>()?;
        for layer in &self.layers {
            x = layer.forward(&x, lens, &biases, &self.config)?;
        }
        rms_norm(&x, Some(&self.final_norm), self.config.layer_norm_epsilon)
    }

    /// The additive attention bias (1, heads, len, len) of a prompt of `len` tokens: entry
    /// (h, i, j) is the table's row for the bucket of j − i, column h.
    fn position_bias(&self, len: usize) -> Result<Tensor> {
        let c = &self.config;
        let heads = c.num_heads;
        // Buckets depend on j − i only: one per relative position 1 − len ..= len − 1.
        let buckets: Vec<usize> = (1 - len as i64..len as i64)
            .map(|r| relative_position_bucket(r, c.relative_attention_num_buckets, c.relative_attention_max_distance))
            .collect();
        let mut bias = vec![0f32; heads * len * len];
        for (h, plane) in bias.chunks_mut(len * len).enumerate() {
            for (i, row) in plane.chunks_mut(len).enumerate() {
                for (j, b) in row.iter_mut().enumerate() {
                    *b = self.bias_table[buckets[j + len - 1 - i] * heads + h];
                }
            }
        }
        Tensor::from_vec(bias, &[1, heads, len, len])
    }
}

impl Layer {
    fn load(p: &mut Params, i: usize) -> Result<Self> {
        let attn = format!("encoder.block.{i}.layer.0.SelfAttention");
        let ffn = format!("encoder.block.{i}.layer.1.DenseReluDense");
        Ok(Layer {
            attn_norm: p.take(&format!("encoder.block.{i}.layer.0.layer_norm.weight"))?,
            q: p.take(&format!("{attn}.q.weight"))?,
            k: p.take(&format!("{attn}.k.weight"))?,
            v: p.take(&format!("{attn}.v.weight"))?,
            o: p.take(&format!("{attn}.o.weight"))?,
            ffn_norm: p.take(&format!("encoder.block.{i}.layer.1.layer_norm.weight"))?,
            wi_0: p.take(&format!("{ffn}.wi_0.weight"))?,
            wi_1: p.take(&format!("{ffn}.wi_1.weight"))?,
            wo: p.take(&format!("{ffn}.wo.weight"))?,
        })
    }

    /// One block on packed tokens `x` (N, d_model): each prompt (a run of `lens`) attends to its
    /// own tokens with its own position bias.
    fn forward(&self, x: &Tensor, lens: &[usize], biases: &[Tensor], c: &T5Config) -> Result<Tensor> {
        let h = rms_norm(x, Some(&self.attn_norm), c.layer_norm_epsilon)?;
        let (q, k, v) = (linear(&h, &self.q, None)?, linear(&h, &self.k, None)?, linear(&h, &self.v, None)?);
        let mut outs = Vec::with_capacity(lens.len());
        let mut offset = 0;
        for (&len, bias) in lens.iter().zip(biases) {
            // (len, heads·d_kv) rows of this prompt → (1, heads, len, d_kv).
            let heads = |t: &Tensor| {
                t.narrow(0, offset, len)?.reshape(&[len, c.num_heads, c.d_kv])?.permute(&[1, 0, 2])?.unsqueeze(0)
            };
            // T5 does not scale the scores by 1/√d_kv: its initialisation accounts for it.
            let a = attention(&heads(&q)?, &heads(&k)?, &heads(&v)?, Some(bias), 1.0)?;
            outs.push(a.squeeze(0)?.permute(&[1, 0, 2])?.reshape(&[len, c.inner_dim()])?);
            offset += len;
        }
        let attended = concat(&outs.iter().collect::<Vec<_>>(), 0)?;
        let x = add(x, &linear(&attended, &self.o, None)?)?;
        let h = rms_norm(&x, Some(&self.ffn_norm), c.layer_norm_epsilon)?;
        let gated = mul(&gelu_tanh(&linear(&h, &self.wi_0, None)?)?, &linear(&h, &self.wi_1, None)?)?;
        add(&x, &linear(&gated, &self.wo, None)?)
    }
}
