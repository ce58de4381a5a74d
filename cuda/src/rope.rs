//! Launcher of kernels/rope.cu: Infinity's interleaved rotary embedding of q or k (B, H, L, D)
//! by (L, D/2) cos and sin tables (ops/src/rope.rs's `rope_interleaved`; the tables come from
//! its `rope2d_table`).

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error as RuntimeError};

use crate::Result;
use crate::device::{DevPtr, DeviceTensor};
use crate::exec::Executor;
use crate::kernels::{KernelHandle, ROPE_INTERLEAVED_BF16, ROPE_INTERLEAVED_F32};

const THREADS: u32 = 256;

#[repr(C)]
pub struct RopeParams<T> {
    x: DevPtr<T>,
    cos: DevPtr<f32>,
    sin: DevPtr<f32>,
    out: DevPtr<T>,
    dims: [i32; 4],
    x_stride: [i32; 4],
    cos_stride: [i32; 2],
    sin_stride: [i32; 2],
}

// SAFETY: a #[repr(C)] mirror of the C struct of rope.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl<T> DeviceRepr for RopeParams<T> {}

/// Rotates pair (2j, 2j+1) of every head vector of x (B, H, L, D), f32 or bf16 with any
/// strides, by the angle whose cosine and sine are cos[l, j] and sin[l, j] ((L, D/2) f32, any
/// strides) for position l. The output is contiguous, in x's dtype; the arithmetic is f32.
pub fn rope_interleaved(
    exec: &Executor,
    x: &DeviceTensor,
    cos: &DeviceTensor,
    sin: &DeviceTensor,
) -> Result<DeviceTensor> {
    match x.dtype() {
        DType::F32 => rope_as(exec, ROPE_INTERLEAVED_F32, x, cos, sin),
        DType::BF16 => rope_as::<bf16>(exec, ROPE_INTERLEAVED_BF16, x, cos, sin),
        dtype => Err(RuntimeError::UnsupportedDType { op: "rope_interleaved", dtype }.into()),
    }
}

fn rope_as<T: Element>(
    exec: &Executor,
    handle: KernelHandle<RopeParams<T>>,
    x: &DeviceTensor,
    cos: &DeviceTensor,
    sin: &DeviceTensor,
) -> Result<DeviceTensor> {
    let op = handle.kernel.name();
    let xv = exec.view::<T, 4>(op, x)?;
    let (cv, sv) = (exec.view::<f32, 2>(op, cos)?, exec.view::<f32, 2>(op, sin)?);
    let [_, _, len, head_dim] = xv.dims;
    if head_dim % 2 != 0 {
        return Err(RuntimeError::invalid(
            op,
            x.shape(),
            format!("head dim {head_dim} is odd, so it does not split into pairs"),
        )
        .into());
    }
    for (table, v) in [(cos, &cv), (sin, &sv)] {
        if v.dims != [len, head_dim / 2] {
            return Err(RuntimeError::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: table.shape().to_vec() }.into());
        }
    }
    let mut out = exec.output(op, x.shape(), T::DTYPE)?;
    let params = RopeParams {
        x: xv.ptr,
        cos: cv.ptr,
        sin: sv.ptr,
        out: exec.view_mut::<T, 4>(op, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
        cos_stride: cv.strides,
        sin_stride: sv.strides,
    };
    // SAFETY: the addresses come from views of live tensors of `exec`, the tables checked to be
    // (L, D/2); the output has x's shape.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel() / 2, THREADS), &params)? };
    Ok(out)
}
