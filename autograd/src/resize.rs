//! `resize` on `Var`s (nearest, bilinear, bicubic, area), mirroring `infinity_ops::resize`.
//!
//! Every mode is linear and separable: out = R_h · X · R_wᵀ per (H, W) plane, with R_h and
//! R_w the 1-D resampling matrices of the two axes, so the gradient is R_hᵀ · G · R_w. The
//! matrices are read off the forward op itself (by resizing a stack of unit vectors), so the
//! adjoint follows PyTorch's index math exactly as the forward does, and are applied as
//! sparse lists (each output reads at most a window of inputs). On a device the two products
//! are GEMMs with the dense matrices (bf16 operands there, as every GEMM's).

use infinity_ops::f32_data;
use infinity_ops::matmul::matmul;
use infinity_ops::resize::{self as rs, ResizeMode};
use infinity_runtime::{Result, Tensor};
use rayon::prelude::*;

use crate::Var;

/// Resizes the last two dimensions of `x` to `size` = (out_h, out_w).
pub fn resize(x: &Var, size: (usize, usize), mode: ResizeMode) -> Result<Var> {
    let value = rs::resize(x.value(), size, mode)?;
    let shape = x.shape().to_vec();
    Var::record("resize", &[x], value, move |g, _| {
        // The forward validated a rank of at least 2 and non-empty sizes.
        let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let (oh, ow) = size;
        let planes = shape.iter().product::<usize>() / (h * w);
        let (rows, cols) = (axis_weights(h, oh, mode)?, axis_weights(w, ow, mode)?);
        if !g.is_cpu() {
            // On a device as two GEMMs: R_hᵀ · (G · R_w), batched over the planes.
            let (r_h, r_w) = (dense(&rows, h)?.to_device(&g.device())?, dense(&cols, w)?.to_device(&g.device())?);
            let along_w = matmul(&g.reshape(&[planes, oh, ow])?, &r_w)?;
            return Ok(vec![Some(matmul(&r_h.transpose(0, 1)?, &along_w)?.reshape(&shape)?)]);
        }
        let gd = f32_data("resize", g)?;
        let along_w = adjoint_along(&gd, planes * oh, &cols, w, 1);
        let along_h = adjoint_along(&along_w, planes, &rows, h, w);
        Ok(vec![Some(Tensor::from_vec(along_h, &shape)?)])
    })
}

/// (source, weight) pairs of each of the `output` samples that `mode` resamples from `input`
/// samples along one axis. Plane j of the probe is the unit vector e_j as a 1 × input image;
/// resizing it to 1 × output leaves the other axis alone and yields column j of the matrix.
fn axis_weights(input: usize, output: usize, mode: ResizeMode) -> Result<Vec<Vec<(usize, f32)>>> {
    let mut eye = vec![0f32; input * input];
    eye.iter_mut().step_by(input + 1).for_each(|v| *v = 1.0);
    let probe = rs::resize(&Tensor::from_vec(eye, &[input, 1, input])?, (1, output), mode)?.to_vec::<f32>()?;
    let mut rows = vec![Vec::new(); output];
    for (j, column) in probe.chunks(output).enumerate() {
        for (row, &weight) in rows.iter_mut().zip(column) {
            if weight != 0.0 {
                row.push((j, weight));
            }
        }
    }
    Ok(rows)
}

/// The resampling matrix (rows.len() × input) of `rows`.
fn dense(rows: &[Vec<(usize, f32)>], input: usize) -> Result<Tensor> {
    let mut m = vec![0f32; rows.len() * input];
    for (d, sources) in rows.iter().enumerate() {
        sources.iter().for_each(|&(s, weight)| m[d * input + s] = weight);
    }
    Tensor::from_vec(m, &[rows.len(), input])
}

/// The transpose of a 1-D resampling applied along the middle axis of `data` laid out as
/// (outer, rows.len(), inner): output (outer, n_in, inner) with row s receiving
/// Σ weight · data row d over the entries (s, weight) of every rows[d].
fn adjoint_along(data: &[f32], outer: usize, rows: &[Vec<(usize, f32)>], n_in: usize, inner: usize) -> Vec<f32> {
    let (n_out, block_in) = (rows.len(), n_in * inner);
    let mut out = vec![0f32; outer * block_in];
    if block_in == 0 {
        return out;
    }
    out.par_chunks_mut(block_in).enumerate().for_each(|(o, dst)| {
        for (d, sources) in rows.iter().enumerate() {
            let src = &data[(o * n_out + d) * inner..][..inner];
            for &(s, weight) in sources {
                dst[s * inner..][..inner].iter_mut().zip(src).for_each(|(acc, &v)| *acc += weight * v);
            }
        }
    });
    out
}
