//! Text conditioning: RMS-normalised text features are attention-pooled into `cond` (the
//! start token and the AdaLN input) and projected into the cross-attention memory; the
//! shared AdaLN table and the head's scale/shift are derived from `cond` once per prompt.
//! The text features are data (constants) or, when a text encoder trains alongside, tracked;
//! with tracked weights the conditioning is tracked.

use infinity_autograd::Var;
use infinity_autograd::attention::packed_attention;
use infinity_autograd::elementwise::{gelu_tanh, silu};
use infinity_autograd::index::concat;
use infinity_autograd::matmul::linear_rows;
use infinity_autograd::norm::rms_norm;
use infinity_ops::attention::Packing;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::InfinityConfig;
use crate::params::Source;

const EPS: f32 = 1e-6;

/// Text features of a batch packed along the token axis: `features` (ΣLᵢ, text_channels),
/// sample i owning rows `offsets[i]..offsets[i+1]`. Features are data (constants) unless a
/// text encoder trained alongside produced them on the same tape.
#[derive(Clone, Debug)]
pub struct PackedText {
    pub features: Var,
    pub lens: Vec<usize>,
}

impl PackedText {
    /// Packs per-prompt features (Lᵢ, text_channels) — every Lᵢ ≥ 1 — on `device`.
    pub fn pack(items: &[Tensor], device: &Device) -> Result<Self> {
        let on_device = items.iter().map(|t| t.to_device(device).map(Var::constant)).collect::<Result<Vec<_>>>()?;
        Self::pack_vars(&on_device)
    }

    /// [`PackedText::pack`] of features that may be tracked.
    pub fn pack_vars(items: &[Var]) -> Result<Self> {
        if let Some(t) = items.iter().find(|t| t.rank() != 2 || t.shape()[0] == 0) {
            return Err(Error::invalid(
                "text.pack",
                t.shape(),
                "each prompt's features must be (tokens ≥ 1, channels)",
            ));
        }
        let refs: Vec<&Var> = items.iter().collect();
        Ok(PackedText { features: concat(&refs, 0)?, lens: items.iter().map(|t| t.shape()[0]).collect() })
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    pub fn offsets(&self) -> Vec<usize> {
        let mut o = vec![0];
        for l in &self.lens {
            o.push(o.last().copied().unwrap_or(0) + l);
        }
        o
    }
}

/// Splits the output of a K|V projection (N, 2C) into K and V, each (N, heads, C/heads).
pub(super) fn split_kv(kv: &Var, heads: usize) -> Result<(Var, Var)> {
    let (n, c2) = (kv.dim(0)?, kv.dim(1)?);
    let kv = kv.reshape(&[n, 2, heads, c2 / 2 / heads])?;
    Ok((kv.narrow(1, 0, 1)?.squeeze(1)?, kv.narrow(1, 1, 1)?.squeeze(1)?))
}

/// `[0 | v_bias]`: the K half of every K|V projection has no bias.
pub(super) fn zero_k_bias(v_bias: &Var) -> Result<Var> {
    let zeros = Var::constant(Tensor::zeros_on(v_bias.shape(), DType::F32, &v_bias.value().device())?);
    concat(&[&zeros, v_bias], 0)
}

pub(super) struct TextPath {
    pub cfg_uncond: Var,
    norm: Var,
    pool_q: Var,
    pool_kv_w: Var,
    pool_kv_b: Var,
    pool_proj_w: Var,
    pool_proj_b: Var,
    ca0_w: Var,
    ca0_b: Var,
    ca2_w: Var,
    ca2_b: Var,
    shared_ada_w: Var,
    shared_ada_b: Var,
    head_ada_w: Var,
    head_ada_b: Var,
    pool_heads: usize,
}

/// What the blocks and the head need from the text, for a batch of B prompts.
pub struct Conditioning {
    /// Where each prompt's rows lie in `memory`.
    pub packing: Packing,
    /// (B, C): pooled text, the start token and the AdaLN input.
    pub cond: Var,
    /// (ΣLᵢ, C): cross-attention memory (before each block's own K/V projection).
    pub memory: Var,
    /// (B, 6, C): shared AdaLN table [gamma1, gamma2, scale1, scale2, shift1, shift2].
    pub ada: Var,
    /// (B, 2, C): the head's AdaLN [scale, shift].
    pub head_ada: Var,
}

impl TextPath {
    pub(super) fn load(take: Source, c: &InfinityConfig) -> Result<Self> {
        Ok(TextPath {
            cfg_uncond: take("cfg_uncond")?,
            norm: take("text_norm.weight")?,
            pool_q: take("text_proj_for_sos.ca.mat_q")?,
            pool_kv_w: take("text_proj_for_sos.ca.mat_kv.weight")?,
            pool_kv_b: zero_k_bias(&take("text_proj_for_sos.ca.v_bias")?)?,
            pool_proj_w: take("text_proj_for_sos.ca.proj.weight")?,
            pool_proj_b: take("text_proj_for_sos.ca.proj.bias")?,
            ca0_w: take("text_proj_for_ca.0.weight")?,
            ca0_b: take("text_proj_for_ca.0.bias")?,
            ca2_w: take("text_proj_for_ca.2.weight")?,
            ca2_b: take("text_proj_for_ca.2.bias")?,
            shared_ada_w: take("shared_ada_lin.1.weight")?,
            shared_ada_b: take("shared_ada_lin.1.bias")?,
            head_ada_w: take("head_nm.ada_lin.1.weight")?,
            head_ada_b: take("head_nm.ada_lin.1.bias")?,
            pool_heads: c.pool_heads(),
        })
    }

