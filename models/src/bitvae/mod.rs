//! BitVAE: the convolutional image tokenizer (encoder, decoder) and its multi-scale bitwise
//! quantizer. Loaded from a checkpoint the weights are constants (inference), on the CPU or an
//! accelerator ([`BitVae::open_on`]); built with [`BitVae::on_tape`] from a training step's
//! leaves, the same forward records for backward.

pub mod config;
pub(crate) mod params;
pub mod quantizer;

use std::path::Path;

use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Device, Error, Result, Tensor};

use crate::params::{Source, tracked_source, trainable};

pub use crate::autoencoder::{Decoder, Encoder};
pub use config::BitVaeConfig;

pub struct BitVae {
    pub config: BitVaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl BitVae {
    /// Loads an official `.pth` (state dict under `vae`) or a safetensors file, detecting the
    /// configuration from the tensor shapes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_weights(&state_dict(path)?)
    }

    /// [`BitVae::open`] with the weights loaded onto `device` (convolution weights bf16 on an
    /// accelerator, the rest f32). On an accelerator the decoder runs there; the encoder's
    /// downsampling (padded on two sides only) has no kernel yet.
    pub fn open_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = state_dict(path)?;
        Self::with_config_on(&weights, detect_config(&weights)?, device)
    }

    /// Loads a checkpoint that must have the given configuration (from a `config.json`).
    pub fn open_with_config(path: impl AsRef<Path>, config: BitVaeConfig) -> Result<Self> {
        Self::with_config(&state_dict(path)?, config)
    }

    /// A model with random weights (see [`BitVae::random_weights`]), for benchmarks and tests.
    pub fn random(config: BitVaeConfig, seed: u64) -> Result<Self> {
        Self::with_config(&Self::random_weights(&config, seed)?, config)
    }

    /// A state dict of random weights — normals scaled by 1/√fan-in, unit norms, zero biases —
    /// the starting point of training from scratch.
    pub fn random_weights(config: &BitVaeConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("bitvae.random", &[config.z_channels], msg))?;
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries().into_iter().filter(|e| !e.buffer) {
            let n: usize = e.shape.iter().product();
            let values = if e.shape.len() == 4 {
                let scale = 1.0 / ((e.shape[1] * e.shape[2] * e.shape[3]) as f32).sqrt();
                rng.normal(n).into_iter().map(|x| x * scale).collect()
            } else {
                vec![if e.key.ends_with("norm.weight") { 1.0 } else { 0.0 }; n]
            };
            tensors.push((e.key, Tensor::from_vec::<f32>(values, &e.shape)?));
        }
        Weights::new("<random BitVAE>", tensors, Default::default())
    }

    /// Builds the model, detecting the configuration from the tensor shapes.
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        Self::with_config(weights, detect_config(weights)?)
    }

    pub fn with_config(weights: &Weights, config: BitVaeConfig) -> Result<Self> {
        Self::with_config_on(weights, config, &Device::Cpu)
    }

    /// [`BitVae::with_config`] with the weights on `device` (see [`BitVae::open_on`]).
    pub fn with_config_on(weights: &Weights, config: BitVaeConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = params::gather(weights, &config)?;
        p.place_on(device);
        Self::build(config, &mut |key| p.take(key).map(Var::constant))
    }

    /// The trainable parameters of a checkpoint in f32 under their native names (the keys
    /// [`BitVae::open`] reads back), checked against `config` as loading checks them.
    pub fn parameters(weights: &Weights, config: &BitVaeConfig) -> Result<TrainParams> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = params::gather(weights, config)?;
        trainable(&mut p, config.entries().into_iter().filter(|e| !e.buffer).map(|e| e.key))
    }

    /// The model on one training step's tape: every parameter is the tracked leaf of the same
    /// name (as [`BitVae::parameters`] names them). Build it anew for each step's tape.
    pub fn on_tape(config: BitVaeConfig, params: &Tracked) -> Result<Self> {
        config.validate().map_err(|msg| Error::invalid("bitvae.on_tape", &[], msg))?;
        let shapes = config.entries().into_iter().map(|e| (e.key, e.shape)).collect();
        Self::build(config, &mut tracked_source("bitvae.on_tape", shapes, params))
    }

    fn build(config: BitVaeConfig, take: Source) -> Result<Self> {
        let net = config.net();
        let encoder = Encoder::load(take, &net)?;
        let decoder = Decoder::load(take, &net)?;
        Ok(BitVae { config, encoder, decoder })
    }

    /// Refuses anything but an RGB batch (B, 3, H, W) with H and W multiples of the patch.
    pub fn check_image(&self, shape: &[usize]) -> Result<()> {
        let p = self.config.patch;
        if shape.len() != 4 || shape[1] != 3 || !shape[2].is_multiple_of(p) || !shape[3].is_multiple_of(p) {
            return Err(Error::invalid(
                "bitvae.encode",
                shape,
                format!("expected an RGB image (B, 3, H, W) with H and W multiples of {p}"),
            ));
        }
        Ok(())
    }

    /// RGB image (B, 3, H, W) in [-1, 1], H and W multiples of the patch → latent (B, d, h, w).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.check_image(image.shape())?;
        self.encoder.forward(image)
    }

    /// Image → latent → bits at every scale of `grids` (the last one must be the latent grid)
    /// → decoded image, clamped to [-1, 1]; the decoder sees only what the bits encode.
    pub fn reconstruct(&self, image: &Tensor, grids: &[(usize, usize)]) -> Result<(quantizer::Quantized, Tensor)> {
        let q = quantizer::quantize(&self.encode(image)?, grids)?;
        let decoded = self.decode(&q.summed)?;
        Ok((q, decoded))
    }

    /// Latent (B, d, h, w) on any device → image (B, 3, h·patch, w·patch) on the host, clamped
    /// to [-1, 1].
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

/// The configuration a state dict's shapes imply; the error names the file.
pub fn detect_config(weights: &Weights) -> Result<BitVaeConfig> {
    BitVaeConfig::detect(&weights.shapes())
        .map_err(|msg| Error::format(weights.path(), format!("not a known BitVAE configuration: {msg}")))
}

/// The VAE's state dict: official `.pth` files keep it under the key `vae`.
pub fn state_dict(path: impl AsRef<Path>) -> Result<Weights> {
    let weights = Weights::open(path)?;
    if weights.iter().any(|(k, _)| k.starts_with("vae.")) { weights.strip_prefix("vae.") } else { Ok(weights) }
}
