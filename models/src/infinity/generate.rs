//! Scale-by-scale generation: each scale's bits are sampled from the head's logits, turned
//! into codes, accumulated at the final latent grid, and the accumulation resized to the next
//! scale becomes that scale's input.

use infinity_ops::bitwise::sample_bits;
use infinity_ops::elementwise::add;
use infinity_ops::index::concat;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::layout::TokenLayout;
use super::model::{Infinity, Session};
use super::sampler::SamplingConfig;
use super::text::Conditioning;
use crate::bitvae::quantizer::{codes_from_bits, resize_codes};
use crate::schedule::Schedule;

/// What a caller may observe after each scale (for progress and for parity tests).
pub struct ScaleStep<'a> {
    pub index: usize,
    /// Head output before τ and guidance: (2B, n, 2d) with guidance, else (B, n, 2d), on the
    /// model's device.
    pub raw_logits: &'a Tensor,
    /// (B, h, w, d) bits chosen at this scale, d the token's bits (4 VAE positions' with
    /// spatial patchify, see [`TokenLayout`]).
    pub bits: &'a Tensor,
    /// (B, n_next, d): the next scale's input, absent after the last scale.
    pub next_input: Option<&'a Tensor>,
}

pub struct Generated {
    /// Per scale (B, h, w, d) u8, token bits.
    pub bits: Vec<Tensor>,
    /// (B, d_vae, H, W) at the final VAE grid: the VAE decoder's input.
    pub summed_codes: Tensor,
}

/// The transformer as generation drives it, over one batch of conditioning.
struct Scales<'a> {
    model: &'a Infinity,
    session: Session<'a>,
    schedule: &'a Schedule,
    with_uncond: bool,
}

impl Scales<'_> {
    /// Raw logits (R, n, 2·bits) of scale `k` on the model's device (R = B, or 2B with the
    /// unconditional half), fed the start tokens at k = 0 and the next-scale input (B, n, bits)
    /// after that; each call extends the KV caches by the scale's tokens.
    fn logits(&mut self, k: usize, input: Option<&Tensor>) -> Result<Tensor> {
        let cond = self.session.cond;
        let x = match input {
            None => self.model.start_tokens(cond)?,
            // Doubled on the host, before the upload: one embedding for both halves.
            Some(u) if self.with_uncond => self.model.embed(&concat(&[u, u], 0)?)?,
            Some(u) => self.model.embed(u)?,
        };
        let hidden = self.model.forward_scale(&mut self.session, &x, self.schedule, k)?;
        Ok(self.model.logits(cond, &hidden)?.into_value())
    }
}

/// Generates the bits of `prompts` (T5 features (Lᵢ, text_channels) each), optionally with
/// negative prompts for the unconditional half. `forced` replaces the sampled bits of the first
/// scales (teacher forcing of a generation, used to compare with a reference run).
pub fn generate(
    model: &Infinity,
    prompts: &[Tensor],
    negatives: Option<&[Tensor]>,
    schedule: &Schedule,
    sampling: &SamplingConfig,
    forced: &[Tensor],
    observe: impl FnMut(ScaleStep),
) -> Result<Generated> {
    let cond = conditioning(model, prompts, negatives, schedule, sampling)?;
    let session = model.session(&cond, schedule)?;
    let mut scales = Scales { model, session, schedule, with_uncond: sampling.uses_cfg() };
    sample_scales(&mut scales, prompts.len(), sampling, forced, observe)
}

/// The conditioning of a generation (the doubled CFG batch when guidance is on), after
/// checking the sampling knobs against the schedule.
fn conditioning(
    model: &Infinity,
    prompts: &[Tensor],
    negatives: Option<&[Tensor]>,
    schedule: &Schedule,
    sampling: &SamplingConfig,
) -> Result<Conditioning> {
    let num_scales = schedule.num_scales();
    sampling.validate(num_scales)?;
    if num_scales > 15 {
        return Err(Error::invalid("generate", &[num_scales], "schedules have at most 15 scales"));
    }
    if sampling.uses_cfg() { model.condition_cfg(prompts, negatives) } else { model.condition(prompts) }
}

/// The scale loop of [`generate`] over `batch` prompts: the bits are sampled per token and
/// their codes summed in the VAE's layout (see [`TokenLayout`]), whose resizes make the next
/// scale's input.
fn sample_scales(
    scales: &mut Scales,
    batch: usize,
    sampling: &SamplingConfig,
    forced: &[Tensor],
    mut observe: impl FnMut(ScaleStep),
) -> Result<Generated> {
    let (schedule, bits_dim) = (scales.schedule, scales.model.config.bits);
    let layout = TokenLayout::of(&scales.model.config);
    let num_scales = schedule.num_scales();
    let full = layout.vae_grid(schedule.last());
    let vae_bits = bits_dim / layout.token_bits(1);
    let mut summed = Tensor::zeros(&[batch, vae_bits, full.0, full.1], DType::F32);
    let mut rng = Philox::new(sampling.seed);
    let mut input: Option<Tensor> = None;
    let mut all_bits = Vec::with_capacity(num_scales);

    for (k, &(h, w)) in schedule.grids.iter().enumerate() {
        let raw = scales.logits(k, input.as_ref())?;
        // Drawn where the logits are: only the bits come to the host.
        let sampled =
            sample_bits(&raw, batch, &sampling.at(k)?, &mut rng)?.to_cpu()?.reshape(&[batch, h, w, bits_dim])?;
        let bits = match forced.get(k) {
            Some(f) if f.shape() == sampled.shape() => f.clone(),
            Some(f) => {
                return Err(Error::ShapeMismatch {
                    op: "generate (forced bits)",
                    lhs: f.shape().to_vec(),
                    rhs: sampled.shape().to_vec(),
                });
            }
            None => sampled,
        };
        summed = add(&summed, &resize_codes(&codes_from_bits(&layout.bits_to_vae(&bits)?)?, full)?)?;
        let next = (schedule.grids.get(k + 1))
            .map(|&grid| layout.tokens(&resize_codes(&summed, layout.vae_grid(grid))?))
            .transpose()?;
        observe(ScaleStep { index: k, raw_logits: &raw, bits: &bits, next_input: next.as_ref() });
        input = next;
        all_bits.push(bits);
    }
    Ok(Generated { bits: all_bits, summed_codes: summed })
}
