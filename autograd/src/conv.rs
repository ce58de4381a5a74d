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
//!
//! Every step is an op or data movement written in ops, so the rule runs on any device.

use infinity_ops::conv::{self as cv, Conv2dParams};
use infinity_ops::index::{concat, embedding};
use infinity_ops::reduce::sum;
use infinity_runtime::{DType, Error, Result, Tensor};

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
/// left, right]) zeros added around it, or rows/columns removed where a pad is negative: data
/// movement written in ops, so it runs on the gradient's device.
fn dilate_pad(g: &Tensor, stride: usize, [top, bottom, left, right]: [isize; 4]) -> Result<Tensor> {
    let &[n, c, ho, wo] = g.shape() else {
        return Err(Error::invalid("conv2d", g.shape(), "the output gradient must be (N, C, H, W)"));
    };
    let zeros = |shape: &[usize]| Tensor::zeros_on(shape, DType::F32, &g.device());
    let mut d = g.clone();
    if stride > 1 {
        // Each element followed by stride − 1 zeros, along the width and then the height, as
        // concatenations of at most four dimensions; the trailing zeros are cut.
        let rows = d.reshape(&[n * c * ho, wo, 1])?;
        let wide =
            concat(&[&rows, &zeros(&[n * c * ho, wo, stride - 1])?], 2)?.reshape(&[n * c, ho, 1, wo * stride])?;
        let tall = concat(&[&wide, &zeros(&[n * c, ho, stride - 1, wo * stride])?], 2)?;
        d = tall.reshape(&[n, c, ho * stride, wo * stride])?;
        d = d.narrow(2, 0, (ho - 1) * stride + 1)?.narrow(3, 0, (wo - 1) * stride + 1)?;
    }
    let d = pad_or_crop(&d, 2, top, bottom)?;
    pad_or_crop(&d, 3, left, right)
}

/// `x` with `before` and `after` zeros added along `dim`, or as many elements removed where
/// they are negative.
fn pad_or_crop(x: &Tensor, dim: usize, before: isize, after: isize) -> Result<Tensor> {
    let len = x.shape()[dim] as isize;
    let size = len + before + after;
    if size <= 0 {
        return Err(Error::invalid("conv2d", x.shape(), "the padding crops away the whole gradient"));
    }
    let zeros = |count: isize| -> Result<Option<Tensor>> {
        let mut shape = x.shape().to_vec();
        shape[dim] = count as usize;
        (count > 0).then(|| Tensor::zeros_on(&shape, DType::F32, &x.device())).transpose()
    };
    let (start, end) = ((-before).max(0), len - (-after).max(0));
    if end <= start {
        // Every element is cropped away: only the zeros on the other side remain.
        return zeros(size)?.ok_or_else(|| Error::invalid("conv2d", x.shape(), "an empty gradient"));
    }
    let kept = x.narrow(dim, start as usize, (end - start) as usize)?;
    let (head, tail) = (zeros(before)?, zeros(after)?);
    if head.is_none() && tail.is_none() {
        return Ok(kept);
    }
    concat(&[head.as_ref(), Some(&kept), tail.as_ref()].into_iter().flatten().collect::<Vec<_>>(), dim)
}

/// w (Cout, Cin, kh, kw) → (Cin, Cout, kh, kw) with both spatial axes reversed. Reversing
/// both axes reverses the flattened tap index, so the taps' rows are gathered backwards (an
/// embedding lookup, on w's device).
fn flip_transpose(w: &Tensor) -> Result<Tensor> {
    let (cout, cin, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    let taps = kh * kw;
    let rows = w.permute(&[2, 3, 1, 0])?.reshape(&[taps, cin * cout])?;
    let backwards = Tensor::from_vec((0..taps as i64).rev().collect::<Vec<i64>>(), &[taps])?.to_device(&w.device())?;
    embedding(&rows, &backwards)?.reshape(&[kh, kw, cin, cout])?.permute(&[2, 3, 0, 1])?.contiguous()
}
