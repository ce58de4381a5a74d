//! Training the Infinity transformer (spec §7): one optimisation step — the teacher-forced
//! forward on a tape, the bitwise loss with its per-token weighting, backward, global
//! gradient-norm clipping and AdamW — and the per-scale statistics a trainer logs. Shared by
//! `infinity-train` and the parity test against the official trainer, so both run one code path.
//! [`evaluate`] scores a model the same way without training it (held-out loss and accuracy).

use infinity_autograd::buckets::{BUCKET_BYTES, BucketedMean};
use infinity_autograd::loss::{BitwiseLoss, bitwise_cross_entropy};
use infinity_autograd::zero::{Reduction, Update};
use infinity_autograd::{GradStore, Params, Tape, Tracked, Var};
use infinity_ops::index::concat;
use infinity_runtime::collective::Collective;
use infinity_runtime::{Error, Result, Tensor};

use crate::data::Dataset;
use crate::infinity::TokenLayout;
use crate::infinity::teacher::{Flips, TeacherForcing, teacher_forcing};
use crate::infinity::{Conditioning, Infinity, InfinityConfig};
use crate::pipeline::Pipeline;
use crate::schedule::Schedule;
use crate::t5::{T5Config, T5Encoder};

/// Prefix of a text encoder's parameters when it trains with the transformer: both share one
/// parameter set, optimiser and checkpoint.
pub const TEXT_ENCODER_PREFIX: &str = "text_encoder.";

/// One sample's text.
#[derive(Clone, Debug)]
pub enum StepText {
    /// Features (Lᵢ, text_channels) of a frozen encoder, or the [`null_text`] of a dropped caption.
    Features(Tensor),
    /// Token ids (EOS last) for the text encoder that trains with the transformer.
    Tokens(Vec<u32>),
}

/// What one step trains on.
pub struct StepBatch<'a> {
    /// Per sample, its text.
    pub prompts: &'a [StepText],
    /// The text encoder training alongside, whose parameters are in the step's set under
    /// [`TEXT_ENCODER_PREFIX`]; required when any prompt is [`StepText::Tokens`].
    pub text_encoder: Option<&'a T5Config>,
    /// Labels and next-scale inputs of the batch's latents.
    pub targets: &'a TeacherForcing,
    pub schedule: &'a Schedule,
}

/// How the loss weighs the tokens of the sequence (spec §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenWeighting {
    /// 1/L each: the official trainer without `reweight_loss_by_scale`.
    Uniform,
    /// ∝ √(h_last·w_last) / √(h_k·w_k) for a token of scale k, normalised to sum 1, so the few
    /// coarse tokens count as much as the many fine ones: scripts/train.sh's setting. (The
    /// released trainer builds it with a tuple `.prod()` that raises; this is its intended formula.)
    ByScale,
}

/// The weight of every token (L), summing to 1.
pub fn token_weights(schedule: &Schedule, weighting: TokenWeighting) -> Result<Tensor> {
    let l = schedule.seq_len();
    let weights: Vec<f32> = match weighting {
        TokenWeighting::Uniform => vec![1.0 / l as f32; l],
        TokenWeighting::ByScale => {
            let (h, w) = schedule.last();
            let last = ((h * w) as f64).sqrt();
            let raw: Vec<f64> =
                schedule.tokens().flat_map(|n| std::iter::repeat_n(last / (n as f64).sqrt(), n)).collect();
            let total: f64 = raw.iter().sum();
            raw.into_iter().map(|x| (x / total) as f32).collect()
        }
    };
    Tensor::from_vec(weights, &[l])
}

/// The optimiser's settings for one step (scheduled values already applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    pub lr: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; `f32::INFINITY` never clips.
    pub clip: f32,
    pub weighting: TokenWeighting,
    /// Activation checkpointing per block ([`Infinity::recompute_blocks`]).
    pub recompute_blocks: bool,
}

/// What a step reports.
pub struct StepStats {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Per scale: the mean cross-entropy over the batch and the scale's tokens.
    pub scale_loss: Vec<f32>,
    /// Per scale: the fraction of predictions (bits, or VAR's codes) whose likeliest value is
    /// the label.
    pub scale_accuracy: Vec<f32>,
    /// The gradients the optimiser applied (after clipping); empty under ZeRO-1, where each
    /// rank holds only its part of them.
    pub grads: GradStore,
}

