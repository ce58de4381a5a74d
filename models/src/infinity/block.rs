//! One transformer block run on the tokens of one scale: AdaLN-modulated self-attention
//! (L2-normalised q/k, per-head learned scale, 2-D RoPE) over the KV cache of all earlier
//! scales plus this one, cross-attention to the text, and a GELU-tanh FFN with a gate.
//!
//! Written once against `Var`, for every device: with constant weights nothing is recorded
//! (inference) and the fused ops run (the AdaLN modulation, the qkv → KV-cache pass, flash
//! attention on an executor); with tracked weights every op, the KV-cache concatenation
//! included, lands on the tape (training). The activations that feed a GEMM or attention are
//! written in the model's operand dtype: f32 on the CPU, bf16 on an accelerator, where the
//! residual stream stays f32.

use infinity_autograd::Var;
use infinity_autograd::adaln::{self, gated_residual};
use infinity_autograd::attention::{attention, packed_attention};
use infinity_autograd::elementwise::{add, affine, clamp, exp, gelu_tanh, mul};
use infinity_autograd::index::concat;
use infinity_autograd::matmul::{linear, linear_to};
use infinity_autograd::norm::l2_normalize;
use infinity_autograd::recompute::recomputed;
use infinity_autograd::rope::rope_interleaved;
use infinity_ops::attention::{Packing, QK_EPS, attention_inputs};
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::InfinityConfig;
use super::text::{Conditioning, split_kv, zero_k_bias};
use crate::params::Source;

pub(super) const EPS: f32 = 1e-6;

/// LN(x)·(1 + scale) + shift with LN over C without affine; `scale`/`shift` are (B, C); the
/// result in `out`.
pub(super) fn modulate(x: &Var, scale: &Var, shift: &Var, out: DType) -> Result<Var> {
    adaln::modulate(x, scale, shift, EPS, out)
}

/// Keys (normalised, rotated) and values of the scales so far: (B, H, tokens, hd) each.
pub enum KvCache {
    /// Allocated for a whole schedule and written in place, one scale after another, by the
    /// fused qkv → cache pass (inference, on every device).
    Filled { k: Tensor, v: Tensor, len: usize },
    /// Grown by a recorded concatenation per scale (training), so the gradient of a scale's
    /// keys collects the attention of every later scale.
    Recorded { k: Option<Var>, v: Option<Var> },
}

impl KvCache {
    /// A cache of `capacity` tokens for `rows` samples of `heads` heads of `hd`, in `dtype` on
    /// `device`.
    pub fn filled(
        rows: usize,
        heads: usize,
        capacity: usize,
        hd: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = [rows, heads, capacity, hd];
        Ok(KvCache::Filled {
            k: Tensor::zeros_on(&shape, dtype, device)?,
            v: Tensor::zeros_on(&shape, dtype, device)?,
            len: 0,
        })
    }

    pub fn recorded() -> Self {
        KvCache::Recorded { k: None, v: None }
    }

