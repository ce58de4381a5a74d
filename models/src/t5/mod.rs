//! The flan-t5 text encoder that turns prompts into Infinity's text features: the tokenizer,
//! the encoder configuration with its state-dict entries, and the encoder itself, on any
//! device.

pub mod config;
mod model;
pub(crate) mod params;
pub mod tokenizer;

pub use config::T5Config;
pub use model::{T5Encoder, relative_position_bucket};
pub use params::open_checkpoint;
pub use tokenizer::{Encoded, T5Tokenizer, train_tokenizer};
