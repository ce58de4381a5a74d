//! Training targets: the bit labels of every scale and the transformer's teacher-forcing
//! inputs, built from a VAE latent the way the official trainer's Bitwise Self-Correction does.
//! At each scale the labels are the signs of the residual against the codes accumulated so
//! far; with BSC some bits are flipped before their codes join the accumulation, so later
//! inputs carry the mistakes and later labels point back towards the true latent.

use infinity_ops::bitwise::{ScaleSign, quantize_scale};
use infinity_ops::elementwise::{add, mul, sub};
use infinity_ops::resize::{ResizeMode, resize};
use infinity_runtime::rng::{Philox, philox_u32, u32_to_unit_f32};
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::layout::TokenLayout;
use crate::bitvae::quantizer::resize_codes;

/// Which bits are flipped before their codes are accumulated.
pub enum Flips<'a> {
    /// Plain teacher forcing.
    None,
    /// Given masks, one (B, h, w, d) u8 per scale in the VAE's layout (1 = flip): a recorded
    /// run replayed.
    Masks(&'a [Tensor]),
    /// BSC: per scale a probability p = k/100 with k uniform in 0..=100·`strength` (one p for
    /// the whole batch, as the official trainer draws it), then each bit flipped with p.
    Random { strength: f32, rng: &'a mut Philox },
}

pub struct TeacherForcing {
    /// Per scale (B, h, w, d) u8: the bits the model must predict (the token's bits).
    pub labels: Vec<Tensor>,
    /// (B, L − 1, d): inputs of scales 1.. (scale 0 is fed the start token).
    pub inputs: Tensor,
    /// Per scale, the fraction of bits flipped.
    pub flip_rates: Vec<f32>,
}

/// Draws the flip mask of one scale from `rng`.
fn random_mask(shape: &[usize], strength: f32, rng: &mut Philox) -> Result<Tensor> {
    let steps = (strength * 100.0).round() as u32;
    let k = (u32_to_unit_f32(philox_u32(rng.seed, rng.offset)) * (steps + 1) as f32) as u32;
    rng.offset += 1;
    let rate = k.min(steps) as f32 / 100.0;
    let mask: Vec<u8> = rng.uniform(shape.iter().product()).into_iter().map(|u| u8::from(u < rate)).collect();
    Tensor::from_vec(mask, shape)
}

/// A flip mask (B, h, w, d) u8 as code signs (B, d, h, w) f32 on `device`: −1 where a bit
/// flips (its code changes sign), 1 elsewhere; and the fraction flipped. `bits` is the shape
/// of the scale's labels.
fn flip_signs(mask: &Tensor, bits: &[usize], device: &Device) -> Result<(Tensor, f32)> {
    if mask.shape() != bits || mask.dtype() != DType::U8 {
        return Err(Error::ShapeMismatch {
            op: "teacher_forcing (flip mask)",
            lhs: mask.shape().to_vec(),
            rhs: bits.to_vec(),
        });
    }
    let flips: Vec<u8> = mask.to_vec::<u8>()?.into_iter().map(|m| m & 1).collect();
    let rate = flips.iter().filter(|&&f| f == 1).count() as f32 / flips.len().max(1) as f32;
    let signs: Vec<f32> = flips.into_iter().map(|f| 1.0 - 2.0 * f32::from(f)).collect();
    let signs = Tensor::from_vec(signs, bits)?.permute(&[0, 3, 1, 2])?.contiguous()?;
    Ok((signs.to_device(device)?, rate))
}

/// Labels and inputs for `latent` (B, d, H, W) over the token grids `grids` laid over the
/// latent as `layout` says (the last must cover (H, W)), on the latent's device; only the flip
/// masks are drawn on the host. The residuals, codes and flips are in the VAE's layout; the
/// labels and inputs in the transformer's.
pub fn teacher_forcing(
    latent: &Tensor,
    grids: &[(usize, usize)],
    layout: TokenLayout,
    mut flips: Flips,
) -> Result<TeacherForcing> {
    let token_grids = grids;
    let grids = layout.vae_grids(grids);
    if latent.rank() != 4 || grids.last() != Some(&(latent.dim(2)?, latent.dim(3)?)) {
        return Err(Error::invalid(
            "teacher_forcing",
            latent.shape(),
            format!("the last scale of {token_grids:?} ({layout:?}) must cover the latent grid"),
        ));
    }
    let (b, d) = (latent.dim(0)?, latent.dim(1)?);
    let full = (latent.dim(2)?, latent.dim(3)?);
    let device = latent.device();
    let mut cum = Tensor::zeros_on(latent.shape(), DType::F32, &device)?;
    let (mut labels, mut inputs, mut flip_rates) = (Vec::new(), Vec::new(), Vec::new());
    for (k, &grid) in grids.iter().enumerate() {
        let residual = sub(latent, &cum)?;
        let r = if grid == full { residual } else { resize(&residual, grid, ResizeMode::Area)? };
        let ScaleSign { bits: gt, codes } = quantize_scale(&r)?;
        let mask = match &mut flips {
            Flips::None => None,
            Flips::Masks(masks) => Some(masks.get(k).cloned().ok_or_else(|| {
                Error::invalid("teacher_forcing", &[masks.len()], format!("no flip mask for scale {k}"))
            })?),
            Flips::Random { strength, rng } => Some(random_mask(gt.shape(), *strength, rng)?),
        };
        // The flipped bits' codes join the accumulation; the labels stay the true bits.
        let (codes, rate) = match mask {
            None => (codes, 0.0),
            Some(m) => {
                let (signs, rate) = flip_signs(&m, gt.shape(), &device)?;
                (mul(&codes, &signs)?, rate)
            }
        };
        cum = add(&cum, &resize_codes(&codes, full)?)?;
        if let Some(&next) = grids.get(k + 1) {
            inputs.push(layout.tokens(&resize_codes(&cum, next)?)?);
        }
        labels.push(layout.bits_to_tokens(&gt)?);
        flip_rates.push(rate);
    }
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let inputs = if refs.is_empty() {
        Tensor::zeros_on(&[b, 0, layout.token_bits(d)], DType::F32, &device)?
    } else {
        infinity_ops::index::concat(&refs, 1)?
    };
    Ok(TeacherForcing { labels, inputs, flip_rates })
}