    /// Adds one scale from its qkv projection (B, n, 3, H, hd): returns the scale's queries
    /// (normalised, scaled per head, rotated; (B, H, n, hd)) and every key and value so far.
    fn append(&mut self, qkv: &Var, cos: &Tensor, sin: &Tensor, head_scale: &Var) -> Result<(Var, Var, Var)> {
        match self {
            KvCache::Filled { k, v, len } => {
                let heads = qkv.dim(3)?;
                let scale = head_scale.value().reshape(&[heads])?;
                let q = attention_inputs(qkv.value(), cos, sin, &scale, k, v, *len)?;
                *len += qkv.dim(1)?;
                let seen = |t: &Tensor| t.narrow(2, 0, *len).map(Var::constant);
                Ok((Var::constant(q), seen(k)?, seen(v)?))
            }
            KvCache::Recorded { k: k_all, v: v_all } => {
                // q, k and v as (B, H, n, hd), cut from (B, n, 3C): the gradients' copies stay
                // within the four dimensions the device kernels index.
                let (b, n, _, h, hd) = (qkv.dim(0)?, qkv.dim(1)?, qkv.dim(2)?, qkv.dim(3)?, qkv.dim(4)?);
                let rows = qkv.reshape(&[b, n, 3 * h * hd])?;
                let part =
                    |i: usize| rows.narrow(2, i * h * hd, h * hd)?.reshape(&[b, n, h, hd])?.permute(&[0, 2, 1, 3]);
                let q = mul(&l2_normalize(&part(0)?, QK_EPS)?, head_scale)?;
                let k = l2_normalize(&part(1)?, QK_EPS)?;
                let (q, k) = (rope_interleaved(&q, cos, sin)?, rope_interleaved(&k, cos, sin)?);
                let joined = |old: &mut Option<Var>, new: Var| -> Result<Var> {
                    let all = match old.take() {
                        Some(o) => concat(&[&o, &new], 2)?,
                        None => new,
                    };
                    *old = Some(all.clone());
                    Ok(all)
                };
                let k = joined(k_all, k)?;
                let v = joined(v_all, part(2)?.contiguous()?)?;
                Ok((q, k, v))
            }
        }
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        match self {
            KvCache::Filled { len, .. } => *len,
            KvCache::Recorded { k, .. } => k.as_ref().map_or(0, |k| k.shape()[2]),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A block's cross-attention keys and values of the text memory: (ΣLᵢ, H, hd) each.
pub struct TextKv {
    pub(super) k: Var,
    pub(super) v: Var,
}

/// The block's parameters; the derived ones (joined biases, per-head scale) are computed
/// from the stored ones with `Var` ops once per model build, so in training their gradients
/// reach the stored parameters.
pub(super) struct Block {
    /// (6, C).
    pub(super) ada_gss: Var,
    pub(super) qkv_w: Var,
    /// `[q_bias | 0 | v_bias]`.
    pub(super) qkv_b: Var,
    /// exp(min(scale_mul, ln 100)) per head, shaped (1, H, 1, 1).
    pub(super) head_scale: Var,
    pub(super) proj_w: Var,
    pub(super) proj_b: Var,
    pub(super) ca_q_w: Var,
    pub(super) ca_q_b: Var,
    pub(super) ca_kv_w: Var,
    pub(super) ca_kv_b: Var,
    pub(super) ca_proj_w: Var,
    pub(super) ca_proj_b: Var,
    /// The cross-attention LayerNorm's affine as an AdaLN modulation: weight − 1 and bias.
    pub(super) ca_norm_scale: Var,
    pub(super) ca_norm_b: Var,
    pub(super) fc1_w: Var,
    pub(super) fc1_b: Var,
    pub(super) fc2_w: Var,
    pub(super) fc2_b: Var,
    pub(super) heads: usize,
    /// The dtype of GEMM and attention operands (see the module header).
    pub(super) operand: DType,
}

impl Block {
    pub(super) fn load(take: Source, c: &InfinityConfig, i: usize, operand: DType) -> Result<Self> {
        let pre = c.block_prefix(i);
        let mut t = |name: &str| take(&format!("{pre}{name}"));
        let q_bias = t("sa.q_bias")?;
        let zeros = Var::constant(Tensor::zeros_on(q_bias.shape(), DType::F32, &q_bias.value().device())?);
        let qkv_b = concat(&[&q_bias, &zeros, &t("sa.v_bias")?], 0)?;
        Ok(Block {
            ada_gss: t("ada_gss")?.reshape(&[6, c.embed_dim])?,
            qkv_w: t("sa.mat_qkv.weight")?,
            qkv_b,
            head_scale: exp(&clamp(&t("sa.scale_mul_1H11")?, f32::NEG_INFINITY, 100f32.ln())?)?,
            proj_w: t("sa.proj.weight")?,
            proj_b: t("sa.proj.bias")?,
            ca_q_w: t("ca.mat_q.weight")?,
            ca_q_b: t("ca.mat_q.bias")?,
            ca_kv_w: t("ca.mat_kv.weight")?,
            ca_kv_b: zero_k_bias(&t("ca.v_bias")?)?,
            ca_proj_w: t("ca.proj.weight")?,
            ca_proj_b: t("ca.proj.bias")?,
            ca_norm_scale: affine(&t("ca_norm.weight")?, 1.0, -1.0)?,
            ca_norm_b: t("ca_norm.bias")?,
            fc1_w: t("ffn.fc1.weight")?,
            fc1_b: t("ffn.fc1.bias")?,
            fc2_w: t("ffn.fc2.weight")?,
            fc2_b: t("ffn.fc2.bias")?,
            heads: c.num_heads,
            operand,
        })
    }

    /// Projects the text memory into this block's cross-attention keys and values.
    pub(super) fn text_kv(&self, memory: &Var) -> Result<TextKv> {
        let (k, v) = split_kv(
            &linear_to(&memory.unsqueeze(1)?, &self.ca_kv_w, Some(&self.ca_kv_b), self.operand)?.squeeze(1)?,
            self.heads,
        )?;
        Ok(TextKv { k, v })
    }

    /// The block's AdaLN table for a batch, ada_gss + G: (B, 6, C), rows [gamma1, gamma2,
    /// scale1, scale2, shift1, shift2]; made once per batch, read by every scale.
    pub(super) fn ada(&self, cond: &Conditioning) -> Result<Var> {
        add(&cond.ada, &self.ada_gss)
    }

    /// The tokens `x` (B, L, C) of every scale of a sequence (`lens` tokens each, `tables` their
    /// RoPE angles) through the block, one scale after another over one KV cache, as
    /// [`Block::forward`] runs them. Training runs the blocks one after another this way, so
    /// that a block's whole work can be recomputed from its input alone: with `recompute` (and
    /// anything tracked) the block is recorded as one node that keeps only its inputs (`x`, the
    /// batch's AdaLN table and text K/V, the block's weights) and recomputes its activations in
    /// the backward pass — activation checkpointing per block.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_sequence(
        &self,
        x: &Var,
        packing: &Packing,
        ada: &Var,
        text_kv: &TextKv,
        lens: &[usize],
        tables: &[(Tensor, Tensor)],
        recompute: bool,
    ) -> Result<Var> {
        if recompute {
            let weights = self.forward_weights();
            let inputs: Vec<&Var> = [x, ada, &text_kv.k, &text_kv.v].into_iter().chain(weights).collect();
            // The closure outlives this call on the tape: it keeps constants only (a tracked
            // clone would hold the tape that holds the closure).
            let shell = self.with_forward_weights(&self.forward_weights().map(Var::detach))?;
            let (packing, lens, tables) = (packing.clone(), lens.to_vec(), tables.to_vec());
            return recomputed("infinity.block", &inputs, move |v| {
                let block = shell.with_forward_weights(&v[4..])?;
                let text_kv = TextKv { k: v[2].clone(), v: v[3].clone() };
                block.forward_sequence(&v[0], &packing, &v[1], &text_kv, &lens, &tables, false)
            });
        }
        let (b, l) = (x.dim(0)?, x.dim(1)?);
        let mut cache = if x.is_tracked() || self.qkv_w.is_tracked() {
            KvCache::recorded()
        } else {
            let hd = x.dim(2)? / self.heads;
            KvCache::filled(b, self.heads, l, hd, self.operand, &x.value().device())?
        };
        let mut start = 0;
        let mut out = Vec::with_capacity(lens.len());
        for (&n, (cos, sin)) in lens.iter().zip(tables) {
            out.push(self.forward(&x.narrow(1, start, n)?, packing, ada, text_kv, &mut cache, cos, sin)?);
            start += n;
        }
        concat(&out.iter().collect::<Vec<_>>(), 1)
    }

    /// The weights [`Block::forward`] reads, in the order [`Block::with_forward_weights`] takes.
    fn forward_weights(&self) -> [&Var; 15] {
        [
            &self.qkv_w,
            &self.qkv_b,
            &self.head_scale,
            &self.proj_w,
            &self.proj_b,
            &self.ca_q_w,
            &self.ca_q_b,
            &self.ca_proj_w,
            &self.ca_proj_b,
            &self.ca_norm_scale,
            &self.ca_norm_b,
            &self.fc1_w,
            &self.fc1_b,
            &self.fc2_w,
            &self.fc2_b,
        ]
    }

    /// This block with the weights [`Block::forward`] reads replaced by `w` (in
    /// [`Block::forward_weights`] order); the rest detached.
    fn with_forward_weights(&self, w: &[Var]) -> Result<Block> {
        let [
            qkv_w,
            qkv_b,
            head_scale,
            proj_w,
            proj_b,
            ca_q_w,
            ca_q_b,
            ca_proj_w,
            ca_proj_b,
            ca_norm_scale,
            ca_norm_b,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        ] = <&[Var; 15]>::try_from(w)
            .map_err(|_| Error::invalid("infinity.block", &[w.len()], "expected 15 weights"))?;
        let var = |v: &Var| v.clone();
        Ok(Block {
            ada_gss: self.ada_gss.detach(),
            qkv_w: var(qkv_w),
            qkv_b: var(qkv_b),
            head_scale: var(head_scale),
            proj_w: var(proj_w),
            proj_b: var(proj_b),
            ca_q_w: var(ca_q_w),
            ca_q_b: var(ca_q_b),
            ca_kv_w: self.ca_kv_w.detach(),
            ca_kv_b: self.ca_kv_b.detach(),
            ca_proj_w: var(ca_proj_w),
            ca_proj_b: var(ca_proj_b),
            ca_norm_scale: var(ca_norm_scale),
            ca_norm_b: var(ca_norm_b),
            fc1_w: var(fc1_w),
            fc1_b: var(fc1_b),
            fc2_w: var(fc2_w),
            fc2_b: var(fc2_b),
            heads: self.heads,
            operand: self.operand,
        })
    }

    /// `x` (B, n, C): the tokens of one scale; `ada` the batch's table ([`Block::ada`]);
    /// `cos`/`sin` (n, hd/2) the tokens' RoPE angles, on the model's device.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        x: &Var,
        packing: &Packing,
        ada: &Var,
        text_kv: &TextKv,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Var> {
        let (b, n, c) = (x.dim(0)?, x.dim(1)?, x.dim(2)?);
        let (hd, operand) = (c / self.heads, self.operand);
        let row = |i: usize| ada.narrow(1, i, 1).and_then(|r| r.squeeze(1));
        let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (row(0)?, row(1)?, row(2)?, row(3)?, row(4)?, row(5)?);

        // Self-attention: softmax scale 1 on unit q/k, q carrying the learned per-head scale.
        let a = modulate(x, &scale1, &shift1, operand)?;
        let qkv = linear_to(&a, &self.qkv_w, Some(&self.qkv_b), operand)?.reshape(&[b, n, 3, self.heads, hd])?;
        let (q, k_all, v_all) = cache.append(&qkv, cos, sin, &self.head_scale)?;
        let o = attention(&q, &k_all, &v_all, None, 1.0)?.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let x = gated_residual(x, &linear(&o, &self.proj_w, Some(&self.proj_b))?, &gamma1)?;

        // Cross-attention to the sample's own text; no gate, and the LayerNorm's affine is
        // the same for every sample.
        let rows = |t: &Var| t.unsqueeze(0)?.broadcast_to(&[b, c]);
        let h = modulate(&x, &rows(&self.ca_norm_scale)?, &rows(&self.ca_norm_b)?, operand)?;
        let q = linear_to(&h, &self.ca_q_w, Some(&self.ca_q_b), operand)?
            .reshape(&[b, n, self.heads, hd])?
            .permute(&[0, 2, 1, 3])?;
        let o = packed_attention(&q, &text_kv.k, &text_kv.v, packing, 1.0 / (hd as f32).sqrt())?;
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let x = add(&x, &linear(&o, &self.ca_proj_w, Some(&self.ca_proj_b))?)?;

        // FFN with the second gate; its hidden layer (4C wide) is in the operand dtype.
        let f = modulate(&x, &scale2, &shift2, operand)?;
        let f = gelu_tanh(&linear_to(&f, &self.fc1_w, Some(&self.fc1_b), operand)?)?;
        gated_residual(&x, &linear(&f, &self.fc2_w, Some(&self.fc2_b))?, &gamma2)
    }
}
