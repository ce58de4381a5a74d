//! Scale-by-scale generation: each scale's bits are sampled from the head's logits, turned
//! into codes, accumulated at the final latent grid, and the accumulation resized to the next
//! scale becomes that scale's input.
//!
//! One generation may carry several [`Group`]s of rows (a server batching unrelated requests):
//! the transformer runs over all rows at once, and each group's bits are drawn with its own
//! knobs from its own random stream, so a group's images do not depend on what it was batched
//! with.

use std::ops::ControlFlow;

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
    /// (B, d_vae, H, W): the codes summed so far at the final VAE grid (what the decoder would
    /// turn into the image as it stands after this scale).
    pub summed_codes: &'a Tensor,
}

/// Rows of a generation that share their sampling knobs and random stream: one request.
pub struct Group<'a> {
    /// T5 features (Lᵢ, text_channels), one per row.
    pub prompts: &'a [Tensor],
    /// Features for the unconditional half, one per row; without them the learned null text.
    pub negatives: Option<&'a [Tensor]>,
    pub sampling: &'a SamplingConfig,
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
    mut observe: impl FnMut(ScaleStep),
) -> Result<Generated> {
    let group = Group { prompts, negatives, sampling };
    let run = generate_groups(model, &[group], schedule, forced, |step| {
        observe(step);
        ControlFlow::Continue(())
    })?;
    run.ok_or_else(|| Error::invalid("generate", &[], "stopped without being asked to"))
}

/// [`generate`] over several groups of rows at once (their rows in order make the batch);
/// `observe` may stop the generation after any scale, and then nothing is returned.
pub fn generate_groups(
    model: &Infinity,
    groups: &[Group],
    schedule: &Schedule,
    forced: &[Tensor],
    observe: impl FnMut(ScaleStep) -> ControlFlow<()>,
) -> Result<Option<Generated>> {
    let with_uncond = groups.iter().any(|g| g.sampling.uses_cfg());
    let cond = conditioning(model, groups, schedule, with_uncond)?;
    let session = model.session(&cond, schedule)?;
    let mut scales = Scales { model, session, schedule, with_uncond };
    sample_scales(&mut scales, groups, forced, observe)
}

/// The conditioning of a generation (the doubled CFG batch when guidance is on anywhere), after
/// checking each group's knobs against the schedule.
fn conditioning(model: &Infinity, groups: &[Group], schedule: &Schedule, with_uncond: bool) -> Result<Conditioning> {
    let num_scales = schedule.num_scales();
    if num_scales > 15 {
        return Err(Error::invalid("generate", &[num_scales], "schedules have at most 15 scales"));
    }
    let mut prompts = Vec::new();
    let mut negatives = Vec::new();
    for g in groups {
        g.sampling.validate(num_scales)?;
        prompts.extend_from_slice(g.prompts);
        match g.negatives {
            Some(neg) if neg.len() == g.prompts.len() => negatives.extend_from_slice(neg),
            Some(neg) => {
                let msg = format!("{} negative prompts for {} prompts", neg.len(), g.prompts.len());
                return Err(Error::invalid("generate", &[neg.len()], msg));
            }
            // The learned null text only where an unconditional half runs.
            None if !with_uncond => {}
            None => {
                for p in g.prompts {
                    negatives.push(model.text.null_text(p.dim(0)?)?);
                }
            }
        }
    }
    if prompts.is_empty() {
        return Err(Error::invalid("generate", &[], "no prompts to generate from"));
    }
    if with_uncond { model.condition_cfg(&prompts, Some(&negatives)) } else { model.condition(&prompts) }
}

/// Each group's rows of the batch, (first, count), for groups of `sizes` rows in order.
pub fn row_spans(sizes: impl IntoIterator<Item = usize>) -> Vec<(usize, usize)> {
    sizes
        .into_iter()
        .scan(0, |start, n| {
            let span = (*start, n);
            *start += n;
            Some(span)
        })
        .collect()
}

/// Group `g`'s rows of logits (R, n, 2·bits) whose batch is `batch` rows: its conditional rows
/// and, with guidance, its unconditional rows after them, as a generation of the group alone
/// would have them.
fn group_logits(raw: &Tensor, batch: usize, (start, rows): (usize, usize)) -> Result<Tensor> {
    if rows == batch {
        return Ok(raw.clone());
    }
    let cond = raw.narrow(0, start, rows)?;
    if raw.dim(0)? == batch {
        return Ok(cond);
    }
    concat(&[&cond, &raw.narrow(0, batch + start, rows)?], 0)
}

/// The scale loop of [`generate_groups`]: the bits are sampled per token and their codes summed
/// in the VAE's layout (see [`TokenLayout`]), whose resizes make the next scale's input.
fn sample_scales(
    scales: &mut Scales,
    groups: &[Group],
    forced: &[Tensor],
    mut observe: impl FnMut(ScaleStep) -> ControlFlow<()>,
) -> Result<Option<Generated>> {
    let (schedule, bits_dim) = (scales.schedule, scales.model.config.bits);
    let layout = TokenLayout::of(&scales.model.config);
    let num_scales = schedule.num_scales();
    let full = layout.vae_grid(schedule.last());
    let vae_bits = bits_dim / layout.token_bits(1);
    let batch: usize = groups.iter().map(|g| g.prompts.len()).sum();
    let spans = row_spans(groups.iter().map(|g| g.prompts.len()));
    let mut summed = Tensor::zeros(&[batch, vae_bits, full.0, full.1], DType::F32);
    let mut rngs: Vec<Philox> = groups.iter().map(|g| Philox::new(g.sampling.seed)).collect();
    let mut input: Option<Tensor> = None;
    let mut all_bits = Vec::with_capacity(num_scales);

    for (k, &(h, w)) in schedule.grids.iter().enumerate() {
        let raw = scales.logits(k, input.as_ref())?;
        // Drawn where the logits are: only the bits come to the host.
        let mut drawn = Vec::with_capacity(groups.len());
        for ((g, &span), rng) in groups.iter().zip(&spans).zip(&mut rngs) {
            let logits = group_logits(&raw, batch, span)?;
            drawn.push(sample_bits(&logits, span.1, &g.sampling.at(k)?, rng)?.to_cpu()?);
        }
        let sampled = match drawn.as_slice() {
            [one] => one.clone(),
            _ => concat(&drawn.iter().collect::<Vec<_>>(), 0)?,
        }
        .reshape(&[batch, h, w, bits_dim])?;
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
        let step =
            ScaleStep { index: k, raw_logits: &raw, bits: &bits, next_input: next.as_ref(), summed_codes: &summed };
        if observe(step).is_break() {
            return Ok(None);
        }
        input = next;
        all_bits.push(bits);
    }
    Ok(Some(Generated { bits: all_bits, summed_codes: summed }))
}
