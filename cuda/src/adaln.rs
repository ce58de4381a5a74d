//! Launchers of kernels/adaln.cu: the shared-AdaLN modulation LN(x)·(1 + scale) + shift and
//! the gated residual x + gate·y of a transformer block (models/src/infinity/block.rs), for
//! f32 or bf16 activations with f32 modulation rows.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::{Executor, Grid};
use crate::kernels::{
    ADALN_MODULATE_BF16, ADALN_MODULATE_F32, ADALN_MODULATE_F32_BF16, GATED_RESIDUAL_BF16, GATED_RESIDUAL_F32,
    KernelHandle,
};
use crate::view::DevPtr;

/// One block per token row for the LayerNorm; a multiple of 32 (the block reduction's rule).
const ROW_THREADS: u32 = 128;
const THREADS: u32 = 256;

#[repr(C)]
pub struct AdaLnParams<In, Out> {
    x: DevPtr<In>,
    scale: DevPtr<f32>,
    shift: DevPtr<f32>,
    out: DevPtr<Out>,
    x_stride: [i32; 3],
    scale_stride: [i32; 2],
    shift_stride: [i32; 2],
    batch: i32,
    tokens: i32,
    channels: i32,
    eps: f32,
}

#[repr(C)]
pub struct GatedResidualParams<T> {
    x: DevPtr<T>,
    y: DevPtr<T>,
    gate: DevPtr<f32>,
    out: DevPtr<T>,
    x_stride: [i32; 3],
    y_stride: [i32; 3],
    gate_stride: [i32; 2],
    batch: i32,
    tokens: i32,
    channels: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of adaln.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl<In, Out> DeviceRepr for AdaLnParams<In, Out> {}
unsafe impl<T> DeviceRepr for GatedResidualParams<T> {}

/// LN(x)·(1 + scale) + shift: x (B, n, C) f32 or bf16 normalised over C without affine
/// (biased variance, `eps` inside the root; Infinity uses 1e-6), scale and shift (B, C) f32.
/// The output is contiguous in `out`: x's dtype, or bf16 from f32 x (the GEMM operand that
/// follows, rounded once, without an f32 copy in memory); statistics and arithmetic are f32.
pub fn modulate(exec: &Executor, x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f32, out: DType) -> Result<Tensor> {
    const OP: &str = "adaln_modulate";
    match (x.dtype(), out) {
        (DType::F32, DType::F32) => modulate_as(exec, ADALN_MODULATE_F32, x, scale, shift, eps),
        (DType::F32, DType::BF16) => modulate_as::<f32, bf16>(exec, ADALN_MODULATE_F32_BF16, x, scale, shift, eps),
        (DType::BF16, DType::BF16) => modulate_as::<bf16, bf16>(exec, ADALN_MODULATE_BF16, x, scale, shift, eps),
        (DType::F32 | DType::BF16, dtype) | (dtype, _) => Err(Error::UnsupportedDType { op: OP, dtype }),
    }
}

fn modulate_as<In: Element, Out: Element>(
    exec: &Executor,
    handle: KernelHandle<AdaLnParams<In, Out>>,
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let op = handle.kernel.name();
    let xv = exec.view::<In, 3>(op, x)?;
    let (sc, sh) = (exec.view::<f32, 2>(op, scale)?, exec.view::<f32, 2>(op, shift)?);
    let [batch, tokens, channels] = xv.dims;
    for (name, m) in [(scale, &sc), (shift, &sh)] {
        if m.dims != [batch, channels] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: name.shape().to_vec() });
        }
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(op, x.shape(), format!("eps {eps} must be finite and ≥ 0")));
    }
    let mut out = exec.output(op, x.shape(), Out::DTYPE)?;
    let params = AdaLnParams {
        x: xv.ptr,
        scale: sc.ptr,
        shift: sh.ptr,
        out: exec.view_mut::<Out, 3>(op, &mut out)?.ptr,
        x_stride: xv.strides,
        scale_stride: sc.strides,
        shift_stride: sh.strides,
        batch,
        tokens,
        channels,
        eps,
    };
    let grid = Grid { blocks: (batch * tokens) as u32, threads: ROW_THREADS };
    // SAFETY: the addresses come from views of live tensors of `exec` whose shapes were
    // checked against each other above; the output has x's shape.
    unsafe { exec.launch(handle, grid, &params)? };
    Ok(out)
}

/// x + gate·y with x, y (B, n, C) of one dtype (f32 or bf16) and gate (B, C) f32; the product
/// and the sum are rounded separately, as the CPU's `add(x, mul(y, gate))`. The output is
/// contiguous, in x's dtype.
pub fn gated_residual(exec: &Executor, x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => gated_residual_as(exec, GATED_RESIDUAL_F32, x, y, gate),
        DType::BF16 => gated_residual_as::<bf16>(exec, GATED_RESIDUAL_BF16, x, y, gate),
        dtype => Err(Error::UnsupportedDType { op: "gated_residual", dtype }),
    }
}

fn gated_residual_as<T: Element>(
    exec: &Executor,
    handle: KernelHandle<GatedResidualParams<T>>,
    x: &Tensor,
    y: &Tensor,
    gate: &Tensor,
) -> Result<Tensor> {
    let op = handle.kernel.name();
    let (xv, yv, g) = (exec.view::<T, 3>(op, x)?, exec.view::<T, 3>(op, y)?, exec.view::<f32, 2>(op, gate)?);
    let [batch, tokens, channels] = xv.dims;
    if yv.dims != xv.dims {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: y.shape().to_vec() });
    }
    if g.dims != [batch, channels] {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: gate.shape().to_vec() });
    }
    let mut out = exec.output(op, x.shape(), T::DTYPE)?;
    let params = GatedResidualParams {
        x: xv.ptr,
        y: yv.ptr,
        gate: g.ptr,
        out: exec.view_mut::<T, 3>(op, &mut out)?.ptr,
        x_stride: xv.strides,
        y_stride: yv.strides,
        gate_stride: g.strides,
        batch,
        tokens,
        channels,
    };
    // SAFETY: the addresses come from views of live tensors of `exec` whose shapes were
    // checked against each other above; the output has x's shape.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel(), THREADS), &params) }?;
    Ok(out)
}
