//! VAR's VQVAE: the conv autoencoder with attention, and the residual multi-scale vector
//! quantizer. Per scale the residual is area-downsampled to pn×pn, each token replaced by its
//! nearest codebook entry, the code map bicubic-upsampled back to the latent grid and passed
//! through the scale's φ convolution (φ(h) = ½h + ½conv(h), after the upsampling), and the
//! result added to f̂ and taken from the residual (official models/quant.py). The transformer's
//! input at the next scale is f̂ area-downsampled to that scale.
//!
//! Inference only: the tokenizer is frozen while the transformer trains, so the quantizer runs
//! on tensors of the weights' device.

use std::path::Path;

use infinity_autograd::Var;
use infinity_ops::conv::Conv2dParams;
use infinity_ops::elementwise::{add, affine, sub};
use infinity_ops::index::{concat, embedding};
use infinity_ops::resize::{ResizeMode, resize};
use infinity_ops::vq::nearest_code;
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Device, Error, Result, Tensor};

use super::config::{PATCH, VqVaeConfig, phi_table};
use crate::autoencoder::{Conv, Decoder, Encoder, KeyStyle};
use crate::params::{Params, Use, refuse_unexpected};

pub struct VqVae {
    pub config: VqVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    /// (V, Cvae), f32.
    codebook: Tensor,
    phis: Vec<Conv>,
}

/// An image's tokens: one (B, pn²) I64 index map per scale, row-major inside a scale.
pub type Indices = Vec<Tensor>;