/// One AdamW step of `params` on `batches`, micro-batches whose gradients are accumulated,
/// each weighted 1/n (the official trainer's loss × 1/ac), then averaged over the ranks of
/// `world` (each holding its share of the global batch), before clipping and the update; the
/// reported loss and per-scale figures are the means over micro-batches and ranks, so every
/// rank takes the same step and reports the same figures. `optimizer` must hold groups over
/// `params`' names.
pub fn train_step(
    params: &mut Params,
    optimizer: &mut dyn Update,
    config: &InfinityConfig,
    batches: &[StepBatch],
    settings: StepSettings,
    world: &dyn Collective,
) -> Result<StepStats> {
    let micro =
        |params: &Params, i: usize, on_grad: &mut OnGrad| gradients(params, config, &batches[i], settings, on_grad);
    optimizer_step(params, optimizer, batches.len(), micro, (settings.lr, settings.weight_decay, settings.clip), world)
}

/// What one micro-batch reports to a step (its gradients go to the step's [`OnGrad`]).
pub(crate) struct MicroBatch {
    pub(crate) loss: f32,
    pub(crate) scale_loss: Vec<f32>,
    pub(crate) scale_accuracy: Vec<f32>,
}

/// Where a micro-batch's backward pass hands each parameter's gradient, by name, as soon as
/// it is final ([`Tracked::backward`]).
pub(crate) type OnGrad<'a> = dyn FnMut(&str, Tensor) -> Result<()> + 'a;

/// The step every model trains by: `n` micro-batches (`micro(params, i, on_grad)` each, handing
/// its gradients to `on_grad`) whose gradients are accumulated, each weighted 1/n, averaged
/// over the ranks of `world`, clipped to the global norm `clip` and applied by `optimizer`
/// (AdamW, replicated or sharded by ZeRO-1) with `lr` and `weight_decay`; the figures are the
/// means over micro-batches and ranks, so every rank takes the same step and reports the same.
pub(crate) fn optimizer_step(
    params: &mut Params,
    optimizer: &mut dyn Update,
    n: usize,
    mut micro: impl FnMut(&Params, usize, &mut OnGrad) -> Result<MicroBatch>,
    (lr, weight_decay, clip): (f64, f64, f32),
    world: &dyn Collective,
) -> Result<StepStats> {
    if n == 0 {
        return Err(Error::invalid("train.step", &[0], "a step needs at least one micro-batch"));
    }
    let share = 1.0 / n as f32;
    let (mut loss, mut scale_loss, mut scale_accuracy) = (0.0, Vec::new(), Vec::new());
    // The ranks' mean is all-reduced in buckets during the last micro-batch's backward pass,
    // unless the optimizer reduces the gradients itself (ZeRO-1) or there is one rank.
    let bucketed = world.world_size() > 1 && optimizer.reduction() == Reduction::Mean;
    let grads = std::thread::scope(|scope| -> Result<GradStore> {
        let mut sums = GradStore::default();
        let mut mean = bucketed.then(|| BucketedMean::start(scope, params, world, BUCKET_BYTES));
        for i in 0..n {
            let last = i + 1 == n;
            let mut on_grad = |name: &str, g: Tensor| -> Result<()> {
                sums.add_scaled(name, &g, share)?;
                match &mut mean {
                    Some(mean) if last => mean.push(name, sums.take(name).expect("added just now")),
                    _ => Ok(()),
                }
            };
            let micro = micro(params, i, &mut on_grad)?;
            loss += share * micro.loss;
            let mean_into = |sum: &mut Vec<f32>, part: &[f32]| {
                sum.resize(part.len(), 0.0);
                sum.iter_mut().zip(part).for_each(|(s, &p)| *s += share * p);
            };
            mean_into(&mut scale_loss, &micro.scale_loss);
            mean_into(&mut scale_accuracy, &micro.scale_accuracy);
        }
        match mean {
            Some(mut mean) => {
                // Parameters reached by earlier micro-batches only.
                for (name, g) in sums.iter() {
                    mean.push(name, g.clone())?;
                }
                mean.finish(world)
            }
            None => Ok(sums.ordered_as(params)),
        }
    })?;
    if world.world_size() > 1 {
        let figures = [&[loss][..], &scale_loss, &scale_accuracy].concat();
        let means = world.all_reduce_mean(&[Tensor::from_vec(figures, &[1 + 2 * scale_loss.len()])?])?;
        let means = means[0].to_f32_vec()?;
        let scales = scale_loss.len();
        loss = means[0];
        scale_loss = means[1..=scales].to_vec();
        scale_accuracy = means[1 + scales..].to_vec();
    }
    // The tapes are gone, so the parameters are private again: AdamW updates them in place
    // instead of copying them.
    let (grad_norm, grads) = optimizer.update(params, grads, (lr, weight_decay, clip), world)?;
    Ok(StepStats { loss, grad_norm, scale_loss, scale_accuracy, grads })
}

