//! What the models' device forwards (`infinity::device`, `t5::device`, `bitvae::device`)
//! share: the mapping of the CUDA backend's errors into the runtime's, and weight uploads in a
//! chosen dtype.

use infinity_cuda::{DeviceTensor, Error as CudaError, Executor, Result as CudaResult};
use infinity_runtime::{DType, Error, Tensor};

/// A CUDA-backend error as the runtime's: a precondition stays the typed error it is, and a
/// failure of the device names it.
pub(crate) fn runtime_error(exec: &Executor, op: &'static str) -> impl FnOnce(CudaError) -> Error {
    move |e| match e {
        CudaError::Invalid(e) => e,
        other => Error::DeviceFailed { op, device: exec.name(), reason: other.to_string() },
    }
}

/// `t` on the device in `dtype`.
pub(crate) fn put(exec: &Executor, t: &Tensor, dtype: DType) -> CudaResult<DeviceTensor> {
    exec.upload(&t.to_dtype(dtype))
}
