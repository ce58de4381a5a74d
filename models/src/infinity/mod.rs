//! The Infinity transformer: text conditioning, blocks with block-causal self-attention
//! through a KV cache, the bitwise head, and the scale-by-scale sampler.

pub mod config;

pub use config::InfinityConfig;
