//! The shared-AdaLN pieces of an Infinity block as ops: the modulation LN(x)·(1 + scale) +
//! shift and the gated residual x + y·gate, with per-sample rows scale, shift, gate (B, C) over
//! tokens x, y (B, n, C). On the CPU each is one pass over the tokens (after the LayerNorm's)
//! with the official composition's roundings, so it equals `reference` bit for bit; on an
//! executor one kernel.

use infinity_runtime::{DType, Error, Result, Tensor};

use crate::device::executor;
use crate::norm::layer_norm;
use crate::util::for_row_blocks;
use crate::{f32_data, require_f32};

/// (B, n, C) of x, after checking that every row tensor is (B, C).
fn dims(op: &'static str, x: &Tensor, rows: &[&Tensor]) -> Result<(usize, usize, usize)> {
    let &[b, n, c] = x.shape() else {
        return Err(Error::invalid(op, x.shape(), "expected tokens (B, n, C)"));
    };
    match rows.iter().find(|r| r.shape() != [b, c]) {
        Some(r) => Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: r.shape().to_vec() }),
        None => Ok((b, n, c)),
    }
}

/// LN(x)·(1 + scale) + shift, the LayerNorm over C without affine (`eps` inside the root),
/// delivered in `out`: f32, or bf16 for the GEMM that follows on an executor, which rounds
/// once from f32 without an f32 copy in memory (on the CPU the f32 result is rounded).
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f32, out: DType) -> Result<Tensor> {
    const OP: &str = "modulate";
    if let Some(exec) = executor(OP, &[x, scale, shift])? {
        return infinity_cuda::adaln::modulate(&exec, x, scale, shift, eps, out);
    }
    let (_, n, c) = dims(OP, x, &[scale, shift])?;
    let (scale, shift) = (f32_data(OP, scale)?, f32_data(OP, shift)?);
    let mut normed = layer_norm(x, None, None, eps)?;
    let shape = normed.shape().to_vec();
    // The LayerNorm's output is a fresh contiguous tensor: modulated in place.
    let Some(data) = normed.storage_mut().and_then(|s| s.cpu_mut()).and_then(|s| s.elements_mut::<f32>()) else {
        return Err(Error::invalid(OP, &shape, "the normalised tokens are not a fresh f32 tensor"));
    };
    for_row_blocks(data, c, 3 * c, |first, block| {
        for (r, row) in block.chunks_exact_mut(c).enumerate() {
            let sample = (first + r) / n;
            let (sc, sh) = (&scale[sample * c..][..c], &shift[sample * c..][..c]);
            for ((v, &s), &t) in row.iter_mut().zip(sc).zip(sh) {
                *v = *v * (s + 1.0) + t;
            }
        }
    });
    normed.to_dtype(out)
}

/// x + y·gate, the product and the sum rounded separately.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    const OP: &str = "gated_residual";
    if let Some(exec) = executor(OP, &[x, y, gate])? {
        require_f32(OP, x)?;
        return infinity_cuda::adaln::gated_residual(&exec, x, y, gate);
    }
    let (_, n, c) = dims(OP, x, &[gate])?;
    if y.shape() != x.shape() {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: y.shape().to_vec() });
    }
    let (xs, ys, gate) = (f32_data(OP, x)?, f32_data(OP, y)?, f32_data(OP, gate)?);
    let mut out = vec![0f32; xs.len()];
    for_row_blocks(&mut out, c, 4 * c, |first, block| {
        for (r, row) in block.chunks_exact_mut(c).enumerate() {
            let (token, sample) = (first + r, (first + r) / n);
            let (xr, yr, g) = (&xs[token * c..][..c], &ys[token * c..][..c], &gate[sample * c..][..c]);
            for (((o, &a), &b), &s) in row.iter_mut().zip(xr).zip(yr).zip(g) {
                *o = a + b * s;
            }
        }
    });
    Tensor::from_vec(out, x.shape())
}

pub mod reference {
    //! The official compositions of plainer ops.

    use infinity_runtime::{Result, Tensor};

    use crate::elementwise::{add, add_scalar, mul};
    use crate::norm::layer_norm;

    pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f32) -> Result<Tensor> {
        let n = layer_norm(x, None, None, eps)?;
        add(&mul(&n, &add_scalar(&scale.unsqueeze(1)?, 1.0)?)?, &shift.unsqueeze(1)?)
    }

    pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
        add(x, &mul(y, &gate.unsqueeze(1)?)?)
    }
}
