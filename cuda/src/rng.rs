//! Launcher of kernels/rng.cu: the raw words of the runtime's Philox stream, computed on the
//! device position for position (the building block of device-side noise).

use cudarc::driver::DeviceRepr;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::PHILOX_FILL;
use crate::view::DevPtr;

const THREADS: u32 = 256;

#[repr(C)]
pub struct PhiloxFillParams {
    /// `unsigned*` in C: the words' bits.
    out: DevPtr<i32>,
    seed: u64,
    offset: u64,
    count: i32,
}

// SAFETY: a #[repr(C)] mirror of the C struct of rng.cu (size checked by a test) made of
// plain numbers and an address.
unsafe impl DeviceRepr for PhiloxFillParams {}

/// The `len` words at stream positions `rng.offset ..` (`infinity_runtime::rng::philox_u32`),
/// as a (len,) I32 tensor holding the words' bits (the runtime has no u32 dtype); advances
/// the offset by `len`.
pub fn philox_words(exec: &Executor, rng: &mut Philox, len: usize) -> Result<Tensor> {
    let op = PHILOX_FILL.kernel.name();
    let mut out = exec.output(op, &[len], DType::I32)?;
    let view = exec.view_mut::<i32, 1>(op, &mut out)?;
    let params = PhiloxFillParams { out: view.ptr, seed: rng.seed, offset: rng.offset, count: view.dims[0] };
    // SAFETY: the address comes from a view of the live output of `count` words.
    unsafe { exec.launch(PHILOX_FILL, exec.grid_stride(len, THREADS), &params)? };
    // Positions are taken modulo 2^64, in the kernel as here.
    rng.offset = rng.offset.wrapping_add(len as u64);
    Ok(out)
}
