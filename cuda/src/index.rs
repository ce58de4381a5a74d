//! Launchers of kernels/index.cu: the embedding lookup, rows of a (V, D) table (f32 or bf16)
//! for I64 or I32 ids of rank 1 to 4, copied exactly; and `index_add`, its adjoint.
//!
//! The ids are on the device, where the launcher cannot read them without a copy. The kernel
//! checks each id and raises a flag for one outside 0..V; the launcher reads the flag back
//! (which waits for the kernel) and only then, on failure, downloads the ids to name the first
//! bad one, with the message of ops' `embedding`.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{
    EMBEDDING_BF16_I32, EMBEDDING_BF16_I64, EMBEDDING_F32_I32, EMBEDDING_F32_I64, INDEX_ADD_F32, KernelHandle,
};
use crate::view::DevPtr;

const THREADS: u32 = 256;
/// Highest rank of the ids.
const MAX_RANK: usize = 4;

#[repr(C)]
pub struct EmbeddingParams<T, Id> {
    weight: DevPtr<T>,
    ids: DevPtr<Id>,
    out: DevPtr<T>,
    bad: DevPtr<i32>,
    ids_dims: [i32; MAX_RANK],
    ids_stride: [i32; MAX_RANK],
    weight_stride: [i32; 2],
    vocab: i32,
    width: i32,
}

// SAFETY: a #[repr(C)] mirror of the C struct of index.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl<T, Id> DeviceRepr for EmbeddingParams<T, Id> {}

/// weight[ids] of shape (ids.shape…, D) in weight's dtype, contiguous. An id outside 0..V is an
/// `InvalidArgument` error naming it and its flat position (found after the launch; see the
/// module documentation), and no tensor is returned.
pub fn embedding(exec: &Executor, weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    match (weight.dtype(), ids.dtype()) {
        (DType::F32, DType::I64) => embedding_as(exec, EMBEDDING_F32_I64, weight, ids),
        (DType::F32, DType::I32) => embedding_as(exec, EMBEDDING_F32_I32, weight, ids),
        (DType::BF16, DType::I64) => embedding_as::<bf16, i64>(exec, EMBEDDING_BF16_I64, weight, ids),
        (DType::BF16, DType::I32) => embedding_as::<bf16, i32>(exec, EMBEDDING_BF16_I32, weight, ids),
        (DType::F32 | DType::BF16, dtype) | (dtype, _) => Err(Error::UnsupportedDType { op: "embedding", dtype }),
    }
}

fn embedding_as<T: Element, Id: Element>(
    exec: &Executor,
    handle: KernelHandle<EmbeddingParams<T, Id>>,
    weight: &Tensor,
    ids: &Tensor,
) -> Result<Tensor> {
    let op = handle.kernel.name();
    let w = exec.view::<T, 2>(op, weight)?;
    let iv = exec.view_padded::<Id, MAX_RANK>(op, ids)?;
    let [vocab, width] = w.dims;
    let mut shape = ids.shape().to_vec();
    shape.push(width as usize);
    let mut out = exec.output(op, &shape, T::DTYPE)?;
    let mut bad = exec.accumulator(op, &[1], DType::I32)?;
    let params = EmbeddingParams {
        weight: w.ptr,
        ids: iv.ptr,
        out: exec.view_mut_padded::<T, { MAX_RANK + 1 }>(op, &mut out)?.ptr,
        bad: exec.view_mut::<i32, 1>(op, &mut bad)?.ptr,
        ids_dims: iv.dims,
        ids_stride: iv.strides,
        weight_stride: w.strides,
        vocab,
        width,
    };
    // SAFETY: the addresses come from views of live tensors of `exec`; the kernel reads the
    // table only at ids it checked to lie in 0..V, and the output has (ids…, D) elements.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    if bad.to_vec::<i32>()?[0] != 0 {
        return Err(out_of_range(op, ids, vocab)?);
    }
    Ok(out)
}

#[repr(C)]
pub struct IndexAddParams {
    src: DevPtr<f32>,
    starts: DevPtr<i32>,
    order: DevPtr<i32>,
    out: DevPtr<f32>,
    src_dims: [i32; 3],
    src_stride: [i32; 3],
    size: i32,
}

// SAFETY: a #[repr(C)] mirror of the C struct of index.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl DeviceRepr for IndexAddParams {}

/// The adjoint of selecting slices `idx` along `dim`: a zero f32 tensor shaped like `src` but
/// with `size` at `dim`, into whose slice idx[j] slice j of `src` is added. The caller (ops'
/// `index_add`) has checked that `src` holds idx.len() slices at `dim` and every idx[j] < size.
pub fn index_add(exec: &Executor, src: &Tensor, dim: usize, idx: &[usize], size: usize) -> Result<Tensor> {
    let op = INDEX_ADD_F32.kernel.name();
    let (outer, inner): (usize, usize) = (src.shape()[..dim].iter().product(), src.shape()[dim + 1..].iter().product());
    let mut shape = src.shape().to_vec();
    shape[dim] = size;
    if idx.is_empty() || outer * inner == 0 {
        return exec.accumulator(op, &shape, DType::F32);
    }
    // The sources of each target row, in source order (a counting sort, stable).
    let mut starts = vec![0i32; size + 1];
    idx.iter().for_each(|&t| starts[t + 1] += 1);
    (0..size).for_each(|t| starts[t + 1] += starts[t]);
    let mut next: Vec<i32> = starts[..size].to_vec();
    let mut order = vec![0i32; idx.len()];
    for (j, &t) in idx.iter().enumerate() {
        order[next[t] as usize] = j as i32;
        next[t] += 1;
    }
    let device = exec.device();
    let starts = Tensor::from_vec(starts, &[size + 1])?.to_device(&device)?;
    let order = Tensor::from_vec(order, &[idx.len()])?.to_device(&device)?;
    let src = src.contiguous()?.reshape(&[outer, idx.len(), inner])?;
    let s = exec.view::<f32, 3>(op, &src)?;
    let mut out = exec.output(op, &[outer, size, inner], DType::F32)?;
    let params = IndexAddParams {
        src: s.ptr,
        starts: exec.view::<i32, 1>(op, &starts)?.ptr,
        order: exec.view::<i32, 1>(op, &order)?.ptr,
        out: exec.view_mut::<f32, 3>(op, &mut out)?.ptr,
        src_dims: s.dims,
        src_stride: s.strides,
        size: size as i32,
    };
    // SAFETY: the addresses come from views of live tensors of `exec`; starts has size + 1
    // entries bounding order's, each a source slice of `src`, and out has outer·size·inner.
    unsafe { exec.launch(INDEX_ADD_F32, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    out.reshape(&shape)
}

/// The error for the first id outside 0..vocab, in row-major order.
fn out_of_range(op: &'static str, ids: &Tensor, vocab: i32) -> Result<Error> {
    let host = ids.to_cpu()?;
    let values: Vec<i64> = match host.dtype() {
        DType::I32 => host.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        _ => host.to_vec::<i64>()?,
    };
    let msg = match values.iter().position(|id| !(0..i64::from(vocab)).contains(id)) {
        Some(pos) => format!("index {} at flat position {pos} is outside 0..{vocab}", values[pos]),
        None => format!("the kernel flagged an id outside 0..{vocab}, but the ids read back hold none"),
    };
    Ok(Error::invalid(op, ids.shape(), msg))
}
