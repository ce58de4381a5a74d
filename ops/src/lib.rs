//! The op set. Every op validates its inputs (typed errors naming op, shape and dtype), has
//! a plain reference implementation in `reference` submodules (scalar loops, f64
//! accumulation) and, where speed matters, a fast path that the tests compare with it.
//!
//! Ops compute in f32: they take f32 tensors (any strides) and return f32 tensors, contiguous
//! unless an op says otherwise. An op runs on the device its inputs live on (`device.rs`): on
//! the CPU through the paths here, on a CUDA executor (GPU or CPU shim) through the CUDA
//! backend's kernels, where GEMM and attention operands are bf16 and accumulation is f32; there
//! a few ops deliver bf16 (attention's flash path, `linear_to` and `modulate` when asked, the
//! one-input functions of bf16 input). docs/architecture.md lists the ops with a kernel; the
//! others say they have none.

pub mod adaln;
pub mod attention;
pub mod bitwise;
pub mod conv;
mod device;
pub mod elementwise;
pub mod index;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod resize;
pub mod rope;
pub mod softmax;
mod util;
mod vector_math;
pub mod vq;

pub(crate) use util::zip_map;
pub use util::{f32_data, require_f32};
