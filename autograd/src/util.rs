//! Plumbing shared by the backward rules: the sum that undoes broadcasting, and the f32-only
//! check of tracked outputs.

use infinity_ops::reduce::sum;
use infinity_runtime::{DType, Error, Result, Tensor};

use crate::Var;

/// Sums `g` (shaped like a broadcast result) down to `shape`, the shape of an operand that
/// was broadcast: the adjoint of broadcasting sums over every dimension it replicated.
pub(crate) fn sum_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let lead = g.rank().checked_sub(shape.len()).ok_or_else(|| Error::ShapeMismatch {
        op: "sum_to_shape",
        lhs: g.shape().to_vec(),
        rhs: shape.to_vec(),
    })?;
    let dims: Vec<usize> = (0..g.rank()).filter(|&d| d < lead || (shape[d - lead] == 1 && g.shape()[d] != 1)).collect();
    // An empty list would make `sum` reduce everything; here it means only size-1 dims differ.
    if dims.is_empty() { g.reshape(shape) } else { sum(g, &dims, true)?.reshape(shape) }
}

/// Refuses a recorded op asked for an output other than f32: the backward rules are f32.
pub(crate) fn require_f32_output(op: &'static str, x: &Var, out: DType) -> Result<()> {
    if out == DType::F32 {
        return Ok(());
    }
    let msg = format!("a {out} output cannot be recorded for training yet; ask for f32");
    Err(Error::invalid(op, x.shape(), msg))
}
