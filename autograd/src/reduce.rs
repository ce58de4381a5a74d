//! `sum` and `mean` over dimensions with `keepdim`, and `softmax` / `log_softmax`, with their
//! backward rules. Names and signatures mirror `infinity_ops::{reduce, softmax}`.

use infinity_ops::elementwise::{exp, mul, mul_scalar, sub};
use infinity_ops::{reduce, softmax as sm};
use infinity_runtime::Result;

use crate::Var;

/// Sum over `dims` (all dimensions when empty).
pub fn sum(x: &Var, dims: &[usize], keepdim: bool) -> Result<Var> {
    reduction(x, dims, keepdim, false)
}

/// Mean over `dims` (all dimensions when empty).
pub fn mean(x: &Var, dims: &[usize], keepdim: bool) -> Result<Var> {
    reduction(x, dims, keepdim, true)
}

fn reduction(x: &Var, dims: &[usize], keepdim: bool, mean: bool) -> Result<Var> {
    let (op, name) = if mean { (reduce::ReduceOp::Mean, "mean") } else { (reduce::ReduceOp::Sum, "sum") };
    let value = reduce::reduce(op, x.value(), dims, keepdim)?;
    let shape = x.shape().to_vec();
    // The forward validated `dims`; an empty list means every dimension.
    let kept: Vec<usize> =
        shape.iter().enumerate().map(|(d, &n)| if dims.is_empty() || dims.contains(&d) { 1 } else { n }).collect();
    let count = shape.iter().product::<usize>() / kept.iter().product::<usize>().max(1);
    Var::record(name, &[x], value, move |g, _| {
        // Every input element of a reduced set receives its output's gradient: a broadcast
        // view, copied only when a later rule needs contiguous data.
        let g = g.reshape(&kept)?.broadcast_to(&shape)?;
        Ok(vec![Some(if mean { mul_scalar(&g, 1.0 / count as f32)? } else { g })])
    })
}

/// exp(x - max) / Σ exp(x - max) along `dim`.
pub fn softmax(x: &Var, dim: usize) -> Result<Var> {
    let y = sm::softmax(x.value(), dim)?;
    let saved = y.clone();
    Var::record("softmax", &[x], y, move |g, _| Ok(vec![Some(sm::softmax_grad(&saved, g, dim)?)]))
}

/// (x - max) - ln Σ exp(x - max) along `dim`.
pub fn log_softmax(x: &Var, dim: usize) -> Result<Var> {
    let y = sm::log_softmax(x.value(), dim)?;
    let saved = y.clone();
    Var::record("log_softmax", &[x], y, move |g, _| {
        // dx = g − softmax(x) ⊙ Σ_dim g, with softmax(x) = exp(y).
        let total = reduce::sum(g, &[dim], true)?;
        Ok(vec![Some(sub(g, &mul(&exp(&saved)?, &total)?)?)])
    })
}
