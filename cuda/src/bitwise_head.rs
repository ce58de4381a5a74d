//! Launchers of kernels/bitwise_head.cu: bits sampled from logit pairs (temperature, CFG,
//! top-p and a Philox draw fused; the executor path of `infinity_ops::bitwise::sample_bits`,
//! rounded as its CPU path, so the same logits and seed give the same bits), and the fused two-way cross-entropy with
//! its gradient for training.

use cudarc::driver::DeviceRepr;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{BITWISE_LOSS, BITWISE_SAMPLE};
use crate::view::DevPtr;

const THREADS: u32 = 256;

#[repr(C)]
pub struct BitwiseSampleParams {
    logits: DevPtr<f32>,
    bits: DevPtr<u8>,
    seed: u64,
    offset: u64,
    logits_stride: [i32; 3],
    batch: i32,
    tokens: i32,
    dim: i32,
    with_uncond: i32,
    greedy: i32,
    cfg: f32,
    tau: f32,
    top_p: f32,
}

#[repr(C)]
pub struct BitwiseLossParams {
    logits: DevPtr<f32>,
    labels: DevPtr<u8>,
    loss: DevPtr<f32>,
    grad: DevPtr<f32>,
    logits_stride: [i32; 3],
    labels_stride: [i32; 3],
    batch: i32,
    tokens: i32,
    dim: i32,
    grad_scale: f32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of bitwise_head.cu (sizes checked by a test)
// made of plain numbers and addresses.
unsafe impl DeviceRepr for BitwiseSampleParams {}
unsafe impl DeviceRepr for BitwiseLossParams {}

/// How one scale's bits are drawn (the per-scale values of the sampler's `SamplingConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Guidance weight w in w·cond + (1 − w)·uncond, when the logits hold both halves.
    pub cfg: f32,
    /// Temperature τ > 0; logits are divided by it first.
    pub tau: f32,
    /// Nucleus mass: a bit whose minority probability is ≤ 1 − top_p takes its majority
    /// value. 0 (or 1) disables the rule.
    pub top_p: f32,
    /// The larger logit wins (also what top-k = 1 means); ties go to bit 0.
    pub greedy: bool,
}

/// Bits (B, n, d) u8 from raw logits (R, n, 2d) f32, where R = B (no guidance) or 2B
/// (conditional rows first, then the unconditional ones). Pair i = (b·n + t)·d + j draws the
/// uniform at stream position `rng.offset + i`; the stream then advances by B·n·d, whichever
/// bits needed a draw.
pub fn sample_bits(
    exec: &Executor,
    logits: &Tensor,
    batch: usize,
    sampling: &Sampling,
    rng: &mut Philox,
) -> Result<Tensor> {
    let op = BITWISE_SAMPLE.kernel.name();
    let l = exec.view::<f32, 3>(op, logits)?;
    let [rows, tokens, pairs2] = l.dims.map(|v| v as usize);
    let with_uncond = match rows {
        _ if batch == 0 => None,
        r if r == batch => Some(false),
        r if r == 2 * batch => Some(true),
        _ => None,
    }
    .ok_or_else(|| Error::invalid(op, logits.shape(), format!("{rows} rows are neither B = {batch} nor 2B")))?;
    if pairs2 % 2 != 0 {
        return Err(Error::invalid(op, logits.shape(), "the last dimension holds logit pairs: it must be even"));
    }
    let Sampling { cfg, tau, top_p, greedy } = *sampling;
    if !(tau > 0.0 && tau.is_finite() && cfg.is_finite() && (0.0..=1.0).contains(&top_p)) {
        return Err(Error::invalid(
            op,
            logits.shape(),
            format!("need τ > 0, finite cfg and top_p in [0, 1]; got τ {tau}, cfg {cfg}, top_p {top_p}"),
        ));
    }
    let dim = pairs2 / 2;
    let mut bits = exec.output(op, &[batch, tokens, dim], DType::U8)?;
    let params = BitwiseSampleParams {
        logits: l.ptr,
        bits: exec.view_mut::<u8, 3>(op, &mut bits)?.ptr,
        seed: rng.seed,
        offset: rng.offset,
        logits_stride: l.strides,
        // All below the logits' dimensions, which fit in i32.
        batch: batch as i32,
        tokens: tokens as i32,
        dim: dim as i32,
        with_uncond: i32::from(with_uncond),
        greedy: i32::from(greedy),
        cfg,
        tau,
        top_p,
    };
    let count = batch * tokens * dim;
    // SAFETY: the addresses come from views of live tensors of `exec`; the kernel reads rows
    // below R and writes the (batch, tokens, dim) output allocated above.
    unsafe { exec.launch(BITWISE_SAMPLE, exec.grid_stride(count, THREADS), &params)? };
    // Positions are taken modulo 2^64, in the kernel as here.
    rng.offset = rng.offset.wrapping_add(count as u64);
    Ok(bits)
}

/// Per-bit loss and its gradient.
pub struct BitLoss {
    /// (B, n, d): logsumexp(l0, l1) − l_label.
    pub loss: Tensor,
    /// (B, n, 2d): (softmax − onehot) · grad_scale.
    pub grad: Tensor,
}

/// Two-way cross-entropy of logits (B, n, 2d) f32 against bit labels (B, n, d) u8 (any
/// nonzero label counts as 1), and its gradient scaled by `grad_scale` (1/count for a mean).
pub fn bit_loss(exec: &Executor, logits: &Tensor, labels: &Tensor, grad_scale: f32) -> Result<BitLoss> {
    let op = BITWISE_LOSS.kernel.name();
    let l = exec.view::<f32, 3>(op, logits)?;
    let y = exec.view::<u8, 3>(op, labels)?;
    let [batch, tokens, pairs2] = l.dims;
    if y.dims != [batch, tokens, pairs2 / 2] || pairs2 % 2 != 0 {
        return Err(Error::ShapeMismatch { op, lhs: logits.shape().to_vec(), rhs: labels.shape().to_vec() });
    }
    if !grad_scale.is_finite() {
        return Err(Error::invalid(op, logits.shape(), format!("grad_scale {grad_scale} is not finite")));
    }
    let (b, n, d) = (batch as usize, tokens as usize, pairs2 as usize / 2);
    let mut loss = exec.output(op, &[b, n, d], DType::F32)?;
    let mut grad = exec.output(op, &[b, n, 2 * d], DType::F32)?;
    let params = BitwiseLossParams {
        logits: l.ptr,
        labels: y.ptr,
        loss: exec.view_mut::<f32, 3>(op, &mut loss)?.ptr,
        grad: exec.view_mut::<f32, 3>(op, &mut grad)?.ptr,
        logits_stride: l.strides,
        labels_stride: y.strides,
        batch,
        tokens,
        dim: pairs2 / 2,
        grad_scale,
    };
    // SAFETY: the addresses come from views of live tensors of `exec` whose shapes were
    // checked against each other above.
    unsafe { exec.launch(BITWISE_LOSS, exec.grid_stride(b * n * d, THREADS), &params)? };
    Ok(BitLoss { loss, grad })
}
