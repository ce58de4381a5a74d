//! `attention` on `Var`s, mirroring `infinity_ops::attention`: softmax(q·kᵀ·scale + mask)·v
//! with gradients for q, k and v (the additive mask is a constant), by the op
//! [`infinity_ops::attention::attention_grad`] (the flash backward kernel on an executor).
//!
//! [`packed_attention`] is the fused op when nothing is tracked, else the per-sample
//! composition of recorded attentions.

use infinity_ops::attention::{self as at, Packing};
use infinity_runtime::{Result, Tensor};

use crate::Var;
use crate::index::concat;

/// softmax(q·kᵀ·scale + mask)·v for q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) and a
/// mask broadcastable to (B, H, Lq, Lk).
pub fn attention(q: &Var, k: &Var, v: &Var, mask: Option<&Tensor>, scale: f32) -> Result<Var> {
    let value = at::attention(q.value(), k.value(), v.value(), mask, scale)?;
    let (qv, kv, vv, mask) = (q.value().clone(), k.value().clone(), v.value().clone(), mask.cloned());
    Var::record("attention", &[q, k, v], value, move |g, needs| {
        Ok(at::attention_grad(&qv, &kv, &vv, mask.as_ref(), scale, g, [needs[0], needs[1], needs[2]])?.into())
    })
}

/// Causal attention (see [`infinity_ops::attention::causal_attention`]): queries at the last Lq
/// of the Lk key positions, each seeing the keys up to its own.
pub fn causal_attention(q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
    let value = at::causal_attention(q.value(), k.value(), v.value(), scale)?;
    let (qv, kv, vv) = (q.value().clone(), k.value().clone(), v.value().clone());
    Var::record("causal_attention", &[q, k, v], value, move |g, needs| {
        Ok(at::causal_attention_grad(&qv, &kv, &vv, scale, g, [needs[0], needs[1], needs[2]])?.into())
    })
}

/// Each sample's queries q (B, H, n, D) over its own keys in k, v (ΣLᵢ, H, D); see
/// [`infinity_ops::attention::packed_attention`].
pub fn packed_attention(q: &Var, k: &Var, v: &Var, packing: &Packing, scale: f32) -> Result<Var> {
    if [q, k, v].iter().all(|t| !t.is_tracked()) {
        return at::packed_attention(q.value(), k.value(), v.value(), packing, scale).map(Var::constant);
    }
    packing.check("packed_attention", q.shape(), k.shape())?;
    let mut outs = Vec::with_capacity(packing.lens().len());
    let mut start = 0;
    for (b, &len) in packing.lens().iter().enumerate() {
        let part = |t: &Var| t.narrow(0, start, len)?.permute(&[1, 0, 2])?.unsqueeze(0);
        outs.push(attention(&q.narrow(0, b, 1)?, &part(k)?, &part(v)?, None, scale)?);
        start += len;
    }
    concat(&outs.iter().collect::<Vec<_>>(), 0)
}
