//! The op set. Every op validates its inputs (typed errors naming op, shape and dtype), has
//! a plain reference implementation in `reference` submodules (scalar loops, f64
//! accumulation) and, where speed matters, a fast path that the tests compare with it.
//!
//! Ops compute in f32: they take f32 tensors (any strides) and return contiguous f32 tensors.
//! An op runs on the device its inputs live on (`device.rs`): on the CPU through the paths
//! here, on a CUDA executor (GPU or CPU shim) through the CUDA backend's kernels, where GEMM
//! operands are rounded to bf16 and accumulated in f32. The ops with a kernel so far: add,
//! sub, mul, div, GELU (tanh), SiLU, softmax over the last dimension, RMS norm, group norm with
//! an affine (and fused with SiLU), embedding, linear, matmul, concat, conv2d, the nearest ×2,
//! bilinear and area resizes, interleaved RoPE, and the AdaLN modulation and gated residual;
//! the others say they have none.

pub mod adaln;
pub mod attention;
pub mod conv;
mod device;
pub mod elementwise;
pub mod index;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod resize;
pub mod rope;
pub mod softmax;
mod util;

pub use util::{f32_data, require_f32};
