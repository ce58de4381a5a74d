//! `softmax` and `log_softmax` along any dimension, numerically stable: the row maximum is
//! subtracted before exponentiating, so no finite input overflows.

use infinity_runtime::{Error, Result, Tensor};

use crate::device::{executor, no_kernel};
use crate::f32_data;
use crate::reduce::{max_nan, sum_map};
use crate::util::for_row_blocks;

/// exp(x - max) / Σ exp(x - max) along `dim` (PyTorch `softmax`). As in PyTorch, a slice
/// holding NaN or +inf, or only -inf, comes out all NaN. Input f32 with any layout; output
/// contiguous. Errors: `UnsupportedDType`, `DimOutOfRange`.
pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    run(x, dim, false)
}

/// (x - max) - ln Σ exp(x - max) along `dim` (PyTorch `log_softmax`); more accurate than
/// `log(softmax(x))` for very negative entries. Errors as for [`softmax`].
pub fn log_softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    run(x, dim, true)
}

fn op_name(log: bool) -> &'static str {
    if log { "log_softmax" } else { "softmax" }
}

/// Validates the arguments (shared by both paths).
fn check(x: &Tensor, dim: usize, log: bool) -> Result<()> {
    let op = op_name(log);
    crate::require_f32(op, x)?;
    if dim < x.rank() { Ok(()) } else { Err(Error::DimOutOfRange { op, dim, shape: x.shape().to_vec() }) }
}

fn run(x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
    check(x, dim, log)?;
    if let Some(exec) = executor(op_name(log), &[x])? {
        // The kernel normalises the last dimension of rank 1 to 4.
        return match (log, dim + 1 == x.rank()) {
            (false, true) => infinity_cuda::norm::softmax(&exec, x),
            _ => Err(no_kernel(op_name(log), x)),
        };
    }
    // The kernel wants the normalised dimension innermost: swap it there and back. This
    // copies (transposes) only when `dim` is not innermost or `x` is strided.
    let last = x.rank() - 1;
    let moved = x.transpose(dim, last)?;
    let data = f32_data(op_name(log), &moved)?;
    let d = moved.shape()[last];
    let mut out = vec![0f32; data.len()];
    for_row_blocks(&mut out, d, 3 * d, |start, block| {
        for (r, out_row) in block.chunks_mut(d).enumerate() {
            normalize_row(&data[(start + r) * d..][..d], out_row, log);
        }
    });
    Tensor::from_vec(out, moved.shape())?.transpose(dim, last)?.contiguous()
}

fn normalize_row(x: &[f32], out: &mut [f32], log: bool) {
    let m = max_nan(x);
    if log {
        let ln_sum = sum_map(x, |v| f64::from((v - m).exp())).ln() as f32;
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - m) - ln_sum);
    } else {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - m).exp());
        let inv = (1.0 / sum_map(out, f64::from)) as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// The input gradient of y = softmax(x) along `dim` for the output gradient g:
/// y ⊙ (g − Σ_dim g ⊙ y), on every device.
pub fn softmax_grad(y: &Tensor, g: &Tensor, dim: usize) -> Result<Tensor> {
    let dot = crate::reduce::sum(&crate::elementwise::mul(g, y)?, &[dim], true)?;
    crate::elementwise::mul(y, &crate::elementwise::sub(g, &dot)?)
}

/// Plain implementations: index arithmetic over (outer, dim, inner), math in f64.
pub mod reference {
    use infinity_runtime::{Result, Tensor};

    /// Reference of [`super::softmax`].
    pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
        run(x, dim, false)
    }

    /// Reference of [`super::log_softmax`].
    pub fn log_softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
        run(x, dim, true)
    }

    fn run(x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
        super::check(x, dim, log)?;
        let shape = x.shape();
        let (outer, d, inner): (usize, _, usize) =
            (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product());
        let v: Vec<f64> = x.to_vec::<f32>()?.into_iter().map(f64::from).collect();
        let mut out = vec![0f32; v.len()];
        for o in 0..outer {
            for j in 0..inner {
                let at = |i: usize| (o * d + i) * inner + j;
                let m =
                    (0..d).map(|i| v[at(i)]).fold(f64::NEG_INFINITY, |m, x| if x.is_nan() || x > m { x } else { m });
                let sum: f64 = (0..d).map(|i| (v[at(i)] - m).exp()).sum();
                for i in 0..d {
                    let shifted = v[at(i)] - m;
                    out[at(i)] = if log { shifted - sum.ln() } else { shifted.exp() / sum } as f32;
                }
            }
        }
        Tensor::from_vec(out, shape)
    }
}
