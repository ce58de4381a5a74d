//! The optimiser's ops: AdamW's in-place update of many parameters at once, and the sum of
//! squares of many tensors (the global gradient norm that clipping needs). On an executor each
//! is one multi-tensor kernel launch whatever the number of tensors; on the CPU a loop.
//!
//! AdamW's arithmetic (see autograd/src/optim.rs for the formulas) is rounded the same way on
//! every device, so a step gives the same bits on the CPU and on an executor.

use infinity_runtime::{DType, Error, Result, Storage, Tensor};

use crate::device::executor;

pub use infinity_cuda::optim::{AdamWConstants, AdamWScalars, AdamWTensor};

/// One AdamW step of every entry of `tensors`, all on one device. Each parameter and its two
/// moments (contiguous f32 of the parameter's shape) are written in place; one that shares its
/// buffer (a view, a mapped file, a tape still holding it) is first replaced by a private
/// copy, as `Arc::make_mut` does, so no other tensor sees the update.
pub fn adamw(tensors: &mut [AdamWTensor], constants: AdamWConstants) -> Result<()> {
    const OP: &str = "adamw";
    let exec = {
        let all: Vec<&Tensor> = tensors.iter().flat_map(|t| [&*t.param, t.grad, &*t.exp_avg, &*t.exp_avg_sq]).collect();
        for t in &all {
            if t.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType { op: OP, dtype: t.dtype() });
            }
        }
        executor(OP, &all)?
    };
    for t in tensors.iter_mut() {
        let shape = t.param.shape().to_vec();
        for (what, x) in [("gradient", t.grad), ("first moment", &*t.exp_avg), ("second moment", &*t.exp_avg_sq)] {
            if x.shape() != shape {
                return Err(Error::invalid(
                    OP,
                    x.shape(),
                    format!("the {what} must have the parameter's shape {shape:?}"),
                ));
            }
        }
        for x in [&mut *t.param, &mut *t.exp_avg, &mut *t.exp_avg_sq] {
            make_private(x)?;
        }
    }
    if let Some(exec) = exec {
        return infinity_cuda::optim::adamw(&exec, tensors, constants);
    }
    for t in tensors.iter_mut() {
        let grad = t.grad.contiguous()?;
        let g = grad.cpu_storage(OP)?.elements::<f32>();
        let (p, m, v) = (host_f32_mut(t.param)?, host_f32_mut(t.exp_avg)?, host_f32_mut(t.exp_avg_sq)?);
        update(&constants, &t.scalars, p, &g, m, v);
    }
    Ok(())
}

/// Makes `t` contiguous and the only tensor of its buffer, copying it when it is not.
fn make_private(t: &mut Tensor) -> Result<()> {
    let private = t.is_contiguous()
        && t.layout().offset() == 0
        && match t.storage_mut() {
            Some(Storage::Device(_)) => true,
            // A mapped file's elements are read-only.
            Some(Storage::Cpu(c)) => c.elements_mut::<f32>().is_some(),
            None => false,
        };
    if !private {
        *t = t.copy()?;
    }
    Ok(())
}

/// The elements of a private contiguous host tensor (see `make_private`).
fn host_f32_mut(t: &mut Tensor) -> Result<&mut [f32]> {
    let (shape, numel) = (t.shape().to_vec(), t.numel());
    let data = t.storage_mut().and_then(|s| s.cpu_mut()).and_then(|c| c.elements_mut::<f32>());
    data.map(|d| &mut d[..numel]).ok_or_else(|| Error::invalid("adamw", &shape, "the tensor is not private host f32"))
}

/// The update of one parameter, in the order and roundings of optim.cu's kernel.
fn update(c: &AdamWConstants, s: &AdamWScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        if let Some(decay) = s.decay {
            *p *= decay;
        }
        *m = lerp(*m, g, c.one_minus_beta1);
        *v = *v * c.beta2 + c.one_minus_beta2 * g * g;
        let denom = v.sqrt() / s.bias_correction2_sqrt + c.eps;
        *p -= s.step_size * *m / denom;
    }
}

/// PyTorch's `lerp(a, b, w)`: a + w(b − a), evaluated from the nearer end for accuracy.
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) }
}

/// Σ x² over every element of `tensors` (f32, all on one device). The CPU adds every square
/// in f64; an executor adds them in f32 within chunks of 4096 elements and the chunks in f64,
/// so the two agree to about 1e-6 relative.
pub fn sum_squares(tensors: &[&Tensor]) -> Result<f64> {
    const OP: &str = "sum_squares";
    if let Some(t) = tensors.iter().find(|t| t.dtype() != DType::F32) {
        return Err(Error::UnsupportedDType { op: OP, dtype: t.dtype() });
    }
    if let Some(exec) = executor(OP, tensors)? {
        let dense: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        return infinity_cuda::optim::sum_squares(&exec, &dense.iter().collect::<Vec<_>>());
    }
    let mut sum = 0.0;
    for t in tensors {
        sum += t.to_vec::<f32>()?.into_iter().map(|v| f64::from(v).powi(2)).sum::<f64>();
    }
    Ok(sum)
}
