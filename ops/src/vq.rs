//! Vector quantization: the index of the nearest codebook entry of every row (VAR's VQVAE
//! quantizer). The distance is the official expansion ‖z‖² + ‖e‖² − 2·z·e in f32, each sum taken
//! left to right and every operation rounded (no fused multiply-add), on the CPU and in the
//! kernel alike, so both pick the same code; ties go to the first index, as `torch.argmin`.
//! A GEMM would be faster, but the accelerator's GEMMs take bf16 operands, whose error (~1e-3)
//! is far above the gaps that decide real codes (~1e-4).

use infinity_runtime::{Error, Result, Tensor};
use rayon::prelude::*;

use crate::device::executor;
use crate::{f32_data, require_f32};

fn check(z: &Tensor, codebook: &Tensor) -> Result<(usize, usize, usize)> {
    const OP: &str = "nearest_code";
    require_f32(OP, z)?;
    require_f32(OP, codebook)?;
    let (&[n, c], &[v, cb]) = (z.shape(), codebook.shape()) else {
        return Err(Error::invalid(OP, z.shape(), "expected rows (N, C) and a codebook (V, C)"));
    };
    if c != cb || v == 0 || c == 0 {
        return Err(Error::ShapeMismatch { op: OP, lhs: z.shape().to_vec(), rhs: codebook.shape().to_vec() });
    }
    Ok((n, c, v))
}

/// Σ a_i·b_i left to right in f32.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |acc, (x, y)| acc + x * y)
}

/// Index (I64, (N,)) of the codebook row (V, C) nearest to each row of `z` (N, C).
pub fn nearest_code(z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let (n, c, _) = check(z, codebook)?;
    if let Some(exec) = executor("nearest_code", &[z, codebook])? {
        return infinity_cuda::quantize::nearest_code(&exec, z, codebook);
    }
    let (zd, ed) = (f32_data("nearest_code", z)?, f32_data("nearest_code", codebook)?);
    let norms: Vec<f32> = ed.chunks(c).map(|e| dot(e, e)).collect();
    let idx: Vec<i64> = (0..n)
        .into_par_iter()
        .map(|r| {
            let row = &zd[r * c..][..c];
            let z2 = dot(row, row);
            let mut best = (f32::INFINITY, 0usize);
            for (j, (e, &e2)) in ed.chunks(c).zip(&norms).enumerate() {
                let d = (z2 + e2) - 2.0 * dot(row, e);
                // `<` keeps the first of equal distances; NaN never wins.
                if d < best.0 {
                    best = (d, j);
                }
            }
            best.1 as i64
        })
        .collect();
    Tensor::from_vec(idx, &[n])
}

/// The exact squared distance ‖z − e‖² in f64 of every row to every code, for the tests.
pub mod reference {
    use super::*;

    /// (N, V) distances in f64.
    pub fn distances(z: &Tensor, codebook: &Tensor) -> Result<Vec<Vec<f64>>> {
        let (n, c, _) = check(z, codebook)?;
        let (zd, ed) = (z.to_vec::<f32>()?, codebook.to_vec::<f32>()?);
        Ok((0..n)
            .map(|r| {
                ed.chunks(c)
                    .map(|e| e.iter().zip(&zd[r * c..][..c]).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum())
                    .collect()
            })
            .collect())
    }
}
