//! `conv2d` on `Var`s with stride and asymmetric padding, mirroring `infinity_ops::conv`.
//!
//! - dx is the full correlation of the stride-dilated output gradient with the weights
//!   flipped in space and with in/out channels swapped, a stride-1 convolution run by the
//!   forward op. The dilated gradient is zero-padded by kh−1−top above and H − Hd + top below
//!   (Hd its dilated height; likewise for the width), or cropped where a pad is negative
//!   (padding larger than the kernel). Dilation spends stride² multiplications on zeros, but
//!   only the BitVAE's few downsampling convs have a stride.
//! - dw is the forward's product transposed (`infinity_ops::conv::conv2d_weight_grad`).
//! - dbias sums the output gradient over images and positions.

use infinity_ops::conv::{self as cv, Conv2dParams};
use infinity_ops::f32_data;
use infinity_ops::reduce::sum;
use infinity_runtime::{Error, Result, Tensor};

use crate::Var;

/// x (N, Cin, H, W) ⊛ w (Cout, Cin, kh, kw) + bias (Cout) → (N, Cout, Ho, Wo).
pub fn conv2d(x: &Var, w: &Var, bias: Option<&Var>, params: Conv2dParams) -> Result<Var> {
    let value = cv::conv2d(x.value(), w.value(), bias.map(Var::value), params)?;
    let (xv, wv) = (x.value().clone(), w.value().clone());
    let inputs: Vec<&Var> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    Var::record("conv2d", &inputs, value, move |g, needs| {
        let dx = needs[0].then(|| input_grad(g, &xv, &wv, params)).transpose()?;
        let dw = needs[1].then(|| cv::conv2d_weight_grad(&xv, g, spatial(&wv), params)).transpose()?;
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| sum(g, &[0, 2, 3], false)).transpose()?);
        }
        Ok(grads)
    })
}

/// Shapes validated by the forward: (H, W) of x and (kh, kw) of w.
fn spatial(t: &Tensor) -> (usize, usize) {
    (t.shape()[2], t.shape()[3])
}

fn input_grad(g: &Tensor, x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    let ((h, wd), (kh, kw), (ho, wo)) = (spatial(x), spatial(w), spatial(g));
    let [top, _, left, _] = p.padding.map(|v| v as isize);
    let dilated = |out: usize| ((out - 1) * p.stride + 1) as isize;
    let pads = [
        kh as isize - 1 - top,
        h as isize - dilated(ho) + top,
        kw as isize - 1 - left,
        wd as isize - dilated(wo) + left,
    ];
    let padded = dilate_pad(g, p.stride, pads)?;
    cv::conv2d(&padded, &flip_transpose(w)?, None, Conv2dParams::new(1, 0))
}

/// `g` (N, C, Ho, Wo) with stride − 1 zeros between neighbours, then `pads` ([top, bottom,
/// left, right]) zeros added around it, or rows/columns removed where a pad is negative.
fn dilate_pad(g: &Tensor, stride: usize, [top, bottom, left, right]: [isize; 4]) -> Result<Tensor> {
    let &[n, c, ho, wo] = g.shape() else {
        return Err(Error::invalid("conv2d", g.shape(), "the output gradient must be (N, C, H, W)"));
    };
    let size = |len: usize, before: isize, after: isize| {
        let dilated = (len.saturating_sub(1) * stride + 1) as isize;
        usize::try_from(dilated + before + after)
            .map_err(|_| Error::invalid("conv2d", g.shape(), "the padding crops away the whole gradient"))
    };
    let (h2, w2) = (size(ho, top, bottom)?, size(wo, left, right)?);
    // Position of output row/column `i` in the padded map, if it lands inside.
    let place =
        |i: usize, before: isize, len: usize| usize::try_from((i * stride) as isize + before).ok().filter(|&p| p < len);
    let gd = f32_data("conv2d", g)?;
    let mut out = vec![0f32; n * c * h2 * w2];
    for (src, dst) in gd.chunks(ho * wo).zip(out.chunks_mut(h2 * w2)) {
        for oy in 0..ho {
            let Some(y) = place(oy, top, h2) else { continue };
            for ox in 0..wo {
                if let Some(x) = place(ox, left, w2) {
                    dst[y * w2 + x] = src[oy * wo + ox];
                }
            }
        }
    }
    Tensor::from_vec(out, &[n, c, h2, w2])
}

/// w (Cout, Cin, kh, kw) → (Cin, Cout, kh, kw) with both spatial axes reversed.
fn flip_transpose(w: &Tensor) -> Result<Tensor> {
    let (cout, cin, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let wd = f32_data("conv2d", w)?;
    let mut out = vec![0f32; wd.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    out[((ci * cout + co) * kh + kh - 1 - ky) * kw + kw - 1 - kx] =
                        wd[((co * cin + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    Tensor::from_vec(out, &[cin, cout, kh, kw])
}
