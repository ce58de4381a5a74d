//! The models, each written once on the op set and autograd and loaded onto the device it
//! runs on: the BitVAE tokenizer, the flan-T5 text encoder and the Infinity transformer with
//! its sampler; the scale schedules they share; the text-to-image pipeline and the one
//! generation API both binaries use; scoring by retrieval; and what training needs (data,
//! training steps for both models, and the runs that take them).

pub mod autoencoder;
pub mod bitvae;
pub mod data;
pub mod device_memory;
pub mod image;
pub mod infinity;
pub mod kv_cache;
pub mod magvit2;
pub mod model_folder;
mod params;
pub mod pipeline;
pub mod retrieval;
pub mod run;
pub mod sampling;
pub mod schedule;
pub mod t5;
pub mod text_to_image;
pub mod train;
pub mod train_vae;
pub mod var;
