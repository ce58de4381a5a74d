//! VAR (FoundationVision, NeurIPS 2024): a VQVAE whose residual quantizer codes an image as
//! token maps over 10 scales, and a class-conditional transformer that predicts each scale's
//! codebook indices from the scales before it.

pub mod config;
pub mod generate;
mod model;
pub mod train;
pub mod vqvae;

pub use config::{VarConfig, VqVaeConfig};
pub use generate::{Edit, Generated, ScaleStep, VarSampling, generate};
pub use model::{Session, VarTransformer};
pub use vqvae::VqVae;
