//! Launchers of kernels/elementwise.cu: add, sub, mul and div with NumPy broadcasting, the
//! one-input functions (the activations, exp, tanh, sigmoid, sqrt, square, clamp, affine) and
//! their gradients, on f32 or bf16 inputs of rank 0 to 4 with any strides, to a contiguous
//! f32 output (bf16 too for the one-input functions). Broadcasting is done by strides: a
//! size-1 (or missing leading) dimension of an operand is read with stride 0, so nothing is
//! materialised. And the strided copy: [`cast`] (a contiguous copy, in any of f32/bf16) and
//! [`copy_into`] (into a slice of a larger tensor).

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::layout::broadcast_shapes;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{
    BINARY_BF16, BINARY_F32, COPY_BF16_BF16, COPY_BF16_F32, COPY_F32_BF16, COPY_F32_F32, COPY_U8_U8, KernelHandle,
    UNARY_BF16, UNARY_BF16_BF16, UNARY_F32, UNARY_GRAD_F32,
};
use crate::view::{DevPtr, View};

const THREADS: u32 = 256;
/// Highest rank the kernels index.
const MAX_RANK: usize = 4;

/// The binary operators; the discriminants are elementwise.cu's `BinaryOp` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Mul = 1,
    Sub = 2,
    Div = 3,
}

/// The one-input functions; [`UnaryOp::code`] gives elementwise.cu's `UnaryOp` code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), PyTorch's `gelu(approximate="tanh")`.
    GeluTanh,
    /// x·sigmoid(x).
    Silu,
    Exp,
    /// min(max(x, lo), hi), NaN kept.
    Clamp {
        lo: f32,
        hi: f32,
    },
    /// x·mul + add, rounded after each step.
    Affine {
        mul: f32,
        add: f32,
    },
    Tanh,
    /// 1 / (1 + e^−x).
    Sigmoid,
    Sqrt,
    Square,
    /// Natural logarithm (the device's `logf`, within an ulp or two of the CPU's).
    Log,
    Abs,
    /// −1, 0 or 1 (0 for ±0 and NaN).
    Sign,
}

impl UnaryOp {
    /// The kernel's op code and its two constants.
    fn code(self) -> (i32, f32, f32) {
        match self {
            UnaryOp::GeluTanh => (0, 0.0, 0.0),
            UnaryOp::Silu => (1, 0.0, 0.0),
            UnaryOp::Exp => (2, 0.0, 0.0),
            UnaryOp::Clamp { lo, hi } => (3, lo, hi),
            UnaryOp::Affine { mul, add } => (4, mul, add),
            UnaryOp::Tanh => (5, 0.0, 0.0),
            UnaryOp::Sigmoid => (6, 0.0, 0.0),
            UnaryOp::Sqrt => (7, 0.0, 0.0),
            UnaryOp::Square => (8, 0.0, 0.0),
            UnaryOp::Log => (9, 0.0, 0.0),
            UnaryOp::Abs => (10, 0.0, 0.0),
            UnaryOp::Sign => (11, 0.0, 0.0),
        }
    }
}

#[repr(C)]
pub struct BinaryParams<T> {
    a: DevPtr<T>,
    b: DevPtr<T>,
    out: DevPtr<f32>,
    dims: [i32; MAX_RANK],
    a_stride: [i32; MAX_RANK],
    b_stride: [i32; MAX_RANK],
    op: i32,
}

#[repr(C)]
pub struct UnaryParams<In, Out> {
    x: DevPtr<In>,
    out: DevPtr<Out>,
    dims: [i32; MAX_RANK],
    x_stride: [i32; MAX_RANK],
    op: i32,
    a: f32,
    b: f32,
}

#[repr(C)]
pub struct UnaryGradParams {
    g: DevPtr<f32>,
    v: DevPtr<f32>,
    out: DevPtr<f32>,
    dims: [i32; MAX_RANK],
    g_stride: [i32; MAX_RANK],
    v_stride: [i32; MAX_RANK],
    op: i32,
    a: f32,
    b: f32,
}

