//! Gradient checks of every backward rule against finite differences (proptest over small
//! shapes with 1s, odd sizes, broadcasting and non-contiguous inputs), tape semantics, and
//! the training pieces: AdamW (hand-computed and against the official one-step golden),
//! parameter groups, clipping, accumulation, schedules and the optimizer state round trip.

#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)] // shared with the op tests, which use other helpers
#[path = "../ops/support.rs"]
mod op_support;
mod support;

mod attention;
mod checkpoint;
mod conv;
mod devices;
mod elementwise;
mod index;
mod loss;
mod matmul;
mod norm;
mod optim;
mod recompute;
mod reduce;
mod resize;
mod rope;
mod schedule;
mod tape;
