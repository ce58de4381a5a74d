//! Errors of the CUDA backend. A failed precondition (dtype, rank, shape, argument) is the
//! runtime's own typed error with the kernel's name as the op; the other variants say which
//! kernel, source file or GEMM failed, and where: the toolchain, the driver, cuBLAS or the CPU
//! shim.

use crate::Availability;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] infinity_runtime::Error),

    #[error("CUDA cannot be used here: {0}")]
    Unavailable(Availability),

    #[error(
        "no CUDA headers (include/cuda_bf16.h) under {searched}; set INFINITY_CUDA_HOME to the folder that \
         `bash .ci/tools/cuda-wheels.sh` prints"
    )]
    NoToolkit { searched: String },

    #[error("NVRTC could not compile {file} for {arch} ({step}):\n{log}")]
    Compile { file: &'static str, arch: String, step: &'static str, log: String },

    #[error("ptxas on {file} for {arch}: {msg}")]
    Ptxas { file: &'static str, arch: String, msg: String },

    #[error("{what}: CUDA driver: {source}")]
    Driver { what: String, source: cudarc::driver::DriverError },

    #[error(
        "cuBLAS (libcublas.so.13) not found, so GEMMs cannot run on the GPU; put the lib folder of NVIDIA's \
         CUDA 13 cuBLAS (the nvidia-cublas wheel or the toolkit) on LD_LIBRARY_PATH"
    )]
    NoCublas,

    #[error("{what}: cuBLAS: {source}")]
    Cublas { what: String, source: cudarc::cublas::result::CublasError },

    #[error("{kernel}: CPU shim: {reason}")]
    Shim { kernel: &'static str, reason: &'static str },
}

impl Error {
    pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        let what = what.into();
        move |source| Error::Driver { what, source }
    }

    pub(crate) fn cublas(what: impl Into<String>) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
        let what = what.into();
        move |source| Error::Cublas { what, source }
    }
}
