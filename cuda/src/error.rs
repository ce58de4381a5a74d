//! Errors of the CUDA backend. A failed precondition (dtype, rank, shape, argument) is the
//! runtime's own typed error with the kernel's name as the op; the other variants say which
//! kernel or source file failed, and where: the toolchain, the driver or the CPU shim.

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

    #[error("{kernel}: CPU shim: {reason}")]
    Shim { kernel: &'static str, reason: &'static str },
}

impl Error {
    pub(crate) fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
        let what = what.into();
        move |source| Error::Driver { what, source }
    }
}
