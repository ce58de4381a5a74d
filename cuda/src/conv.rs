//! Launchers of kernels/conv.cu, and the convolution built on them: [`conv2d`] is PyTorch's
//! `conv2d` (square stride and symmetric zero padding, what the BitVAE decoder uses) as
//! im2col + one bf16 GEMM with f32 accumulation ([`crate::gemm::matmul`]) + the bias, and
//! [`upsample_nearest2x`] the decoder's nearest ×2 upsampling.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Error, Tensor};

use crate::Result;
use crate::elementwise::{add, cast, copy_into};
use crate::exec::Executor;
use crate::gemm::matmul;
use crate::kernels::{IM2COL, UPSAMPLE_NEAREST2X};
use crate::view::DevPtr;

const THREADS: u32 = 256;

/// Most column-matrix elements [`conv2d`] builds at once (256 MiB of bf16): a larger batch is
/// convolved one image at a time, since the matrix is kh·kw times the input (a 3×3 conv of 128
/// channels at 1024 × 1024 needs 1.2·10⁹ elements per image).
pub const COL_BUDGET: usize = 1 << 27;

#[repr(C)]
pub struct Im2colParams {
    x: DevPtr<f32>,
    col: DevPtr<bf16>,
    x_stride: [i32; 4],
    batch: i32,
    channels: i32,
    height: i32,
    width: i32,
    kernel_h: i32,
    kernel_w: i32,
    stride: i32,
    padding: i32,
    out_h: i32,
    out_w: i32,
}

