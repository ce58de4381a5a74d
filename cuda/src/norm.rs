//! Launchers of kernels/norm.cu: the row norms (RMS: T5, Infinity's text norm; layer norm and
//! L2: Infinity's blocks when training), the group norm with
//! an optional fused SiLU (BitVAE decoder), the softmax over the last dimension and the row
//! reductions, each one CUDA block per normalised (or reduced) block of elements with f32
//! statistics. Inputs may be strided;
//! outputs are contiguous.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::{Executor, Grid};
use crate::kernels::{GROUP_NORM, KernelHandle, REDUCE_ROWS_F32, ROW_NORM_BF16, ROW_NORM_F32, SOFTMAX_F32};
use crate::view::{DevPtr, View};

/// Threads per row of the row kernels (row norms, softmax, reductions); a multiple of 32 (the block
/// reduction's rule). Rows longer than this are strided over.
const ROW_THREADS: u32 = 128;
/// Threads per (sample, group) of the group norm, whose groups hold C/G channels × H·W.
const GROUP_THREADS: u32 = 256;
/// Highest rank of the tensors the row kernels take (leading dimensions are rows).
const MAX_RANK: usize = 4;

#[repr(C)]
pub struct RowNormParams<T> {
    x: DevPtr<T>,
    weight: DevPtr<f32>,
    bias: DevPtr<f32>,
    out: DevPtr<T>,
    dims: [i32; MAX_RANK],
    x_stride: [i32; MAX_RANK],
    weight_stride: i32,
    bias_stride: i32,
    eps: f32,
    stat: i32,
}

/// What a row is divided by; the discriminants are norm.cu's `RowNormParams::stat` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStat {
    /// √(mean(x²) + eps).
    Rms = 0,
    /// √(var + eps) after subtracting the mean (biased variance).
    Std = 1,
    /// max(‖x‖₂, eps).
    L2 = 2,
}

#[repr(C)]
pub struct GroupNormParams {
    x: DevPtr<f32>,
    weight: DevPtr<f32>,
    bias: DevPtr<f32>,
    out: DevPtr<f32>,
    x_stride: [i32; 4],
    weight_stride: i32,
    bias_stride: i32,
    channels: i32,
    height: i32,
    width: i32,
    groups: i32,
    eps: f32,
    silu: i32,
}

#[repr(C)]
pub struct SoftmaxParams {
    x: DevPtr<f32>,
    out: DevPtr<f32>,
    dims: [i32; MAX_RANK],
    x_stride: [i32; MAX_RANK],
}

#[repr(C)]
pub struct ReduceRowsParams {
    x: DevPtr<f32>,
    out: DevPtr<f32>,
    dims: [i32; MAX_RANK],
    x_stride: [i32; MAX_RANK],
    op: i32,
}

/// The row reductions; the discriminants are norm.cu's `ReduceRowsParams::op` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduction {
    Sum = 0,
    Mean = 1,
    /// NaN if the row holds one.
    Max = 2,
    /// NaN if the row holds one.
    Min = 3,
}

// SAFETY: #[repr(C)] mirrors of the C structs of norm.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl<T> DeviceRepr for RowNormParams<T> {}
unsafe impl DeviceRepr for GroupNormParams {}
unsafe impl DeviceRepr for SoftmaxParams {}
unsafe impl DeviceRepr for ReduceRowsParams {}

/// Each row (the last dimension) of x (rank 0 to 4, f32 or bf16) minus its mean (layer norm
/// only), divided by its statistic, times weight and plus bias ((D) f32, or none): T5's and
/// Infinity's RMS norm, the layer norm and the L2 normalisation (eps = 1e-6, 1e-6 and 1e-12
/// there). The output is contiguous, in x's dtype; the statistic and the arithmetic are f32.
pub fn row_norm(
    exec: &Executor,
    stat: RowStat,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => row_norm_as(exec, ROW_NORM_F32, stat, x, weight, bias, eps),
        DType::BF16 => row_norm_as::<bf16>(exec, ROW_NORM_BF16, stat, x, weight, bias, eps),
        dtype => Err(Error::UnsupportedDType { op: "row_norm", dtype }),
    }
}

