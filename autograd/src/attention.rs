//! `attention` on `Var`s, mirroring `infinity_ops::attention`: softmax(q·kᵀ·scale + mask)·v
//! with gradients for q, k and v (the additive mask is a constant).
//!
//! With P the attention probabilities and dO the output gradient: dV = Pᵀ·dO,
//! dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ)) (the softmax adjoint), dQ = scale·dS·K and
//! dK = scale·dSᵀ·Q. P is recomputed from q and k, one block of query rows at a time, so the
//! backward holds at most `SCORE_BUDGET` scores at once whatever the sequence length. Rows
//! whose keys are all masked output zero in the forward, so they get P = 0 (no gradient).
//!
//! [`packed_attention`] is the fused op when nothing is tracked, else the per-sample
//! composition of recorded attentions.

use infinity_ops::attention::{self as at, Packing};
use infinity_ops::elementwise::{add, mul_scalar};
use infinity_ops::index::concat;
use infinity_ops::matmul::matmul;
use infinity_ops::reduce::max;
use infinity_ops::softmax::softmax;
use infinity_ops::zip_map;
use infinity_runtime::{DType, Result, Tensor};

use crate::Var;
use crate::index::concat as concat_vars;
use crate::reduce::softmax_backward;

/// Most attention scores (B·H·rows·Lk) materialised at once by the backward pass.
const SCORE_BUDGET: usize = 1 << 22;

/// softmax(q·kᵀ·scale + mask)·v for q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) and a
/// mask broadcastable to (B, H, Lq, Lk).
pub fn attention(q: &Var, k: &Var, v: &Var, mask: Option<&Tensor>, scale: f32) -> Result<Var> {
    let value = at::attention(q.value(), k.value(), v.value(), mask, scale)?;
    let saved = Saved { q: q.value().clone(), k: k.value().clone(), v: v.value().clone(), mask: mask.cloned(), scale };
    Var::record("attention", &[q, k, v], value, move |g, needs| saved.backward(g, needs))
}

/// Each sample's queries q (B, H, n, D) over its own keys in k, v (ΣLᵢ, H, D); see
/// [`infinity_ops::attention::packed_attention`].
pub fn packed_attention(q: &Var, k: &Var, v: &Var, packing: &Packing, scale: f32) -> Result<Var> {
    if [q, k, v].iter().all(|t| !t.is_tracked()) {
        return at::packed_attention(q.value(), k.value(), v.value(), packing, scale).map(Var::constant);
    }
    let mut outs = Vec::with_capacity(packing.lens().len());
    let mut start = 0;
    for (b, &len) in packing.lens().iter().enumerate() {
        let part = |t: &Var| t.narrow(0, start, len)?.permute(&[1, 0, 2])?.unsqueeze(0);
        outs.push(attention(&q.narrow(0, b, 1)?, &part(k)?, &part(v)?, None, scale)?);
        start += len;
    }
    concat_vars(&outs.iter().collect::<Vec<_>>(), 0)
}

struct Saved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<Tensor>,
    scale: f32,
}

impl Saved {
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        // The forward validated the shapes.
        let (b, h, lq, lk) = (self.q.shape()[0], self.q.shape()[1], self.q.shape()[2], self.k.shape()[2]);
        let mask = self.mask.as_ref().map(|m| m.broadcast_to(&[b, h, lq, lk])).transpose()?;
        let (kt, vt) = (self.k.transpose(2, 3)?, self.v.transpose(2, 3)?);
        let rows = (SCORE_BUDGET / (b * h * lk).max(1)).clamp(1, lq.max(1));
        let mut dq_blocks = Vec::new();
        // Sums over the query blocks; the first block's product starts each (no zero-filled
        // tensor to add it to).
        let (mut dk, mut dv): (Option<Tensor>, Option<Tensor>) = (None, None);
        let accumulate = |sum: &mut Option<Tensor>, term: Tensor| -> Result<()> {
            *sum = Some(match sum.take() {
                Some(s) => add(&s, &term)?,
                None => term,
            });
            Ok(())
        };
        for i0 in (0..lq).step_by(rows) {
            let n = rows.min(lq - i0);
            let (qb, gb) = (self.q.narrow(2, i0, n)?, g.narrow(2, i0, n)?);
            let mut scores = mul_scalar(&matmul(&qb, &kt)?, self.scale)?;
            if let Some(m) = &mask {
                scores = add(&scores, &m.narrow(2, i0, n)?)?;
            }
            let p = probabilities(&scores, mask.is_some())?;
            if needs[2] {
                accumulate(&mut dv, matmul(&p.transpose(2, 3)?, &gb)?)?;
            }
            if needs[0] || needs[1] {
                let ds = mul_scalar(&softmax_backward(&p, &matmul(&gb, &vt)?, 3)?, self.scale)?;
                if needs[0] {
                    dq_blocks.push(matmul(&ds, &self.k)?);
                }
                if needs[1] {
                    accumulate(&mut dk, matmul(&ds.transpose(2, 3)?, &qb)?)?;
                }
            }
        }
        let dq = match dq_blocks.as_slice() {
            // No query rows: q is empty.
            [] => needs[0].then(|| Tensor::zeros(self.q.shape(), DType::F32)),
            blocks => Some(concat(&blocks.iter().collect::<Vec<_>>(), 2)?),
        };
        // No query rows: nothing reached k or v.
        let or_zeros =
            |sum: Option<Tensor>, like: &Tensor| sum.unwrap_or_else(|| Tensor::zeros(like.shape(), DType::F32));
        Ok(vec![dq, needs[1].then(|| or_zeros(dk, &self.k)), needs[2].then(|| or_zeros(dv, &self.v))])
    }
}

/// softmax over the keys, with all-masked rows (every score −inf, which softmax turns into
/// NaN) set to zero as the forward treats them.
fn probabilities(scores: &Tensor, masked: bool) -> Result<Tensor> {
    let p = softmax(scores, 3)?;
    if !masked {
        return Ok(p);
    }
    let row_max = max(scores, &[3], true)?.broadcast_to(p.shape())?;
    zip_map("attention", [&p, &row_max], |[p, m]| if m == f32::NEG_INFINITY { 0.0 } else { p })
}
