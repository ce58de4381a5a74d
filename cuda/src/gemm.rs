//! GEMMs in bf16 with f32 accumulation: [`linear`] (PyTorch's Linear, y = x·wᵀ + bias) and
//! [`matmul`] (batched, broadcast, transposed views). Both become one
//! `cublasGemmStridedBatchedEx` call, described by [`GemmArgs`]. On a GPU cuBLAS runs it;
//! under the CPU shim [`emulate`] runs exactly that call on the host buffers (column-major,
//! with cuBLAS's transposes, leading dimensions, batch strides, alpha and beta), so that the
//! argument mapping, the error-prone part, is checked on every machine by the same test bodies
//! that run on a GPU.
//!
//! The mapping: a row-major R×C matrix with row stride s is, read column-major, the C×R
//! matrix with leading dimension s, its transpose. So the row-major C = A·B is computed as the
//! column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS gets m = N, n = M, k = K, our B as its A and our A as its
//! B, and nothing is copied. An operand whose columns, not rows, are contiguous (a transposed
//! view) is the column-major matrix itself, which cuBLAS reads with op T instead.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::{Backend, Executor};
use crate::kernels::{BIAS_ROWS_BF16, BIAS_ROWS_F32, KernelHandle};
use crate::view::{DevPtr, View};

const THREADS: u32 = 256;

#[repr(C)]
pub struct BiasRowsParams<T> {
    bias: DevPtr<f32>,
    out: DevPtr<T>,
    bias_stride: i32,
    rows: i32,
    cols: i32,
}

// SAFETY: a #[repr(C)] mirror of the C struct of gemm.cu (size checked by a test) made of
// plain numbers and addresses.
unsafe impl<T> DeviceRepr for BiasRowsParams<T> {}

/// cuBLAS's `cublasOperation_t`, of which the GEMMs use N and T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transpose {
    /// CUBLAS_OP_N: the operand as stored.
    No,
    /// CUBLAS_OP_T: the operand's transpose.
    Yes,
}

/// The element types of GEMM operands: `cudaDataType` CUDA_R_16BF and CUDA_R_32F.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemmType {
    Bf16,
    F32,
}

impl GemmType {
    /// The output dtypes the GEMMs write.
    fn of(op: &'static str, dtype: DType) -> Result<GemmType> {
        match dtype {
            DType::BF16 => Ok(GemmType::Bf16),
            DType::F32 => Ok(GemmType::F32),
            dtype => Err(Error::UnsupportedDType { op, dtype }),
        }
    }
}

/// A batch of column-major matrices as cuBLAS takes them: element (i, j) of matrix p at
/// `addr` + (p·stride + i + j·ld) elements of `dtype`.
pub(crate) struct Operand {
    pub addr: u64,
    pub dtype: GemmType,
    pub ld: i32,
    pub stride: i64,
}

/// The arguments of one `cublasGemmStridedBatchedEx` call with computeType
/// CUBLAS_COMPUTE_32F (alpha and beta f32, on the host): for p < batch,
/// C[p] = alpha·op(A[p])·op(B[p]) + beta·C[p] with op(A) m×k, op(B) k×n and C m×n; C is not
/// read when beta is 0.
pub(crate) struct GemmArgs {
    pub transa: Transpose,
    pub transb: Transpose,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: Operand,
    pub b: Operand,
    pub beta: f32,
    pub c: Operand,
    pub batch: i32,
}

/// A batch of row-major matrices as the caller sees them: element (p, r, c) at `addr` +
/// p·batch_stride + r·row_stride + c·col_stride bf16 elements (batch stride 0: one matrix
/// for the whole batch). `shape` is the tensor's, for error messages.
struct Matrix<'a> {
    addr: u64,
    rows: i32,
    cols: i32,
    row_stride: i32,
    col_stride: i32,
    batch_stride: i32,
    shape: &'a [usize],
}

