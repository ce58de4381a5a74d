//! Class-conditional generation as the official `autoregressive_infer_cfg`: the CFG batch
//! [labels, null × B], scale after scale through the KV caches; guidance ramping linearly from
//! none at scale 0 to `cfg` at the last, (1 + t)·cond − t·uncond; top-k, then top-p, then a
//! draw from the softmax — with the project's Philox stream, so a seed gives the same image on
//! every device (torch's generator is not reproduced). `more_smooth` blends the codebook by a
//! Gumbel softmax for the image (the tokens stay the drawn ones). An [`Edit`] keeps the tokens
//! of an input image outside a region at every scale (the official zero-shot in- and
//! out-painting).

use infinity_ops::elementwise::add;
use infinity_ops::index::concat;
use infinity_ops::matmul::matmul;
use infinity_ops::resize::{ResizeMode, resize};
use infinity_runtime::rng::Philox;

use infinity_runtime::{DType, Error, Result, Tensor};

use super::config::{VarConfig, VqVaeConfig};
use super::model::VarTransformer;
use super::vqvae::{VqVae, rows};
use crate::sampling::{draw, softmax};

/// The sampling knobs; the defaults are the official demo's.
#[derive(Clone, Debug, PartialEq)]
pub struct VarSampling {
    /// Guidance at the last scale (the ramp's end); 0 runs no unconditional rows.
    pub cfg: f32,
    /// Keep the k largest logits (0: all; 1: greedy).
    pub top_k: usize,
    /// Nucleus mass (0: off).
    pub top_p: f32,
    pub seed: u64,
    pub more_smooth: bool,
}

impl Default for VarSampling {
    fn default() -> Self {
        VarSampling { cfg: 4.0, top_k: 900, top_p: 0.95, seed: 0, more_smooth: false }
    }
}

/// Tokens to keep: those of an input image (one (1 or B, pn²) map per scale) where `keep`
/// (h, h) at the latent grid is 1.
pub struct Edit {
    pub tokens: Vec<Tensor>,
    pub keep: Tensor,
}

/// One scale of a generation, for observers.
pub struct ScaleStep<'a> {
    pub scale: usize,
    /// Head output (rows, pn², V): the conditional rows, then the unconditional ones.
    pub raw_logits: &'a Tensor,
    /// The sampler's input (B, pn², V).
    pub cfg_logits: &'a Tensor,
    /// The scale's tokens (B, pn²), edits applied.
    pub indices: &'a Tensor,
}

pub struct Generated {
    /// One (B, pn²) I64 map per scale.
    pub indices: Vec<Tensor>,
    /// The final latent (B, Cvae, h, h), the decoder's input.
    pub f_hat: Tensor,
}

/// Refuses a VQVAE and a transformer that were not made for each other.
pub fn check_pair(c: &VarConfig, v: &VqVaeConfig) -> Result<()> {
    if c.cvae != v.cvae() || c.vocab != v.vocab {
        return Err(Error::setting(format!(
            "the VAR transformer predicts {} codes of {} channels but the VQVAE has {} of {}: they were not \
             trained together",
            c.vocab,
            c.cvae,
            v.vocab,
            v.cvae()
        )));
    }
    Ok(())
}

