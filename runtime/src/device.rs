//! Where a tensor lives and its ops run: host memory (`Device::Cpu`) or the memory of an
//! accelerator, an executor of the CUDA backend (a GPU, or the CPU shim that runs the same
//! kernels). The runtime sees an accelerator only through [`Accelerator`]: moving tensors in
//! and out, the one copy every layout change needs and a fill with zeros; its kernels are the
//! op layer's.
//!
//! A user names a device with [`DeviceName`] (`cpu`, `shim`, `cuda`, `cuda:N`); the CUDA
//! backend opens the named accelerator as a [`Device`].

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::{DType, Result, Tensor};

/// An executor of the CUDA backend, as the runtime's tensors see it. A tensor in its memory
/// holds the device, so it can always be read back or copied.
pub trait Accelerator: Any + Send + Sync {
    /// What a user reads: "CPU shim", "NVIDIA H100 80GB HBM3 (cuda:0)".
    fn name(&self) -> String;

    /// The elements `t` (a host tensor) can reach, copied into this accelerator's memory with
    /// the same shape and strides.
    fn upload(&self, t: &Tensor) -> Result<Tensor>;

    /// The elements of `t` (a tensor of this accelerator) in host memory, same layout.
    fn download(&self, t: &Tensor) -> Result<Tensor>;

    /// A contiguous copy of `t` (a tensor of this accelerator) converted to `dtype`.
    fn copy(&self, t: &Tensor, dtype: DType) -> Result<Tensor>;

    /// A contiguous tensor of zeros, filled in this accelerator's memory (nothing uploaded).
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
}

/// A live device. Accelerators compare equal when they are the same executor.
#[derive(Clone, Default)]
pub enum Device {
    #[default]
    Cpu,
    Accelerator(Arc<dyn Accelerator>),
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// The accelerator, for the op layer's dispatch; `None` on the CPU.
    pub fn accelerator(&self) -> Option<&Arc<dyn Accelerator>> {
        match self {
            Device::Cpu => None,
            Device::Accelerator(a) => Some(a),
        }
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Accelerator(a), Device::Accelerator(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Device {}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Accelerator(a) => f.write_str(&a.name()),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A device as a user names it on a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DeviceName {
    #[default]
    Cpu,
    /// The CPU shim of the CUDA execution model: the GPU's kernels run on the CPU, slowly, for
    /// checking and debugging them without a GPU.
    Shim,
    Cuda(usize),
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Shim => f.write_str("shim"),
            DeviceName::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceName {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceName::Cpu),
            "shim" => Ok(DeviceName::Shim),
            "cuda" => Ok(DeviceName::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceName::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (expected cpu, shim, cuda or cuda:N)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, name) in [("cpu", DeviceName::Cpu), ("shim", DeviceName::Shim), ("cuda:1", DeviceName::Cuda(1))] {
            assert_eq!(s.parse::<DeviceName>(), Ok(name));
            assert_eq!(name.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceName>(), Ok(DeviceName::Cuda(0)));
        let err = "gpu".parse::<DeviceName>().unwrap_err();
        assert!(err.contains("'gpu'") && err.contains("shim"), "{err}");
    }
}
