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
//!
//! Optionally a PatchGAN [`Discriminator`] joins in ([`vae_gan_train_step`]): it learns with
//! the hinge loss to tell the images from their (detached) reconstructions, and the VAE adds
//! −mean(D(reconstruction)) weighted as asked. The perceptual (LPIPS) term of the recipe stays
//! out: it needs pretrained VGG weights.

use infinity_autograd::conv::conv2d;
use infinity_autograd::elementwise::{
    abs, add, add_scalar, affine, clamp, log, mul, mul_scalar, neg, sigmoid, square, sub,
};
use infinity_autograd::optim::official_groups;
use infinity_autograd::reduce::{mean, sum};
use infinity_autograd::{AdamW, AdamWConfig, Params, Tape, Var};
use infinity_ops::conv::Conv2dParams;
use infinity_runtime::rng::Philox;
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
    /// The reconstruction (B, 3, H, W), on the tape.
    pub decoded: Var,
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
        decoded,
        commitment: scalar(&commitment)?,
        entropy: scalar(&entropy)?,
    })
}

fn scalar(v: &Var) -> Result<f32> {
    v.value().to_f32_vec()?.first().copied().ok_or_else(|| Error::invalid("train_vae", v.shape(), "an empty loss"))
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
    let (stats, _) = vae_step(params, optimizer, config, images, grids, settings, None)?;
    Ok(stats)
}

/// The adversary of a [`vae_gan_train_step`]: the discriminator and the weight of the VAE's
/// adversarial term (0 leaves the term out of the VAE's loss, as before `--disc-start`,
/// while the discriminator still learns).
pub struct Adversary<'a> {
    pub discriminator: &'a mut Discriminator,
    pub weight: f32,
}

/// What the adversarial part of a step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GanStats {
    /// The discriminator's hinge loss, mean(relu(1 − D(real))) + mean(relu(1 + D(fake))).
    pub disc_loss: f32,
    /// The VAE's adversarial term −mean(D(fake)), before its weight.
    pub gen_adv: f32,
}

/// [`vae_train_step`] with a discriminator: the VAE's loss gains `weight` · −mean(D(fake))
/// (D frozen for it), then the discriminator takes one AdamW step (same lr, weight decay and
/// clipping) on the images and the detached reconstructions, scored before the VAE's update.
pub fn vae_gan_train_step(
    params: &mut Params,
    optimizer: &mut AdamW,
    config: &BitVaeConfig,
    images: &Tensor,
    grids: &[(usize, usize)],
    settings: VaeStepSettings,
    adversary: Adversary,
) -> Result<(VaeStepStats, GanStats)> {
    let (stats, gan) = vae_step(params, optimizer, config, images, grids, settings, Some(adversary))?;
    let gan = gan.ok_or_else(|| Error::invalid("train_vae", &[], "the adversarial step reported nothing"))?;
    Ok((stats, gan))
}

/// The step both entry points share; with an adversary it also returns its stats.
fn vae_step(
    params: &mut Params,
    optimizer: &mut AdamW,
    config: &BitVaeConfig,
    images: &Tensor,
    grids: &[(usize, usize)],
    settings: VaeStepSettings,
    adversary: Option<Adversary>,
) -> Result<(VaeStepStats, Option<GanStats>)> {
    // The images join the parameters on their device (a copy only when they are elsewhere).
    let images = &images.to_device(&params.device())?;
    let (mut grads, stats, decoded, adversarial) = {
        let tape = Tape::new();
        let tracked = params.track(&tape)?;
        let model = BitVae::on_tape(config.clone(), &tracked)?;
        let losses = vae_losses(&model, images, grids, settings.losses)?;
        // The VAE's adversarial term, the discriminator's weights as constants: it trains the
        // VAE only.
        let adversarial = adversary
            .map(|adv| -> Result<(Adversary, Var)> {
                let frozen = |name: &str| Ok(Var::constant(adv.discriminator.params.get(name)?.clone()));
                let term = neg(&mean(&patch_logits(&losses.decoded, frozen)?, &[], false)?)?;
                Ok((adv, term))
            })
            .transpose()?;
        let total = match &adversarial {
            Some((adv, term)) if adv.weight != 0.0 => add(&losses.total, &mul_scalar(term, adv.weight)?)?,
            _ => losses.total,
        };
        let grads = tracked.gradients(tape.backward(&total)?);
        let stats = VaeStepStats {
            loss: scalar(&total)?,
            reconstruction: losses.reconstruction,
            commitment: losses.commitment,
            entropy: losses.entropy,
            grad_norm: 0.0,
        };
        let adversarial = adversarial.map(|(adv, term)| Ok::<_, Error>((adv, scalar(&term)?))).transpose()?;
        (grads, stats, losses.decoded.into_value(), adversarial)
    };
    // The tape is gone, so the parameters are private again: AdamW updates them in place.
    let stats = VaeStepStats { grad_norm: grads.clip_norm(settings.clip)?, ..stats };
    optimizer.step(params, &grads, settings.lr, settings.weight_decay)?;
    let gan = adversarial
        .map(|(adv, gen_adv)| -> Result<GanStats> {
            let disc_loss = adv.discriminator.step(images, &decoded, settings)?;
            Ok(GanStats { disc_loss, gen_adv })
        })
        .transpose()?;
    Ok((stats, gan))
}