impl<'a> Matrix<'a> {
    /// The matrices of a (B, R, C) view; a batch of one is read with batch stride 0, so that
    /// it broadcasts.
    fn of(view: &View<bf16, 3>, shape: &'a [usize]) -> Matrix<'a> {
        let [batch, rows, cols] = view.dims;
        let [batch_stride, row_stride, col_stride] = view.strides;
        Matrix {
            addr: view.ptr.addr(),
            rows,
            cols,
            row_stride,
            col_stride,
            batch_stride: if batch == 1 { 0 } else { batch_stride },
            shape,
        }
    }

    /// This matrix's transpose as a cuBLAS operand (see the module doc): when its rows are
    /// contiguous, the column-major cols×rows matrix with op N; when its columns are, the
    /// column-major rows×cols matrix itself with op T. The stride of a size-1 dimension is
    /// never used, so it is replaced by the smallest leading dimension cuBLAS accepts.
    fn transposed_operand(&self, op: &'static str) -> Result<(Transpose, Operand)> {
        let operand = |ld| Operand { addr: self.addr, dtype: GemmType::Bf16, ld, stride: i64::from(self.batch_stride) };
        let ld = if self.rows == 1 { self.cols } else { self.row_stride };
        if (self.col_stride == 1 || self.cols == 1) && ld >= self.cols {
            return Ok((Transpose::No, operand(ld)));
        }
        let ld = if self.cols == 1 { self.rows } else { self.col_stride };
        if (self.row_stride == 1 || self.rows == 1) && ld >= self.rows {
            return Ok((Transpose::Yes, operand(ld)));
        }
        let msg = format!(
            "a matrix with strides ({}, {}) cannot be read in place: one of its last two dimensions must be \
             contiguous, with the other's stride at least the first's size",
            self.row_stride, self.col_stride
        );
        Err(Error::invalid(op, self.shape, msg))
    }
}

/// `t` (rank 2 or 3, bf16) as a batch of matrices; rank 2 is a batch of one.
fn matrices(exec: &Executor, op: &'static str, t: &Tensor) -> Result<View<bf16, 3>> {
    if !(2..=3).contains(&t.shape().len()) {
        return Err(Error::invalid(op, t.shape(), "expected 2 or 3 dimensions"));
    }
    exec.view_padded::<bf16, 3>(op, t)
}

/// y = x·wᵀ + bias, PyTorch's Linear: x (…, K) bf16 of rank 2 or 3, its last dimension
/// contiguous and its leading dimensions rows of one stride (a contiguous tensor, or a slice
/// of one along the last dimension); w (N, K) bf16 with either dimension contiguous (the
/// weight as stored, or a transposed view); bias (N,) f32. The output (…, N) is contiguous in
/// `out` (f32 or bf16): products are accumulated in f32, and the sum with the bias is rounded
/// once to `out`. A bf16 output starts as the bias rounded to bf16 (cuBLAS adds the product
/// to it with beta = 1), so there the bias is rounded twice.
pub fn linear(exec: &Executor, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: DType) -> Result<Tensor> {
    const OP: &str = "linear";
    let out_type = GemmType::of(OP, out)?;
    let (xv, wv) = (matrices(exec, OP, x)?, exec.view::<bf16, 2>(OP, w)?);
    let [n, k] = wv.dims;
    if xv.dims[2] != k {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    let bias = bias.map(|b| exec.view::<f32, 1>(OP, b).map(|v| (b, v))).transpose()?;
    if let Some((b, bv)) = &bias
        && bv.dims != [n]
    {
        return Err(Error::ShapeMismatch { op: OP, lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let rows = x_rows(OP, x, &xv)?;
    let wt = Matrix {
        addr: wv.ptr.addr(),
        rows: k,
        cols: n,
        row_stride: wv.strides[1],
        col_stride: wv.strides[0],
        batch_stride: 0,
        shape: w.shape(),
    };
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has rank 2 or 3") = n as usize;
    let mut y = exec.output(OP, &shape, out)?;
    if let Some((_, bv)) = &bias {
        match out_type {
            GemmType::F32 => fill_bias(exec, BIAS_ROWS_F32, bv, &mut y)?,
            GemmType::Bf16 => fill_bias::<bf16>(exec, BIAS_ROWS_BF16, bv, &mut y)?,
        }
    }
    // SAFETY: x's and w's matrices lie within the views just taken of them.
    unsafe { gemm(exec, OP, &rows, &wt, 1, &mut y, bias.is_some())? };
    Ok(y)
}

/// The rows of x (B, T, K), B = 1 for rank 2, as one (B·T)×K matrix: possible when its last
/// dimension is contiguous and (B, T) collapse to a single row stride.
fn x_rows<'a>(op: &'static str, x: &'a Tensor, xv: &View<bf16, 3>) -> Result<Matrix<'a>> {
    let [b, t, k] = xv.dims;
    let [sb, st, sk] = xv.strides;
    let invalid = |msg: &str| {
        let msg = format!("x with strides {:?}: {msg}", x.layout().strides());
        Err(Error::invalid(op, x.shape(), msg))
    };
    if k != 1 && sk != 1 {
        return invalid("the last dimension must be contiguous");
    }
    let row_stride = match (b, t) {
        (1, _) => st,
        (_, 1) => sb,
        _ if sb == t * st => st,
        _ => return invalid("the leading dimensions must collapse to rows of one stride"),
    };
    Ok(Matrix {
        addr: xv.ptr.addr(),
        rows: b * t,
        cols: k,
        row_stride,
        col_stride: sk,
        batch_stride: 0,
        shape: x.shape(),
    })
}

/// Writes the bias into every row of the linear layer's output y (contiguous, rank 2 or 3).
fn fill_bias<T: Element>(
    exec: &Executor,
    handle: KernelHandle<BiasRowsParams<T>>,
    bias: &View<f32, 1>,
    y: &mut Tensor,
) -> Result<()> {
    let yv = exec.view_mut_padded::<T, 3>(handle.kernel.name(), y)?;
    let [b, t, n] = yv.dims;
    let params = BiasRowsParams { bias: bias.ptr, out: yv.ptr, bias_stride: bias.strides[0], rows: b * t, cols: n };
    // SAFETY: the addresses come from views of live tensors of `exec`; the bias has y's last
    // size (checked by the caller) and y is contiguous.
    unsafe { exec.launch(handle, exec.grid_stride(y.layout().numel(), THREADS), &params) }
}

/// C = A·B in bf16 with f32 accumulation: a (Bt, M, K) or (M, K), b (Bt, K, N) or (K, N), each
/// matrix with either of its last two dimensions contiguous (so transposed views from
/// `permute` are read in place); the batch sizes are equal, or one is 1 or missing and that
/// side broadcasts. The output, (Bt, M, N) or (M, N) when both are rank 2, is contiguous in
/// `out` (f32 or bf16), each element rounded once from its f32 sum.
pub fn matmul(exec: &Executor, a: &Tensor, b: &Tensor, out: DType) -> Result<Tensor> {
    const OP: &str = "matmul";
    GemmType::of(OP, out)?;
    let (av, bv) = (matrices(exec, OP, a)?, matrices(exec, OP, b)?);
    let ([batch_a, m, k], [batch_b, k_b, n]) = (av.dims, bv.dims);
    if k != k_b || (batch_a != batch_b && batch_a != 1 && batch_b != 1) {
        return Err(Error::ShapeMismatch { op: OP, lhs: a.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let batch = batch_a.max(batch_b);
    let mut shape = vec![batch as usize, m as usize, n as usize];
    if a.shape().len() == 2 && b.shape().len() == 2 {
        shape.remove(0);
    }
    let mut c = exec.output(OP, &shape, out)?;
    // SAFETY: a's and b's matrices lie within the views just taken of them.
    unsafe { gemm(exec, OP, &Matrix::of(&av, a.shape()), &Matrix::of(&bv, b.shape()), batch, &mut c, false)? };
    Ok(c)
}

/// The one GEMM behind [`linear`] and [`matmul`]: for p < batch, C[p] = A[p]·B[p] (or C[p] +=
/// A[p]·B[p] when `accumulate`) with A M×K, B K×N and C the contiguous (batch, M, N) output,
/// as a single cuBLAS call (see the module doc for the mapping).
///
/// # Safety
/// The addresses of `a` and `b` must come from views of live tensors of `exec` that hold every
/// element of their matrices.
unsafe fn gemm(
    exec: &Executor,
    op: &'static str,
    a: &Matrix,
    b: &Matrix,
    batch: i32,
    c: &mut Tensor,
    accumulate: bool,
) -> Result<()> {
    let (transb, b_operand) = a.transposed_operand(op)?;
    let (transa, a_operand) = b.transposed_operand(op)?;
    let (m, n) = (a.rows, b.cols);
    let c_type = GemmType::of(op, c.dtype())?;
    let c_addr = match c_type {
        GemmType::F32 => exec.view_mut_padded::<f32, 3>(op, c)?.ptr.addr(),
        GemmType::Bf16 => exec.view_mut_padded::<bf16, 3>(op, c)?.ptr.addr(),
    };
    let args = GemmArgs {
        transa,
        transb,
        m: n,
        n: m,
        k: a.cols,
        alpha: 1.0,
        a: a_operand,
        b: b_operand,
        beta: if accumulate { 1.0 } else { 0.0 },
        c: Operand { addr: c_addr, dtype: c_type, ld: n, stride: i64::from(m) * i64::from(n) },
        batch,
    };
    exec.count_launch();
    match exec.backend() {
        Backend::Shim => {
            // SAFETY: the caller vouches for A and B; C is the whole of `c`.
            unsafe { emulate(&args) };
            Ok(())
        }
        // SAFETY: as above.
        Backend::Cuda(gpu) => unsafe { gpu.gemm(&args) },
    }
}

/// `cublasGemmStridedBatchedEx` with CUBLAS_COMPUTE_32F on host memory, by its definition:
/// bf16 products are exact in f32, summed in f32 in order of k, scaled by alpha, plus beta·C,
/// rounded once to C's type.
///
/// # Safety
/// Every element the arguments address must be in live host memory (C's, writable and
/// aliasing neither A nor B).
unsafe fn emulate(g: &GemmArgs) {
    let k = g.k as usize;
    for p in 0..g.batch {
        // op(A) by rows and op(B) by columns, widened once, so that every dot product below
        // reads two contiguous runs (the element-wise reads dominated the shim's test time).
        // SAFETY (both): (i, l) and (l, j) are within op(A) and op(B); the caller vouches for
        // the memory.
        let a: Vec<f32> =
            (0..g.m).flat_map(|i| (0..g.k).map(move |l| unsafe { g.a.read(p, g.transa, i, l) })).collect();
        let b: Vec<f32> =
            (0..g.n).flat_map(|j| (0..g.k).map(move |l| unsafe { g.b.read(p, g.transb, l, j) })).collect();
        for (j, column) in (0..g.n).zip(b.chunks_exact(k.max(1))) {
            for (i, row) in (0..g.m).zip(a.chunks_exact(k.max(1))) {
                // In order of k, as the definition reads.
                let sum = row.iter().zip(column).fold(0f32, |sum, (x, y)| sum + x * y);
                // SAFETY: (i, j) is within C; the caller vouches for the memory.
                unsafe {
                    let c = if g.beta == 0.0 { 0.0 } else { g.beta * g.c.read(p, Transpose::No, i, j) };
                    g.c.write(p, i, j, g.alpha * sum + c);
                }
            }
        }
    }
}

impl Operand {
    /// The element offset of (i, j) of matrix p.
    fn offset(&self, p: i32, i: i32, j: i32) -> isize {
        (i64::from(p) * self.stride + i64::from(i) + i64::from(j) * i64::from(self.ld)) as isize
    }

    /// Element (i, j) of op(matrix p), widened to f32.
    ///
    /// # Safety
    /// The element must be in live host memory.
    unsafe fn read(&self, p: i32, op: Transpose, i: i32, j: i32) -> f32 {
        let offset = match op {
            Transpose::No => self.offset(p, i, j),
            Transpose::Yes => self.offset(p, j, i),
        };
        // SAFETY: the caller vouches for the element.
        unsafe {
            match self.dtype {
                GemmType::Bf16 => (self.addr as *const bf16).offset(offset).read().to_f32(),
                GemmType::F32 => (self.addr as *const f32).offset(offset).read(),
            }
        }
    }

    /// Stores `value`, rounded to the operand's type, at (i, j) of matrix p.
    ///
    /// # Safety
    /// The element must be in live, writable host memory that nothing else reads meanwhile.
    unsafe fn write(&self, p: i32, i: i32, j: i32, value: f32) {
        let offset = self.offset(p, i, j);
        // SAFETY: the caller vouches for the element.
        unsafe {
            match self.dtype {
                GemmType::Bf16 => (self.addr as *mut bf16).offset(offset).write(bf16::from_f32(value)),
                GemmType::F32 => (self.addr as *mut f32).offset(offset).write(value),
            }
        }
    }
}