#[repr(C)]
pub struct Upsample2xParams {
    x: DevPtr<f32>,
    out: DevPtr<f32>,
    x_stride: [i32; 4],
    batch: i32,
    channels: i32,
    in_h: i32,
    in_w: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of conv.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl DeviceRepr for Im2colParams {}
unsafe impl DeviceRepr for Upsample2xParams {}

/// The output size (Ho, Wo) of a (kh, kw) kernel with `stride` and `padding` zeros on every
/// side over an (H, W) input, or an error naming `op` when it does not fit. The padded input
/// and the stride stay below 2^31, so the kernels' 32-bit positions cannot overflow.
fn output_size(
    op: &'static str,
    x: &Tensor,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<(usize, usize)> {
    const LIMIT: usize = i32::MAX as usize;
    let invalid = |msg: String| Err(Error::invalid(op, x.shape(), msg));
    if !(1..=LIMIT).contains(&stride) {
        return invalid(format!("the stride {stride} must be in 1..2^31"));
    }
    let padded = |n: usize| padding.checked_mul(2).and_then(|p| p.checked_add(n)).filter(|&p| p <= LIMIT);
    let (Some(ph), Some(pw)) = (padded(h), padded(w)) else {
        return invalid(format!("padding {padding} makes the input larger than 2^31"));
    };
    if kh == 0 || kw == 0 || kh > ph || kw > pw {
        return invalid(format!("a {kh}×{kw} kernel does not fit the padded {ph}×{pw} input"));
    }
    Ok(((ph - kh) / stride + 1, (pw - kw) / stride + 1))
}

/// The column matrix of x (B, C, H, W) f32 (any strides) for a `kernel` = (kh, kw) kernel
/// with `stride` and `padding` zeros on every side: (B, C·kh·kw, Ho·Wo) bf16, contiguous, row
/// c·kh·kw + i·kw + j holding tap (i, j) of channel c for every output pixel (the order of a
/// (Cout, C, kh, kw) weight reshaped to (Cout, C·kh·kw)). x is rounded to bf16 to nearest even.
pub fn im2col(exec: &Executor, x: &Tensor, kernel: (usize, usize), stride: usize, padding: usize) -> Result<Tensor> {
    let op = IM2COL.kernel.name();
    let xv = exec.view::<f32, 4>(op, x)?;
    let [batch, channels, height, width] = xv.dims;
    let (out_h, out_w) = output_size(op, x, (height as usize, width as usize), kernel, stride, padding)?;
    // Saturated, a product too large for usize is refused by `output` as any too large one.
    let taps = (channels as usize).saturating_mul(kernel.0).saturating_mul(kernel.1);
    let mut col = exec.output(op, &[batch as usize, taps, out_h * out_w], DType::BF16)?;
    // `output` checked that the matrix has fewer than 2^31 elements, so every factor fits in
    // i32, as do the stride and the padding (`output_size` checked them).
    let params = Im2colParams {
        x: xv.ptr,
        col: exec.view_mut::<bf16, 3>(op, &mut col)?.ptr,
        x_stride: xv.strides,
        batch,
        channels,
        height,
        width,
        kernel_h: kernel.0 as i32,
        kernel_w: kernel.1 as i32,
        stride: stride as i32,
        padding: padding as i32,
        out_h: out_h as i32,
        out_w: out_w as i32,
    };
    // SAFETY: both addresses come from views of live tensors of `exec`; the kernel reads x
    // only at coordinates inside its shape and writes the whole of `col`, allocated above.
    unsafe { exec.launch(IM2COL, exec.grid_stride(col.layout().numel(), THREADS), &params)? };
    Ok(col)
}

/// PyTorch's `interpolate(scale_factor=2, mode="nearest")` of x (B, C, H, W) f32 (any
/// strides): (B, C, 2H, 2W) f32, contiguous, each input element repeated in a 2×2 square.
pub fn upsample_nearest2x(exec: &Executor, x: &Tensor) -> Result<Tensor> {
    let op = UPSAMPLE_NEAREST2X.kernel.name();
    let xv = exec.view::<f32, 4>(op, x)?;
    let [batch, channels, in_h, in_w] = xv.dims;
    let shape = [batch as usize, channels as usize, 2 * in_h as usize, 2 * in_w as usize];
    let mut out = exec.output(op, &shape, DType::F32)?;
    let params = Upsample2xParams {
        x: xv.ptr,
        out: exec.view_mut::<f32, 4>(op, &mut out)?.ptr,
        x_stride: xv.strides,
        batch,
        channels,
        in_h,
        in_w,
    };
    // SAFETY: both addresses come from views of live tensors of `exec`; the output has twice
    // x's height and width, and each output element reads the input element it repeats.
    unsafe { exec.launch(UPSAMPLE_NEAREST2X, exec.grid_stride(out.layout().numel(), THREADS), &params)? };
    Ok(out)
}

/// PyTorch's `conv2d` of x (B, Cin, H, W) f32 (any strides) with w (Cout, Cin, kh, kw) bf16,
/// contiguous, `stride` and `padding` zeros on every side, plus bias (Cout,) f32 when given:
/// (B, Cout, Ho, Wo) f32, contiguous.
///
/// x is rounded to bf16 (as the weights are), the products are summed in f32 by one batched
/// GEMM (cuBLAS, or its emulation under the shim), and the bias is added to the rounded sum.
/// A 1×1 conv without stride or padding multiplies x itself; any other builds im2col's column
/// matrix, for the whole batch when it stays within a budget, else image by image.
pub fn conv2d(
    exec: &Executor,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_within(exec, x, w, bias, stride, padding, COL_BUDGET)
}

/// [`conv2d`] with at most `col_budget` column-matrix elements for the whole batch.
fn conv2d_within(
    exec: &Executor,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    col_budget: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let xv = exec.view::<f32, 4>(OP, x)?;
    let wv = exec.view::<bf16, 4>(OP, w)?;
    let [batch, cin, height, width] = xv.dims.map(|d| d as usize);
    let [cout, w_cin, kh, kw] = wv.dims.map(|d| d as usize);
    if w_cin != cin {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    if let Some(b) = bias {
        let bv = exec.view::<f32, 1>(OP, b)?;
        if bv.dims != [cout as i32] {
            return Err(Error::ShapeMismatch { op: OP, lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
        }
    }
    let (out_h, out_w) = output_size(OP, x, (height, width), (kh, kw), stride, padding)?;
    let taps = cin * kh * kw;
    let weights = w.reshape(&[cout, taps])?;

    let y = if (kh, kw, stride, padding) == (1, 1, 1, 0) {
        let x = cast(exec, x, DType::BF16)?.reshape(&[batch, cin, height * width])?;
        matmul(exec, &weights, &x, DType::F32)?
    } else if batch.saturating_mul(taps).saturating_mul(out_h * out_w) <= col_budget {
        matmul(exec, &weights, &im2col(exec, x, (kh, kw), stride, padding)?, DType::F32)?
    } else {
        let mut y = exec.output(OP, &[batch, cout, out_h * out_w], DType::F32)?;
        for b in 0..batch {
            let col = im2col(exec, &x.narrow(0, b, 1)?, (kh, kw), stride, padding)?;
            copy_into(exec, &matmul(exec, &weights, &col, DType::F32)?, &mut y, 0, b)?;
        }
        y
    };
    let y = y.reshape(&[batch, cout, out_h, out_w])?;
    match bias {
        // (Cout, 1, 1) broadcasts over the batch and the pixels.
        Some(b) => add(exec, &y, &b.unsqueeze(1)?.unsqueeze(2)?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use infinity_runtime::rng::Philox;

    use super::*;

    /// Image by image, each output is the same GEMM sum as in the batched product, so the
    /// shim's results agree bit for bit.
    #[test]
    fn image_by_image_equals_the_whole_batch() {
        let exec = Executor::shim();
        let normal = |shape: &[usize], seed, dtype| {
            let values = Philox::new(seed).normal(shape.iter().product());
            Tensor::from_vec(values, shape).unwrap().to_dtype(dtype).unwrap().to_device(&exec.device()).unwrap()
        };
        let x = normal(&[3, 4, 7, 6], 1, DType::F32);
        let w = normal(&[5, 4, 3, 3], 2, DType::BF16);
        let bias = normal(&[5], 3, DType::F32);
        let whole = conv2d_within(&exec, &x, &w, Some(&bias), 2, 1, COL_BUDGET).unwrap();
        // Less than two images' worth of columns (36 rows × 12 pixels each).
        let split = conv2d_within(&exec, &x, &w, Some(&bias), 2, 1, 36 * 12 + 1).unwrap();
        assert_eq!(whole.shape(), [3, 5, 4, 3]);
        assert!(split.same_values(&whole));
    }
}
