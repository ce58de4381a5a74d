//! Plumbing shared by the ops: f32 input access, the row-block driver that splits a fast
//! path's work over the rayon pool, and the elementwise map of derivative formulas.

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

/// Defines `$name`, which calls the `#[inline(always)]` `$plain` compiled again for the widest
/// vectors the CPU has (for plain loops that the compiler vectorizes; the crate's baseline is
/// SSE2).
macro_rules! widest_vectors {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $plain:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $plain($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    $plain($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $plain($($arg),*)
        }
    };
}
pub(crate) use widest_vectors;

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

/// Elements per parallel task of `zip_map`: below this the pool's overhead dominates.
const MAP_CHUNK: usize = 1 << 15;

/// `out[i] = f([t[i] for t in inputs])` for f32 host tensors of one shape (any layouts);
/// the result is contiguous. The CPU path of derivative formulas that no op expresses in one
/// pass.
pub(crate) fn zip_map<const N: usize>(
    op: &'static str,
    inputs: [&Tensor; N],
    f: impl Fn([f32; N]) -> f32 + Sync,
) -> Result<Tensor> {
    let shape = inputs[0].shape();
    if let Some(other) = inputs.iter().find(|t| !t.is_cpu()) {
        return Err(Error::invalid(
            op,
            other.shape(),
            format!("runs on the CPU, but the tensor is on {}", other.device()),
        ));
    }
    if let Some(other) = inputs.iter().find(|t| t.shape() != shape) {
        return Err(Error::ShapeMismatch { op, lhs: shape.to_vec(), rhs: other.shape().to_vec() });
    }
    let data = inputs.map(|t| f32_data(op, t));
    let data: Vec<Cow<[f32]>> = data.into_iter().collect::<Result<_>>()?;
    let mut out = vec![0f32; inputs[0].numel()];
    let fill = |start: usize, chunk: &mut [f32]| {
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = f(std::array::from_fn(|k| data[k][start + i]));
        }
    };
    if out.len() <= MAP_CHUNK {
        fill(0, &mut out);
    } else {
        out.par_chunks_mut(MAP_CHUNK).enumerate().for_each(|(c, chunk)| fill(c * MAP_CHUNK, chunk));
    }
    Tensor::from_vec(out, shape)
}
