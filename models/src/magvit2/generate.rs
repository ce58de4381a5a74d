//! Class-conditional generation as the official `sample_Open_MAGVIT2`: one token per step in
//! raster order through the spatial KV caches, each token drawn as its pre sub-token and then
//! its post sub-token given the pre one. Per sub-token i: classifier-free guidance
//! uncond + (cond − uncond)·cfg[i] (the batch doubled with the null class when cfg[0] > 1),
//! logits / temperature[i], top-k (ties at the k-th kept), top-p (the smallest set whose mass
//! exceeds p, the first token past it kept), then a draw from the softmax — with the project's
//! Philox stream, so a seed gives the same image on every device (torch's generator is not
//! reproduced).

use infinity_runtime::rng::Philox;

use infinity_runtime::{Error, Result, Tensor};

use super::config::{ArConfig, TokenizerConfig};
use super::model::ArModel;
use super::tokenizer::codes_of;
use crate::sampling::{self, softmax};

/// Per sub-token [pre, post] settings; the defaults are the released XL's (sample_gpu.sh).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub cfg: [f32; 2],
    pub temperature: [f32; 2],
    /// 0: no top-k filter.
    pub top_k: [usize; 2],
    /// 1: no nucleus filter.
    pub top_p: [f32; 2],
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { cfg: [1.75, 1.85], temperature: [1.1, 1.0], top_k: [0, 0], top_p: [1.0, 1.0], seed: 0 }
    }
}

/// One step of a generation, for observers.
pub struct Step<'a> {
    pub step: usize,
    /// Head outputs (rows, 2^f0) and (rows, 2^f1): conditional rows, then unconditional ones.
    pub raw: [&'a Tensor; 2],
    /// The sampler's inputs (B, 2^f0) and (B, 2^f1), before the temperature.
    pub guided: [&'a Tensor; 2],
    /// The drawn sub-tokens, B each.
    pub tokens: [&'a [i64]; 2],
}

pub struct Generated {
    /// (B, N) I64 each, raster order.
    pub pre: Tensor,
    pub post: Tensor,
    /// The ±1 codes (B, d, g, g) the tokenizer decodes.
    pub codes: Tensor,
}

/// Refuses a tokenizer and a generator that do not share their tokens.
pub fn check_pair(ar: &ArConfig, tokenizer: &TokenizerConfig) -> Result<()> {
    if ar.bits() != tokenizer.z_channels {
        return Err(Error::setting(format!(
            "the AR model's tokens have {} bits ({:?}) but the tokenizer's {}: they were not trained together",
            ar.bits(),
            ar.factorized_bits,
            tokenizer.z_channels
        )));
    }
    Ok(())
}

/// Generates one image's tokens per label.
pub fn generate(
    ar: &ArModel,
    labels: &[usize],
    sampling: &Sampling,
    mut observe: impl FnMut(&Step),
) -> Result<Generated> {
    let (b, n, bits) = (labels.len(), ar.config.tokens(), ar.config.factorized_bits);
    if b == 0 {
        return Err(Error::invalid("magvit2.generate", &[0], "no labels"));
    }
    let doubled = sampling.cfg[0] > 1.0;
    let mut rows = labels.to_vec();
    if doubled {
        rows.extend(std::iter::repeat_n(ar.config.class_num, b));
    }
    let mut rng = Philox::new(sampling.seed);
    let mut session = ar.session();
    let (mut pre, mut post) = (Vec::with_capacity(b * n), Vec::with_capacity(b * n));
    let mut previous: Option<(Tensor, Tensor)> = None;
    for step in 0..n {
        let h = ar.context(&mut session, &rows, previous.as_ref().map(|(a, c)| (a, c)))?;
        let (raw_pre, mut caches) = ar.pre_logits(&h)?;
        let (guided_pre, tokens_pre) =
            guide_and_draw(&raw_pre, b, doubled && sampling.cfg[0] > 1.0, sampling, 0, &mut rng)?;
        let fed_pre = column(&tokens_pre, doubled)?;
        let raw_post = ar.post_logits(&mut caches, &fed_pre)?;
        let (guided_post, tokens_post) =
            guide_and_draw(&raw_post, b, doubled && sampling.cfg[1] > 1.0, sampling, 1, &mut rng)?;
        observe(&Step {
            step,
            raw: [&raw_pre, &raw_post],
            guided: [&guided_pre, &guided_post],
            tokens: [&tokens_pre, &tokens_post],
        });
        previous = Some((fed_pre, column(&tokens_post, doubled)?));
        pre.push(tokens_pre);
        post.push(tokens_post);
    }
    // Steps × batch → batch × steps.
    let by_row = |steps: &[Vec<i64>]| -> Result<Tensor> {
        Tensor::from_vec((0..b).flat_map(|r| steps.iter().map(move |s| s[r])).collect::<Vec<_>>(), &[b, n])
    };
    let (pre, post) = (by_row(&pre)?, by_row(&post)?);
    let codes = codes_of(&pre, &post, bits, ar.config.grid)?;
    Ok(Generated { pre, post, codes })
}

/// Sub-tokens (B) as the next input column (rows, 1): repeated for the unconditional rows.
fn column(tokens: &[i64], doubled: bool) -> Result<Tensor> {
    let mut v = tokens.to_vec();
    if doubled {
        v.extend_from_slice(tokens);
    }
    Tensor::from_vec(v.clone(), &[v.len(), 1])
}

/// The guided logits (B, V) of sub-token `i` from its raw ones (rows, V) and one draw per row.
fn guide_and_draw(
    raw: &Tensor,
    b: usize,
    guided: bool,
    s: &Sampling,
    i: usize,
    rng: &mut Philox,
) -> Result<(Tensor, Vec<i64>)> {
    let v = raw.dim(1)?;
    let x = raw.to_cpu()?.to_f32_vec()?;
    let logits: Vec<f32> = if guided {
        let (cond, uncond) = x.split_at(b * v);
        cond.iter().zip(uncond).map(|(&c, &u)| u + (c - u) * s.cfg[i]).collect()
    } else {
        x[..b * v].to_vec()
    };
    let u = rng.uniform(b);
    let tokens = logits
        .chunks(v)
        .zip(&u)
        .map(|(row, &u)| {
            let mut row: Vec<f32> = row.iter().map(|l| l / s.temperature[i]).collect();
            sample(&mut row, s.top_k[i], s.top_p[i], u) as i64
        })
        .collect();
    Ok((Tensor::from_vec(logits, &[b, v])?, tokens))
}

/// HF's `top_k_top_p_filtering` on `row` in place, then a draw from its softmax by inverse CDF.
fn sample(row: &mut [f32], top_k: usize, top_p: f32, u: f32) -> usize {
    if top_k > 0 {
        let mut sorted = row.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k.min(row.len()) - 1];
        row.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f32::NEG_INFINITY);
    }
    if top_p < 1.0 {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let probs = softmax(&order.iter().map(|&i| row[i]).collect::<Vec<_>>());
        let mut cum = 0.0f32;
        // Removed: every token after the one whose cumulative mass first exceeds top_p.
        let mut past = false;
        for (pos, &i) in order.iter().enumerate() {
            if past {
                row[i] = f32::NEG_INFINITY;
            }
            cum += probs[pos];
            past = past || cum > top_p;
        }
    }
    sampling::draw(row, u)
}
