//! Index and data-movement ops: `concat`, `split`, `copy_into`, `index_select`, `gather`,
//! `embedding`, and `index_add`, the adjoint of the two lookups.
//!
//! They move elements without arithmetic, so they work for every dtype and are exact (no round
//! trip through f32). Inputs may have any strides; results are contiguous, except `split`,
//! which returns views, and `copy_into`, which writes into a tensor it is given. Index tensors are I64 or I32, and every index is checked: the error
//! names the first bad one and its position.
//!
//! There is no `reference` module here: a plain copy loop is already the obvious
//! implementation, so the tests check these ops against hand-computed results and invariants
//! (split then concat is the identity, index_select equals a concat of narrows, ...).

use std::borrow::Cow;

use infinity_runtime::{DType, Element, Error, Result, Tensor, with_dtype};

use crate::device::executor;

/// The elements of `t` in row-major order: borrowed for a contiguous view, gathered otherwise.
/// The caller has matched `T` to the dtype of `t`.
fn row_major<T: Element>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    if t.is_contiguous() { t.as_slice::<T>() } else { Ok(Cow::Owned(t.to_vec::<T>()?)) }
}

fn check_dim(op: &'static str, t: &Tensor, dim: usize) -> Result<()> {
    if dim < t.rank() { Ok(()) } else { Err(Error::DimOutOfRange { op, dim, shape: t.shape().to_vec() }) }
}

/// The products of the dimensions before and after `dim`: a row-major tensor is then an
/// (outer, shape[dim], inner) block whose slices along `dim` are `inner` contiguous elements.
fn outer_inner(shape: &[usize], dim: usize) -> (usize, usize) {
    (shape[..dim].iter().product(), shape[dim + 1..].iter().product())
}

/// Reads an I64 or I32 index tensor, in row-major order, as positions into a dimension of
/// size `bound`, failing on the first index outside `0..bound`.
fn read_indices(op: &'static str, indices: &Tensor, bound: usize) -> Result<Vec<usize>> {
    let raw: Vec<i64> = match indices.dtype() {
        DType::I64 => indices.to_vec::<i64>()?,
        DType::I32 => indices.to_vec::<i32>()?.into_iter().map(i64::from).collect(),
        dtype => return Err(Error::UnsupportedDType { op, dtype }),
    };
    raw.into_iter()
        .enumerate()
        .map(|(pos, i)| {
            usize::try_from(i).ok().filter(|&u| u < bound).ok_or_else(|| {
                Error::invalid(op, indices.shape(), format!("index {i} at flat position {pos} is outside 0..{bound}"))
            })
        })
        .collect()
}

/// Joins tensors along `dim`. All must share dtype, rank and every size but the one at `dim`.
pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    const OP: &str = "concat";
    let first = tensors.first().ok_or_else(|| Error::invalid(OP, &[], "there are no tensors to concatenate"))?;
    check_dim(OP, first, dim)?;
    let mut shape = first.shape().to_vec();
    shape[dim] = 0;
    for t in tensors {
        if t.dtype() != first.dtype() {
            return Err(Error::DTypeMismatch { op: OP, expected: first.dtype(), got: t.dtype() });
        }
        let compatible = t.rank() == first.rank()
            && t.shape().iter().zip(first.shape()).enumerate().all(|(d, (a, b))| d == dim || a == b);
        if !compatible {
            return Err(Error::ShapeMismatch { op: OP, lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
        }
        shape[dim] += t.shape()[dim];
    }
    if let Some(exec) = executor(OP, tensors)? {
        // Each piece copied into its slice of the output (f32 or bf16, rank ≤ 4).
        let mut out = exec.empty(&shape, first.dtype())?;
        let mut start = 0;
        for t in tensors {
            infinity_cuda::elementwise::copy_into(&exec, t, &mut out, dim, start)?;
            start += t.shape()[dim];
        }
        return Ok(out);
    }
    with_dtype!(first.dtype(), T => concat_typed::<T>(tensors, dim, &shape))
}

fn concat_typed<T: Element>(tensors: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let (outer, inner) = outer_inner(shape, dim);
    // Each input contributes one chunk of shape[dim]·inner contiguous elements per outer index.
    let parts = tensors.iter().map(|t| Ok((row_major::<T>(t)?, t.shape()[dim] * inner))).collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (data, chunk) in &parts {
            out.extend_from_slice(&data[o * chunk..(o + 1) * chunk]);
        }
    }
    Tensor::from_vec(out, shape)
}

