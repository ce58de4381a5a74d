//! The training losses, each with its gradient computed in the forward pass:
//! - Infinity's bitwise loss: a 2-way cross-entropy per bit on logit pairs, averaged over the d
//!   bits of a token, weighted per token, summed over tokens and averaged over the batch (spec
//!   §7.3; label smoothing 0, as in train.sh). The per-bit cross-entropy and its gradient are
//!   one op (`infinity_ops::bitwise`, a kernel on an executor).
//! - VAR's loss: the V-way cross-entropy of each token's codebook logits, weighted per token
//!   (1/L in the official trainer), summed over tokens and averaged over the batch; composed of
//!   row reductions, a gather and a scatter, which have kernels.
//!
//! The weighting and the averages are ops, so both losses run on every device.

use infinity_ops::bitwise::bit_cross_entropy;
use infinity_ops::elementwise::{add, exp, log, mul, mul_scalar, sub};
use infinity_ops::index::{embedding, index_add};
use infinity_ops::reduce::{max, mean, sum};
use infinity_ops::softmax::softmax;
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

/// The weighted token cross-entropy and, for logging, each token's own.
pub struct TokenLoss {
    /// The scalar to backpropagate: (1/B) Σ_b Σ_l w[l] · per_token[b, l].
    pub loss: Var,
    /// (B, L): −log softmax(logits[b, l])[labels[b, l]].
    pub per_token: Tensor,
}

/// `logits` (B, L, V) f32, `labels` (B, L) I64 in 0..V, `token_weights` (L) f32. The loss
/// per token is logsumexp − logit[label] (max-shifted, finite for finite logits); its
/// gradient, softmax − one-hot, is formed here from the same row statistics.
pub fn cross_entropy(logits: &Var, labels: &Tensor, token_weights: &Tensor) -> Result<TokenLoss> {
    const OP: &str = "cross_entropy";
    let x = logits.value();
    if x.dtype() != DType::F32 || token_weights.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: x.dtype() });
    }
    let &[b, l, v] = x.shape() else {
        return Err(Error::invalid(OP, x.shape(), "logits must be (batch, tokens, vocabulary)"));
    };
    if labels.shape() != [b, l] || token_weights.shape() != [l] {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: labels.shape().to_vec() });
    }
    // Checked on the host wherever they are: a gather past the row would read another token.
    let ids = labels.to_dtype(DType::I64)?.to_vec::<i64>()?;
    if let Some(pos) = ids.iter().position(|&i| i < 0 || i as usize >= v) {
        return Err(Error::invalid(
            OP,
            labels.shape(),
            format!("label {} at position {pos} is outside 0..{v}", ids[pos]),
        ));
    }
    let device = x.device();
    let flat: Vec<i64> = ids.iter().enumerate().map(|(row, &i)| row as i64 * v as i64 + i).collect();
    let flat = Tensor::from_vec(flat, &[b * l])?.to_device(&device)?;
    let rows = x.reshape(&[b * l, v])?;
    let top = max(&rows, &[1], true)?;
    let lse = add(&log(&sum(&exp(&sub(&rows, &top)?)?, &[1], true)?)?, &top)?;
    let picked = embedding(&rows.reshape(&[b * l * v, 1])?, &flat)?;
    let per_token = sub(&lse, &picked)?.reshape(&[b, l])?;
    let w = token_weights.to_device(&device)?.unsqueeze(0)?;
    let value = mul_scalar(&sum(&mul(&per_token, &w)?, &[], false)?, 1.0 / b as f32)?;
    let loss = Var::record(OP, &[logits], value, move |g, _| {
        let ones = Tensor::full(&[b * l, 1], 1.0, DType::F32).to_device(&rows.device())?;
        let one_hot = index_add(&ones, 0, &flat, b * l * v)?.reshape(&[b * l, v])?;
        let scale = mul_scalar(&mul(g, &w.reshape(&[l, 1])?)?, 1.0 / b as f32)?;
        let grad = mul(&sub(&softmax(&rows, 1)?, &one_hot)?.reshape(&[b, l, v])?, &scale.unsqueeze(0)?)?;
        Ok(vec![Some(grad)])
    })?;
    Ok(TokenLoss { loss, per_token })
}
