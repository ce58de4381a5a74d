//! Launchers of kernels/quantize.cu: PyTorch-exact bilinear and area resizes, one scale of the
//! bit quantizer, the fused residual / code-sum update, and `quantize`, the whole multi-scale
//! loop of models/src/bitvae/quantizer.rs on the device. The kernels round every float
//! operation as the CPU code does, so bits and sums equal the CPU path's exactly.

use cudarc::driver::DeviceRepr;
use infinity_runtime::{DType, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{BSQ_QUANTIZE, BSQ_UPDATE, KernelHandle, RESIZE_AREA, RESIZE_BILINEAR};
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
    packed: DevPtr<u8>,
    residual_stride: [i32; 4],
    batch: i32,
    dim: i32,
    height: i32,
    width: i32,
    code_scale: f32,
}

#[repr(C)]
pub struct BsqUpdateParams {
    packed: DevPtr<u8>,
    residual: DevPtr<f32>,
    summed: DevPtr<f32>,
    residual_stride: [i32; 4],
    summed_stride: [i32; 4],
    batch: i32,
    dim: i32,
    height: i32,
    width: i32,
    full_h: i32,
    full_w: i32,
    code_scale: f32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of quantize.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl DeviceRepr for ResizeParams {}
unsafe impl DeviceRepr for BsqQuantizeParams {}
unsafe impl DeviceRepr for BsqUpdateParams {}

/// PyTorch 'bilinear' (align_corners = false, no antialias, also when shrinking) of
/// (B, C, H, W) f32 to (B, C, size.0, size.1), contiguous. The same size is an exact copy.
pub fn resize_bilinear(exec: &Executor, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    resize(exec, RESIZE_BILINEAR, x, size)
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
    /// (B, h, w, ⌈d/8⌉) u8: bit j of a token in bit j % 8 of byte j / 8.
    pub packed: Tensor,
}

/// Quantizes one scale's residual (B, d, h, w) f32 (already resized to the scale) to bits,
/// codes and packed bits in one pass.
pub fn quantize_scale(exec: &Executor, residual: &Tensor) -> Result<ScaleBits> {
    let op = BSQ_QUANTIZE.kernel.name();
    let r = exec.view::<f32, 4>(op, residual)?;
    let [b, d, h, w] = r.dims.map(|v| v as usize);
    let mut bits = exec.output(op, &[b, h, w, d], DType::U8)?;
    let mut codes = exec.output(op, &[b, d, h, w], DType::F32)?;
    let mut packed = exec.output(op, &[b, h, w, d.div_ceil(8)], DType::U8)?;
    let params = BsqQuantizeParams {
        residual: r.ptr,
        bits: exec.view_mut::<u8, 4>(op, &mut bits)?.ptr,
        codes: exec.view_mut::<f32, 4>(op, &mut codes)?.ptr,
        packed: exec.view_mut::<u8, 4>(op, &mut packed)?.ptr,
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
    Ok(ScaleBits { bits, codes, packed })
}

/// residual −= up(codes) and summed += up(codes), where `up` resizes the scale's codes
/// bilinearly to the latent grid of `residual` and `summed` (both (B, d, H, W) f32).
pub fn accumulate(exec: &Executor, scale: &ScaleBits, residual: &mut Tensor, summed: &mut Tensor) -> Result<()> {
    let op = BSQ_UPDATE.kernel.name();
    let packed = exec.view::<u8, 4>(op, &scale.packed)?;
    let bits = exec.view::<u8, 4>(op, &scale.bits)?;
    let r = exec.view_mut::<f32, 4>(op, residual)?;
    let s = exec.view_mut::<f32, 4>(op, summed)?;
    let [batch, height, width, dim] = bits.dims;
    if r.dims != s.dims {
        return Err(Error::ShapeMismatch { op, lhs: residual.shape().to_vec(), rhs: summed.shape().to_vec() });
    }
    if [r.dims[0], r.dims[1]] != [batch, dim] || packed.dims != [batch, height, width, (dim + 7) / 8] {
        return Err(Error::ShapeMismatch { op, lhs: residual.shape().to_vec(), rhs: scale.bits.shape().to_vec() });
    }
    let params = BsqUpdateParams {
        packed: packed.ptr,
        residual: r.ptr,
        summed: s.ptr,
        residual_stride: r.strides,
        summed_stride: s.strides,
        batch,
        dim,
        height,
        width,
        full_h: r.dims[2],
        full_w: r.dims[3],
        code_scale: code_scale(dim),
    };
    // SAFETY: the addresses come from views of live tensors of `exec`, checked above to have
    // the shapes the kernel indexes with.
    unsafe { exec.launch(BSQ_UPDATE, exec.grid_stride(residual.layout().numel(), THREADS), &params) }
}

/// All scales of a latent's multi-scale quantization.
pub struct Quantized {
    pub scales: Vec<ScaleBits>,
    /// Σ over scales of the codes resized to the latent grid: the decoder's input.
    pub summed: Tensor,
}

/// Quantizes a latent (B, d, H, W) f32 scale by scale following `grids` (coarse to fine, each
/// inside the latent grid): area-resize the residual to the scale, quantize it, subtract the
/// upsampled codes. models/src/bitvae/quantizer.rs's `quantize`, with the same bits.
pub fn quantize(exec: &Executor, latent: &Tensor, grids: &[(usize, usize)]) -> Result<Quantized> {
    let op = "bsq.quantize";
    let &[batch, dim, full_h, full_w] = latent.shape() else {
        return Err(Error::invalid(op, latent.shape(), "expected a latent (B, d, H, W)"));
    };
    if let Some(g) = grids.iter().find(|&&(h, w)| h == 0 || w == 0 || h > full_h || w > full_w) {
        return Err(Error::invalid(op, latent.shape(), format!("scale {g:?} is not inside the latent grid")));
    }
    // Area resize to the same size is an exact copy (a one-element window): this makes the
    // residual a private contiguous copy, and the last scale's input equal to the residual.
    let mut residual = resize_area(exec, latent, (full_h, full_w))?;
    let mut summed = exec.accumulator(op, &[batch, dim, full_h, full_w], DType::F32)?;
    let mut scales = Vec::with_capacity(grids.len());
    for &grid in grids {
        let scale = quantize_scale(exec, &resize_area(exec, &residual, grid)?)?;
        accumulate(exec, &scale, &mut residual, &mut summed)?;
        scales.push(scale);
    }
    Ok(Quantized { scales, summed })
}