/// The loss, per-scale figures and gradients of one micro-batch.
fn gradients(
    params: &Params,
    config: &InfinityConfig,
    batch: &StepBatch,
    settings: StepSettings,
    on_grad: &mut OnGrad,
) -> Result<MicroBatch> {
    let tape = Tape::new();
    let tracked = params.track(&tape)?;
    let model = Infinity::on_tape(config.clone(), &tracked)?.recompute_blocks(settings.recompute_blocks);
    let cond = model.condition_vars(&text_features(batch, &tracked)?)?;
    let (loss, scale_accuracy) = score(&model, &cond, batch.targets, batch.schedule, settings.weighting)?;
    let figures = MicroBatch {
        loss: loss.loss.value().to_f32_vec()?[0],
        scale_loss: scale_means(&loss.per_token, &batch.schedule.offsets())?,
        scale_accuracy,
    };
    tracked.backward(&tape, &loss.loss, on_grad)?;
    Ok(figures)
}

/// The teacher-forced loss of `targets` and the per-scale bit accuracy.
fn score(
    model: &Infinity,
    cond: &Conditioning,
    targets: &TeacherForcing,
    schedule: &Schedule,
    weighting: TokenWeighting,
) -> Result<(BitwiseLoss, Vec<f32>)> {
    let labels = flat_labels(&targets.labels)?;
    let logits = model.teacher_forced_logits(cond, &targets.inputs, schedule)?;
    let loss = bitwise_cross_entropy(&logits, &labels, &token_weights(schedule, weighting)?)?;
    let accuracy = scale_accuracy(logits.value(), &labels, &schedule.offsets())?;
    // In training, our handle would keep the largest activation alive through the backward
    // sweep, which otherwise frees it once its gradient is taken.
    drop(logits);
    Ok((loss, accuracy))
}

/// A model's scores on one batch, without training it.
pub struct EvalStats {
    /// The weighted loss of the batch (the training objective).
    pub loss: f32,
    /// Per scale: the mean cross-entropy over the batch and the scale's tokens.
    pub scale_loss: Vec<f32>,
    /// Per scale: the fraction of bits whose likelier value is the label.
    pub scale_accuracy: Vec<f32>,
}

/// The teacher-forced loss and bit accuracy of `model` on one batch: `prompts` the features
/// (Lᵢ, text_channels) of each sample's caption.
pub fn evaluate(
    model: &Infinity,
    prompts: &[Tensor],
    targets: &TeacherForcing,
    schedule: &Schedule,
    weighting: TokenWeighting,
) -> Result<EvalStats> {
    let cond = model.condition(prompts)?;
    let (loss, scale_accuracy) = score(model, &cond, targets, schedule, weighting)?;
    Ok(EvalStats {
        loss: loss.loss.value().to_f32_vec()?[0],
        scale_loss: scale_means(&loss.per_token, &schedule.offsets())?,
        scale_accuracy,
    })
}

/// A model's scores on a whole data set: sample-weighted means over its batches.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetScores {
    /// Items scored (those whose image loaded).
    pub items: usize,
    pub loss: f64,
    pub scale_loss: Vec<f64>,
    pub scale_accuracy: Vec<f64>,
}

/// Scores `pipeline` on every item of `dataset` once, with its whole caption, `batch` images
/// per forward pass at the data set's pixel budget, the loss weighted by scale (the training
/// objective); `scored(n)` is told after each batch. Errors when no image loads.
pub fn evaluate_dataset(
    pipeline: &Pipeline,
    dataset: &Dataset,
    batch: usize,
    mut scored: impl FnMut(usize),
) -> Result<DatasetScores> {
    if batch == 0 {
        return Err(Error::invalid("train.evaluate_dataset", &[batch], "a batch holds at least one image"));
    }
    let scales = dataset.budget().num_scales();
    let mut sums =
        DatasetScores { items: 0, loss: 0.0, scale_loss: vec![0.0; scales], scale_accuracy: vec![0.0; scales] };
    for bucket in dataset.buckets() {
        let schedule = bucket.template.schedule(dataset.budget());
        for chunk in bucket.items.chunks(batch) {
            let (images, captions): (Vec<Tensor>, Vec<&str>) = chunk
                .iter()
                .filter_map(|&i| Some((dataset.load_image(i)?, dataset.items()[i].caption.long.as_str())))
                .unzip();
            if images.is_empty() {
                continue;
            }
            let latent = pipeline.vae.encode(&concat(&images.iter().collect::<Vec<_>>(), 0)?)?;
            let layout = TokenLayout::of(&pipeline.transformer.config);
            let targets = teacher_forcing(&latent, &schedule.grids, layout, Flips::None)?;
            let prompts: Vec<Tensor> = pipeline.encode_prompts(&captions)?.into_iter().map(|p| p.features).collect();
            let stats = evaluate(&pipeline.transformer, &prompts, &targets, &schedule, TokenWeighting::ByScale)?;
            let n = images.len() as f64;
            sums.loss += f64::from(stats.loss) * n;
            for (sum, values) in
                [(&mut sums.scale_loss, &stats.scale_loss), (&mut sums.scale_accuracy, &stats.scale_accuracy)]
            {
                sum.iter_mut().zip(values).for_each(|(s, v)| *s += f64::from(*v) * n);
            }
            sums.items += images.len();
            scored(sums.items);
        }
    }
    if sums.items == 0 {
        return Err(Error::format(dataset.dir(), "no image of the dataset could be loaded"));
    }
    let n = sums.items as f64;
    sums.loss /= n;
    sums.scale_loss.iter_mut().chain(&mut sums.scale_accuracy).for_each(|x| *x /= n);
    Ok(sums)
}