/// Writes `src` into `dst` at `start..start + src.shape()[dim]` along `dim` (every other size
/// equal, one dtype): how a preallocated KV cache is filled. `dst` must be contiguous and own
/// its storage (no live views, not a mapped file), so that no other tensor sees it change.
pub fn copy_into(src: &Tensor, dst: &mut Tensor, dim: usize, start: usize) -> Result<()> {
    const OP: &str = "copy_into";
    check_dim(OP, dst, dim)?;
    if src.dtype() != dst.dtype() {
        return Err(Error::DTypeMismatch { op: OP, expected: dst.dtype(), got: src.dtype() });
    }
    let fits = src.rank() == dst.rank()
        && (src.shape().iter().zip(dst.shape()).enumerate())
            .all(|(d, (&s, &t))| if d == dim { start + s <= t } else { s == t });
    if !fits {
        let msg = format!("cannot hold a {:?} source at {start} along dimension {dim}", src.shape());
        return Err(Error::invalid(OP, dst.shape(), msg));
    }
    if let Some(exec) = executor(OP, &[src, dst])? {
        return infinity_cuda::elementwise::copy_into(&exec, src, dst, dim, start);
    }
    with_dtype!(dst.dtype(), T => copy_into_typed::<T>(src, dst, dim, start))
}

fn copy_into_typed<T: Element>(src: &Tensor, dst: &mut Tensor, dim: usize, start: usize) -> Result<()> {
    const OP: &str = "copy_into";
    let src_data = row_major::<T>(src)?;
    let (outer, inner) = outer_inner(dst.shape(), dim);
    let (chunk, dst_chunk) = (src.shape()[dim] * inner, dst.shape()[dim] * inner);
    let (offset, shape) = (dst.layout().offset(), dst.shape().to_vec());
    let writable = dst.is_contiguous().then(|| dst.storage_mut()).flatten().and_then(|s| s.cpu_mut());
    let Some(data) = writable.and_then(|s| s.elements_mut::<T>()) else {
        return Err(Error::invalid(
            OP,
            &shape,
            "the destination must be contiguous and the only tensor of its storage",
        ));
    };
    for o in 0..outer {
        let at = offset + o * dst_chunk + start * inner;
        data[at..at + chunk].copy_from_slice(&src_data[o * chunk..(o + 1) * chunk]);
    }
    Ok(())
}

/// Cuts `x` along `dim` into consecutive pieces of the given sizes, which must add up to the
/// size of `dim`. The pieces are views of `x` (no copy).
pub fn split(x: &Tensor, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
    const OP: &str = "split";
    check_dim(OP, x, dim)?;
    let total = sizes.iter().try_fold(0usize, |acc, &s| acc.checked_add(s));
    if total != Some(x.shape()[dim]) {
        return Err(Error::invalid(OP, x.shape(), format!("sizes {sizes:?} do not add up to dimension {dim}")));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let piece = x.narrow(dim, start, len);
            start += len;
            piece
        })
        .collect()
}

/// The slices of `x` at positions `indices` (1-D, I64 or I32) along `dim`, in that order;
/// repeats are allowed. The result has `indices.len()` at `dim`.
pub fn index_select(x: &Tensor, dim: usize, indices: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_select";
    check_dim(OP, x, dim)?;
    if indices.rank() != 1 {
        return Err(Error::invalid(OP, indices.shape(), "indices must be 1-D"));
    }
    if executor(OP, &[x, indices])?.is_some() {
        // The slices along `dim` as the rows of a table, looked up by the embedding kernel.
        let mut order: Vec<usize> = (0..x.rank()).collect();
        order.remove(dim);
        order.insert(0, dim);
        let front = x.permute(&order)?.contiguous()?;
        let rest = front.shape()[1..].to_vec();
        let rows = embedding(&front.reshape(&[x.shape()[dim], rest.iter().product()])?, indices)?;
        let mut back: Vec<usize> = (1..x.rank()).collect();
        back.insert(dim, 0);
        return rows.reshape(&[&[indices.numel()], &rest[..]].concat())?.permute(&back)?.contiguous();
    }
    let idx = read_indices(OP, indices, x.shape()[dim])?;
    let mut shape = x.shape().to_vec();
    shape[dim] = idx.len();
    with_dtype!(x.dtype(), T => select_typed::<T>(x, dim, &idx, &shape))
}