/// The functions [`unary_grad`] differentiates, with what their derivative is formed from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryGrad {
    /// From x.
    GeluTanh,
    /// From x.
    Silu,
    /// From x: the gradient passes where lo ≤ x ≤ hi.
    Clamp { lo: f32, hi: f32 },
    /// From y = tanh(x).
    Tanh,
    /// From y = σ(x).
    Sigmoid,
    /// From y = √x.
    Sqrt,
    /// From x.
    Square,
    /// From x: g·sign(x), zero at 0.
    Abs,
}

#[repr(C)]
pub struct CopyParams<S, D> {
    src: DevPtr<S>,
    dst: DevPtr<D>,
    dims: [i32; MAX_RANK],
    src_stride: [i32; MAX_RANK],
    dst_stride: [i32; MAX_RANK],
}

// SAFETY: #[repr(C)] mirrors of the C structs of elementwise.cu (sizes checked by a test)
// made of plain numbers and addresses.
unsafe impl<T> DeviceRepr for BinaryParams<T> {}
unsafe impl<In, Out> DeviceRepr for UnaryParams<In, Out> {}
unsafe impl DeviceRepr for UnaryGradParams {}
unsafe impl<S, D> DeviceRepr for CopyParams<S, D> {}

/// `a + b` with NumPy broadcasting; see [`binary`].
pub fn add(exec: &Executor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(exec, BinaryOp::Add, a, b)
}

/// `a * b` with NumPy broadcasting; see [`binary`].
pub fn mul(exec: &Executor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(exec, BinaryOp::Mul, a, b)
}

/// `a op b` with NumPy broadcasting (shapes aligned at the last dimension, rank ≤ 4), a and b
/// both f32 or both bf16. The output is contiguous f32 with the broadcast shape; each result is
/// the correctly rounded f32 sum or product, so f32 inputs agree with the CPU op bit for bit.
pub fn binary(exec: &Executor, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match (a.dtype(), b.dtype()) {
        (DType::F32, DType::F32) => binary_as(exec, BINARY_F32, op, a, b),
        (DType::BF16, DType::BF16) => binary_as::<bf16>(exec, BINARY_BF16, op, a, b),
        (expected @ (DType::F32 | DType::BF16), got) => Err(Error::DTypeMismatch { op: "binary", expected, got }),
        (dtype, _) => Err(Error::UnsupportedDType { op: "binary", dtype }),
    }
}

fn binary_as<T: Element>(
    exec: &Executor,
    handle: KernelHandle<BinaryParams<T>>,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    let name = handle.kernel.name();
    let (av, bv) = (exec.view_padded::<T, MAX_RANK>(name, a)?, exec.view_padded::<T, MAX_RANK>(name, b)?);
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let mut out = exec.output(name, &shape, DType::F32)?;
    let ov = exec.view_mut_padded::<f32, MAX_RANK>(name, &mut out)?;
    let params = BinaryParams {
        a: av.ptr,
        b: bv.ptr,
        out: ov.ptr,
        dims: ov.dims,
        a_stride: broadcast_strides(&av, &ov.dims),
        b_stride: broadcast_strides(&bv, &ov.dims),
        op: op as i32,
    };
    // SAFETY: the addresses come from views of live tensors of `exec`; every operand offset
    // the kernel forms is one of its view's (a broadcast dimension is read at index 0), and the
    // output was allocated with the broadcast shape.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    Ok(out)
}

/// The strides that read operand `v` at the broadcast shape `dims`: 0 where it has size 1.
fn broadcast_strides<T>(v: &View<T, MAX_RANK>, dims: &[i32; MAX_RANK]) -> [i32; MAX_RANK] {
    std::array::from_fn(|i| if v.dims[i] == 1 && dims[i] != 1 { 0 } else { v.strides[i] })
}

