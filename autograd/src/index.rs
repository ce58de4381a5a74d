//! Data-movement ops on `Var`s: `concat`, `split`, `index_select` and `embedding`, mirroring
//! `infinity_ops::index`. Their adjoints move gradients back: slices for `concat`, and
//! `index_add` (repeated indices accumulate) for the two lookups, on the gradient's device.

use infinity_ops::index as ix;
use infinity_runtime::{Result, Tensor};

use crate::Var;

/// Joins `vars` along `dim`; each gets back its slice of the gradient.
pub fn concat(vars: &[&Var], dim: usize) -> Result<Var> {
    let values: Vec<&Tensor> = vars.iter().map(|v| v.value()).collect();
    let value = ix::concat(&values, dim)?;
    let lens: Vec<usize> = vars.iter().map(|v| v.shape()[dim]).collect();
    Var::record("concat", vars, value, move |g, needs| {
        let mut start = 0;
        lens.iter()
            .zip(needs)
            .map(|(&len, &need)| {
                let piece = need.then(|| g.narrow(dim, start, len)).transpose();
                start += len;
                piece
            })
            .collect()
    })
}

/// Cuts `x` along `dim` into consecutive pieces of the given sizes (views, as `narrow`).
pub fn split(x: &Var, sizes: &[usize], dim: usize) -> Result<Vec<Var>> {
    // The op validates the sizes; the pieces are then recorded as narrows.
    ix::split(x.value(), sizes, dim)?;
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let piece = x.narrow(dim, start, len);
            start += len;
            piece
        })
        .collect()
}

/// The slices of `x` at `indices` (1-D, I64 or I32) along `dim`.
pub fn index_select(x: &Var, dim: usize, indices: &Tensor) -> Result<Var> {
    let value = ix::index_select(x.value(), dim, indices)?;
    let (shape, indices) = (x.shape().to_vec(), indices.clone());
    Var::record("index_select", &[x], value, move |g, _| Ok(vec![Some(ix::index_add(g, dim, &indices, shape[dim])?)]))
}

/// Rows of `weight` (V, D) for token ids of any shape.
pub fn embedding(weight: &Var, ids: &Tensor) -> Result<Var> {
    let value = ix::embedding(weight.value(), ids)?;
    let (shape, ids) = (weight.shape().to_vec(), ids.clone());
    Var::record("embedding", &[weight], value, move |g, _| {
        let rows = g.reshape(&[ids.numel(), shape[1]])?;
        Ok(vec![Some(ix::index_add(&rows, 0, &ids, shape[0])?)])
    })
}
