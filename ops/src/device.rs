//! Dispatch by device: an op's tensor inputs live on one device, and the op runs there: its
//! CPU path on the host, the CUDA backend's kernel on an executor (a GPU or the CPU shim).
//! An op that has no kernel yet says so by name instead of copying its inputs anywhere.

use std::sync::Arc;

use infinity_cuda::Executor;
use infinity_runtime::{Error, Result, Tensor};

/// The executor the inputs of `op` live on; `None` for host tensors. Inputs on different
/// devices are refused: moving data is the caller's decision (`Tensor::to_device`).
pub(crate) fn executor(op: &'static str, inputs: &[&Tensor]) -> Result<Option<Arc<Executor>>> {
    let Some((first, rest)) = inputs.split_first() else { return Ok(None) };
    let device = first.device();
    if let Some(other) = rest.iter().find(|t| t.device() != device) {
        return Err(Error::invalid(
            op,
            other.shape(),
            format!("inputs on {device} and on {}: move them to one device first", other.device()),
        ));
    }
    if device.is_cpu() { Ok(None) } else { Executor::of(op, first).map(Some) }
}

/// The error of an op (or of one of its modes) that has no kernel on `x`'s device yet.
pub(crate) fn no_kernel(op: &'static str, x: &Tensor) -> Error {
    Error::invalid(op, x.shape(), format!("has no kernel on {} yet; run it on the CPU", x.device()))
}
