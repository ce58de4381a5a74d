//! The CUDA backend's failures, as the runtime's one error type: a failed precondition
//! (dtype, rank, shape, argument) is the runtime's own typed error with the kernel's name as
//! the op; what cannot be used is [`Error::DeviceUnavailable`]; and a failure while running
//! is [`Error::DeviceFailed`], naming the kernel, source file or GEMM and where it failed: the
//! toolchain, the driver, cuBLAS or the CPU shim.

pub use infinity_runtime::{Error, Result};

use crate::Availability;

/// CUDA cannot be used here.
pub(crate) fn unavailable(why: Availability) -> Error {
    Error::DeviceUnavailable { op: "cuda", device: "cuda".into(), reason: why.to_string() }
}

/// The CUDA headers NVRTC needs are not where they were looked for.
pub(crate) fn no_toolkit(searched: String) -> Error {
    Error::DeviceUnavailable {
        op: "nvrtc",
        device: "cuda".into(),
        reason: format!(
            "no CUDA headers (include/cuda_bf16.h) under {searched}; set INFINITY_CUDA_HOME to the folder that \
             `bash .ci/tools/cuda-wheels.sh` prints"
        ),
    }
}

/// libcublas is missing, so GEMMs cannot run on the GPU.
pub(crate) fn no_cublas() -> Error {
    Error::DeviceUnavailable {
        op: "gemm",
        device: "cuda".into(),
        reason: "cuBLAS (libcublas.so.13) not found; put the lib folder of NVIDIA's CUDA 13 cuBLAS (the \
                 nvidia-cublas wheel or the toolkit) on LD_LIBRARY_PATH"
            .into(),
    }
}

/// NVRTC failed on `file` for `arch` at `step`.
pub(crate) fn compile(file: &'static str, arch: &str, step: &'static str, log: String) -> Error {
    Error::DeviceFailed {
        op: file,
        device: arch.into(),
        reason: format!("NVRTC could not compile it ({step}):\n{log}"),
    }
}

/// ptxas failed on (or reported a problem with) `file` for `arch`.
pub(crate) fn ptxas(file: &'static str, arch: &str, msg: String) -> Error {
    Error::DeviceFailed { op: file, device: arch.into(), reason: format!("ptxas: {msg}") }
}

/// A driver call failed while doing `what`.
pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let what = what.into();
    move |source| Error::DeviceFailed { op: "cuda", device: "GPU".into(), reason: format!("{what}: driver: {source}") }
}

/// A cuBLAS call failed while doing `what`.
pub(crate) fn cublas(what: impl Into<String>) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
    let what = what.into();
    move |source| Error::DeviceFailed { op: "gemm", device: "GPU".into(), reason: format!("{what}: cuBLAS: {source}") }
}

/// The CPU shim refused or could not finish a launch of `kernel`.
pub(crate) fn shim(kernel: &'static str, reason: &'static str) -> Error {
    Error::DeviceFailed { op: kernel, device: "CPU shim".into(), reason: reason.into() }
}