/// Copies the slices of `x` at the (already validated) positions `idx` along `dim` into a
/// tensor of `out_shape`, whose element count is outer · idx.len() · inner.
fn select_typed<T: Element>(x: &Tensor, dim: usize, idx: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let data = row_major::<T>(x)?;
    let (outer, inner) = outer_inner(x.shape(), dim);
    let n = x.shape()[dim];
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let start = (o * n + i) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    Tensor::from_vec(out, out_shape)
}

/// `torch.gather`: `out[p] = x[p with its coordinate at dim replaced by index[p]]`. `index`
/// (I64 or I32) has the rank of `x` and no larger size than `x` at any dimension but `dim`;
/// the result has the shape of `index`.
pub fn gather(x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather";
    check_dim(OP, x, dim)?;
    let fits = index.rank() == x.rank()
        && index.shape().iter().zip(x.shape()).enumerate().all(|(d, (i, s))| d == dim || i <= s);
    if !fits {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: index.shape().to_vec() });
    }
    let idx = read_indices(OP, index, x.shape()[dim])?;
    with_dtype!(x.dtype(), T => gather_typed::<T>(x, dim, index.shape(), &idx))
}

fn gather_typed<T: Element>(x: &Tensor, dim: usize, index_shape: &[usize], idx: &[usize]) -> Result<Tensor> {
    // Read straight through the strides of `x`: a gather usually touches a small part of a
    // large tensor (e.g. one logit per row), so making `x` contiguous first would waste a copy.
    let data = x.cpu_storage("gather")?.elements::<T>();
    let (strides, base) = (x.strides(), x.layout().offset());
    let mut coord = vec![0usize; index_shape.len()];
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let offset: usize =
            coord.iter().zip(strides).enumerate().map(|(d, (&c, &s))| if d == dim { i * s } else { c * s }).sum();
        out.push(data[base + offset]);
        // Advance the row-major odometer over the index shape.
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < index_shape[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Tensor::from_vec(out, index_shape)
}

/// The adjoint of `index_select` (and of `embedding`, whose rows are slices along dim 0): a
/// zero f32 tensor shaped like `src` but with `size` at `dim`, into whose slice `indices[j]`
/// slice j of `src` is added; repeated indices accumulate, in the order of `indices` (1-D or
/// any shape, flattened; I64 or I32, each in 0..size), on every device.
pub fn index_add(src: &Tensor, dim: usize, indices: &Tensor, size: usize) -> Result<Tensor> {
    const OP: &str = "index_add";
    check_dim(OP, src, dim)?;
    if src.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: src.dtype() });
    }
    let idx = read_indices(OP, indices, size)?;
    if src.shape()[dim] != idx.len() {
        let msg = format!("{} indices for {} slices at dim {dim}", idx.len(), src.shape()[dim]);
        return Err(Error::invalid(OP, src.shape(), msg));
    }
    if let Some(exec) = executor(OP, &[src])? {
        return infinity_cuda::index::index_add(&exec, src, dim, &idx, size);
    }
    let (outer, inner) = outer_inner(src.shape(), dim);
    let data = row_major::<f32>(src)?;
    let mut out = vec![0f32; outer * size * inner];
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            let from = &data[(o * idx.len() + j) * inner..][..inner];
            let to = &mut out[(o * size + i) * inner..][..inner];
            to.iter_mut().zip(from).for_each(|(d, &s)| *d += s);
        }
    }
    let mut shape = src.shape().to_vec();
    shape[dim] = size;
    Tensor::from_vec(out, &shape)
}

/// Looks up rows of `weight` (V, D) for token ids of any shape (I64 or I32, each in 0..V);
/// the result has shape (ids.shape..., D) and the dtype of `weight`.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    let &[vocab, width] = weight.shape() else {
        return Err(Error::invalid(OP, weight.shape(), "the weight must be 2-D (vocabulary, width)"));
    };
    if let Some(exec) = executor(OP, &[weight, ids])? {
        return infinity_cuda::index::embedding(&exec, weight, ids);
    }
    let idx = read_indices(OP, ids, vocab)?;
    let mut shape = ids.shape().to_vec();
    shape.push(width);
    with_dtype!(weight.dtype(), T => select_typed::<T>(weight, 0, &idx, &shape))
}
