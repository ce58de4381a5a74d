//! The shared-AdaLN pieces of an Infinity block as ops: the modulation LN(x)·(1 + scale) +
//! shift and the gated residual x + y·gate, with per-sample rows scale, shift, gate (B, C) over
//! tokens x, y (B, n, C). On the CPU each is the composition of plainer ops, in the official
//! code's order; on an executor one kernel.

use infinity_runtime::{DType, Result, Tensor};

use crate::device::executor;
use crate::elementwise::{add, add_scalar, mul};
use crate::norm::layer_norm;

/// LN(x)·(1 + scale) + shift, the LayerNorm over C without affine (`eps` inside the root),
/// delivered in `out`: f32, or bf16 for the GEMM that follows on an executor, which rounds
/// once from f32 without an f32 copy in memory (on the CPU the f32 result is rounded).
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f32, out: DType) -> Result<Tensor> {
    if let Some(exec) = executor("modulate", &[x, scale, shift])? {
        return infinity_cuda::adaln::modulate(&exec, x, scale, shift, eps, out);
    }
    let n = layer_norm(x, None, None, eps)?;
    add(&mul(&n, &add_scalar(&scale.unsqueeze(1)?, 1.0)?)?, &shift.unsqueeze(1)?)?.to_dtype(out)
}

/// x + y·gate, the product and the sum rounded separately.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if let Some(exec) = executor("gated_residual", &[x, y, gate])? {
        crate::require_f32("gated_residual", x)?;
        return infinity_cuda::adaln::gated_residual(&exec, x, y, gate);
    }
    add(x, &mul(y, &gate.unsqueeze(1)?)?)
}