/// The tanh GELU of every element; see [`unary`].
pub fn gelu_tanh(exec: &Executor, x: &Tensor, out: DType) -> Result<Tensor> {
    unary(exec, UnaryOp::GeluTanh, x, out)
}

/// x·sigmoid(x) of every element; see [`unary`].
pub fn silu(exec: &Executor, x: &Tensor, out: DType) -> Result<Tensor> {
    unary(exec, UnaryOp::Silu, x, out)
}

/// `op` of every element of x (f32 or bf16, rank 0 to 4, any strides), computed in f32 (the
/// activations as x·sigmoid(·) with the library expf). The output is contiguous in `out`: f32, or bf16 from
/// bf16 x (an activation between two bf16 GEMMs, rounded once).
pub fn unary(exec: &Executor, op: UnaryOp, x: &Tensor, out: DType) -> Result<Tensor> {
    match (x.dtype(), out) {
        (DType::F32, DType::F32) => unary_as(exec, UNARY_F32, op, x),
        (DType::BF16, DType::F32) => unary_as::<bf16, f32>(exec, UNARY_BF16, op, x),
        (DType::BF16, DType::BF16) => unary_as::<bf16, bf16>(exec, UNARY_BF16_BF16, op, x),
        (DType::F32 | DType::BF16, dtype) | (dtype, _) => Err(Error::UnsupportedDType { op: "unary", dtype }),
    }
}

