//! Spatial resize of the last two dimensions (..., H, W) with PyTorch's `interpolate`
//! semantics: 'nearest', 'bilinear' and 'bicubic' (align_corners=False, no antialias, also
//! when shrinking) and 'area' (adaptive average pooling). The source positions are computed in
//! f32 exactly as PyTorch does: the multi-scale quantizer is sensitive to the drift of an
//! f64 evaluation (~1e-5, spec §3.4).
//!
//! The fast path precomputes each axis's sources once and runs planes in parallel;
//! `reference` evaluates the formulas per output element with f64 sums.

use std::ops::Range;

use infinity_runtime::{Error, Result, Tensor, recycle};
use rayon::prelude::*;

use crate::device::{executor, no_kernel};
use crate::{f32_data, require_f32};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// PyTorch 'nearest' (not 'nearest-exact'): src = floor(dst · in/out).
    Nearest,
    /// PyTorch 'bilinear' / depth-1 'trilinear', align_corners=False, half-pixel centres.
    Bilinear,
    /// PyTorch 'area': the mean over [floor(i·in/out), ceil((i+1)·in/out)), windows may overlap.
    Area,
    /// PyTorch 'bicubic', align_corners=False: Keys' cubic with A = −0.75 over the 4 samples
    /// around the half-pixel source position, edges replicated (VAR's quantizer upsampling).
    Bicubic,
}

/// Below this many output elements the planes are not worth handing to other threads.
const PARALLEL_MIN: usize = 1 << 15;

/// The f32 ratio in/out that PyTorch uses for both 'nearest' and 'bilinear'.
fn scale(input: usize, output: usize) -> f32 {
    input as f32 / output as f32
}

/// Nearest source index of output index `dst`.
fn nearest_source(dst: usize, input: usize, output: usize) -> usize {
    ((dst as f32 * scale(input, output)).floor() as usize).min(input - 1)
}

/// The two source indices of output index `dst` and the weight λ of the second one.
fn bilinear_source(dst: usize, input: usize, output: usize) -> (usize, usize, f32) {
    // Negative positions (the first half-pixel when enlarging) clamp to the first sample.
    let src = ((dst as f32 + 0.5) * scale(input, output) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(input - 1);
    (i0, (i0 + 1).min(input - 1), src - i0 as f32)
}

/// Keys' cubic convolution parameter PyTorch uses.
const CUBIC_A: f32 = -0.75;

/// The four source indices (edge-clamped) of output index `dst` and their weights, in f32
/// with PyTorch's operation order (`compute_indices_weights_cubic`): the source position is not
/// clamped, its fraction is.
fn bicubic_source(dst: usize, input: usize, output: usize) -> ([usize; 4], [f32; 4]) {
    let src = (dst as f32 + 0.5) * scale(input, output) - 0.5;
    let i0 = (src.floor() as isize).min(input as isize - 1);
    let t = (src - i0 as f32).clamp(0.0, 1.0);
    // |x| ≤ 1 and 1 < |x| < 2 pieces of the kernel.
    let near = |x: f32| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    let weights = [far(t + 1.0), near(t), near(1.0 - t), far(1.0 - t + 1.0)];
    let index = |j: isize| (i0 - 1 + j).clamp(0, input as isize - 1) as usize;
    ([index(0), index(1), index(2), index(3)], weights)
}

/// The input window averaged into output index `dst` (integer arithmetic, as PyTorch).
fn area_window(dst: usize, input: usize, output: usize) -> Range<usize> {
    dst * input / output..((dst + 1) * input).div_ceil(output)
}

/// `f(dst, input, output)` for every output index of one axis.
fn per_axis<T>(f: fn(usize, usize, usize) -> T, input: usize, output: usize) -> Vec<T> {
    (0..output).map(|dst| f(dst, input, output)).collect()
}

/// Checks the arguments; returns (number of planes, H, W).
fn check(x: &Tensor, (oh, ow): (usize, usize)) -> Result<(usize, usize, usize)> {
    require_f32("resize", x)?;
    let &[ref lead @ .., h, w] = x.shape() else {
        return Err(Error::invalid("resize", x.shape(), "the input needs at least 2 dimensions (..., H, W)"));
    };
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Err(Error::invalid("resize", x.shape(), format!("cannot resize {h}×{w} to {oh}×{ow}")));
    }
    Ok((lead.iter().product(), h, w))
}

fn out_shape(x: &Tensor, (oh, ow): (usize, usize)) -> Vec<usize> {
    let mut shape = x.shape().to_vec();
    let r = shape.len();
    shape[r - 2..].copy_from_slice(&[oh, ow]);
    shape
}

