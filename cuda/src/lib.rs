//! The CUDA backend: hand-written kernels (cuda/kernels/*.cu) compiled by NVRTC on first use
//! and launched through cudarc, and the same sources built by g++ against a CPU shim of the
//! CUDA execution model, so that every kernel is tested against the CPU references on
//! machines without a GPU. cudarc loads the CUDA libraries by soname at run time and panics
//! when one is missing, so every entry point into them probes first.
//!
//! Kernels are launched through typed handles ([`kernels`]) with `#[repr(C)]` parameter
//! structs; the public launchers ([`quantize`], [`bitwise_head`], [`adaln`], [`attention`], [`rng`],
//! [`norm`], [`elementwise`], [`index`], [`rope`], [`conv`], [`optim`], and [`gemm`], which runs
//! cuBLAS)
//! check dtypes, shapes and arguments first and return typed errors.

mod alloc;
mod error;
mod exec;
mod gpu;
mod view;

pub mod adaln;
pub mod attention;
pub mod bitwise_head;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod index;
pub mod kernels;
pub mod nccl;
pub mod norm;
pub mod nvrtc;
pub mod optim;
pub mod ptxas;
pub mod quantize;
pub mod rng;
pub mod rope;
pub mod testing;
pub mod toolkit;

use std::fmt;

pub use alloc::{MemoryStats, size_class};
pub use error::{Error, Result};
pub use exec::Executor;
pub use gpu::Gpu;

/// Why CUDA cannot be used, or which GPU was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The driver library (libcuda) is not installed: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver is present but reports no usable device.
    NoDevice(String),
    /// NVRTC (libnvrtc.so.13) is missing: kernels cannot be compiled.
    NoNvrtc,
    Available {
        devices: usize,
    },
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::NoDriver => f.write_str("no NVIDIA driver (libcuda) on this machine"),
            Availability::NoDevice(why) => write!(f, "the NVIDIA driver reports no usable device ({why})"),
            Availability::NoNvrtc => {
                f.write_str("NVRTC (libnvrtc.so.13) not found; put the CUDA 13.0 wheel's lib folder on LD_LIBRARY_PATH")
            }
            Availability::Available { devices } => write!(f, "{devices} CUDA device(s)"),
        }
    }
}

/// Probes the driver, a device and NVRTC, without panicking when any of them is absent.
pub fn probe() -> Availability {
    // SAFETY: the presence checks only try to dlopen the library; they call nothing in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Availability::NoDriver;
    }
    let devices = match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => n as usize,
        Ok(_) => return Availability::NoDevice("device count is 0".into()),
        Err(e) => return Availability::NoDevice(e.to_string()),
    };
    if !toolkit::nvrtc_present() {
        return Availability::NoNvrtc;
    }
    Availability::Available { devices }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_never_panics() {
        let a = super::probe();
        println!("CUDA: {a}");
    }
}
