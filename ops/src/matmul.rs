//! Matrix products: `matmul` ((..., M, K) × (..., K, N) with broadcast batch dimensions) and
//! `linear` (x·wᵀ + b with PyTorch's (out, in) weight layout, the transformer's workhorse).
//!
//! The fast path hands every operand to the `gemm` crate as (storage, offset, row stride,
//! column stride), so transposed and strided views — above all wᵀ — are multiplied in place
//! without a copy. `linear` also takes bf16/f16 weights as stored in a checkpoint: they are
//! widened a block of output rows at a time, so a half-precision model never doubles in memory.
//! When x has few rows (the small scales of a generation) `linear` runs its own kernel instead
//! (`few_rows`), which reads f32 or bf16 weights in place at the speed memory delivers them.
//! `gemm_into` is also the kernel behind `conv2d`. `reference` holds the f64 triple loops the
//! tests compare the fast path with.

use gemm::Parallelism;
use infinity_runtime::half::{bf16, f16};
use infinity_runtime::layout::broadcast_shapes;
use infinity_runtime::{DType, Element, Error, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::device::executor;
use crate::{f32_data, require_f32};

mod few_rows;

/// A matrix read in place: element (r, c) is `data[offset + r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatRef<'_> {
    /// The transpose, read in place.
    fn transposed(self) -> Self {
        MatRef { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// True when every element of a `rows × cols` matrix lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// Multi-threads a product only when it is large enough to repay waking the pool. gemm's own
/// threshold is the right measure: below it gemm would run on one thread anyway.
pub(crate) fn parallelism_for(m: usize, k: usize, n: usize) -> Parallelism {
    if m.saturating_mul(k).saturating_mul(n) >= gemm::get_threading_threshold() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `dst[r·dst_stride + c] = Σ_j lhs(r, j)·rhs(j, c)` for an (m × k)·(k × n) product; with
/// `accumulate` the product is added to what `dst` holds (how biases are fused in).
///
/// Panics if an operand or `dst` does not hold its matrix: callers derive the views from
/// validated tensor layouts, so that is a bug here, never a user error.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    dst_stride: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(lhs.fits(m, k) && rhs.fits(k, n), "gemm_into: operand views exceed their storage");
    assert!(m == 0 || n == 0 || (n <= dst_stride && (m - 1) * dst_stride + n <= dst.len()), "gemm_into: bad dst");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum; gemm is not asked to handle it.
        if !accumulate {
            dst.chunks_mut(dst_stride).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    // gemm runs faster with its m the longer side of the output (measured here: 512 × 768 →
    // 768 at 344 against 236 GFLOP/s, 256 × 2304 → 16384 at 444 against 375, and the reverse
    // for tall outputs), so a wide product is computed as its transpose, dstᵀ = rhsᵀ·lhsᵀ,
    // written through transposed strides into the same dst.
    let (rows, cols, lhs, rhs, dst_row_stride, dst_col_stride) =
        if n > m { (n, m, rhs.transposed(), lhs.transposed(), 1, dst_stride) } else { (m, n, lhs, rhs, dst_stride, 1) };
    // SAFETY: the asserts above keep every element gemm reads inside `lhs.data`/`rhs.data` and
    // every element it writes inside `dst` (transposing the problem visits the same elements);
    // the rows of `dst` do not overlap (n <= dst_stride), and the exclusive borrow of `dst`
    // rules out aliasing with the inputs. Strides of storage that fits in memory fit in isize.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            k,
            dst.as_mut_ptr(),
            dst_col_stride as isize,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            // gemm computes dst = alpha·dst + beta·lhs·rhs (alpha and beta swapped from BLAS).
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Least depth per thread for [`gemm_split_k`] to split the sum.
const SPLIT_K_MIN: usize = 384;

/// [`gemm_into`] for a contiguous row-major `dst` (m × n) on every thread, each summing its own
/// slice of k with a one-thread gemm, the partial products then added. On the transformer's
/// projections this beats gemm's own threading, which splits the output and has every thread
/// pack the whole depth (measured here, 2 threads: 512 × 3072 → 768 at 256 against 177
/// GFLOP/s, 512 × 768 → 768 at 379 against 302; a layer12 block's six projections at 288 rows
/// 181–195 ms against 222–243 per 12 blocks). An output wider than the depth (512 × 768 → 2304
/// or 3072) runs 3–10 % faster on gemm's threading, and so do the decoder's convolutions.
fn gemm_split_k(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>, (m, k, n): (usize, usize, usize), accumulate: bool) {
    let parallelism = parallelism_for(m, k, n);
    let parts = rayon::current_num_threads().min(k / SPLIT_K_MIN);
    if matches!(parallelism, Parallelism::None) || parts < 2 || n > k {
        return gemm_into(dst, n, lhs, rhs, (m, k, n), accumulate, parallelism);
    }
    let slice = |i: usize| {
        let (from, to) = (k * i / parts, k * (i + 1) / parts);
        let lhs = MatRef { offset: lhs.offset + from * lhs.col_stride, ..lhs };
        let rhs = MatRef { offset: rhs.offset + from * rhs.row_stride, ..rhs };
        (lhs, rhs, to - from)
    };
    let mut partial = vec![0.0f32; (parts - 1) * m * n];
    rayon::join(
        || {
            let (lhs, rhs, depth) = slice(0);
            gemm_into(dst, n, lhs, rhs, (m, depth, n), accumulate, Parallelism::None);
        },
        || {
            partial.par_chunks_mut(m * n).enumerate().for_each(|(i, part)| {
                let (lhs, rhs, depth) = slice(i + 1);
                gemm_into(part, n, lhs, rhs, (m, depth, n), false, Parallelism::None);
            })
        },
    );
    // The sum in row blocks of about 32 K elements per task.
    let block_rows = (1 << 15) / n.max(1) + 1;
    dst.par_chunks_mut(block_rows * n).enumerate().for_each(|(b, block)| {
        let at = b * block_rows * n;
        for part in partial.chunks(m * n) {
            block.iter_mut().zip(&part[at..]).for_each(|(d, p)| *d += p);
        }
    });
}

/// The validated shape of a product: `batch` (broadcast) × (m × k)·(k × n).
struct Dims {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
}

impl Dims {
    /// `batch` × (rows × cols).
    fn stacked(&self, rows: usize, cols: usize) -> Vec<usize> {
        [&self.batch[..], &[rows, cols]].concat()
    }

    fn out_shape(&self) -> Vec<usize> {
        self.stacked(self.m, self.n)
    }

    /// `t`'s view broadcast to `batch` × (rows × cols) (stride 0 on broadcast dimensions).
    fn broadcast(&self, t: &Tensor, rows: usize, cols: usize) -> Result<Layout> {
        t.layout().broadcast_to(&self.stacked(rows, cols))
    }
}

fn matmul_dims(a: &Tensor, b: &Tensor) -> Result<Dims> {
    require_f32("matmul", a)?;
    require_f32("matmul", b)?;
    let mismatch = || Error::ShapeMismatch { op: "matmul", lhs: a.shape().to_vec(), rhs: b.shape().to_vec() };
    for t in [a, b] {
        if t.rank() < 2 {
            return Err(Error::invalid("matmul", t.shape(), "operands need at least 2 dimensions (..., rows, cols)"));
        }
    }
    let (ab, am) = a.shape().split_at(a.rank() - 2);
    let (bb, bm) = b.shape().split_at(b.rank() - 2);
    if am[1] != bm[0] {
        return Err(mismatch());
    }
    let batch = broadcast_shapes("matmul", ab, bb).map_err(|_| mismatch())?;
    Ok(Dims { batch, m: am[0], k: am[1], n: bm[1] })
}

/// Checks x (..., in), w (out, in), bias (out) and returns x as a matrix stack of rank >= 2.
/// The weight may be f32, bf16 or f16; x and the bias are f32.
fn linear_dims(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Dims)> {
    for t in [Some(x), bias].into_iter().flatten() {
        require_f32("linear", t)?;
    }
    if !matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::UnsupportedDType { op: "linear", dtype: w.dtype() });
    }
    if w.rank() != 2 {
        return Err(Error::invalid("linear", w.shape(), "the weight must be (out_features, in_features)"));
    }
    let (out, inp) = (w.shape()[0], w.shape()[1]);
    if x.shape().last() != Some(&inp) {
        return Err(Error::ShapeMismatch { op: "linear", lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    if let Some(b) = bias.filter(|b| b.shape() != [out]) {
        return Err(Error::ShapeMismatch { op: "linear", lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    // A single vector is a one-row matrix; `linear` squeezes that row off again.
    let x = if x.rank() == 1 { x.unsqueeze(0)? } else { x.clone() };
    let (batch, rows) = x.shape().split_at(x.rank() - 2);
    let dims = Dims { batch: batch.to_vec(), m: rows[0], k: inp, n: out };
    Ok((x, dims))
}

/// The single stride that walks the dimensions `shape`/`strides` as one flat row-major index,
/// if there is one (size-1 dimensions never move, so their strides do not matter).
fn merged_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let mut dims = shape.iter().zip(strides).filter(|&(&d, _)| d != 1).rev();
    let Some((&inner_len, &inner)) = dims.next() else { return Some(1) };
    let mut expected = inner * inner_len;
    for (&d, &s) in dims {
        if s != expected {
            return None;
        }
        expected = s * d;
    }
    Some(inner)
}

/// The matrix of a view laid out by `l` (rank >= 2) whose first element is at `offset`.
fn operand<'a>(data: &'a [f32], l: &Layout, offset: usize) -> MatRef<'a> {
    let r = l.rank();
    MatRef { data, offset, row_stride: l.strides()[r - 2], col_stride: l.strides()[r - 1] }
}

/// a (..., m, k) · b (..., k, n) [+ bias (n)] on gemm, for operands validated into `dims`.
fn product(op: &'static str, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, dims: &Dims) -> Result<Tensor> {
    let Dims { m, k, n, .. } = *dims;
    let (la, lb) = (dims.broadcast(a, m, k)?, dims.broadcast(b, k, n)?);
    let rank = la.rank();
    let (ad, bd) = (a.cpu_storage(op)?.elements::<f32>(), b.cpu_storage(op)?.elements::<f32>());
    let mut out = vec![0.0f32; dims.out_shape().iter().product()];
    if let Some(bias) = bias {
        let bias = f32_data(op, bias)?;
        out.chunks_mut(n.max(1)).for_each(|row| row.copy_from_slice(&bias));
    }
    let accumulate = bias.is_some();

    // When b is the same matrix for every batch entry (a weight) and a's batch and row
    // dimensions walk memory as one index, the whole stack is one tall product.
    let b_shared = lb.strides()[..rank - 2].iter().all(|&s| s == 0);
    if b_shared && let Some(row_stride) = merged_stride(&la.shape()[..rank - 1], &la.strides()[..rank - 1]) {
        let rows = dims.batch.iter().product::<usize>() * m;
        let lhs = MatRef { row_stride, ..operand(&ad, &la, la.offset()) };
        let rhs = operand(&bd, &lb, lb.offset());
        gemm_split_k(&mut out, lhs, rhs, (rows, k, n), accumulate);
        return Tensor::from_vec(out, &dims.out_shape());
    }

    let offsets = |l: &Layout| {
        let mut v = Vec::new();
        Layout::new(dims.batch.clone(), l.strides()[..rank - 2].to_vec(), l.offset()).for_each_offset(|o| v.push(o));
        v
    };
    let (oa, ob) = (offsets(&la), offsets(&lb));
    let one = |(dst, (&a_off, &b_off)): (&mut [f32], (&usize, &usize)), parallelism| {
        gemm_into(dst, n, operand(&ad, &la, a_off), operand(&bd, &lb, b_off), (m, k, n), accumulate, parallelism)
    };
    let per_matrix = parallelism_for(m, k, n);
    if matches!(per_matrix, Parallelism::None) && oa.len() > 1 {
        // Many small products: spread whole matrices over the threads instead.
        out.par_chunks_mut((m * n).max(1)).zip(oa.par_iter().zip(&ob)).for_each(|job| one(job, Parallelism::None));
    } else {
        out.chunks_mut((m * n).max(1)).zip(oa.iter().zip(&ob)).for_each(|job| one(job, per_matrix));
    }
    Tensor::from_vec(out, &dims.out_shape())
}

/// a (..., M, K) · b (..., K, N) → (batch..., M, N), batch dimensions broadcast NumPy-style.
///
/// On an executor (f32 output) the operands are rounded to bf16 and the products accumulated
/// in f32: the models' dtype policy for every GEMM there.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if let Some(exec) = executor("matmul", &[a, b])? {
        if a.rank() <= 3 && b.rank() <= 3 {
            let (a, b) = (gemm_operand("matmul", a)?, gemm_operand("matmul", b)?);
            return infinity_cuda::gemm::matmul(&exec, &a, &b, DType::F32);
        }
        // More batch dimensions than the kernel's one: both operands broadcast to the full
        // batch and flattened into it (views where the layout allows).
        let dims = matmul_dims(a, b)?;
        let (a, b) = (gemm_operand("matmul", a)?, gemm_operand("matmul", b)?);
        let batch: usize = dims.batch.iter().product();
        let flat = |t: &Tensor, rows: usize, cols: usize| {
            t.broadcast_to(&dims.stacked(rows, cols))?.reshape(&[batch, rows, cols])
        };
        let out =
            infinity_cuda::gemm::matmul(&exec, &flat(&a, dims.m, dims.k)?, &flat(&b, dims.k, dims.n)?, DType::F32)?;
        return out.reshape(&dims.out_shape());
    }
    let dims = matmul_dims(a, b)?;
    product("matmul", a, b, None, &dims)
}

/// x (..., in) · wᵀ + bias for w (out, in), bias (out) → (..., out). The weight may be stored
/// in bf16 or f16; the product is computed in f32 either way.
///
/// On the CPU an item of a stacked x (an entry of its first dimension, rank 3 or more) gets the
/// same bits however many items are stacked with it, so a batch can never change an image. A
/// matrix x is one item: rows packed into it (prompts of several lengths) can change each
/// other's last bits.
///
/// On an executor x (rank 2 or 3) and w are rounded to bf16 and the products accumulated in
/// f32, with the bias added in f32 (see [`matmul`]).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_to(x, w, bias, DType::F32)
}

/// [`linear`] delivered in `out` (f32 or bf16): on an executor the f32 sum is rounded once to
/// a bf16 output, the operand of the GEMM or attention that follows; on the CPU the f32 result
/// is rounded.
pub fn linear_to(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: DType) -> Result<Tensor> {
    let inputs: Vec<&Tensor> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    if let Some(exec) = executor("linear", &inputs)? {
        let (x, w) = (gemm_operand("linear", x)?, gemm_operand("linear", w)?);
        return infinity_cuda::gemm::linear(&exec, &x, &w, bias, out);
    }
    linear_cpu(x, w, bias)?.to_dtype(out)
}

fn linear_cpu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (x2, dims) = linear_dims(x, w, bias)?;
    let rows = dims.batch.iter().product::<usize>() * dims.m;
    let items = if x.rank() >= 3 { x.shape()[0] } else { 1 };
    let y = match w.dtype() {
        _ if few_rows::takes(rows.checked_div(items).unwrap_or(0), w.dtype()) && w.is_contiguous() => {
            let (xd, bias) = (f32_data("linear", &x2)?, bias.map(|b| f32_data("linear", b)).transpose()?);
            let out = match w.dtype() {
                DType::BF16 => few_rows::linear(&xd, rows, &w.as_slice::<bf16>()?, dims.n, bias.as_deref()),
                _ => few_rows::linear(&xd, rows, &w.as_slice::<f32>()?, dims.n, bias.as_deref()),
            };
            Tensor::from_vec(out, &dims.out_shape())?
        }
        DType::BF16 => linear_half::<bf16>(&x2, w, bias, &dims)?,
        DType::F16 => linear_half::<f16>(&x2, w, bias, &dims)?,
        _ => product("linear", &x2, &w.transpose(0, 1)?, bias, &dims)?,
    };
    if x.rank() == 1 { y.squeeze(0) } else { Ok(y) }
}

/// A GEMM (or attention, or convolution) operand on an executor: bf16 as it is, f32 rounded
/// to bf16 (a copy on the device).
pub(crate) fn gemm_operand(op: &'static str, t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::BF16 => Ok(t.clone()),
        DType::F32 => t.to_dtype(DType::BF16),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// Output features per widened block of a half-precision weight: about 1 MiB of f32, enough
/// to keep gemm efficient, small enough to stay in cache and never to matter for memory.
fn half_block_rows(k: usize) -> usize {
    ((1 << 18) / k.max(1)).clamp(16, 4096)
}

/// `linear` for a half-precision weight: each block of output features is widened to f32 and
/// multiplied straight into its columns of the output.
fn linear_half<T: Element>(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, dims: &Dims) -> Result<Tensor> {
    let Dims { m, k, n, .. } = *dims;
    let rows = dims.batch.iter().product::<usize>() * m;
    let xd = f32_data("linear", x)?;
    let w = w.contiguous()?;
    let wd = w.as_slice::<T>()?;
    let mut out = vec![0.0f32; rows * n];
    if let Some(bias) = bias {
        let bias = f32_data("linear", bias)?;
        out.chunks_mut(n.max(1)).for_each(|row| row.copy_from_slice(&bias));
    }
    let block = half_block_rows(k);
    let mut widened = vec![0.0f32; block * k];
    for start in (0..n).step_by(block) {
        let nb = block.min(n - start);
        let buf = &mut widened[..nb * k];
        buf.par_chunks_mut(k.max(1)).zip(wd[start * k..(start + nb) * k].par_chunks(k.max(1))).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, &s)| *d = s.to_f32());
        });
        let lhs = MatRef { data: &xd, offset: 0, row_stride: k, col_stride: 1 };
        // The block read transposed: element (j, c) of wᵀ is buf[c·k + j].
        let rhs = MatRef { data: buf, offset: 0, row_stride: 1, col_stride: k };
        gemm_into(&mut out[start..], n, lhs, rhs, (rows, k, nb), bias.is_some(), parallelism_for(rows, k, nb));
    }
    Tensor::from_vec(out, &dims.out_shape())
}

