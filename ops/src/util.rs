//! Plumbing shared by the ops: f32 input access and the row-block driver that splits a
//! fast path's work over the rayon pool.

use std::borrow::Cow;

use infinity_runtime::{DType, Error, Result, Tensor};
use rayon::prelude::*;

pub fn require_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 { Ok(()) } else { Err(Error::UnsupportedDType { op, dtype: t.dtype() }) }
}

/// The f32 elements of `t` in row-major order: borrowed for a contiguous view, gathered otherwise.
pub fn f32_data<'a>(op: &'static str, t: &'a Tensor) -> Result<Cow<'a, [f32]>> {
    require_f32(op, t)?;
    if t.is_contiguous() { t.as_slice::<f32>() } else { Ok(Cow::Owned(t.to_vec::<f32>()?)) }
}

/// Elements (read plus written) that one parallel task should touch at least: below this,
/// rayon's scheduling overhead (about a microsecond) outweighs the work.
pub(crate) const TASK_WORK: usize = 1 << 15;

/// Calls `f(first_row, block)` on consecutive blocks of whole `row_len`-element rows of
/// `out`, on the rayon pool when there is more than one task's worth of work.
/// `work_per_row` counts the elements one row reads and writes.
pub(crate) fn for_row_blocks<T: Send>(
    out: &mut [T],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let rows_per_task = (TASK_WORK / work_per_row.max(1)).max(1);
    if rows <= rows_per_task {
        f(0, out);
    } else {
        out.par_chunks_mut(rows_per_task * row_len).enumerate().for_each(|(i, block)| f(i * rows_per_task, block));
    }
}
