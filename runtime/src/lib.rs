//! The runtime layer: tensors (shape/strides/offset views over shared storage), dtypes,
//! devices, typed errors, the Philox counter-based RNG and weight I/O.

pub mod collective;
mod device;
mod dtype;
mod error;
pub mod io;
pub mod launch;
pub mod layout;
pub mod recycle;
pub mod rng;
mod storage;
mod tensor;

pub use device::{Accelerator, Device, DeviceName};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use half;
pub use layout::Layout;
pub use storage::{CpuStorage, DeviceStorage, Storage};
pub use tensor::Tensor;
