//! Open-MAGVIT2 (TencentARC, code in SEED-Voken): a lookup-free-quantization tokenizer whose
//! tokens are the signs of its latent channels, and a Llama-style generator that predicts each
//! token as two sub-tokens ("asymmetric token factorization").

pub mod config;
pub mod generate;
mod model;
pub mod tokenizer;
pub mod train;

pub use config::{ArConfig, Layout, TokenizerConfig};
pub use model::{ArModel, Logits, Session, rope_table};
pub use tokenizer::Tokenizer;
