//! Input plumbing shared by the ops.

use std::borrow::Cow;

use infinity_runtime::{DType, Error, Result, Tensor};

pub fn require_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 { Ok(()) } else { Err(Error::UnsupportedDType { op, dtype: t.dtype() }) }
}

/// The f32 elements of `t` in row-major order: borrowed for a contiguous view, gathered otherwise.
pub fn f32_data<'a>(op: &'static str, t: &'a Tensor) -> Result<Cow<'a, [f32]>> {
    require_f32(op, t)?;
    if t.is_contiguous() { t.as_slice::<f32>() } else { Ok(Cow::Owned(t.to_vec::<f32>()?)) }
}
