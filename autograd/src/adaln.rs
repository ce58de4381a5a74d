//! [`infinity_ops::adaln`] on `Var`s: the fused ops when nothing is tracked (inference), else
//! the compositions of recorded ops, whose backward rules compose.

use infinity_ops::adaln as op;
use infinity_runtime::{DType, Result};

use crate::Var;
use crate::elementwise::{add, add_scalar, mul};
use crate::norm::layer_norm;
use crate::util::require_f32_output;

fn tracked(vars: &[&Var]) -> bool {
    vars.iter().any(|v| v.is_tracked())
}

/// LN(x)·(1 + scale) + shift in `out`; see [`infinity_ops::adaln::modulate`]. Recorded in
/// f32 only: the tape's rules are f32.
pub fn modulate(x: &Var, scale: &Var, shift: &Var, eps: f32, out: DType) -> Result<Var> {
    if !tracked(&[x, scale, shift]) {
        return op::modulate(x.value(), scale.value(), shift.value(), eps, out).map(Var::constant);
    }
    require_f32_output("modulate", x, out)?;
    let n = layer_norm(x, None, None, eps)?;
    add(&mul(&n, &add_scalar(&scale.unsqueeze(1)?, 1.0)?)?, &shift.unsqueeze(1)?)
}

/// x + y·gate; see [`infinity_ops::adaln::gated_residual`].
pub fn gated_residual(x: &Var, y: &Var, gate: &Var) -> Result<Var> {
    if !tracked(&[x, y, gate]) {
        return op::gated_residual(x.value(), y.value(), gate.value()).map(Var::constant);
    }
    add(x, &mul(y, &gate.unsqueeze(1)?)?)
}
