//! The op set. Every op validates its inputs (typed errors naming op, shape and dtype), has
//! a plain reference implementation in `reference` submodules (scalar loops, f64
//! accumulation) and, where speed matters, a fast path that the tests compare with it.
//!
//! Ops compute in f32: they take f32 tensors (any strides) and return contiguous f32 tensors.

pub mod attention;
pub mod conv;
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