fn row_norm_as<T: Element>(
    exec: &Executor,
    handle: KernelHandle<RowNormParams<T>>,
    stat: RowStat,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let op = handle.kernel.name();
    let xv = exec.view_padded::<T, MAX_RANK>(op, x)?;
    check_eps(op, x, eps)?;
    let channel = |p: Option<&Tensor>| match p {
        None => Ok((DevPtr::null(), 0)),
        Some(p) => per_channel(exec, op, x, p, xv.dims[MAX_RANK - 1]).map(|v| (v.ptr, v.strides[0])),
    };
    let ((weight, weight_stride), (bias, bias_stride)) = (channel(weight)?, channel(bias)?);
    let mut out = exec.output(op, x.shape(), T::DTYPE)?;
    let params = RowNormParams {
        x: xv.ptr,
        weight,
        bias,
        out: exec.view_mut_padded::<T, MAX_RANK>(op, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
        weight_stride,
        bias_stride,
        eps,
        stat: stat as i32,
    };
    // SAFETY: the addresses come from views of live tensors of `exec` (weight and bias checked
    // to have D elements, or null, which the kernel tests for); the output has x's shape.
    unsafe { exec.launch(handle, row_grid(&xv.dims), &params)? };
    Ok(out)
}

/// PyTorch's group norm of x (N, C, H, W) f32 in `groups` groups of C / groups consecutive
/// channels (biased variance, eps inside the root), then ·weight[c] + bias[c] (both (C) f32),
/// then SiLU when `silu` is set (the BitVAE decoder's GroupNorm(32, eps 1e-6) → SiLU). The
/// output is contiguous f32.
///
/// One block per (sample, group) reads its group three times. That is simple, but N·G blocks
/// (32 at batch 1) leave most of a large GPU idle on the decoder's biggest feature maps;
/// splitting a group over blocks (partial sums, then a finishing pass) would fill it.
pub fn group_norm(
    exec: &Executor,
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    let op = GROUP_NORM.kernel.name();
    let xv = exec.view::<f32, 4>(op, x)?;
    let [batch, channels, height, width] = xv.dims;
    if groups == 0 || !(channels as usize).is_multiple_of(groups) {
        return Err(Error::invalid(op, x.shape(), format!("{groups} groups do not divide {channels} channels")));
    }
    check_eps(op, x, eps)?;
    let (w, b) = (per_channel(exec, op, x, weight, channels)?, per_channel(exec, op, x, bias, channels)?);
    let mut out = exec.output(op, x.shape(), DType::F32)?;
    let params = GroupNormParams {
        x: xv.ptr,
        weight: w.ptr,
        bias: b.ptr,
        out: exec.view_mut::<f32, 4>(op, &mut out)?.ptr,
        x_stride: xv.strides,
        weight_stride: w.strides[0],
        bias_stride: b.strides[0],
        channels,
        height,
        width,
        // Below `channels`, which fits in i32.
        groups: groups as i32,
        eps,
        silu: i32::from(silu),
    };
    let grid = Grid { blocks: (batch as usize * groups) as u32, threads: GROUP_THREADS };
    // SAFETY: the addresses come from views of live tensors of `exec`, weight and bias checked
    // to have C elements; the output has x's shape and each block writes its own group.
    unsafe { exec.launch(GROUP_NORM, grid, &params)? };
    Ok(out)
}

/// exp(x − max) / Σ exp(x − max) over the last dimension of x (rank 0 to 4, f32), as ops'
/// `softmax(x, rank − 1)`: a row holding NaN or +inf, or only −inf, comes out all NaN. The
/// output is contiguous f32.
pub fn softmax(exec: &Executor, x: &Tensor) -> Result<Tensor> {
    let op = SOFTMAX_F32.kernel.name();
    let xv = exec.view_padded::<f32, MAX_RANK>(op, x)?;
    let mut out = exec.output(op, x.shape(), DType::F32)?;
    let params = SoftmaxParams {
        x: xv.ptr,
        out: exec.view_mut_padded::<f32, MAX_RANK>(op, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
    };
    // SAFETY: both addresses come from views of live tensors of `exec` of x's shape.
    unsafe { exec.launch(SOFTMAX_F32, row_grid(&xv.dims), &params)? };
    Ok(out)
}

/// `op` of each row (the last dimension) of x (rank 0 to 4, f32, any strides; rows of at
/// least one element), in f32: the output has x's shape without its last dimension and is
/// contiguous.
pub fn reduce_rows(exec: &Executor, op: RowReduction, x: &Tensor) -> Result<Tensor> {
    let name = REDUCE_ROWS_F32.kernel.name();
    let xv = exec.view_padded::<f32, MAX_RANK>(name, x)?;
    if xv.dims[MAX_RANK - 1] == 0 {
        return Err(Error::invalid(name, x.shape(), "rows must not be empty"));
    }
    let rows_shape = &x.shape()[..x.rank().saturating_sub(1)];
    let mut out = exec.output(name, &[rows_shape.iter().product()], DType::F32)?;
    let params = ReduceRowsParams {
        x: xv.ptr,
        out: exec.view_mut::<f32, 1>(name, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
        op: op as i32,
    };
    // A short row needs no more threads than its elements (in whole warps, as block_reduce
    // wants): idle threads cost a GPU little but each is a fiber on the shim.
    let threads = (xv.dims[MAX_RANK - 1] as u32).next_multiple_of(32).min(ROW_THREADS);
    let grid = Grid { threads, ..row_grid(&xv.dims) };
    // SAFETY: both addresses come from views of live tensors of `exec`; the output holds one
    // element per row of x.
    unsafe { exec.launch(REDUCE_ROWS_F32, grid, &params)? };
    out.reshape(rows_shape)
}

/// One block per row: every dimension but the last.
fn row_grid(dims: &[i32; MAX_RANK]) -> Grid {
    // Below 2^31: the view's element count is.
    let rows: i32 = dims[..MAX_RANK - 1].iter().product();
    Grid { blocks: rows as u32, threads: ROW_THREADS }
}

fn check_eps(op: &'static str, x: &Tensor, eps: f32) -> Result<()> {
    if eps >= 0.0 && eps.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(op, x.shape(), format!("eps {eps} must be finite and ≥ 0")))
    }
}

/// A per-channel parameter of x: f32 of shape (channels), any stride.
fn per_channel(exec: &Executor, op: &'static str, x: &Tensor, p: &Tensor, channels: i32) -> Result<View<f32, 1>> {
    let v = exec.view::<f32, 1>(op, p)?;
    if v.dims != [channels] {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: p.shape().to_vec() });
    }
    Ok(v)
}
