//! BitVAE: the convolutional image tokenizer (encoder, decoder) and its multi-scale bitwise
//! quantizer.

pub mod config;
mod net;
mod params;
pub mod quantizer;

use std::collections::BTreeMap;
use std::path::Path;

use infinity_runtime::io::Weights;
use infinity_runtime::{Error, Result, Tensor};

pub use config::BitVaeConfig;
pub use net::{Decoder, Encoder};

pub struct BitVae {
    pub config: BitVaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl BitVae {
    /// Loads an official `.pth` (state dict under `vae`) or a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let weights = Weights::open(path)?;
        let nested = weights.iter().any(|(k, _)| k.starts_with("vae."));
        if nested { Self::from_weights(&weights.strip_prefix("vae.")?) } else { Self::from_weights(&weights) }
    }

    /// Builds the model, detecting the configuration from the tensor shapes.
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        let shapes: BTreeMap<String, Vec<usize>> = weights.iter().map(|(k, t)| (k.to_string(), t.shape().to_vec())).collect();
        let config = BitVaeConfig::detect(&shapes)
            .map_err(|msg| Error::format(weights.path(), format!("not a known BitVAE configuration: {msg}")))?;
        Self::with_config(weights, config)
    }

    pub fn with_config(weights: &Weights, config: BitVaeConfig) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = params::Params::gather(weights, &config)?;
        let encoder = Encoder::load(&mut p, &config)?;
        let decoder = Decoder::load(&mut p, &config)?;
        Ok(BitVae { config, encoder, decoder })
    }

    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let (h, w) = (image.dim(2)?, image.dim(3)?);
        if image.rank() != 4 || image.dim(1)? != 3 || h % self.config.patch != 0 || w % self.config.patch != 0 {
            return Err(Error::invalid(
                "bitvae.encode",
                image.shape(),
                format!("expected an RGB image (B, 3, H, W) with H and W multiples of {}", self.config.patch),
            ));
        }
        self.encoder.forward(image)
    }

    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        if latent.rank() != 4 || latent.dim(1)? != self.config.z_channels {
            return Err(Error::invalid(
                "bitvae.decode",
                latent.shape(),
                format!("expected a latent (B, {}, h, w)", self.config.z_channels),
            ));
        }
        self.decoder.forward(latent)
    }
}
