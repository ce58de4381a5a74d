//! The Infinity transformer: text conditioning, blocks with block-causal self-attention
//! through a KV cache, the bitwise head, and the scale-by-scale sampler.

mod block;
pub mod config;
pub mod generate;
pub mod layout;
mod model;
pub(crate) mod params;
pub mod rope;
pub mod sampler;
pub mod teacher;
mod text;

pub use block::KvCache;
pub use config::InfinityConfig;
pub use generate::{Generated, Group, ScaleStep, generate, generate_groups};
pub use layout::TokenLayout;
pub use model::{Infinity, Session};
pub use sampler::SamplingConfig;
pub use text::{Conditioning, PackedText};