/// Every prompt's features as a `Var`: the given ones as constants, the tokenised ones encoded
/// together by the text encoder on the step's tape.
fn text_features(batch: &StepBatch, tracked: &Tracked) -> Result<Vec<Var>> {
    let tokens: Vec<&[u32]> = batch
        .prompts
        .iter()
        .filter_map(|p| match p {
            StepText::Tokens(ids) => Some(ids.as_slice()),
            StepText::Features(_) => None,
        })
        .collect();
    let mut encoded = match (batch.text_encoder, tokens.is_empty()) {
        (_, true) => Vec::new(),
        (Some(config), false) => {
            T5Encoder::on_tape(config.clone(), tracked, TEXT_ENCODER_PREFIX)?.encode_vars(&tokens)?
        }
        (None, false) => {
            return Err(Error::invalid("train.step", &[tokens.len()], "token prompts need a text encoder to train"));
        }
    }
    .into_iter();
    batch
        .prompts
        .iter()
        .map(|p| match p {
            StepText::Features(t) => Ok(Var::constant(t.clone())),
            // One encoded prompt per token prompt, in order.
            StepText::Tokens(_) => encoded.next().ok_or_else(|| Error::invalid("train.step", &[], "prompt count")),
        })
        .collect()
}

/// The learned null text for a caption of `len` tokens: the first `len` rows of the
/// parameter `cfg_uncond`, taken as data (the rule of the model's own CFG null text), so
/// caption dropout trains the unconditional branch guidance uses.
pub fn null_text(params: &Params, len: usize) -> Result<Tensor> {
    let table = params.get("cfg_uncond")?;
    let rows = table.dim(0)?;
    if len > rows {
        return Err(Error::invalid(
            "train.null_text",
            &[len],
            format!("a caption of {len} tokens is longer than the {rows} rows of cfg_uncond"),
        ));
    }
    table.narrow(0, 0, len)
}

/// Per-scale (B, h, w, d) labels flattened and concatenated to (B, L, d), the loss's layout.
fn flat_labels(labels: &[Tensor]) -> Result<Tensor> {
    let rows = labels
        .iter()
        .map(|t| match t.shape() {
            &[b, h, w, d] => t.reshape(&[b, h * w, d]),
            s => Err(Error::invalid("train.flat_labels", s, "labels must be (B, h, w, d)")),
        })
        .collect::<Result<Vec<_>>>()?;
    concat(&rows.iter().collect::<Vec<_>>(), 1)
}

/// Means of `per_token` (B, L) over the batch and the tokens of each scale.
pub(crate) fn scale_means(per_token: &Tensor, offsets: &[usize]) -> Result<Vec<f32>> {
    let l = per_token.dim(1)?;
    let values = per_token.to_vec::<f32>()?;
    Ok(offsets
        .windows(2)
        .map(|w| {
            let sum: f64 = values.chunks(l).flat_map(|row| &row[w[0]..w[1]]).map(|&v| f64::from(v)).sum();
            (sum / ((w[1] - w[0]) * (values.len() / l)) as f64) as f32
        })
        .collect())
}

/// Per scale, the fraction of bits of `labels` (B, L, d) whose larger logit of the pair in
/// `logits` (B, L, 2d) is the label's.
fn scale_accuracy(logits: &Tensor, labels: &Tensor, offsets: &[usize]) -> Result<Vec<f32>> {
    let (x, y) = (logits.to_f32_vec()?, labels.to_vec::<u8>()?);
    let (l, d) = (labels.dim(1)?, labels.dim(2)?);
    let batch = labels.dim(0)?;
    Ok(offsets
        .windows(2)
        .map(|w| {
            let mut hits = 0usize;
            for b in 0..batch {
                for t in b * l + w[0]..b * l + w[1] {
                    hits += (0..d)
                        .filter(|&k| u8::from(x[t * 2 * d + 2 * k + 1] > x[t * 2 * d + 2 * k]) == y[t * d + k])
                        .count();
                }
            }
            hits as f32 / (batch * (w[1] - w[0]) * d).max(1) as f32
        })
        .collect())
}
