//! Multi-scale binary spherical quantization (BSQ). Each scale quantizes the area-downsampled
//! residual to sign codes ±1/√d (the L2 normalisation in the official code never changes a
//! sign, so only the sign matters), upsamples the codes bilinearly to the latent grid and
//! subtracts them from the residual. Bit j of a token is latent channel j.
//!
//! The quantizer runs on `Var`s with a straight-through estimator, so the one code path
//! serves inference (a constant latent) and training: each scale's codes pass the gradient
//! unchanged to the residual they were taken from. The official quantizer also
//! L2-normalises the residual before the sign; that changes no sign, and dropping it makes
//! the backward the plain identity.

use infinity_autograd::Var;
use infinity_autograd::elementwise::{add, sub};
use infinity_autograd::resize::resize as resize_var;
use infinity_ops::elementwise::add as add_tensors;
use infinity_ops::resize::{ResizeMode, resize};
use infinity_runtime::{DType, Error, Result, Tensor};

/// The code magnitude 1/√d, computed as the official code does (f64, then rounded to f32).
pub fn code_scale(d: usize) -> f32 {
    (1.0 / (d as f64).sqrt()) as f32
}

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
        // The bits come to the host (their consumers, labels and reports, are there); the codes
        // go back to the residual's device.
        let bits = sign_bits(r.value())?;
        let codes = codes_from_bits(&bits)?.to_device(&r.value().device())?;
        // codes + (r − sg(r)): exactly the codes forward (r − r = 0), the identity backward.
        let q = add(&Var::constant(codes.clone()), &sub(&r, &r.detach())?)?;
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

/// (B, d, h, w) f32 → (B, h, w, d) u8 with 1 where the value is > 0 (0 and NaN give 0).
pub(crate) fn sign_bits(x: &Tensor) -> Result<Tensor> {
    let v = x.permute(&[0, 2, 3, 1])?.to_vec::<f32>()?;
    let (b, d, h, w) = (x.dim(0)?, x.dim(1)?, x.dim(2)?, x.dim(3)?);
    Tensor::from_vec(v.into_iter().map(|x| u8::from(x > 0.0)).collect::<Vec<u8>>(), &[b, h, w, d])
}

/// (B, h, w, d) bits (u8 0/1) → (B, d, h, w) codes (2·bit − 1)/√d.
pub fn codes_from_bits(bits: &Tensor) -> Result<Tensor> {
    if bits.rank() != 4 || bits.dtype() != DType::U8 {
        return Err(Error::invalid(
            "bsq.codes_from_bits",
            bits.shape(),
            format!("expected u8 bits (B, h, w, d), got {}", bits.dtype()),
        ));
    }
    let s = code_scale(bits.dim(3)?);
    let v = bits.to_vec::<u8>()?;
    if let Some(bad) = v.iter().find(|&&b| b > 1) {
        return Err(Error::invalid("bsq.codes_from_bits", bits.shape(), format!("bit value {bad} is not 0 or 1")));
    }
    let codes =
        Tensor::from_vec(v.into_iter().map(|b| if b == 1 { s } else { -s }).collect::<Vec<f32>>(), bits.shape())?;
    codes.permute(&[0, 3, 1, 2])?.contiguous()
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
