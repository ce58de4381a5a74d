//! Launchers of kernels/optim.cu: AdamW over many parameters in one launch, and the sums of
//! squares of many tensors (the global gradient norm). Each builds the table of its tensors'
//! addresses and chunk numbers on the host and uploads it; the tensors themselves stay put.

use cudarc::driver::DeviceRepr;
use infinity_runtime::{DType, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{ADAMW_F32, SUM_SQUARES_F32};
use crate::view::DevPtr;

const THREADS: u32 = 256;
/// Elements per chunk (kChunk of optim.cu).
const CHUNK: usize = 4096;
/// Highest rank of a parameter (a convolution's weight).
const MAX_RANK: usize = 4;

/// AdamW's constants, the same for every parameter, in f32 as the update uses them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConstants {
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
}

/// One parameter's coefficients for this step, formed in f64 and rounded once: `decay` is
/// 1 − lr·wd (None without weight decay), `step_size` lr / (1 − β₁ᵗ) and
/// `bias_correction2_sqrt` √(1 − β₂ᵗ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    pub decay: Option<f32>,
    pub step_size: f32,
    pub bias_correction2_sqrt: f32,
}

/// One parameter of an AdamW step: the parameter and its two moments are updated in place
/// (each contiguous f32, owning its buffer), from the gradient.
pub struct AdamWTensor<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a mut Tensor,
    pub exp_avg_sq: &'a mut Tensor,
    pub scalars: AdamWScalars,
}

/// Table entry of optim.cu's `AdamWTensor`.
#[repr(C)]
struct AdamWEntry {
    param: DevPtr<f32>,
    grad: DevPtr<f32>,
    exp_avg: DevPtr<f32>,
    exp_avg_sq: DevPtr<f32>,
    numel: i32,
    first_chunk: i32,
    decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    decays: i32,
}

#[repr(C)]
pub struct AdamWParams {
    tensors: DevPtr<AdamWEntry>,
    count: i32,
    chunks: i32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
}

/// Table entry of optim.cu's `SquaresTensor`.
#[repr(C)]
struct SquaresEntry {
    data: DevPtr<f32>,
    numel: i32,
    first_chunk: i32,
}

