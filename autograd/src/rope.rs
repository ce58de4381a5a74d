//! `rope_interleaved` on `Var`s, mirroring `infinity_ops::rope`. The op rotates each pair
//! (2j, 2j+1) by an angle θ; a rotation's adjoint is its inverse, so the gradient is the
//! output gradient rotated by −θ: the same op with the sines negated.

use infinity_ops::elementwise::neg;
use infinity_ops::rope as rp;
use infinity_runtime::{Result, Tensor};

use crate::Var;

/// Rotates the pairs of every head vector of `x` (..., L, hd) by the angles whose cosines and
/// sines are `cos` and `sin` (L, hd/2), which are constants.
pub fn rope_interleaved(x: &Var, cos: &Tensor, sin: &Tensor) -> Result<Var> {
    let value = rp::rope_interleaved(x.value(), cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    Var::record("rope_interleaved", &[x], value, move |g, _| {
        Ok(vec![Some(rp::rope_interleaved(g, &cos, &neg(&sin)?)?)])
    })
}