/// Generates one image per label.
pub fn generate(
    var: &VarTransformer,
    vae: &VqVae,
    labels: &[usize],
    sampling: &VarSampling,
    edit: Option<&Edit>,
    mut observe: impl FnMut(&ScaleStep),
) -> Result<Generated> {
    check_pair(&var.config, &vae.config)?;
    let (b, pn) = (labels.len(), var.config.patch_nums.clone());
    let (n, full, vocab) = (pn.len(), *pn.last().unwrap_or(&1), var.config.vocab);
    if b == 0 {
        return Err(Error::invalid("var.generate", &[0], "no labels"));
    }
    if let Some(e) = edit {
        check_edit(e, b, &pn)?;
    }
    let guided = sampling.cfg != 0.0;
    let mut cfg_rows = labels.to_vec();
    if guided {
        cfg_rows.extend(std::iter::repeat_n(var.config.null_class(), b));
    }
    let mut session = var.session(&cfg_rows)?;
    let mut rng = Philox::new(sampling.seed);
    let mut f_hat = Tensor::zeros_on(&[b, var.config.cvae, full, full], DType::F32, &vae.device())?;
    let mut next: Option<Tensor> = None;
    let mut indices = Vec::with_capacity(n);
    for (k, &p) in pn.iter().enumerate() {
        let raw = var.forward_scale(&mut session, next.as_ref(), k)?.to_cpu()?;
        let ratio = if n > 1 { k as f64 / (n - 1) as f64 } else { 0.0 };
        let mut logits = guide(&raw, b, guided, sampling.cfg as f64 * ratio)?;
        let cfg_logits = Tensor::from_vec(logits.clone(), &[b, p * p, vocab])?;
        let u = rng.uniform(b * p * p);
        let mut idx: Vec<i64> = logits
            .chunks_mut(vocab)
            .zip(&u)
            .map(|(row, &u)| sample(row, sampling.top_k, sampling.top_p, u) as i64)
            .collect();
        // `logits` now holds the masked rows, which the Gumbel blend reads as the official does.
        let mut map = if sampling.more_smooth {
            smooth_codes(vae, &logits, &mut rng, (b, p), ratio)?
        } else {
            vae.code_map(&Tensor::from_vec(idx.clone(), &[b, p * p])?, p)?
        };
        if let Some(e) = edit {
            map = keep_input(vae, e, k, p, &mut idx, map)?;
        }
        let idx = Tensor::from_vec(idx, &[b, p * p])?;
        observe(&ScaleStep { scale: k, raw_logits: &raw, cfg_logits: &cfg_logits, indices: &idx });
        f_hat = add(&f_hat, &vae.map_contribution(&map, k, n, full)?)?;
        if k + 1 < n {
            let r = rows(&resize(&f_hat, (pn[k + 1], pn[k + 1]), ResizeMode::Area)?)?;
            next = Some(if guided { concat(&[&r, &r], 0)? } else { r });
        }
        indices.push(idx);
    }
    Ok(Generated { indices, f_hat })
}

/// (1 + t)·cond − t·uncond over the rows of `raw` (2B or B, n, V) on the host, both scalars
/// rounded to f32 as torch does with Python floats.
fn guide(raw: &Tensor, b: usize, guided: bool, t: f64) -> Result<Vec<f32>> {
    let v = raw.to_vec::<f32>()?;
    if !guided {
        return Ok(v);
    }
    let half = v.len() / 2;
    let (a, t) = ((1.0 + t) as f32, t as f32);
    debug_assert_eq!(raw.dim(0)?, 2 * b);
    Ok(v[..half].iter().zip(&v[half..]).map(|(c, u)| a * c - t * u).collect())
}

/// Masks `row` in place as the official sampler does (top-k: below the k-th largest → −∞;
/// top-p: the smallest logits whose softmax mass sums to ≤ 1 − p → −∞, the largest always
/// kept) and draws from its softmax by inverse CDF with the uniform `u`.
fn sample(row: &mut [f32], top_k: usize, top_p: f32, u: f32) -> usize {
    if top_k > 0 && top_k < row.len() {
        let mut sorted = row.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        row.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f32::NEG_INFINITY);
    }
    if top_p > 0.0 {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        let probs = softmax(&order.iter().map(|&i| row[i]).collect::<Vec<_>>());
        let mut cum = 0.0f32;
        for (pos, &i) in order.iter().enumerate().take(row.len() - 1) {
            cum += probs[pos];
            if cum <= 1.0 - top_p {
                row[i] = f32::NEG_INFINITY;
            }
        }
    }
    draw(row, u)
}

/// The Gumbel-softmax blend of the codebook by the masked logits (B·n rows of V): temperature
/// max(0.27·(1 − 0.95·ratio), 0.005), logits scaled by 1 + ratio; a map (B, Cvae, p, p).
fn smooth_codes(vae: &VqVae, logits: &[f32], rng: &mut Philox, (b, p): (usize, usize), ratio: f64) -> Result<Tensor> {
    let vocab = vae.config.vocab;
    let tau = (0.27 * (1.0 - ratio * 0.95)).max(0.005) as f32;
    let u = rng.uniform(logits.len());
    let mut soft = Vec::with_capacity(logits.len());
    for (row, noise) in logits.chunks(vocab).zip(u.chunks(vocab)) {
        let g: Vec<f32> = row
            .iter()
            .zip(noise)
            .map(|(&l, &u)| (l * (1.0 + ratio as f32) - (-(1.0 - u).ln()).max(f32::MIN_POSITIVE).ln()) / tau)
            .collect();
        soft.extend(softmax(&g));
    }
    let weights = Tensor::from_vec(soft, &[b * p * p, vocab])?;
    let codes = matmul(&weights, &vae.codebook().to_cpu()?)?.reshape(&[b, p * p, vae.config.cvae()])?;
    codes.permute(&[0, 2, 1])?.contiguous()?.reshape(&[b, vae.config.cvae(), p, p])?.to_device(&vae.device())
}

