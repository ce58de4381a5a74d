//! Training the VAR transformer as the official trainer does: the frozen VQVAE's tokens of
//! each image at every scale are the targets, their teacher-forcing input the model's input;
//! the loss is the codebook cross-entropy of every token weighted 1/L, summed over tokens and
//! averaged over the batch; labels are replaced by the null class with the label-dropout
//! probability (10%) so that the model also learns the unconditional distribution CFG needs.

use infinity_autograd::loss::cross_entropy;
use infinity_autograd::zero::Update;
use infinity_autograd::{Params, Tape};
use infinity_ops::index::concat;
use infinity_runtime::collective::Collective;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Error, Result, Tensor};

use super::config::VarConfig;
use super::model::VarTransformer;
use super::vqvae::VqVae;
use crate::train::{MicroBatch, OnGrad, StepStats, optimizer_step, scale_means};

/// The official label-dropout probability (`cond_drop_rate`).
pub const LABEL_DROPOUT: f32 = 0.1;

/// One micro-batch's training data.
pub struct VarBatch {
    /// Per sample its class, or the null class where dropped.
    pub labels: Vec<usize>,
    /// Teacher-forcing input (B, L − 1, Cvae).
    pub inputs: Tensor,
    /// Every token of every scale (B, L) I64: the targets.
    pub targets: Tensor,
}

impl VarBatch {
    /// The batch of `images` (B, 3, H, W) in [−1, 1] of classes `labels`: their tokens under
    /// the frozen `vae`, each label dropped to the null class with probability `dropout`
    /// (one uniform per sample from `rng`).
    pub fn encode(
        vae: &VqVae,
        config: &VarConfig,
        images: &Tensor,
        labels: &[usize],
        dropout: f32,
        rng: &mut Philox,
    ) -> Result<Self> {
        let (indices, _) = vae.encode(images, &config.patch_nums)?;
        let inputs = vae.teacher_input(&indices, &config.patch_nums)?;
        let targets = concat(&indices.iter().collect::<Vec<_>>(), 1)?.to_cpu()?;
        let labels = labels
            .iter()
            .zip(rng.uniform(labels.len()))
            .map(|(&l, u)| if u < dropout { config.null_class() } else { l })
            .collect();
        Ok(VarBatch { labels, inputs, targets })
    }
}

/// The optimiser's settings for one step (scheduled values already applied).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VarStepSettings {
    pub lr: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm (official `tclip` 2); `f32::INFINITY` never clips.
    pub clip: f32,
}

/// One AdamW step of `params` on the micro-batches `batches` (see `train::optimizer_step`):
/// the figures per scale are the mean cross-entropy and the top-1 accuracy of the codes.
pub fn train_step(
    params: &mut Params,
    optimizer: &mut dyn Update,
    config: &VarConfig,
    batches: &[VarBatch],
    settings: VarStepSettings,
    world: &dyn Collective,
) -> Result<StepStats> {
    let micro = |params: &Params, i: usize, on_grad: &mut OnGrad| gradients(params, config, &batches[i], on_grad);
    optimizer_step(params, optimizer, batches.len(), micro, (settings.lr, settings.weight_decay, settings.clip), world)
}

/// The weighted loss of a batch: the training objective, without a step.
pub fn loss(model: &VarTransformer, batch: &VarBatch) -> Result<f32> {
    let logits = model.teacher_forced(&batch.labels, &batch.inputs)?;
    cross_entropy(&logits, &batch.targets, &uniform_weights(&model.config)?)?.loss.value().to_f32_vec().map(|v| v[0])
}

fn uniform_weights(config: &VarConfig) -> Result<Tensor> {
    let l = config.seq_len();
    Ok(Tensor::full(&[l], 1.0 / l as f32, infinity_runtime::DType::F32))
}

fn gradients(params: &Params, config: &VarConfig, batch: &VarBatch, on_grad: &mut OnGrad) -> Result<MicroBatch> {
    if batch.targets.shape() != [batch.labels.len(), config.seq_len()] {
        return Err(Error::invalid(
            "var.train",
            batch.targets.shape(),
            format!("expected targets (B, {})", config.seq_len()),
        ));
    }
    let tape = Tape::new();
    let tracked = params.track(&tape)?;
    let model = VarTransformer::on_tape(config.clone(), &tracked)?;
    let logits = model.teacher_forced(&batch.labels, &batch.inputs)?;
    let out = cross_entropy(&logits, &batch.targets, &uniform_weights(config)?)?;
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(config.patch_nums.iter().scan(0, |acc, p| {
            *acc += p * p;
            Some(*acc)
        }))
        .collect();
    let scale_accuracy = accuracy(logits.value(), &batch.targets, &offsets)?;
    // The backward sweep frees the logits once their gradient is taken; our handle would not.
    drop(logits);
    let figures = MicroBatch {
        loss: out.loss.value().to_f32_vec()?[0],
        scale_loss: scale_means(&out.per_token, &offsets)?,
        scale_accuracy,
    };
    tracked.backward(&tape, &out.loss, on_grad)?;
    Ok(figures)
}

/// Per scale, the fraction of tokens whose largest logit is the target's code.
fn accuracy(logits: &Tensor, targets: &Tensor, offsets: &[usize]) -> Result<Vec<f32>> {
    let (x, y) = (logits.to_f32_vec()?, targets.to_vec::<i64>()?);
    let (l, v) = (logits.dim(1)?, logits.dim(2)?);
    let batch = logits.dim(0)?;
    Ok(offsets
        .windows(2)
        .map(|w| {
            let mut hits = 0usize;
            for b in 0..batch {
                for t in w[0]..w[1] {
                    let row = &x[(b * l + t) * v..][..v];
                    let best = (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                    hits += usize::from(best as i64 == y[b * l + t]);
                }
            }
            hits as f32 / (batch * (w[1] - w[0])) as f32
        })
        .collect())
}
