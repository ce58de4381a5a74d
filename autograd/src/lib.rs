//! Reverse-mode automatic differentiation over the op set, and what training needs around it:
//! a finite-difference gradient checker, AdamW, gradient clipping and accumulation, and the
//! official learning-rate / weight-decay schedules. Parameters, gradients and optimizer state
//! are f32.
//!
//! # Design
//!
//! A [`Tape`] records, for each op applied to a tracked value, the op's input positions and a
//! backward closure holding what the rule needs (usually the inputs or the output, which are
//! cheap `Arc` views). A [`Var`] is a tensor plus its position on a tape, or no position at
//! all: a *constant*. Ops on constants only run the forward and record nothing, so
//!
//! - a model's forward is written once against `Var` (the functions here mirror the module
//!   layout, names and signatures of `infinity_ops`, with `Var` for the differentiable
//!   tensors), and run with constant weights it *is* the no-grad inference path, at the cost
//!   of one `Option` check per op;
//! - frozen parts (the BitVAE, the text encoder) cost nothing on the tape.
//!
//! Nodes are appended in execution order, so the backward pass is a single reverse sweep
//! (no graph search); it consumes each closure, freeing saved activations as it goes, and
//! keeps gradients only for nodes still ahead of it. A training step of the Infinity
//! transformer (a few hundred ops per block, 2 to 32 blocks) is a few thousand nodes. The
//! tape is `Send + Sync`, so a forward may run on any thread of the pool.
//!
//! For training, [`Params`] holds the named f32 parameters; [`Params::track`] puts them on a
//! tape for one step, [`Tracked::gradients`] collects their gradients into a [`GradStore`]
//! (accumulated over micro-batches, clipped by global norm), and [`AdamW`] replaces each
//! updated parameter in the store with its new value.
//!
//! ```
//! use infinity_autograd::matmul::linear;
//! use infinity_autograd::reduce::mean;
//! use infinity_autograd::elementwise::square;
//! use infinity_autograd::{AdamW, AdamWConfig, GradStore, Params, Tape, Var, optim};
//! use infinity_runtime::Tensor;
//!
//! let mut params = Params::new(vec![("w".into(), Tensor::from_vec(vec![0.5f32, -0.5], &[1, 2])?)])?;
//! let mut opt = AdamW::new(AdamWConfig::default(), optim::official_groups(&params))?;
//! let x = Var::constant(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2])?);
//! for _ in 0..3 {
//!     let mut grads = GradStore::default();
//!     for _micro_batch in 0..2 {
//!         let tape = Tape::new();
//!         let tracked = params.track(&tape)?;
//!         let loss = mean(&square(&linear(&x, tracked.get("w")?, None)?)?, &[], false)?;
//!         grads.accumulate(&tracked.gradients(tape.backward(&loss)?), 0.5)?;
//!     }
//!     grads.clip_norm(5.0)?;
//!     opt.step(&mut params, &grads, 1e-2, 0.005)?;
//! }
//! assert_eq!(opt.step_count("w"), 3);
//! # Ok::<(), infinity_runtime::Error>(())
//! ```
//!
//! Backward rules: every op the Infinity transformer and the BitVAE use (see each module),
//! plus the fused bitwise cross-entropy of [`loss`]. Each is checked against central finite
//! differences ([`gradcheck`]) by the `autograd` integration tests.

pub mod adaln;
pub mod attention;
pub mod buckets;
pub mod checkpoint;
pub mod conv;
pub mod elementwise;
pub mod gradcheck;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
mod params;
pub mod recompute;
pub mod reduce;
pub mod resize;
pub mod rope;
pub mod schedule;
mod tape;
mod util;
mod view;
pub mod zero;

pub use optim::{AdamW, AdamWConfig, ParamGroup};
pub use params::{GradStore, Params, Tracked};
pub use schedule::{Annealing, LrSchedule, WdSchedule};
pub use tape::{Gradients, Tape, Var};
