//! Typed errors. Every variant names what a user needs to fix the problem: the op, the
//! shape and dtype involved, or the file and key that was wrong.

use std::path::PathBuf;

use crate::DType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs:?} and {rhs:?} are incompatible")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },

    #[error("{op}: expected dtype {expected}, got {got}")]
    DTypeMismatch { op: &'static str, expected: DType, got: DType },

    #[error("{op}: dtype {dtype} is not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },

    #[error("{op}: dimension {dim} is out of range for a tensor of shape {shape:?}")]
    DimOutOfRange { op: &'static str, dim: usize, shape: Vec<usize> },

    #[error("{op}: {msg} (shape {shape:?})")]
    InvalidArgument { op: &'static str, shape: Vec<usize>, msg: String },

    #[error("{op}: the {device} device is not available: {reason}")]
    DeviceUnavailable { op: &'static str, device: String, reason: String },

    /// A device that was available failed to run something (driver, library or launch error).
    #[error("{op} on {device}: {reason}")]
    DeviceFailed { op: &'static str, device: String, reason: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file that exists but whose content is malformed, truncated or hostile.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    #[error("{path}: tensor '{key}': {msg}")]
    Tensor { path: PathBuf, key: String, msg: String },

    /// A setting of a run (a command-line flag) that cannot work with what it met, such as a
    /// crop larger than the images; the message names the setting.
    #[error("{0}")]
    Setting(String),
}

impl Error {
    pub fn invalid(op: &'static str, shape: &[usize], msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, shape: shape.to_vec(), msg: msg.into() }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn setting(msg: impl Into<String>) -> Self {
        Error::Setting(msg.into())
    }

    pub fn tensor(path: impl Into<PathBuf>, key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.into(), key: key.into(), msg: msg.into() }
    }
}
