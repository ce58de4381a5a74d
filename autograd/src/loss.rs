//! Infinity's bitwise loss, fused: a 2-way cross-entropy per bit on logit pairs, averaged
//! over the d bits of a token, weighted per token, summed over tokens and averaged over the
//! batch (spec §7.3; label smoothing 0, as in train.sh).
//!
//! The per-bit cross-entropy and its gradient are one op (`infinity_ops::bitwise`, a kernel on
//! an executor); the weighting and the averages are ops, so the loss runs on every device.

use infinity_ops::bitwise::bit_cross_entropy;
use infinity_ops::elementwise::{mul, mul_scalar};
use infinity_ops::reduce::{mean, sum};
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
    let device = logits.value().device();
    let bits = bit_cross_entropy(logits.value(), &labels.to_device(&device)?)?;
    let per_token = mean(&bits.loss, &[2], false)?;
    let w = token_weights.to_device(&device)?.broadcast_to(&[dims.batch, dims.tokens])?;
    let value = mul_scalar(&sum(&mul(&per_token, &w)?, &[], false)?, 1.0 / dims.batch as f32)?;
    let loss = Var::record(OP, &[logits], value, move |g, _| {
        // d loss / d logit = g · w[token] / (B·d) · the bit's own gradient.
        let scale = mul_scalar(g, 1.0 / (dims.batch * dims.bits) as f32)?;
        Ok(vec![Some(mul(&mul(&bits.grad, &w.unsqueeze(2)?)?, &scale)?)])
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