/// Scalar triple loops with f64 accumulation: the ground truth for the tests.
pub mod reference {
    use super::*;

    /// Row-major data of `t` broadcast to `batch` × (rows × cols).
    fn expanded(t: &Tensor, dims: &Dims, rows: usize, cols: usize) -> Result<Vec<f32>> {
        t.broadcast_to(&dims.stacked(rows, cols))?.to_vec::<f32>()
    }

    fn product(a: &[f32], b: &[f32], bias: Option<&[f32]>, dims: &Dims) -> Vec<f32> {
        let Dims { m, k, n, .. } = *dims;
        let batches: usize = dims.batch.iter().product();
        let mut out = Vec::with_capacity(batches * m * n);
        for p in 0..batches {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = bias.map_or(0.0, |b| b[j] as f64);
                    for q in 0..k {
                        acc += a[(p * m + i) * k + q] as f64 * b[(p * k + q) * n + j] as f64;
                    }
                    out.push(acc as f32);
                }
            }
        }
        out
    }

    pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let dims = matmul_dims(a, b)?;
        let ad = expanded(a, &dims, dims.m, dims.k)?;
        let bd = expanded(b, &dims, dims.k, dims.n)?;
        Tensor::from_vec(product(&ad, &bd, None, &dims), &dims.out_shape())
    }

    pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (x2, dims) = linear_dims(x, w, bias)?;
        let xd = expanded(&x2, &dims, dims.m, dims.k)?;
        let wd = expanded(&w.to_dtype(DType::F32)?.transpose(0, 1)?, &dims, dims.k, dims.n)?;
        let bias = bias.map(|b| b.to_vec::<f32>()).transpose()?;
        let mut shape = dims.out_shape();
        if x.rank() == 1 {
            shape.remove(0);
        }
        Tensor::from_vec(product(&xd, &wd, bias.as_deref(), &dims), &shape)
    }
}
