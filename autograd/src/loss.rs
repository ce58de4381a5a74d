//! Infinity's bitwise loss, fused: a 2-way cross-entropy per bit on logit pairs, averaged
//! over the d bits of a token, weighted per token, summed over tokens and averaged over the
//! batch (spec §7.3; label smoothing 0, as in train.sh).
//!
//! Logits (B, L, 2d) hold the pair (logit of 0, logit of 1) of bit k at 2k, 2k+1 (the
//! official `reshape(B, L, d, 2)`). With z = l_other − l_label, the per-bit CE is
//! softplus(z) and its gradient is σ(z) on l_other and −σ(z) on l_label.

use infinity_ops::f32_data;
use infinity_runtime::{DType, Error, Result, Tensor};

use crate::Var;

/// The loss and, for logging, each token's CE averaged over its bits (before weighting).
pub struct BitwiseLoss {
    /// The scalar to backpropagate: (1/B) Σ_b Σ_p w[b, p] · per_token[b, p].
    pub loss: Var,
    /// (B, L): mean over the d bits of the per-bit cross-entropy.
    pub per_token: Tensor,
}

/// `logits` (B, L, 2d) f32, `labels` (B, L, d) U8 with values 0/1, `token_weights` f32 of
/// shape (L) (shared by the batch, e.g. 1/L or the per-scale reweighting) or (B, L).
/// Errors: `UnsupportedDType`, `ShapeMismatch`, `InvalidArgument` (a label other than 0/1,
/// odd logit width).
pub fn bitwise_cross_entropy(logits: &Var, labels: &Tensor, token_weights: &Tensor) -> Result<BitwiseLoss> {
    let dims = Dims::check(logits.value(), labels, token_weights)?;
    let (x, y) = (f32_data(OP, logits.value())?, labels.to_vec::<u8>()?);
    let saved = logits.value().clone();
    let w = token_weights.broadcast_to(&[dims.batch, dims.tokens])?.to_vec::<f32>()?;
    if let Some(pos) = y.iter().position(|&b| b > 1) {
        return Err(Error::invalid(
            OP,
            labels.shape(),
            format!("label {} at flat position {pos} is not 0 or 1", y[pos]),
        ));
    }
    let d = dims.bits;
    let per_token: Vec<f32> = (0..dims.batch * dims.tokens)
        .map(|t| {
            let bits = (0..d).map(|k| softplus(margin(&x[t * 2 * d..][..2 * d], k, y[t * d + k])));
            (bits.sum::<f64>() / d as f64) as f32
        })
        .collect();
    let total: f64 = per_token.iter().zip(&w).map(|(&l, &w)| f64::from(l) * f64::from(w)).sum();
    let value = Tensor::scalar((total / dims.batch as f64) as f32);
    let per_token = Tensor::from_vec(per_token, &[dims.batch, dims.tokens])?;
    let shape = logits.shape().to_vec();
    let loss = Var::record(OP, &[logits], value, move |g, _| {
        let g = f64::from(g.to_f32_vec()?[0]) / (dims.batch * d) as f64;
        let x = f32_data(OP, &saved)?;
        let mut dx = vec![0f32; x.len()];
        for (t, row) in dx.chunks_mut(2 * d).enumerate() {
            let scale = g * f64::from(w[t]);
            for k in 0..d {
                let label = usize::from(y[t * d + k]);
                let s = sigmoid(margin(&x[t * 2 * d..][..2 * d], k, y[t * d + k])) * scale;
                row[2 * k + label] = -s as f32;
                row[2 * k + 1 - label] = s as f32;
            }
        }
        Ok(vec![Some(Tensor::from_vec(dx, &shape)?)])
    })?;
    Ok(BitwiseLoss { loss, per_token })
}

const OP: &str = "bitwise_cross_entropy";

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    bits: usize,
}

impl Dims {
    fn check(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Dims> {
        for t in [logits, weights] {
            if t.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType { op: OP, dtype: t.dtype() });
            }
        }
        if labels.dtype() != DType::U8 {
            return Err(Error::DTypeMismatch { op: OP, expected: DType::U8, got: labels.dtype() });
        }
        let &[batch, tokens, width] = logits.shape() else {
            return Err(Error::invalid(OP, logits.shape(), "logits must be (batch, tokens, 2 × bits)"));
        };
        if width % 2 != 0 {
            return Err(Error::invalid(OP, logits.shape(), "the logit width must be even (one pair per bit)"));
        }
        let mismatch =
            |t: &Tensor| Error::ShapeMismatch { op: OP, lhs: logits.shape().to_vec(), rhs: t.shape().to_vec() };
        if labels.shape() != [batch, tokens, width / 2] {
            return Err(mismatch(labels));
        }
        if weights.shape() != [tokens] && weights.shape() != [batch, tokens] {
            return Err(mismatch(weights));
        }
        Ok(Dims { batch, tokens, bits: width / 2 })
    }
}

/// z = l_other − l_label for bit k of a token's logit row.
fn margin(row: &[f32], k: usize, label: u8) -> f64 {
    let (l0, l1) = (f64::from(row[2 * k]), f64::from(row[2 * k + 1]));
    if label == 1 { l0 - l1 } else { l1 - l0 }
}

/// ln(1 + e^z) without overflow for large z or loss of precision for very negative z.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}
