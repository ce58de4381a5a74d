//! Infinity: a bitwise autoregressive text-to-image model on its own tensor runtime.
//!
//! This facade re-exports the layers so that integration tests and benches see one crate:
//! `runtime` (tensors, dtypes, RNG, weight I/O), `ops` (CPU op set), `autograd` (reverse-mode
//! differentiation and the optimizer), `cuda` (the CUDA backend: kernels, GEMMs, device memory),
//! `models` and `server` (the HTTP image service).

pub use infinity_autograd as autograd;
pub use infinity_cuda as cuda;
pub use infinity_models as models;
pub use infinity_ops as ops;
pub use infinity_runtime as runtime;
pub use infinity_server as server;
