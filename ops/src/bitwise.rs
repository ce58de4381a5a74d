//! Bits: one scale of the BSQ quantizer (the sign of a residual as bits and as codes ±1/√d),
//! drawing one scale's bits from the bitwise head's logits (temperature, guidance, top-p or
//! greedy, a Philox draw per bit; one kernel on an executor, the same bits for the same
//! logits and seed on every device), and the head's fused two-way cross-entropy.
//!
//! The cross-entropy is per bit: logits (B, n, 2d) hold the pair
//! (logit of 0, logit of 1) of bit k at 2k, 2k+1 (the official `reshape(B, n, d, 2)`), labels
//! (B, n, d) u8 are 0 or 1. With z = l_other − l_label the loss is softplus(z) and its
//! gradient σ(z) on l_other and −σ(z) on l_label, so probabilities are never materialised.
//! On the CPU in f64, rounded once; on an executor one kernel in f32.

pub use infinity_cuda::bitwise_head::Sampling;
use infinity_runtime::rng::{Philox, philox_u32, u32_to_unit_f32};
use infinity_runtime::{DType, Error, Result, Tensor};

use crate::device::executor;
use crate::f32_data;

/// The code magnitude 1/√d, computed as the official code does (f64, then rounded to f32).
pub fn code_scale(d: usize) -> f32 {
    (1.0 / (d as f64).sqrt()) as f32
}

/// One scale of the quantizer: the sign of its residual.
pub struct ScaleSign {
    /// (B, h, w, d) u8: 1 where the residual is > 0 (0 and NaN give 0).
    pub bits: Tensor,
    /// (B, d, h, w) f32: the bits as codes ±1/√d.
    pub codes: Tensor,
}

/// Quantizes one scale's residual (B, d, h, w) f32: bits and codes, on the residual's device
/// (on an executor one kernel; the official L2 normalisation before the sign changes no sign,
/// so it is left out).
pub fn quantize_scale(residual: &Tensor) -> Result<ScaleSign> {
    if let Some(exec) = executor("quantize_scale", &[residual])? {
        let scale = infinity_cuda::quantize::quantize_scale(&exec, residual)?;
        return Ok(ScaleSign { bits: scale.bits, codes: scale.codes });
    }
    let bits = sign_bits(residual)?;
    Ok(ScaleSign { codes: codes_from_bits(&bits)?, bits })
}

/// The bits of a residual (B, d, h, w) f32 on the host: (B, h, w, d) u8, 1 where > 0 (0 and
/// NaN give 0).
fn sign_bits(residual: &Tensor) -> Result<Tensor> {
    crate::require_f32("sign_bits", residual)?;
    let &[b, d, h, w] = residual.shape() else {
        return Err(Error::invalid("sign_bits", residual.shape(), "expected a residual (B, d, h, w)"));
    };
    let v = residual.permute(&[0, 2, 3, 1])?.to_vec::<f32>()?;
    Tensor::from_vec(v.into_iter().map(|x| u8::from(x > 0.0)).collect::<Vec<u8>>(), &[b, h, w, d])
}

/// (B, h, w, d) bits (u8 0/1) → (B, d, h, w) codes (2·bit − 1)/√d, on the host.
pub fn codes_from_bits(bits: &Tensor) -> Result<Tensor> {
    const OP: &str = "codes_from_bits";
    if bits.rank() != 4 || bits.dtype() != DType::U8 {
        return Err(Error::invalid(OP, bits.shape(), format!("expected u8 bits (B, h, w, d), got {}", bits.dtype())));
    }
    let s = code_scale(bits.dim(3)?);
    let v = bits.to_vec::<u8>()?;
    if let Some(bad) = v.iter().find(|&&b| b > 1) {
        return Err(Error::invalid(OP, bits.shape(), format!("bit value {bad} is not 0 or 1")));
    }
    let codes =
        Tensor::from_vec(v.into_iter().map(|b| if b == 1 { s } else { -s }).collect::<Vec<f32>>(), bits.shape())?;
    codes.permute(&[0, 3, 1, 2])?.contiguous()
}