/// A PatchGAN discriminator (pix2pix's 70×70 layout without normalisation): 4×4 convs of
/// stride 2, 2, 2, 1 from 3 to c, 2c, 4c and 1 channels (c = 64 in pix2pix), LeakyReLU(0.2)
/// between them, one real-vs-fake logit per patch; with its own parameters and AdamW.
pub struct Discriminator {
    pub params: Params,
    pub optimizer: AdamW,
}

/// The strides of the discriminator's convs, in order.
const DISC_STRIDES: [usize; 4] = [2, 2, 2, 1];
const DISC_KERNEL: usize = 4;
/// Key of the discriminator's Philox stream, apart from the VAE's stream of the same seed.
const DISC_STREAM: u64 = 0x6469_7363_7269_6d21;

impl Discriminator {
    /// `channels` (c) wide; weights drawn from N(0, 0.02²) (pix2pix's init), biases zero; the
    /// official AdamW groups.
    pub fn new(channels: usize, seed: u64, adamw: AdamWConfig) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid("discriminator", &[], "needs at least one channel"));
        }
        let widths = [3, channels, 2 * channels, 4 * channels, 1];
        let mut rng = Philox::new(seed ^ DISC_STREAM);
        let mut entries = Vec::with_capacity(2 * DISC_STRIDES.len());
        for (i, io) in widths.windows(2).enumerate() {
            let (cin, cout) = (io[0], io[1]);
            let shape = [cout, cin, DISC_KERNEL, DISC_KERNEL];
            let w: Vec<f32> = rng.normal(shape.iter().product()).into_iter().map(|x| 0.02 * x).collect();
            entries.push((format!("disc.{i}.weight"), Tensor::from_vec(w, &shape)?));
            entries.push((format!("disc.{i}.bias"), Tensor::from_vec(vec![0.0f32; cout], &[cout])?));
        }
        let params = Params::new(entries)?;
        let optimizer = AdamW::new(adamw, official_groups(&params))?;
        Ok(Discriminator { params, optimizer })
    }

    /// One hinge-loss AdamW step on `real` and `fake` images (both constants); the loss.
    fn step(&mut self, real: &Tensor, fake: &Tensor, settings: VaeStepSettings) -> Result<f32> {
        let (loss, mut grads) = {
            let tape = Tape::new();
            let tracked = self.params.track(&tape)?;
            let weight = |name: &str| tracked.get(name).cloned();
            let real = patch_logits(&Var::constant(real.clone()), weight)?;
            let fake = patch_logits(&Var::constant(fake.clone()), weight)?;
            let real_term = mean(&relu(&affine(&real, -1.0, 1.0)?)?, &[], false)?;
            let fake_term = mean(&relu(&add_scalar(&fake, 1.0)?)?, &[], false)?;
            let loss = add(&real_term, &fake_term)?;
            (scalar(&loss)?, tracked.gradients(tape.backward(&loss)?))
        };
        grads.clip_norm(settings.clip)?;
        self.optimizer.step(&mut self.params, &grads, settings.lr, settings.weight_decay)?;
        Ok(loss)
    }
}

/// The discriminator's patch logits (B, 1, h, w) of `images`, its weights looked up by name.
fn patch_logits(images: &Var, weight: impl Fn(&str) -> Result<Var>) -> Result<Var> {
    let mut x = images.clone();
    for (i, &stride) in DISC_STRIDES.iter().enumerate() {
        let (w, b) = (weight(&format!("disc.{i}.weight"))?, weight(&format!("disc.{i}.bias"))?);
        x = conv2d(&x, &w, Some(&b), Conv2dParams::new(stride, 1))?;
        if i + 1 < DISC_STRIDES.len() {
            // LeakyReLU(0.2) composed as 0.2·x + 0.8·relu(x): autograd has no leaky op.
            x = add(&mul_scalar(&x, 0.2)?, &mul_scalar(&relu(&x)?, 0.8)?)?;
        }
    }
    Ok(x)
}

/// max(x, 0), as a clamp with no upper bound.
fn relu(x: &Var) -> Result<Var> {
    clamp(x, 0.0, f32::INFINITY)
}
