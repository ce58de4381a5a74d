//! One transformer block run on the tokens of one scale: AdaLN-modulated self-attention
//! (L2-normalised q/k, per-head learned scale, 2-D RoPE) over the KV cache of all earlier
//! scales plus this one, cross-attention to the text, and a GELU-tanh FFN with a gate.
//!
//! Written against `Var`: with constant weights nothing is recorded (inference); with tracked
//! weights every op, the KV-cache concatenation included, lands on the tape (training).

use infinity_autograd::Var;
use infinity_autograd::adaln::{self, gated_residual};
use infinity_autograd::attention::attention;
use infinity_autograd::elementwise::{add, clamp, exp, gelu_tanh, mul};
use infinity_autograd::index::concat;
use infinity_autograd::matmul::linear;
use infinity_autograd::norm::{l2_normalize, layer_norm};
use infinity_autograd::rope::rope_interleaved;
use infinity_runtime::{DType, Result, Tensor};

use super::config::InfinityConfig;
use super::text::{Conditioning, packed_attention, split_kv, zero_k_bias};
use crate::params::Source;

pub(super) const EPS: f32 = 1e-6;
/// q/k normalisation floor (F.normalize's default).
const QK_EPS: f32 = 1e-12;

/// LN(x)·(1 + scale) + shift with LN over C without affine; `scale`/`shift` are (B, C).
pub(super) fn modulate(x: &Var, scale: &Var, shift: &Var) -> Result<Var> {
    adaln::modulate(x, scale, shift, EPS)
}

/// Keys and values of earlier scales, already normalised and rotated: (B, H, tokens, hd).
#[derive(Default)]
pub struct KvCache {
    k: Option<Var>,
    v: Option<Var>,
}

impl KvCache {
    /// Appends one scale's keys and values; the concatenation is a recorded op, so in training
    /// the gradient of a scale's keys collects the attention of every later scale.
    fn append(&mut self, k: Var, v: Var) -> Result<(Var, Var)> {
        let joined = |old: &Option<Var>, new: Var| match old {
            Some(o) => concat(&[o, &new], 2),
            None => Ok(new),
        };
        let (k, v) = (joined(&self.k, k)?, joined(&self.v, v)?);
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.shape()[2])
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
    pub(super) ca_norm_w: Var,
    pub(super) ca_norm_b: Var,
    pub(super) fc1_w: Var,
    pub(super) fc1_b: Var,
    pub(super) fc2_w: Var,
    pub(super) fc2_b: Var,
    pub(super) heads: usize,
}

impl Block {
    pub(super) fn load(take: Source, c: &InfinityConfig, i: usize) -> Result<Self> {
        let pre = c.block_prefix(i);
        let mut t = |name: &str| take(&format!("{pre}{name}"));
        let q_bias = t("sa.q_bias")?;
        let zeros = Var::constant(Tensor::zeros(q_bias.shape(), DType::F32));
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
            ca_norm_w: t("ca_norm.weight")?,
            ca_norm_b: t("ca_norm.bias")?,
            fc1_w: t("ffn.fc1.weight")?,
            fc1_b: t("ffn.fc1.bias")?,
            fc2_w: t("ffn.fc2.weight")?,
            fc2_b: t("ffn.fc2.bias")?,
            heads: c.num_heads,
        })
    }

    /// Projects the text memory into this block's cross-attention keys and values.
    pub(super) fn text_kv(&self, memory: &Var) -> Result<TextKv> {
        let (k, v) = split_kv(&linear(memory, &self.ca_kv_w, Some(&self.ca_kv_b))?, self.heads)?;
        Ok(TextKv { k, v })
    }

    /// `x` (B, n, C): the tokens of one scale; `cos`/`sin` (n, hd/2) their RoPE angles.
    pub(super) fn forward(
        &self,
        x: &Var,
        cond: &Conditioning,
        text_kv: &TextKv,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Var> {
        let (b, n, c) = (x.dim(0)?, x.dim(1)?, x.dim(2)?);
        let hd = c / self.heads;
        // P = ada_gss + G, rows [gamma1, gamma2, scale1, scale2, shift1, shift2], each (B, C).
        let p = add(&cond.ada, &self.ada_gss)?;
        let row = |i: usize| p.narrow(1, i, 1).and_then(|r| r.squeeze(1));
        let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (row(0)?, row(1)?, row(2)?, row(3)?, row(4)?, row(5)?);

        // Self-attention: softmax scale 1 on unit q/k, q carrying the learned per-head scale.
        let a = modulate(x, &scale1, &shift1)?;
        let qkv = linear(&a, &self.qkv_w, Some(&self.qkv_b))?
            .reshape(&[b, n, 3, self.heads, hd])?
            .permute(&[2, 0, 3, 1, 4])?;
        let part = |i: usize| qkv.narrow(0, i, 1).and_then(|t| t.squeeze(0));
        let q = mul(&l2_normalize(&part(0)?, QK_EPS)?, &self.head_scale)?;
        let k = l2_normalize(&part(1)?, QK_EPS)?;
        let (q, k) = (rope_interleaved(&q, cos, sin)?, rope_interleaved(&k, cos, sin)?);
        let (k_all, v_all) = cache.append(k, part(2)?.contiguous()?)?;
        let o = attention(&q, &k_all, &v_all, None, 1.0)?.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let x = gated_residual(x, &linear(&o, &self.proj_w, Some(&self.proj_b))?, &gamma1)?;

        // Cross-attention to the sample's own text; no gate, no modulation.
        let h = layer_norm(&x, Some(&self.ca_norm_w), Some(&self.ca_norm_b), EPS)?;
        let q =
            linear(&h, &self.ca_q_w, Some(&self.ca_q_b))?.reshape(&[b, n, self.heads, hd])?.permute(&[0, 2, 1, 3])?;
        let o = packed_attention(&q, &text_kv.k, &text_kv.v, &cond.lens, 1.0 / (hd as f32).sqrt())?;
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, n, c])?;
        let x = add(&x, &linear(&o, &self.ca_proj_w, Some(&self.ca_proj_b))?)?;

        // FFN with the second gate.
        let f = modulate(&x, &scale2, &shift2)?;
        let f = linear(&gelu_tanh(&linear(&f, &self.fc1_w, Some(&self.fc1_b))?)?, &self.fc2_w, Some(&self.fc2_b))?;
        gated_residual(&x, &f, &gamma2)
    }
}