fn unary_as<In: Element, Out: Element>(
    exec: &Executor,
    handle: KernelHandle<UnaryParams<In, Out>>,
    op: UnaryOp,
    x: &Tensor,
) -> Result<Tensor> {
    let name = handle.kernel.name();
    let xv = exec.view_padded::<In, MAX_RANK>(name, x)?;
    let mut out = exec.output(name, x.shape(), Out::DTYPE)?;
    let (code, a, b) = op.code();
    let params = UnaryParams {
        x: xv.ptr,
        out: exec.view_mut_padded::<Out, MAX_RANK>(name, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
        op: code,
        a,
        b,
    };
    // SAFETY: both addresses come from views of live tensors of `exec` of x's shape.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    Ok(out)
}

/// g·f′(v) of every element, the input gradient of a one-input function `f` given its output
/// gradient g and v, the input or the output as [`UnaryGrad`] says (f32, one shape, rank 1 to
/// 4, any strides); computed in f32, the output contiguous.
pub fn unary_grad(exec: &Executor, f: UnaryGrad, g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let name = UNARY_GRAD_F32.kernel.name();
    if g.shape() != v.shape() {
        return Err(Error::ShapeMismatch { op: name, lhs: g.shape().to_vec(), rhs: v.shape().to_vec() });
    }
    let (gv, vv) = (exec.view_padded::<f32, MAX_RANK>(name, g)?, exec.view_padded::<f32, MAX_RANK>(name, v)?);
    let mut out = exec.output(name, g.shape(), DType::F32)?;
    let (op, a, b) = match f {
        UnaryGrad::GeluTanh => (0, 0.0, 0.0),
        UnaryGrad::Silu => (1, 0.0, 0.0),
        UnaryGrad::Clamp { lo, hi } => (2, lo, hi),
        UnaryGrad::Tanh => (3, 0.0, 0.0),
        UnaryGrad::Sigmoid => (4, 0.0, 0.0),
        UnaryGrad::Sqrt => (5, 0.0, 0.0),
        UnaryGrad::Square => (6, 0.0, 0.0),
        UnaryGrad::Abs => (7, 0.0, 0.0),
    };
    let params = UnaryGradParams {
        g: gv.ptr,
        v: vv.ptr,
        out: exec.view_mut_padded::<f32, MAX_RANK>(name, &mut out)?.ptr,
        dims: gv.dims,
        g_stride: gv.strides,
        v_stride: vv.strides,
        op,
        a,
        b,
    };
    // SAFETY: the three addresses come from views of live tensors of `exec` of one shape.
    unsafe { exec.launch(UNARY_GRAD_F32, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    Ok(out)
}

/// x's elements copied into a new contiguous tensor of `dtype` (f32 or bf16; x f32 or bf16,
/// rank 0 to 4, any strides): the cast, and the gather of a strided view into the contiguous
/// operand a GEMM needs. f32 → bf16 rounds to nearest even; every other pair is exact.
pub fn cast(exec: &Executor, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let mut out = exec.output("cast", x.shape(), dtype)?;
    copy(exec, x, &mut out, 0, 0)?;
    Ok(out)
}

/// Writes `src` into `dst` at `start..start + src.shape()[dim]` along `dim`: every other
/// dimension of the two must agree. `dst` may be in the other dtype (the value is cast) and
/// must own its buffer: a tensor with live views cannot be written.
pub fn copy_into(exec: &Executor, src: &Tensor, dst: &mut Tensor, dim: usize, start: usize) -> Result<()> {
    copy(exec, src, dst, dim, start)
}

fn copy(exec: &Executor, src: &Tensor, dst: &mut Tensor, dim: usize, start: usize) -> Result<()> {
    match (src.dtype(), dst.dtype()) {
        (DType::F32, DType::F32) => copy_as(exec, COPY_F32_F32, src, dst, dim, start),
        (DType::F32, DType::BF16) => copy_as::<f32, bf16>(exec, COPY_F32_BF16, src, dst, dim, start),
        (DType::BF16, DType::F32) => copy_as::<bf16, f32>(exec, COPY_BF16_F32, src, dst, dim, start),
        (DType::BF16, DType::BF16) => copy_as::<bf16, bf16>(exec, COPY_BF16_BF16, src, dst, dim, start),
        (DType::U8, DType::U8) => copy_as::<u8, u8>(exec, COPY_U8_U8, src, dst, dim, start),
        (DType::F32 | DType::BF16 | DType::U8, dtype) | (dtype, _) => {
            Err(Error::UnsupportedDType { op: "copy", dtype })
        }
    }
}

fn copy_as<S: Element, D: Element>(
    exec: &Executor,
    handle: KernelHandle<CopyParams<S, D>>,
    src: &Tensor,
    dst: &mut Tensor,
    dim: usize,
    start: usize,
) -> Result<()> {
    let name = handle.kernel.name();
    let (shape, dst_shape) = (src.shape(), dst.shape());
    let fits = shape.len() == dst_shape.len()
        && dim < shape.len()
        && shape.iter().zip(dst_shape).enumerate().all(|(i, (&s, &d))| if i == dim { start + s <= d } else { s == d });
    if !fits {
        return Err(Error::invalid(
            name,
            dst_shape,
            format!("cannot hold a {shape:?} source at {start} along dimension {dim}"),
        ));
    }
    let sv = exec.view_padded::<S, MAX_RANK>(name, src)?;
    let mut dv = exec.view_mut_padded::<D, MAX_RANK>(name, dst)?;
    // The destination seen at the source's shape: the slice starts `start` rows further in.
    let slice_dim = MAX_RANK - shape.len() + dim;
    dv.ptr = dv.ptr.add(start * dv.strides[slice_dim] as usize);
    let params = CopyParams { src: sv.ptr, dst: dv.ptr, dims: sv.dims, src_stride: sv.strides, dst_stride: dv.strides };
    // SAFETY: both addresses come from views of live tensors of `exec`; the source's shape was
    // checked to fit in the destination at `start`, so every destination offset is one of its
    // view's. `dst` owns its buffer (`view_mut` checked), so no other tensor reads it.
    unsafe { exec.launch(handle, exec.grid_stride(src.layout().numel(), THREADS), &params)? };
    Ok(())
}
