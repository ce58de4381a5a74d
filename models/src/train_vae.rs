//! Training the BitVAE: one optimisation step — encode, straight-through quantization
//! (single- or multi-scale), decode on a tape; the reconstruction, commitment and entropy
//! losses; backward, global gradient-norm clipping and AdamW. Shared by `infinity-train vae`
//! and the tests, so both run one code path.
//!
//! Only losses that need no pretrained network are here. The reconstruction term is L1 (the
//! pixel term of the VQGAN-style recipe the official tokenizer follows; it is robust to the
//! outliers a young decoder produces). The quantizer terms follow the official BSQ
//! (`bsq_vae/multiscale_bsq.py`): per scale, the commitment ‖z − sg(q)‖² (mean) and the
//! entropy penalty H(per sample) − H(codebook) of the analytical soft assignment
//! p = σ(−4·z·τ/√d), weighted by `entropy / τ` as the official `zeta · penalty /
//! inv_temperature · entropy_weight` with ζ = γ₀ = γ = 1; both are averaged over the scales.

use infinity_autograd::elementwise::{abs, add, add_scalar, affine, log, mul, mul_scalar, neg, sigmoid, square, sub};
use infinity_autograd::reduce::{mean, sum};
use infinity_autograd::{AdamW, Params, Tape, Var};
use infinity_runtime::{Error, Result, Tensor};

use crate::bitvae::quantizer::quantize_straight_through;
use crate::bitvae::{BitVae, BitVaeConfig};

/// Weights of the quantizer's loss terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeLossWeights {
    /// Weight of the commitment term (official `commitment_loss_weight`).
    pub commitment: f32,
    /// Weight of the entropy penalty before the 1/τ factor (official `entropy_weight`).
    pub entropy: f32,
    /// τ: sharpness of the soft bit assignment (official `inv_temperature`).
    pub inv_temperature: f32,
}

impl Default for VaeLossWeights {
    /// The official defaults of `multiscale_bsq.py`.
    fn default() -> Self {
        VaeLossWeights { commitment: 0.25, entropy: 0.1, inv_temperature: 100.0 }
    }
}

/// The loss of one batch and its parts (scalars; `total` is tracked when the model is).
pub struct VaeLosses {
    pub total: Var,
    /// Mean |decoded − image|.
    pub reconstruction: f32,
    /// Commitment, averaged over the scales.
    pub commitment: f32,
    /// Entropy penalty (per-sample minus codebook entropy, nats), averaged over the scales.
    pub entropy: f32,
}

/// The losses of `model` on `images` (B, 3, H, W) in [-1, 1], quantized at `grids` (coarse
/// to fine, the last one the latent grid; one grid is single-scale BSQ).
pub fn vae_losses(model: &BitVae, images: &Tensor, grids: &[(usize, usize)], w: VaeLossWeights) -> Result<VaeLosses> {
    model.check_image(images.shape())?;
    let images = Var::constant(images.clone());
    let latent = model.encoder.forward_var(&images)?;
    let q = quantize_straight_through(&latent, grids)?;
    let decoded = model.decoder.forward_var(&q.summed)?;
    let reconstruction = mean(&abs(&sub(&decoded, &images)?)?, &[], false)?;

    let scales = q.scales.len() as f32;
    let (mut commitment, mut entropy) = (Vec::new(), Vec::new());
    for s in &q.scales {
        commitment.push(mean(&square(&sub(&s.pre_sign, &Var::constant(s.codes.clone()))?)?, &[], false)?);
        entropy.push(entropy_penalty(&s.pre_sign, w.inv_temperature)?);
    }
    let (commitment, entropy) = (scale_mean(&commitment, scales)?, scale_mean(&entropy, scales)?);
    let total = add(
        &reconstruction,
        &add(&mul_scalar(&commitment, w.commitment)?, &mul_scalar(&entropy, w.entropy / w.inv_temperature)?)?,
    )?;
    Ok(VaeLosses {
        total,
        reconstruction: scalar(&reconstruction)?,
        commitment: scalar(&commitment)?,
        entropy: scalar(&entropy)?,
    })
}

fn scalar(v: &Var) -> Result<f32> {
    v.value().to_f32_vec().first().copied().ok_or_else(|| Error::invalid("train_vae", v.shape(), "an empty loss"))
}

/// The mean of per-scale scalar losses.
fn scale_mean(losses: &[Var], scales: f32) -> Result<Var> {
    let mut it = losses.iter();
    let first = it.next().ok_or_else(|| Error::invalid("train_vae", &[], "no scales given"))?;
    let total = it.try_fold(first.clone(), |acc, l| add(&acc, l))?;
    mul_scalar(&total, 1.0 / scales)
}

/// H(per sample) − H(codebook) of the residual `z` (B, d, h, w): the first, summed over the
/// bits and averaged over the tokens, is low when every bit is decided; the second, of the
/// batch-average assignment summed over the bits, is high when every bit value is used.
fn entropy_penalty(z: &Var, inv_temperature: f32) -> Result<Var> {
    let d = z.dim(1)? as f32;
    let p = sigmoid(&mul_scalar(z, -4.0 * inv_temperature / d.sqrt())?)?;
    let per_sample = mean(&sum(&binary_entropy(&p)?, &[1], false)?, &[], false)?;
    let average = mean(&p, &[0, 2, 3], false)?;
    let codebook = sum(&binary_entropy(&average)?, &[], false)?;
    sub(&per_sample, &codebook)
}

/// −p·ln(p + ε) − (1 − p)·ln(1 − p + ε), elementwise; ε = 1e-8 as the official code keeps a
/// saturated probability's logarithm finite.
fn binary_entropy(p: &Var) -> Result<Var> {
    const EPS: f32 = 1e-8;
    let q = affine(p, -1.0, 1.0)?;
    let plogp = mul(p, &log(&add_scalar(p, EPS)?)?)?;
    let qlogq = mul(&q, &log(&add_scalar(&q, EPS)?)?)?;
    neg(&add(&plogp, &qlogq)?)
}

/// The optimiser's settings for one step (scheduled values already applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeStepSettings {
    pub lr: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; `f32::INFINITY` never clips.
    pub clip: f32,
    pub losses: VaeLossWeights,
}

/// What a step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeStepStats {
    pub loss: f32,
    pub reconstruction: f32,
    pub commitment: f32,
    pub entropy: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// One AdamW step of the BitVAE `params` (named as [`BitVae::parameters`] names them) on
/// `images`; `optimizer` must hold groups over `params`' names.
pub fn vae_train_step(
    params: &mut Params,
    optimizer: &mut AdamW,
    config: &BitVaeConfig,
    images: &Tensor,
    grids: &[(usize, usize)],
    settings: VaeStepSettings,
) -> Result<VaeStepStats> {
    let tape = Tape::new();
    let tracked = params.track(&tape)?;
    let model = BitVae::on_tape(config.clone(), &tracked)?;
    let losses = vae_losses(&model, images, grids, settings.losses)?;
    let mut grads = tracked.gradients(tape.backward(&losses.total)?);
    let grad_norm = grads.clip_norm(settings.clip)?;
    optimizer.step(params, &grads, settings.lr, settings.weight_decay)?;
    Ok(VaeStepStats {
        loss: scalar(&losses.total)?,
        reconstruction: losses.reconstruction,
        commitment: losses.commitment,
        entropy: losses.entropy,
        grad_norm,
    })
}
