//! Models built on the op set: scale schedules shared by the tokenizer and the transformer.

pub mod bitvae;
pub mod data;
pub mod image;
pub mod infinity;
mod params;
pub mod pipeline;
pub mod schedule;
pub mod t5;
pub mod train;
pub mod train_vae;
