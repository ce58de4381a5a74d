//! View transforms on `Var`s (reshape, permute, transpose, narrow, broadcast, unsqueeze,
//! squeeze), mirroring the `Tensor` methods. Forward values stay views; each backward rule
//! applies the inverse transform to the gradient (summing where the forward replicated).

use infinity_ops::index::concat;
use infinity_runtime::{DType, Result, Tensor};

use crate::Var;
use crate::util::sum_to_shape;

impl Var {
    /// A view when the data is contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value().reshape(shape)?;
        let input = self.shape().to_vec();
        Var::record("reshape", &[self], value, move |g, _| Ok(vec![Some(g.reshape(&input)?)]))
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Var> {
        let value = self.value().permute(dims)?;
        let mut inverse = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            inverse[d] = i;
        }
        Var::record("permute", &[self], value, move |g, _| Ok(vec![Some(g.permute(&inverse)?)]))
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Var> {
        let value = self.value().transpose(a, b)?;
        Var::record("transpose", &[self], value, move |g, _| Ok(vec![Some(g.transpose(a, b)?)]))
    }

    /// `len` elements of dimension `dim` from `start`; the gradient is zero outside them.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let value = self.value().narrow(dim, start, len)?;
        let input = self.shape().to_vec();
        Var::record("narrow", &[self], value, move |g, _| Ok(vec![Some(pad_along(g, &input, dim, start)?)]))
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value().broadcast_to(shape)?;
        let input = self.shape().to_vec();
        Var::record("broadcast_to", &[self], value, move |g, _| Ok(vec![Some(sum_to_shape(g, &input)?)]))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let value = self.value().unsqueeze(dim)?;
        Var::record("unsqueeze", &[self], value, move |g, _| Ok(vec![Some(g.squeeze(dim)?)]))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Var> {
        let value = self.value().squeeze(dim)?;
        Var::record("squeeze", &[self], value, move |g, _| Ok(vec![Some(g.unsqueeze(dim)?)]))
    }

    /// The same values in a contiguous layout (what a kernel that needs one would copy).
    pub fn contiguous(&self) -> Result<Var> {
        Var::record("contiguous", &[self], self.value().contiguous()?, |g, _| Ok(vec![Some(g.clone())]))
    }
}

/// `g` placed at `start..` along `dim` of a zero tensor of shape `shape` (the adjoint of
/// `narrow`).
fn pad_along(g: &Tensor, shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let zeros = |len: usize| {
        let mut s = shape.to_vec();
        s[dim] = len;
        Tensor::zeros_on(&s, DType::F32, &g.device())
    };
    let end = start + g.shape()[dim];
    let before = (start > 0).then(|| zeros(start)).transpose()?;
    let after = (end < shape[dim]).then(|| zeros(shape[dim] - end)).transpose()?;
    let parts: Vec<&Tensor> = before.iter().chain([g]).chain(after.iter()).collect();
    concat(&parts, dim)
}