impl Edit {
    /// The edit of `image`'s tokens (its VQVAE code at every scale of `patch_nums`, the image
    /// already at the model's size) outside the white region of `mask` (same size; white
    /// = generate anew, black = keep): a latent cell is kept when less than half of its pixels
    /// are white.
    pub fn from_mask(vae: &VqVae, image: &Tensor, mask: &image::RgbImage, patch_nums: &[usize]) -> Result<Edit> {
        let (h, w) = (mask.height() as usize, mask.width() as usize);
        let full = *patch_nums.last().unwrap_or(&1);
        if image.rank() != 4 || image.shape()[2..] != [h, w] || h != w {
            return Err(Error::invalid(
                "var.edit",
                image.shape(),
                format!("the image and its {h}×{w} mask must be one square size"),
            ));
        }
        let white: Vec<f32> = mask
            .pixels()
            .map(|p| f32::from(u8::from(p.0.iter().map(|&c| u32::from(c)).sum::<u32>() >= 3 * 128)))
            .collect();
        let white = resize(&Tensor::from_vec(white, &[1, 1, h, w])?, (full, full), ResizeMode::Area)?;
        let keep: Vec<f32> = white.to_vec::<f32>()?.into_iter().map(|v| f32::from(u8::from(v < 0.5))).collect();
        let (tokens, _) = vae.encode(image, patch_nums)?;
        Ok(Edit { tokens, keep: Tensor::from_vec(keep, &[full, full])? })
    }
}

fn check_edit(e: &Edit, b: usize, pn: &[usize]) -> Result<()> {
    let full = *pn.last().unwrap_or(&1);
    if e.keep.shape() != [full, full] || e.tokens.len() != pn.len() {
        return Err(Error::invalid(
            "var.edit",
            e.keep.shape(),
            format!("expected a ({full}, {full}) mask and {} token maps", pn.len()),
        ));
    }
    for (t, &p) in e.tokens.iter().zip(pn) {
        if t.rank() != 2 || !(t.dim(0)? == 1 || t.dim(0)? == b) || t.dim(1)? != p * p {
            return Err(Error::invalid("var.edit", t.shape(), format!("expected tokens (1 or {b}, {})", p * p)));
        }
    }
    Ok(())
}

/// The code map with the edit's tokens where its mask, bilinearly resized to the scale, is
/// above ½ — at every position of the first scales (≤ 3 tokens), which fix the layout, unless
/// the mask keeps nothing (then there is no edit). `idx` (B·p²) is updated alike.
fn keep_input(vae: &VqVae, e: &Edit, k: usize, p: usize, idx: &mut [i64], map: Tensor) -> Result<Tensor> {
    let keep_any = e.keep.to_vec::<f32>()?.iter().any(|&v| v > 0.5);
    if !keep_any {
        return Ok(map);
    }
    let full = e.keep.dim(0)?;
    let resized = resize(&e.keep.reshape(&[1, 1, full, full])?, (p, p), ResizeMode::Bilinear)?.to_vec::<f32>()?;
    let keep: Vec<bool> = resized.iter().map(|&v| p * p <= 3 || v > 0.5).collect();
    let b = map.dim(0)?;
    let given = e.tokens[k].to_vec::<i64>()?;
    for (row, chunk) in idx.chunks_mut(p * p).enumerate() {
        let src = if given.len() == p * p { &given[..] } else { &given[row * p * p..][..p * p] };
        for ((t, &g), &kp) in chunk.iter_mut().zip(src).zip(&keep) {
            if kp {
                *t = g;
            }
        }
    }
    // Kept positions take the input's codes; the rest keep the (possibly smoothed) map.
    let input = vae.code_map(&Tensor::from_vec(idx.to_vec(), &[b, p * p])?, p)?.to_cpu()?.to_vec::<f32>()?;
    let mut blended = map.to_cpu()?.to_vec::<f32>()?;
    let c = vae.config.cvae();
    for row in 0..b {
        for ch in 0..c {
            for (pos, &kp) in keep.iter().enumerate() {
                if kp {
                    let i = (row * c + ch) * p * p + pos;
                    blended[i] = input[i];
                }
            }
        }
    }
    Tensor::from_vec(blended, map.shape())?.to_device(&vae.device())
}
