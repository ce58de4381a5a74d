//! Launchers of kernels/quantize.cu: PyTorch-exact bilinear, bicubic and area resizes and one scale of
//! the bit quantizer, the nearest-code search of VQ (ops' `resize`, `quantize_scale` and
//! `nearest_code` on an executor). The kernels round
//! every float operation as the CPU code does, so bits and codes equal the CPU path's exactly.

use cudarc::driver::DeviceRepr;
use infinity_runtime::{DType, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{BSQ_QUANTIZE, KernelHandle, NEAREST_CODE, RESIZE_AREA, RESIZE_BICUBIC, RESIZE_BILINEAR};
use crate::view::DevPtr;

const THREADS: u32 = 256;

#[repr(C)]
pub struct ResizeParams {
    src: DevPtr<f32>,
    dst: DevPtr<f32>,
    src_stride: [i32; 4],
    batch: i32,
    channels: i32,
    in_h: i32,
    in_w: i32,
    out_h: i32,
    out_w: i32,
}

#[repr(C)]
pub struct BsqQuantizeParams {
    residual: DevPtr<f32>,
    bits: DevPtr<u8>,
    codes: DevPtr<f32>,
    residual_stride: [i32; 4],
    batch: i32,
    dim: i32,
    height: i32,
    width: i32,
    code_scale: f32,
}

#[repr(C)]
pub struct NearestCodeParams {
    z: DevPtr<f32>,
    codebook: DevPtr<f32>,
    index: DevPtr<i64>,
    z_stride: [i32; 2],
    code_stride: [i32; 2],
    rows: i32,
    dim: i32,
    codes: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of quantize.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl DeviceRepr for ResizeParams {}
unsafe impl DeviceRepr for BsqQuantizeParams {}
unsafe impl DeviceRepr for NearestCodeParams {}

/// PyTorch 'bilinear' (align_corners = false, no antialias, also when shrinking) of
/// (B, C, H, W) f32 to (B, C, size.0, size.1), contiguous. The same size is an exact copy.
pub fn resize_bilinear(exec: &Executor, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    resize(exec, RESIZE_BILINEAR, x, size)
}

/// PyTorch 'bicubic' (align_corners = false, A = −0.75, edges replicated, no antialias) of
/// (B, C, H, W) f32 to (B, C, size.0, size.1), contiguous. The same size is an exact copy.
pub fn resize_bicubic(exec: &Executor, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    resize(exec, RESIZE_BICUBIC, x, size)
}

/// PyTorch 'area' (adaptive average pooling) of (B, C, H, W) f32 to (B, C, size.0, size.1),
/// contiguous. The same size is an exact copy.
pub fn resize_area(exec: &Executor, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    resize(exec, RESIZE_AREA, x, size)
}

fn resize(exec: &Executor, handle: KernelHandle<ResizeParams>, x: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let op = handle.kernel.name();
    let src = exec.view::<f32, 4>(op, x)?;
    let [batch, channels, in_h, in_w] = src.dims;
    let mut out = exec.output(op, &[batch as usize, channels as usize, oh, ow], DType::F32)?;
    let dst = exec.view_mut::<f32, 4>(op, &mut out)?;
    let params = ResizeParams {
        src: src.ptr,
        dst: dst.ptr,
        src_stride: src.strides,
        batch,
        channels,
        in_h,
        in_w,
        out_h: dst.dims[2],
        out_w: dst.dims[3],
    };
    // SAFETY: both addresses come from views of live tensors of `exec` with these shapes.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    Ok(out)
}

/// The code magnitude 1/√d, computed as the CPU quantizer does (f64, rounded once).
fn code_scale(dim: i32) -> f32 {
    (1.0 / f64::from(dim).sqrt()) as f32
}

/// One scale's quantization result, all contiguous.
pub struct ScaleBits {
    /// (B, h, w, d) u8: 1 where the residual is > 0 (0 and NaN give 0).
    pub bits: Tensor,
    /// (B, d, h, w) f32: ±1/√d.
    pub codes: Tensor,
}

/// Quantizes one scale's residual (B, d, h, w) f32 (already resized to the scale) to bits and
/// codes in one pass.
pub fn quantize_scale(exec: &Executor, residual: &Tensor) -> Result<ScaleBits> {
    let op = BSQ_QUANTIZE.kernel.name();
    let r = exec.view::<f32, 4>(op, residual)?;
    let [b, d, h, w] = r.dims.map(|v| v as usize);
    let mut bits = exec.output(op, &[b, h, w, d], DType::U8)?;
    let mut codes = exec.output(op, &[b, d, h, w], DType::F32)?;
    let params = BsqQuantizeParams {
        residual: r.ptr,
        bits: exec.view_mut::<u8, 4>(op, &mut bits)?.ptr,
        codes: exec.view_mut::<f32, 4>(op, &mut codes)?.ptr,
        residual_stride: r.strides,
        batch: r.dims[0],
        dim: r.dims[1],
        height: r.dims[2],
        width: r.dims[3],
        code_scale: code_scale(r.dims[1]),
    };
    // SAFETY: the addresses come from views of live tensors of `exec` shaped as the kernel
    // expects (outputs allocated above with the residual's sizes).
    unsafe { exec.launch(BSQ_QUANTIZE, exec.grid_stride(b * h * w, THREADS), &params)? };
    Ok(ScaleBits { bits, codes })
}

/// Index (I64, (N,)) of the row of `codebook` (V, C) f32 nearest to each row of `z` (N, C)
/// f32, with the CPU's arithmetic (ops/src/vq.rs).
pub fn nearest_code(exec: &Executor, z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let op = NEAREST_CODE.kernel.name();
    let zv = exec.view::<f32, 2>(op, z)?;
    let ev = exec.view::<f32, 2>(op, codebook)?;
    let mut index = exec.output(op, &[zv.dims[0] as usize], DType::I64)?;
    let params = NearestCodeParams {
        z: zv.ptr,
        codebook: ev.ptr,
        index: exec.view_mut::<i64, 1>(op, &mut index)?.ptr,
        z_stride: zv.strides,
        code_stride: ev.strides,
        rows: zv.dims[0],
        dim: zv.dims[1],
        codes: ev.dims[0],
    };
    // SAFETY: the addresses come from views of live tensors of `exec` with these shapes (the
    // op checked that the widths agree).
    unsafe { exec.launch(NEAREST_CODE, exec.grid_stride(zv.dims[0] as usize, THREADS), &params)? };
    Ok(index)
}