/// Bits (B, n, d) u8 from raw logits (R, n, 2d) f32, R = B, or 2B with the unconditional
/// rows after the conditional ones: logits / τ, then w·cond + (1 − w)·uncond, then per pair
/// the larger logit (greedy), the majority when the minority's probability is ≤ 1 − top_p, or
/// a draw. Pair i draws the uniform at stream position `rng.offset + i`; the stream then
/// advances by B·n·d, whichever bits needed a draw.
pub fn sample_bits(raw: &Tensor, batch: usize, sampling: &Sampling, rng: &mut Philox) -> Result<Tensor> {
    const OP: &str = "sample_bits";
    if let Some(exec) = executor(OP, &[raw])? {
        return infinity_cuda::bitwise_head::sample_bits(&exec, raw, batch, sampling, rng);
    }
    let &[rows, n, width] = raw.shape() else {
        return Err(Error::invalid(OP, raw.shape(), "expected logits (rows, tokens, 2 × bits)"));
    };
    if batch == 0 || (rows != batch && rows != 2 * batch) || width % 2 != 0 {
        return Err(Error::invalid(
            OP,
            raw.shape(),
            format!("{rows} rows of logit pairs are neither B = {batch} nor 2B"),
        ));
    }
    let Sampling { cfg: w, tau, top_p, greedy } = *sampling;
    if !(tau > 0.0 && tau.is_finite() && w.is_finite() && (0.0..=1.0).contains(&top_p)) {
        let msg = format!("need τ > 0, finite cfg and top_p in [0, 1]; got τ {tau}, cfg {w}, top_p {top_p}");
        return Err(Error::invalid(OP, raw.shape(), msg));
    }
    let v = f32_data(OP, raw)?;
    let (cond, uncond) = v.split_at(batch * n * width);
    let guided =
        |i: usize| if rows == batch { cond[i] / tau } else { w * (cond[i] / tau) + (1.0 - w) * (uncond[i] / tau) };
    let base = rng.offset;
    let bits: Vec<u8> = (0..batch * n * width / 2)
        .map(|i| {
            let (l0, l1) = (guided(2 * i), guided(2 * i + 1));
            if greedy {
                return u8::from(l1 > l0);
            }
            let p1 = 1.0 / (1.0 + (l0 - l1).exp());
            if top_p > 0.0 && top_p < 1.0 && p1.min(1.0 - p1) <= 1.0 - top_p {
                return u8::from(p1 > 0.5);
            }
            u8::from(u32_to_unit_f32(philox_u32(rng.seed, base + i as u64)) < p1)
        })
        .collect();
    rng.offset += bits.len() as u64;
    Tensor::from_vec(bits, &[batch, n, width / 2])
}

/// Each bit's loss and its gradient.
pub struct BitCrossEntropy {
    /// (B, n, d): softplus(l_other − l_label).
    pub loss: Tensor,
    /// (B, n, 2d): d loss / d logits.
    pub grad: Tensor,
}

/// See the module header. Errors: `UnsupportedDType`, `DTypeMismatch` (labels not u8),
/// `ShapeMismatch`, `InvalidArgument` (odd logit width, a label other than 0 or 1).
pub fn bit_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<BitCrossEntropy> {
    const OP: &str = "bit_cross_entropy";
    crate::require_f32(OP, logits)?;
    if labels.dtype() != DType::U8 {
        return Err(Error::DTypeMismatch { op: OP, expected: DType::U8, got: labels.dtype() });
    }
    let &[b, n, width] = logits.shape() else {
        return Err(Error::invalid(OP, logits.shape(), "logits must be (batch, tokens, 2 × bits)"));
    };
    if width % 2 != 0 {
        return Err(Error::invalid(OP, logits.shape(), "the logit width must be even (one pair per bit)"));
    }
    let d = width / 2;
    if labels.shape() != [b, n, d] {
        return Err(Error::ShapeMismatch { op: OP, lhs: logits.shape().to_vec(), rhs: labels.shape().to_vec() });
    }
    // Read on the host wherever they are: the kernel would take any nonzero label as 1.
    let y = labels.to_vec::<u8>()?;
    if let Some(pos) = y.iter().position(|&bit| bit > 1) {
        return Err(Error::invalid(
            OP,
            labels.shape(),
            format!("label {} at flat position {pos} is not 0 or 1", y[pos]),
        ));
    }
    if let Some(exec) = executor(OP, &[logits, labels])? {
        let bits = infinity_cuda::bitwise_head::bit_loss(&exec, logits, labels, 1.0)?;
        return Ok(BitCrossEntropy { loss: bits.loss, grad: bits.grad });
    }
    let x = f32_data(OP, logits)?;
    let (mut loss, mut grad) = (vec![0f32; b * n * d], vec![0f32; b * n * width]);
    for (i, (l, &label)) in loss.iter_mut().zip(&y).enumerate() {
        let (t, k) = (i / d, i % d);
        let (l0, l1) = (f64::from(x[t * width + 2 * k]), f64::from(x[t * width + 2 * k + 1]));
        let z = if label == 1 { l0 - l1 } else { l1 - l0 };
        // ln(1 + e^z) without overflow for large z or loss of precision for very negative z.
        *l = (z.max(0.0) + (-z.abs()).exp().ln_1p()) as f32;
        let s = (1.0 / (1.0 + (-z).exp())) as f32;
        grad[t * width + 2 * k + usize::from(label)] = -s;
        grad[t * width + 2 * k + 1 - usize::from(label)] = s;
    }
    Ok(BitCrossEntropy { loss: Tensor::from_vec(loss, &[b, n, d])?, grad: Tensor::from_vec(grad, logits.shape())? })
}
