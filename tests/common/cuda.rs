//! The assertions of the CUDA tests' precondition checks: bad input is a typed error naming
//! the kernel or op, never a panic or a launch.
#![allow(dead_code)] // each test binary uses a different subset

use infinity::runtime::{Error, Result};

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