impl VqVae {
    /// Loads the flat state dict of `vae_ch160v4096z32.pth` (or safetensors), detecting the
    /// configuration.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_on(path, &Device::Cpu)
    }

    pub fn open_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = Weights::open(path)?;
        let config = VqVaeConfig::detect(&weights.shapes())
            .map_err(|msg| Error::format(weights.path(), format!("not a VAR VQVAE: {msg}")))?;
        Self::with_config_on(&weights, config, device)
    }

    /// The model with constant weights on `device` (convolution weights bf16 on an
    /// accelerator, the rest f32).
    pub fn with_config_on(weights: &Weights, config: VqVaeConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let mut p = Params::new(weights);
        let entries = config.entries();
        for e in entries.iter().filter(|e| !e.buffer) {
            let use_ = if e.shape.len() == 4 { Use::ConvWeight } else { Use::F32 };
            p.insert(weights, &e.key, &e.key, &e.shape, use_)?;
        }
        refuse_unexpected(weights, |k| entries.iter().any(|e| e.key == k), "VAR VQVAE")?;
        p.place_on(device);
        let take = &mut |key: &str| p.take(key).map(Var::constant);
        let same = Conv2dParams::new(1, 1);
        let keys = KeyStyle::Flat;
        Ok(VqVae {
            encoder: Encoder::load(take, &config.net)?,
            decoder: Decoder::load(take, &config.net)?,
            quant_conv: Conv::load(take, keys, "quant_conv", same)?,
            post_quant_conv: Conv::load(take, keys, "post_quant_conv", same)?,
            codebook: take("quantize.embedding.weight")?.into_value(),
            phis: (0..config.phis)
                .map(|k| Conv::load(take, keys, &format!("quantize.quant_resi.qresi_ls.{k}"), same))
                .collect::<Result<_>>()?,
            config,
        })
    }

    /// A state dict of random weights — normals scaled by 1/√fan-in for the convolutions,
    /// unit norms, zero biases, a codebook of N(0, 1/Cvae) rows — for benchmarks and tests.
    pub fn random_weights(config: &VqVaeConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("vqvae.random", &[config.vocab], msg))?;
        let mut rng = Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries() {
            let n: usize = e.shape.iter().product();
            let values = match e.shape.len() {
                4 => {
                    let scale = 1.0 / ((e.shape[1] * e.shape[2] * e.shape[3]) as f32).sqrt();
                    rng.normal(n).into_iter().map(|x| x * scale).collect()
                }
                2 => rng.normal(n).into_iter().map(|x| x / (config.cvae() as f32).sqrt()).collect(),
                _ if e.key.contains("norm") && e.key.ends_with(".weight") => vec![1.0; n],
                _ => vec![0.0; n],
            };
            tensors.push((e.key, Tensor::from_vec::<f32>(values, &e.shape)?));
        }
        Weights::new("<random VQVAE>", tensors, Default::default())
    }

    pub fn device(&self) -> Device {
        self.quant_conv.device()
    }

    /// Image (B, 3, H, W) in [−1, 1], H and W multiples of 16 → the feature map f (B, Cvae,
    /// H/16, W/16) that is quantized, on the model's device.
    pub fn features(&self, image: &Tensor) -> Result<Tensor> {
        let s = image.shape();
        if s.len() != 4 || s[1] != 3 || !s[2].is_multiple_of(PATCH) || !s[3].is_multiple_of(PATCH) {
            return Err(Error::invalid(
                "vqvae.encode",
                s,
                "expected an RGB image (B, 3, H, W) with H and W multiples of 16",
            ));
        }
        let f = self.encoder.forward(image)?;
        Ok(self.quant_conv.forward(&Var::constant(f))?.into_value())
    }

    /// The tokens of an image at every scale of `patch_nums` (the last equal to the latent
    /// side), and the quantized f̂ (B, Cvae, h, w) they decode to.
    pub fn encode(&self, image: &Tensor, patch_nums: &[usize]) -> Result<(Indices, Tensor)> {
        self.quantize(&self.features(image)?, patch_nums)
    }

    /// The residual quantization of a feature map f (B, Cvae, h, h) over `patch_nums`.
    pub fn quantize(&self, f: &Tensor, patch_nums: &[usize]) -> Result<(Indices, Tensor)> {
        let full = self.check_schedule("vqvae.quantize", f, patch_nums)?;
        let n = patch_nums.len();
        let mut rest = f.clone();
        let mut f_hat = Tensor::zeros_on(f.shape(), f.dtype(), &f.device())?;
        let mut indices = Vec::with_capacity(n);
        for (si, &pn) in patch_nums.iter().enumerate() {
            let z = if pn == full { rest.clone() } else { resize(&rest, (pn, pn), ResizeMode::Area)? };
            let idx = self.nearest(&z)?;
            let h = self.scale_contribution(&idx, pn, si, n, full)?;
            f_hat = add(&f_hat, &h)?;
            rest = sub(&rest, &h)?;
            indices.push(idx);
        }
        Ok((indices, f_hat))
    }

    /// Tokens (B, pn²) of the code map z (B, Cvae, pn, pn).
    fn nearest(&self, z: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = (z.dim(0)?, z.dim(1)?, z.dim(2)?, z.dim(3)?);
        let rows = z.permute(&[0, 2, 3, 1])?.reshape(&[b * h * w, c])?;
        nearest_code(&rows, &self.codebook)?.reshape(&[b, h * w])
    }

    /// What scale `si` of `n` adds to f̂: φ(bicubic(codebook[idx] → full)), the code map
    /// (B, Cvae, pn, pn) of tokens `idx` (B, pn²) upsampled to the latent side `full`.
    pub fn scale_contribution(&self, idx: &Tensor, pn: usize, si: usize, n: usize, full: usize) -> Result<Tensor> {
        self.map_contribution(&self.code_map(idx, pn)?, si, n, full)
    }

    /// [`VqVae::scale_contribution`] of a code map (B, Cvae, pn, pn).
    pub fn map_contribution(&self, codes: &Tensor, si: usize, n: usize, full: usize) -> Result<Tensor> {
        let up = if codes.dim(2)? == full { codes.clone() } else { resize(codes, (full, full), ResizeMode::Bicubic)? };
        self.phi(si, n, &up)
    }

    /// Codebook rows of tokens (B, pn²) as a map (B, Cvae, pn, pn).
    pub fn code_map(&self, idx: &Tensor, pn: usize) -> Result<Tensor> {
        let b = idx.dim(0)?;
        let idx = idx.to_device(&self.codebook.device())?;
        embedding(&self.codebook, &idx)?.permute(&[0, 2, 1])?.contiguous()?.reshape(&[b, self.config.cvae(), pn, pn])
    }

    /// The codebook (V, Cvae), f32 on the model's device.
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// φ of scale `si` of `n`: ½h + ½conv(h).
    fn phi(&self, si: usize, n: usize, h: &Tensor) -> Result<Tensor> {
        let table = phi_table(self.phis.len(), n);
        let k = *table.get(si).ok_or_else(|| Error::invalid("vqvae.phi", &[si, n], "scale index past the schedule"))?;
        let conv = &self.phis[k];
        let c = conv.forward(&Var::constant(h.clone()))?.into_value();
        add(&affine(h, 0.5, 0.0)?, &affine(&c, 0.5, 0.0)?)
    }

    /// The transformer's teacher-forcing input of ground-truth tokens: for scales 1.. the f̂ of
    /// the scales before, area-downsampled to the scale, as rows (B, L − 1, Cvae).
    pub fn teacher_input(&self, indices: &[Tensor], patch_nums: &[usize]) -> Result<Tensor> {
        let (n, full) = (patch_nums.len(), *patch_nums.last().unwrap_or(&1));
        if indices.len() != n || n < 2 {
            return Err(Error::invalid(
                "vqvae.teacher_input",
                &[indices.len()],
                format!("expected the tokens of the {n} scales of a schedule of at least 2"),
            ));
        }
        let b = indices[0].dim(0)?;
        let mut f_hat =
            Tensor::zeros_on(&[b, self.config.cvae(), full, full], infinity_runtime::DType::F32, &self.device())?;
        let mut inputs = Vec::with_capacity(n - 1);
        for si in 0..n - 1 {
            f_hat = add(&f_hat, &self.scale_contribution(&indices[si], patch_nums[si], si, n, full)?)?;
            inputs.push(rows(&resize(&f_hat, (patch_nums[si + 1], patch_nums[si + 1]), ResizeMode::Area)?)?);
        }
        concat(&inputs.iter().collect::<Vec<_>>(), 1)
    }

    /// f̂ (B, Cvae, h, w) → image (B, 3, 16h, 16w) on the host, clamped to [−1, 1].
    pub fn decode(&self, f_hat: &Tensor) -> Result<Tensor> {
        if f_hat.rank() != 4 || f_hat.dim(1)? != self.config.cvae() {
            return Err(Error::invalid(
                "vqvae.decode",
                f_hat.shape(),
                format!("expected (B, {}, h, w)", self.config.cvae()),
            ));
        }
        let z = self.post_quant_conv.forward(&Var::constant(f_hat.to_device(&self.device())?))?;
        self.decoder.forward(z.value())
    }

    /// Tokens of every scale → image (B, 3, H, W) in [−1, 1] on the host.
    pub fn decode_indices(&self, indices: &[Tensor], patch_nums: &[usize]) -> Result<Tensor> {
        let (n, full) = (patch_nums.len(), *patch_nums.last().unwrap_or(&1));
        if indices.len() != n {
            return Err(Error::invalid("vqvae.decode_indices", &[indices.len()], format!("expected {n} scales")));
        }
        let mut f_hat: Option<Tensor> = None;
        for (si, (idx, &pn)) in indices.iter().zip(patch_nums).enumerate() {
            let h = self.scale_contribution(idx, pn, si, n, full)?;
            f_hat = Some(match f_hat {
                Some(f) => add(&f, &h)?,
                None => h,
            });
        }
        self.decode(&f_hat.ok_or_else(|| Error::invalid("vqvae.decode_indices", &[0], "no scales"))?)
    }

    fn check_schedule(&self, op: &'static str, f: &Tensor, patch_nums: &[usize]) -> Result<usize> {
        let s = f.shape();
        let full = *patch_nums.last().unwrap_or(&0);
        if s.len() != 4 || s[1] != self.config.cvae() || s[2] != full || s[3] != full {
            return Err(Error::invalid(
                op,
                s,
                format!(
                    "expected features (B, {}, {full}, {full}) for the schedule {patch_nums:?}",
                    self.config.cvae()
                ),
            ));
        }
        Ok(full)
    }
}

/// A map (B, C, h, w) as rows (B, h·w, C), row-major.
pub fn rows(map: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = (map.dim(0)?, map.dim(1)?, map.dim(2)?, map.dim(3)?);
    map.reshape(&[b, c, h * w])?.permute(&[0, 2, 1])?.contiguous()
}