    /// The learned null text for a prompt of `len` tokens: the first `len` rows of `cfg_uncond`.
    /// It is fed like prompt features, as data: no gradient reaches `cfg_uncond` through it.
    pub(super) fn null_text(&self, len: usize) -> Result<Tensor> {
        let rows = self.cfg_uncond.dim(0)?;
        if len > rows {
            return Err(Error::invalid(
                "infinity.null_text",
                &[len],
                format!("prompt longer than the {rows} rows of cfg_uncond"),
            ));
        }
        self.cfg_uncond.value().narrow(0, 0, len)
    }

    /// RMS-normalised text → (normed, pooled cond).
    pub(super) fn normalize_and_pool(&self, text: &PackedText, packing: &Packing) -> Result<(Var, Var)> {
        let normed = rms_norm(&text.features, Some(&self.norm), EPS)?;
        let (k, v) = split_kv(&linear_rows(&normed, &self.pool_kv_w, Some(&self.pool_kv_b))?, self.pool_heads)?;
        let dp = k.dim(2)?;
        let b = text.batch();
        // One learned query per head, the same for every sample: (B, Hp, 1, dp).
        let q = self.pool_q.unsqueeze(2)?.broadcast_to(&[b, self.pool_heads, 1, dp])?;
        let pooled = packed_attention(&q, &k, &v, packing, 1.0 / (dp as f32).sqrt())?;
        let cond =
            linear_rows(&pooled.reshape(&[b, self.pool_heads * dp])?, &self.pool_proj_w, Some(&self.pool_proj_b))?;
        Ok((normed, cond))
    }

    pub(super) fn condition(&self, text: &PackedText) -> Result<Conditioning> {
        let packing = Packing::new(&text.lens, &text.features.value().device())?;
        let (normed, cond) = self.normalize_and_pool(text, &packing)?;
        let memory = linear_rows(
            &gelu_tanh(&linear_rows(&normed, &self.ca0_w, Some(&self.ca0_b))?)?,
            &self.ca2_w,
            Some(&self.ca2_b),
        )?;
        let (b, c) = (cond.dim(0)?, cond.dim(1)?);
        let act = silu(&cond)?;
        let ada = linear_rows(&act, &self.shared_ada_w, Some(&self.shared_ada_b))?.reshape(&[b, 6, c])?;
        let head_ada = linear_rows(&act, &self.head_ada_w, Some(&self.head_ada_b))?.reshape(&[b, 2, c])?;
        Ok(Conditioning { packing, cond, memory, ada, head_ada })
    }
}
