//! What the models' device forwards (`infinity::device`, `t5::device`) share: weight uploads
//! in a chosen dtype.

use infinity_cuda::Executor;
use infinity_runtime::{DType, Result, Tensor};

/// `t` on the executor in `dtype`.
pub(crate) fn put(exec: &Executor, t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_device(&exec.device())
}