/// Resizes the last two dimensions of `x` to `size` = (out_h, out_w).
///
/// On an executor, of (B, C, H, W): bilinear, bicubic and area to any size (the multi-scale
/// quantizers' resizes), nearest ×2 (the decoders' upsampling).
pub fn resize(x: &Tensor, size: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
    let (_, h, w) = check(x, size)?;
    if let Some(exec) = executor("resize", &[x])? {
        return match mode {
            _ if x.rank() != 4 => Err(no_kernel("resize", x)),
            ResizeMode::Bilinear => infinity_cuda::quantize::resize_bilinear(&exec, x, size),
            ResizeMode::Area => infinity_cuda::quantize::resize_area(&exec, x, size),
            ResizeMode::Bicubic => infinity_cuda::quantize::resize_bicubic(&exec, x, size),
            ResizeMode::Nearest if size == (2 * h, 2 * w) => infinity_cuda::conv::upsample_nearest2x(&exec, x),
            ResizeMode::Nearest => Err(no_kernel("resize", x)),
        };
    }
    let xd = f32_data("resize", x)?;
    if (h, w) == size {
        // Exact in every mode, NaN, infinities and signed zeros included.
        return Tensor::from_vec(xd.into_owned(), x.shape());
    }
    let (oh, ow) = size;
    let out = match mode {
        ResizeMode::Nearest => {
            let (rows, cols) = (per_axis(nearest_source, h, oh), per_axis(nearest_source, w, ow));
            map_planes(&xd, (h, w), size, |src, dst| {
                for (out, &r) in dst.chunks_mut(ow).zip(&rows) {
                    let row = &src[r * w..][..w];
                    out.iter_mut().zip(&cols).for_each(|(o, &c)| *o = row[c]);
                }
            })
        }
        ResizeMode::Bilinear => {
            let (rows, cols) = (per_axis(bilinear_source, h, oh), per_axis(bilinear_source, w, ow));
            map_planes(&xd, (h, w), size, |src, dst| {
                for (out, &(r0, r1, ly)) in dst.chunks_mut(ow).zip(&rows) {
                    let (top, bottom) = (&src[r0 * w..][..w], &src[r1 * w..][..w]);
                    for (o, &(c0, c1, lx)) in out.iter_mut().zip(&cols) {
                        // PyTorch's grouping: interpolate along W in both rows, then along H.
                        let t = (1.0 - lx) * top[c0] + lx * top[c1];
                        let b = (1.0 - lx) * bottom[c0] + lx * bottom[c1];
                        *o = (1.0 - ly) * t + ly * b;
                    }
                }
            })
        }
        ResizeMode::Bicubic => {
            let (rows, cols) = (per_axis(bicubic_source, h, oh), per_axis(bicubic_source, w, ow));
            map_planes(&xd, (h, w), size, |src, dst| {
                for (out, (ry, wy)) in dst.chunks_mut(ow).zip(&rows) {
                    for (o, (cx, wx)) in out.iter_mut().zip(&cols) {
                        // PyTorch's grouping: each of the 4 rows along W, then those along H,
                        // every sum left to right.
                        let along_w = |r: usize| {
                            let row = &src[r * w..][..w];
                            (1..4).fold(row[cx[0]] * wx[0], |acc, i| acc + row[cx[i]] * wx[i])
                        };
                        *o = (1..4).fold(along_w(ry[0]) * wy[0], |acc, j| acc + along_w(ry[j]) * wy[j]);
                    }
                }
            })
        }
        ResizeMode::Area => {
            let (rows, cols) = (per_axis(area_window, h, oh), per_axis(area_window, w, ow));
            map_planes(&xd, (h, w), size, |src, dst| {
                for (out, ry) in dst.chunks_mut(ow).zip(&rows) {
                    for (o, rx) in out.iter_mut().zip(&cols) {
                        // One running sum in row-major order, divided by the window height and
                        // then its width: PyTorch's rounding.
                        let sum: f32 = ry.clone().flat_map(|r| &src[r * w..][rx.clone()]).sum();
                        *o = sum / ry.len() as f32 / rx.len() as f32;
                    }
                }
            })
        }
    };
    Tensor::from_vec(out, &out_shape(x, size))
}

/// Applies `f(input plane, output plane)` to every (H, W) plane of `xd`, in parallel when
/// the output is large.
fn map_planes(
    xd: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let planes = xd.len() / (h * w);
    let mut out = recycle::for_overwrite(planes * oh * ow);
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(oh * ow).zip(xd.par_chunks(h * w)).for_each(|(o, i)| f(i, o));
    } else {
        out.chunks_mut(oh * ow).zip(xd.chunks(h * w)).for_each(|(o, i)| f(i, o));
    }
    out
}

/// The formulas evaluated per output element, sums in f64: the ground truth for the tests.
pub mod reference {
    use super::*;

    pub fn resize(x: &Tensor, size: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
        let (planes, h, w) = check(x, size)?;
        let (oh, ow) = size;
        let xd = x.to_vec::<f32>()?;
        let mut out = Vec::with_capacity(planes * oh * ow);
        for p in 0..planes {
            let at = |r: usize, c: usize| xd[(p * h + r) * w + c] as f64;
            for i in 0..oh {
                for j in 0..ow {
                    let v = match mode {
                        ResizeMode::Nearest => at(nearest_source(i, h, oh), nearest_source(j, w, ow)),
                        ResizeMode::Bilinear => {
                            let (r0, r1, ly) = bilinear_source(i, h, oh);
                            let (c0, c1, lx) = bilinear_source(j, w, ow);
                            let (ly, lx) = (ly as f64, lx as f64);
                            (1.0 - ly) * ((1.0 - lx) * at(r0, c0) + lx * at(r0, c1))
                                + ly * ((1.0 - lx) * at(r1, c0) + lx * at(r1, c1))
                        }
                        ResizeMode::Bicubic => {
                            let ((rows, wy), (cols, wx)) = (bicubic_source(i, h, oh), bicubic_source(j, w, ow));
                            let mut sum = 0.0;
                            for (&r, &a) in rows.iter().zip(&wy) {
                                for (&c, &b) in cols.iter().zip(&wx) {
                                    sum += a as f64 * b as f64 * at(r, c);
                                }
                            }
                            sum
                        }
                        ResizeMode::Area => {
                            let (rows, cols) = (area_window(i, h, oh), area_window(j, w, ow));
                            let count = (rows.len() * cols.len()) as f64;
                            rows.flat_map(|r| cols.clone().map(move |c| (r, c))).map(|(r, c)| at(r, c)).sum::<f64>()
                                / count
                        }
                    };
                    out.push(v as f32);
                }
            }
        }
        Tensor::from_vec(out, &out_shape(x, size))
    }
}
