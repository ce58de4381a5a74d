//! Training the Open-MAGVIT2 generator as the official `Net2NetTransformer`: the frozen
//! tokenizer's sub-tokens of each image are the inputs and targets; the loss is the mean
//! cross-entropy of the pre sub-tokens plus that of the post ones; labels are dropped to the
//! null class with probability 0.1 (the `LabelEmbedder`'s dropout), and the GPT's dropouts
//! (token embeddings, attention and FFN outputs, 0.1 each) are active.

use infinity_autograd::elementwise::add;
use infinity_autograd::loss::cross_entropy;
use infinity_autograd::zero::Update;
use infinity_autograd::{Params, Tape};
use infinity_runtime::collective::Collective;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Result, Tensor};

use super::config::ArConfig;
use super::model::{ArModel, Logits};
use super::tokenizer::{Tokenizer, split};
use crate::train::{MicroBatch, OnGrad, StepStats, optimizer_step};

/// The official label-dropout probability.
pub const LABEL_DROPOUT: f32 = 0.1;

/// One micro-batch's training data.
pub struct ArBatch {
    /// Per sample its class, or the null class where dropped.
    pub labels: Vec<usize>,
    /// Sub-tokens (B, N) I64 each.
    pub pre: Tensor,
    pub post: Tensor,
}

impl ArBatch {
    /// The batch of `images` (B, 3, H, W) of classes `labels`: their sub-tokens under the frozen
    /// `tokenizer`, labels dropped with probability `dropout` (one uniform per sample).
    pub fn encode(
        tokenizer: &Tokenizer,
        config: &ArConfig,
        images: &Tensor,
        labels: &[usize],
        dropout: f32,
        rng: &mut Philox,
    ) -> Result<Self> {
        let (pre, post) = split(&tokenizer.tokenize(images)?.indices, config.factorized_bits)?;
        let labels = labels
            .iter()
            .zip(rng.uniform(labels.len()))
            .map(|(&l, u)| if u < dropout { config.class_num } else { l })
            .collect();
        Ok(ArBatch { labels, pre, post })
    }
}

/// The official loss of teacher-forced `logits` against the batch's sub-tokens, and each half.
pub fn loss(logits: &Logits, batch: &ArBatch) -> Result<(infinity_autograd::Var, [f32; 2])> {
    let n = batch.pre.dim(1)?;
    let mean = Tensor::full(&[n], 1.0 / n as f32, DType::F32);
    let pre = cross_entropy(&logits.pre, &batch.pre, &mean)?.loss;
    let post = cross_entropy(&logits.post, &batch.post, &mean)?.loss;
    let parts = [pre.value().to_f32_vec()?[0], post.value().to_f32_vec()?[0]];
    Ok((add(&pre, &post)?, parts))
}

/// One AdamW step of `params` on `batches` (see `train::optimizer_step`), the dropouts drawn
/// from `rng`; the figures per "scale" are the two sub-tokens' losses and top-1 accuracies.
pub fn train_step(
    params: &mut Params,
    optimizer: &mut dyn Update,
    config: &ArConfig,
    batches: &[ArBatch],
    settings: (f64, f64, f32),
    world: &dyn Collective,
    rng: &mut Philox,
) -> Result<StepStats> {
    let micro = |params: &Params, i: usize, on_grad: &mut OnGrad| gradients(params, config, &batches[i], rng, on_grad);
    optimizer_step(params, optimizer, batches.len(), micro, settings, world)
}

fn gradients(
    params: &Params,
    config: &ArConfig,
    batch: &ArBatch,
    rng: &mut Philox,
    on_grad: &mut OnGrad,
) -> Result<MicroBatch> {
    let tape = Tape::new();
    let tracked = params.track(&tape)?;
    let model = ArModel::on_tape(config.clone(), &tracked)?;
    let logits = model.teacher_forced(&batch.labels, &batch.pre, &batch.post, Some(rng))?;
    let (total, parts) = loss(&logits, batch)?;
    let scale_accuracy = vec![accuracy(logits.pre.value(), &batch.pre)?, accuracy(logits.post.value(), &batch.post)?];
    drop(logits);
    let figures = MicroBatch { loss: total.value().to_f32_vec()?[0], scale_loss: parts.to_vec(), scale_accuracy };
    tracked.backward(&tape, &total, on_grad)?;
    Ok(figures)
}

/// The fraction of positions whose largest logit (B, N, V) is the target (B, N).
fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f32> {
    let (x, y) = (logits.to_f32_vec()?, targets.to_vec::<i64>()?);
    let v = logits.dim(2)?;
    let hits = x
        .chunks(v)
        .zip(&y)
        .filter(|(row, t)| (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as i64 == **t)
        .count();
    Ok(hits as f32 / y.len() as f32)
}
