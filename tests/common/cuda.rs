//! What the CUDA tests share: moving tensors to and from an executor with errors that name it,
//! and the assertions of the precondition checks (bad input is a typed error naming the kernel
//! or op, never a panic or a launch).
#![allow(dead_code)] // each test binary uses a different subset

use infinity::cuda::Executor;
use infinity::runtime::{Error, Result, Tensor};

/// `t` on `exec`, strides kept.
pub fn upload(exec: &Executor, t: &Tensor) -> Tensor {
    t.to_device(&exec.device()).unwrap_or_else(|e| panic!("{}: {e}", exec.name()))
}

/// Runs a launcher and brings its result back to the host, naming the executor on failure.
pub fn host(exec: &Executor, result: Result<Tensor>) -> Tensor {
    let t = result.unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
    t.to_cpu().unwrap_or_else(|e| panic!("{}: {e}", exec.name()))
}

/// Asserts an argument or shape error whose message starts with `op` and contains `says`.
#[track_caller]
pub fn assert_invalid_with<T>(result: Result<T>, op: &str, says: &str) {
    match result {
        Err(e @ (Error::InvalidArgument { .. } | Error::ShapeMismatch { .. })) => {
            let msg = e.to_string();
            assert!(msg.starts_with(op) && msg.contains(says), "{msg}")
        }
        Err(e) => panic!("{op}: unexpected error {e}"),
        Ok(_) => panic!("{op}: accepted bad input"),
    }
}

/// Asserts an argument or shape error whose message starts with `op`.
#[track_caller]
pub fn assert_invalid<T>(result: Result<T>, op: &str) {
    assert_invalid_with(result, op, "")
}

#[track_caller]
pub fn assert_dtype_error<T>(result: Result<T>) {
    assert!(
        matches!(result, Err(Error::UnsupportedDType { .. } | Error::DTypeMismatch { .. })),
        "expected a dtype error"
    );
}
