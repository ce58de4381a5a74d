//! `matmul` and `linear` on `Var`s, mirroring `infinity_ops::matmul`. The backward products
//! run on the same gemm-backed ops with transposed views (no copies):
//! for y = a·b, da = g·bᵀ and db = aᵀ·g, summed over broadcast batch dimensions;
//! for y = x·wᵀ + bias, dx = g·w, dw = gᵀ·x over all rows, dbias = Σ_rows g.

use infinity_ops::matmul as mm;
use infinity_ops::reduce::sum;
use infinity_runtime::{DType, Result};

use crate::Var;
use crate::util::{require_f32_output, sum_to_shape};

/// a (..., M, K) · b (..., K, N) → (batch..., M, N), batch dimensions broadcast.
pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    let value = mm::matmul(a.value(), b.value())?;
    let (av, bv) = (a.value().clone(), b.value().clone());
    Var::record("matmul", &[a, b], value, move |g, needs| {
        let last = |t: &infinity_runtime::Tensor| t.transpose(t.rank() - 2, t.rank() - 1);
        let da = needs[0].then(|| sum_to_shape(&mm::matmul(g, &last(&bv)?)?, av.shape())).transpose()?;
        let db = needs[1].then(|| sum_to_shape(&mm::matmul(&last(&av)?, g)?, bv.shape())).transpose()?;
        Ok(vec![da, db])
    })
}

/// x (..., in) · wᵀ + bias for w (out, in), bias (out) → (..., out).
pub fn linear(x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    linear_to(x, w, bias, DType::F32)
}

/// [`linear`] of a matrix x (rows, in) whose rows are independent samples — the tokens of
/// packed prompts, one row per image — taken as one-row items, so that each row gets the bits
/// it would get alone, whatever is packed with it (see [`infinity_ops::matmul::linear`]): a
/// prompt's features never depend on the batch it was served in.
pub fn linear_rows(x: &Var, w: &Var, bias: Option<&Var>) -> Result<Var> {
    linear(&x.unsqueeze(1)?, w, bias)?.squeeze(1)
}

/// [`linear`] delivered in `out`; see [`infinity_ops::matmul::linear_to`]. Recorded in f32
/// only.
pub fn linear_to(x: &Var, w: &Var, bias: Option<&Var>, out: DType) -> Result<Var> {
    let inputs: Vec<&Var> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    if inputs.iter().all(|v| !v.is_tracked()) {
        return mm::linear_to(x.value(), w.value(), bias.map(Var::value), out).map(Var::constant);
    }
    require_f32_output("linear", x, out)?;
    let value = mm::linear(x.value(), w.value(), bias.map(Var::value))?;
    let (xv, wv) = (x.value().clone(), w.value().clone());
    Var::record("linear", &inputs, value, move |g, needs| {
        let (out_f, in_f) = (wv.shape()[0], wv.shape()[1]);
        // linear(g, wᵀ) = g·w.
        let dx = needs[0].then(|| mm::linear(g, &wv.transpose(0, 1)?, None)).transpose()?;
        // Every leading dimension is a row of the product.
        let rows = g.numel() / out_f.max(1);
        let g2 = g.reshape(&[rows, out_f])?;
        let dw = needs[1].then(|| mm::matmul(&g2.transpose(0, 1)?, &xv.reshape(&[rows, in_f])?)).transpose()?;
        let mut grads = vec![dx, dw];
        if needs.len() == 3 {
            grads.push(needs[2].then(|| sum(&g2, &[0], false)).transpose()?);
        }
        Ok(grads)
    })
}
