//! The flan-t5 text encoder that turns prompts into Infinity's text features: the tokenizer,
//! the encoder configuration with its state-dict entries, and the encoder itself, with its
//! forward on a CUDA executor in [`device`].

pub mod config;
pub mod device;
mod model;
mod params;
pub mod tokenizer;

pub use config::T5Config;
pub use model::{T5Encoder, relative_position_bucket};
pub use params::open_checkpoint;
pub use tokenizer::{Encoded, T5Tokenizer, train_tokenizer};