#[repr(C)]
pub struct SumSquaresParams {
    tensors: DevPtr<SquaresEntry>,
    partial: DevPtr<f32>,
    count: i32,
    chunks: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of optim.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl DeviceRepr for AdamWParams {}
unsafe impl DeviceRepr for SumSquaresParams {}

/// The chunk numbering of tensors of `sizes` elements: each one's first chunk, and the total.
fn chunks(op: &'static str, sizes: &[usize]) -> Result<(Vec<i32>, i32)> {
    let mut first = Vec::with_capacity(sizes.len());
    let mut total = 0usize;
    for &n in sizes {
        first.push(total as i32);
        total += n.div_ceil(CHUNK);
    }
    if sizes.iter().any(|&n| n > i32::MAX as usize) || total > i32::MAX as usize {
        return Err(Error::invalid(op, &[sizes.len()], "a tensor or the chunk count exceeds 2^31"));
    }
    Ok((first, total as i32))
}

/// The entries' bytes as a U8 tensor on the executor (its buffer is aligned for them).
fn upload_table<T>(exec: &Executor, entries: &[T]) -> Result<Tensor> {
    // SAFETY: the entries are #[repr(C)] structs of addresses and 32-bit numbers without
    // padding, so all of their bytes are initialised.
    let bytes = unsafe { std::slice::from_raw_parts(entries.as_ptr().cast::<u8>(), std::mem::size_of_val(entries)) };
    Tensor::from_slice(bytes, &[bytes.len()])?.to_device(&exec.device())
}

fn check_f32(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dtype() != DType::F32 || !t.is_contiguous() || t.shape() != shape {
        let msg = format!("the {what} must be contiguous f32 of the parameter's shape {shape:?}");
        return Err(Error::invalid(op, t.shape(), msg));
    }
    Ok(())
}

/// One AdamW step of every tensor in `tensors`, in one launch.
pub fn adamw(exec: &Executor, tensors: &mut [AdamWTensor], constants: AdamWConstants) -> Result<()> {
    let op = ADAMW_F32.kernel.name();
    let tensors: Vec<&mut AdamWTensor> = tensors.iter_mut().filter(|t| t.param.numel() > 0).collect();
    if tensors.is_empty() {
        return Ok(());
    }
    let sizes: Vec<usize> = tensors.iter().map(|t| t.param.numel()).collect();
    let (first, total) = chunks(op, &sizes)?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (t, first_chunk) in tensors.into_iter().zip(first) {
        let shape = t.param.shape().to_vec();
        check_f32(op, "parameter", t.param, &shape)?;
        check_f32(op, "gradient", t.grad, &shape)?;
        check_f32(op, "first moment", t.exp_avg, &shape)?;
        check_f32(op, "second moment", t.exp_avg_sq, &shape)?;
        // Contiguous: the first element's address is all the kernel needs.
        entries.push(AdamWEntry {
            param: exec.view_mut_padded::<f32, MAX_RANK>(op, t.param)?.ptr,
            grad: exec.view_padded::<f32, MAX_RANK>(op, t.grad)?.ptr,
            exp_avg: exec.view_mut_padded::<f32, MAX_RANK>(op, t.exp_avg)?.ptr,
            exp_avg_sq: exec.view_mut_padded::<f32, MAX_RANK>(op, t.exp_avg_sq)?.ptr,
            numel: t.param.numel() as i32,
            first_chunk,
            decay: t.scalars.decay.unwrap_or(1.0),
            step_size: t.scalars.step_size,
            bias_correction2_sqrt: t.scalars.bias_correction2_sqrt,
            decays: i32::from(t.scalars.decay.is_some()),
        });
    }
    let table = upload_table(exec, &entries)?;
    let params = AdamWParams {
        tensors: DevPtr::new(exec.view::<u8, 1>(op, &table)?.ptr.addr()),
        count: entries.len() as i32,
        chunks: total,
        beta2: constants.beta2,
        one_minus_beta1: constants.one_minus_beta1,
        one_minus_beta2: constants.one_minus_beta2,
        eps: constants.eps,
    };
    // SAFETY: the table holds addresses of live, contiguous f32 tensors of `exec` with the
    // element counts beside them (the written ones from `view_mut`), and chunk numbers that
    // cover exactly those elements.
    unsafe { exec.launch(ADAMW_F32, exec.grid_stride(total as usize * THREADS as usize, THREADS), &params) }
}

/// Σ x² over every element of `tensors` (contiguous f32): f32 within chunks of 4096, the
/// chunks added in f64 on the host, in order.
pub fn sum_squares(exec: &Executor, tensors: &[&Tensor]) -> Result<f64> {
    let op = SUM_SQUARES_F32.kernel.name();
    let tensors: Vec<&Tensor> = tensors.iter().copied().filter(|t| t.numel() > 0).collect();
    if tensors.is_empty() {
        return Ok(0.0);
    }
    let sizes: Vec<usize> = tensors.iter().map(|t| t.numel()).collect();
    let (first, total) = chunks(op, &sizes)?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (t, first_chunk) in tensors.iter().zip(first) {
        check_f32(op, "tensor", t, t.shape())?;
        let data = exec.view_padded::<f32, MAX_RANK>(op, t)?.ptr;
        entries.push(SquaresEntry { data, numel: t.numel() as i32, first_chunk });
    }
    let table = upload_table(exec, &entries)?;
    let mut partial = exec.output(op, &[total as usize], DType::F32)?;
    let params = SumSquaresParams {
        tensors: DevPtr::new(exec.view::<u8, 1>(op, &table)?.ptr.addr()),
        partial: exec.view_mut::<f32, 1>(op, &mut partial)?.ptr,
        count: entries.len() as i32,
        chunks: total,
    };
    // SAFETY: the table holds addresses of live contiguous f32 tensors of `exec` with their
    // element counts, and `partial` has one element per chunk.
    unsafe { exec.launch(SUM_SQUARES_F32, exec.grid_stride(total as usize * THREADS as usize, THREADS), &params)? };
    Ok(partial.to_vec::<f32>()?.into_iter().map(f64::from).sum())
}
