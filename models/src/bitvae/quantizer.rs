//! Multi-scale binary spherical quantization (BSQ). Each scale quantizes the area-downsampled
//! residual to sign codes ±1/√d (the L2 normalisation in the official code never changes a
//! sign, so only the sign matters), upsamples the codes bilinearly to the latent grid and
//! subtracts them from the residual. Bit j of a token is latent channel j.
//!
//! The quantizer runs on `Var`s with a straight-through estimator, so the one code path
//! serves inference (a constant latent) and training: each scale's codes pass the gradient
//! unchanged to the residual they were taken from. Each scale's sign is one op
//! (`infinity_ops::bitwise::quantize_scale`, a kernel on an executor): only its bits come to
//! the host. The official quantizer also
//! L2-normalises the residual before the sign; that changes no sign, and dropping it makes
//! the backward the plain identity.

use infinity_autograd::Var;
use infinity_autograd::elementwise::{add, sub};
use infinity_autograd::resize::resize as resize_var;
use infinity_ops::bitwise::{ScaleSign, quantize_scale};
use infinity_ops::elementwise::add as add_tensors;
use infinity_ops::resize::{ResizeMode, resize};
use infinity_runtime::{Error, Result, Tensor};

pub use infinity_ops::bitwise::{code_scale, codes_from_bits};

/// One scale's quantization result.
pub struct ScaleBits {
    /// (B, h, w, d) u8 labels: 1 where the residual is positive.
    pub bits: Tensor,
    /// (B, d, h, w) residual that was quantized (the distance from the decision boundary).
    pub pre_sign: Tensor,
}

pub struct Quantized {
    pub scales: Vec<ScaleBits>,
    /// Sum of all scales' upsampled codes: the latent the decoder sees.
    pub summed: Tensor,
}

fn check_latent(op: &'static str, latent: &Var, grids: &[(usize, usize)]) -> Result<(usize, usize)> {
    if latent.rank() != 4 {
        return Err(Error::invalid(op, latent.shape(), "expected a latent (B, d, h, w)"));
    }
    let full = (latent.dim(2)?, latent.dim(3)?);
    if grids.last() != Some(&full) {
        return Err(Error::invalid(
            op,
            latent.shape(),
            format!("the last scale of {grids:?} must equal the latent grid {full:?}"),
        ));
    }
    if let Some(g) = grids.iter().find(|&&(h, w)| h == 0 || w == 0 || h > full.0 || w > full.1) {
        return Err(Error::invalid(
            op,
            latent.shape(),
            format!("scale {g:?} does not fit inside the latent grid {full:?}"),
        ));
    }
    Ok(full)
}

fn resize_unless_same(x: &Tensor, to: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
    if (x.dim(2)?, x.dim(3)?) == to { Ok(x.clone()) } else { resize(x, to, mode) }
}

/// Bilinear (align_corners = false, no antialias) resize of a code map (B, d, h, w) — the rule
/// for both upsampling codes to the latent grid and downsampling the accumulated codes to the
/// next scale's input. Same size is an exact identity.
pub fn resize_codes(x: &Tensor, to: (usize, usize)) -> Result<Tensor> {
    resize_unless_same(x, to, ResizeMode::Bilinear)
}

/// Encodes a latent into bits, scale by scale, following `grids` (coarse to fine; the last
/// grid must be the latent's own).
pub fn quantize(latent: &Tensor, grids: &[(usize, usize)]) -> Result<Quantized> {
    let st = quantize_straight_through(&Var::constant(latent.contiguous()?), grids)?;
    let scales = st.scales.into_iter().map(|s| ScaleBits { bits: s.bits, pre_sign: s.pre_sign.into_value() }).collect();
    Ok(Quantized { scales, summed: st.summed.into_value() })
}

/// One scale of [`quantize_straight_through`].
pub struct ScaleCodes {
    /// (B, h, w, d) u8 labels.
    pub bits: Tensor,
    /// (B, d, h, w) codes ±1/√d of `bits`, on the scale's grid.
    pub codes: Tensor,
    /// (B, d, h, w) the residual that was quantized; tracked when the latent is.
    pub pre_sign: Var,
}

pub struct StraightThrough {
    pub scales: Vec<ScaleCodes>,
    /// Sum of all scales' upsampled codes; its gradient reaches the latent as
    /// Σₖ areaₖᵀ · upₖᵀ · g (each scale's straight-through path).
    pub summed: Var,
}

fn resize_var_unless_same(x: &Var, to: (usize, usize), mode: ResizeMode) -> Result<Var> {
    if (x.dim(2)?, x.dim(3)?) == to { Ok(x.clone()) } else { resize_var(x, to, mode) }
}

/// [`quantize`] on `Var`s: forward the codes, backward the identity from each scale's codes
/// to its (area-downsampled) residual. As in the official default, the residual subtracts
/// the codes detached, so later scales add no gradient path through earlier ones.
pub fn quantize_straight_through(latent: &Var, grids: &[(usize, usize)]) -> Result<StraightThrough> {
    let full = check_latent("bsq.quantize", latent, grids)?;
    let mut residual = latent.clone();
    let mut summed: Option<Var> = None;
    let mut scales = Vec::with_capacity(grids.len());
    for &grid in grids {
        let r = resize_var_unless_same(&residual, grid, ResizeMode::Area)?;
        // The codes stay on the residual's device; the bits come to the host, where their
        // consumers (labels, reports) are.
        let ScaleSign { bits, codes } = quantize_scale(r.value())?;
        let bits = bits.to_cpu()?;
        // codes + (r − sg(r)): exactly the codes forward (r − r = 0), the identity backward.
        let codes_var = Var::constant(codes.clone());
        let q = if r.is_tracked() { add(&codes_var, &sub(&r, &r.detach())?)? } else { codes_var };
        let up = resize_var_unless_same(&q, full, ResizeMode::Bilinear)?;
        residual = sub(&residual, &up.detach())?;
        summed = Some(match summed {
            Some(s) => add(&s, &up)?,
            None => up,
        });
        scales.push(ScaleCodes { bits, codes, pre_sign: r });
    }
    // `check_latent` refused an empty schedule (its last grid must be the latent's).
    let summed = summed.ok_or_else(|| Error::invalid("bsq.quantize", latent.shape(), "no scales given"))?;
    Ok(StraightThrough { scales, summed })
}

/// The decoder's input from per-scale bits: Σ_k bilinear(codes_k → `full`).
pub fn sum_codes(bits: &[Tensor], full: (usize, usize)) -> Result<Tensor> {
    let mut summed: Option<Tensor> = None;
    for b in bits {
        let up = resize_codes(&codes_from_bits(b)?, full)?;
        summed = Some(match summed {
            Some(s) => add_tensors(&s, &up)?,
            None => up,
        });
    }
    summed.ok_or_else(|| Error::invalid("bsq.sum_codes", &[], "no scales given"))
}
