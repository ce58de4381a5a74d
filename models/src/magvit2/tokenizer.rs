//! The Open-MAGVIT2 tokenizer (`improved_model.py`): an encoder of bias-free GroupNorm + SiLU
//! ResBlocks with strided 3×3 convolutions down; lookup-free quantization (each latent channel's
//! sign is a bit, the token index Σ bit_k·2^k with channel 0 the least significant); a decoder
//! whose levels start with an adaptive GroupNorm conditioned on the quantized latent's
//! per-channel mean and (unbiased) standard deviation, and upsample by a 3×3 convolution to 4C
//! then depth-to-space. Inference only (the tokenizer is frozen while the generator trains), on
//! the tensors of the weights' device.

use std::path::Path;

use infinity_ops::conv::{Conv2dParams, conv2d};
use infinity_ops::elementwise::{add, mul};
use infinity_ops::index::concat;
use infinity_ops::matmul::linear;
use infinity_ops::norm::{group_norm, group_norm_silu};
use infinity_runtime::io::{Weights, open_checkpoint};
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use super::config::{Layout, TokenizerConfig};
use crate::params::{Params, Use, refuse_unexpected};

const GROUPS: usize = 32;
const EPS: f32 = 1e-6;

struct ResBlock {
    norm1: (Tensor, Tensor),
    norm2: (Tensor, Tensor),
    conv1: Tensor,
    conv2: Tensor,
    /// 1×1, no bias, where the width changes.
    shortcut: Option<Tensor>,
}

impl ResBlock {
    fn load(p: &mut Params, name: &str, cin: usize, cout: usize) -> Result<Self> {
        let mut t = |k: &str| p.take(&format!("{name}.{k}"));
        Ok(ResBlock {
            norm1: (t("norm1.weight")?, t("norm1.bias")?),
            norm2: (t("norm2.weight")?, t("norm2.bias")?),
            conv1: t("conv1.weight")?,
            conv2: t("conv2.weight")?,
            shortcut: if cin != cout { Some(t("nin_shortcut.weight")?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let same = Conv2dParams::new(1, 1);
        let h = conv2d(&group_norm_silu(x, GROUPS, &self.norm1.0, &self.norm1.1, EPS)?, &self.conv1, None, same)?;
        let h = conv2d(&group_norm_silu(&h, GROUPS, &self.norm2.0, &self.norm2.1, EPS)?, &self.conv2, None, same)?;
        match &self.shortcut {
            Some(w) => add(&h, &conv2d(x, w, None, Conv2dParams::new(1, 0))?),
            None => add(&h, x),
        }
    }
}

fn run(blocks: &[ResBlock], mut x: Tensor) -> Result<Tensor> {
    for b in blocks {
        x = b.forward(&x)?;
    }
    Ok(x)
}

/// A convolution with bias.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    params: Conv2dParams,
}

impl Conv {
    fn load(p: &mut Params, name: &str, params: Conv2dParams) -> Result<Self> {
        Ok(Conv { weight: p.take(&format!("{name}.weight"))?, bias: p.take(&format!("{name}.bias"))?, params })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, Some(&self.bias), self.params)
    }
}

/// GroupNorm without affine, then scale·x + bias from the style's per-channel statistics.
struct AdaptiveGroupNorm {
    gamma: (Tensor, Tensor),
    beta: (Tensor, Tensor),
}

/// Per-channel statistics of the decoder's input: (√(unbiased variance + ε), mean), (B, d) each.
struct Style {
    std: Tensor,
    mean: Tensor,
}

impl AdaptiveGroupNorm {
    fn forward(&self, x: &Tensor, style: &Style) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let scale = linear(&style.std, &self.gamma.0, Some(&self.gamma.1))?.reshape(&[b, c, 1, 1])?;
        let bias = linear(&style.mean, &self.beta.0, Some(&self.beta.1))?.reshape(&[b, c, 1, 1])?;
        add(&mul(&group_norm(x, GROUPS, None, None, EPS)?, &scale)?, &bias)
    }
}

struct Level {
    blocks: Vec<ResBlock>,
    /// Encoder: the strided convolution after the level; decoder: the upsampler's convolution.
    resample: Option<Conv>,
}

/// An image's tokens: the LFQ bits and what follows from them.
pub struct Quantized {
    /// (B, d, h, w) ±1, on the host: the decoder's input.
    pub codes: Tensor,
    /// (B, h·w) I64: Σ bit_k·2^k, raster order.
    pub indices: Tensor,
}

pub struct Tokenizer {
    pub config: TokenizerConfig,
    conv_in: Tensor,
    down: Vec<Level>,
    enc_mid: Vec<ResBlock>,
    enc_norm_out: (Tensor, Tensor),
    conv_out: Conv,
    dec_conv_in: Conv,
    dec_mid: Vec<ResBlock>,
    up: Vec<Level>,
    adaptive: Vec<AdaptiveGroupNorm>,
    dec_norm_out: (Tensor, Tensor),
    dec_conv_out: Conv,
    device: Device,
}

impl Tokenizer {
    /// Loads a tokenizer from safetensors, a released tokenizer `.ckpt` (its EMA weights, as the
    /// official reconstruction uses) or an AR `.ckpt` (its first stage), detecting the configuration.
    pub fn open_on(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let weights = open_checkpoint(path.as_ref(), |_| true)?;
        let config = TokenizerConfig::detect(&weights)
            .map_err(|msg| Error::format(weights.path(), format!("not an Open-MAGVIT2 tokenizer: {msg}")))?;
        Self::with_config_on(&weights, config, device)
    }

    pub fn with_config_on(weights: &Weights, config: TokenizerConfig, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| Error::format(weights.path(), msg))?;
        let layout = Layout::of(weights);
        let entries = config.entries();
        let mut p = Params::new(weights);
        for e in &entries {
            let use_ = match e.shape.len() {
                4 => Use::ConvWeight,
                2 => Use::AsStored,
                _ => Use::F32,
            };
            p.insert(weights, &e.key, &layout.tokenizer_key(&e.key), &e.shape, use_)?;
        }
        if layout == Layout::Plain {
            // Inside the networks anything else is an architecture we do not build.
            let expected = |k: &str| {
                !(k.starts_with("encoder.") || k.starts_with("decoder.")) || entries.iter().any(|e| e.key == k)
            };
            refuse_unexpected(weights, expected, "Open-MAGVIT2 tokenizer")?;
        }
        p.place_on(device);
        let c = &config;
        let mut down = Vec::new();
        for l in 0..c.num_levels() {
            let blocks = (c.encoder_blocks(l).into_iter().enumerate())
                .map(|(b, (cin, cout))| ResBlock::load(&mut p, &format!("encoder.down.{l}.block.{b}"), cin, cout))
                .collect::<Result<_>>()?;
            let resample = if l + 1 < c.num_levels() {
                Some(Conv::load(&mut p, &format!("encoder.down.{l}.downsample"), Conv2dParams::new(2, 1))?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        let mid = |p: &mut Params, part: &str| -> Result<Vec<ResBlock>> {
            (0..c.num_res_blocks)
                .map(|i| ResBlock::load(p, &format!("{part}.mid_block.{i}"), c.top(), c.top()))
                .collect()
        };
        let enc_mid = mid(&mut p, "encoder")?;
        let enc_norm_out = (p.take("encoder.norm_out.weight")?, p.take("encoder.norm_out.bias")?);
        let conv_out = Conv::load(&mut p, "encoder.conv_out", Conv2dParams::new(1, 0))?;
        let dec_conv_in = Conv::load(&mut p, "decoder.conv_in", Conv2dParams::new(1, 1))?;
        let dec_mid = mid(&mut p, "decoder")?;
        let mut up = Vec::new();
        for l in 0..c.num_levels() {
            let blocks = (c.decoder_blocks(l).into_iter().enumerate())
                .map(|(b, (cin, cout))| ResBlock::load(&mut p, &format!("decoder.up.{l}.block.{b}"), cin, cout))
                .collect::<Result<_>>()?;
            let resample = if l > 0 {
                Some(Conv::load(&mut p, &format!("decoder.up.{l}.upsample.conv1"), Conv2dParams::new(1, 1))?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        let mut adaptive = Vec::new();
        for l in 0..c.num_levels() {
            let mut t = |k: &str| p.take(&format!("decoder.adaptive.{l}.{k}"));
            adaptive.push(AdaptiveGroupNorm {
                gamma: (t("gamma.weight")?, t("gamma.bias")?),
                beta: (t("beta.weight")?, t("beta.bias")?),
            });
        }
        Ok(Tokenizer {
            conv_in: p.take("encoder.conv_in.weight")?,
            down,
            enc_mid,
            enc_norm_out,
            conv_out,
            dec_conv_in,
            dec_mid,
            up,
            adaptive,
            dec_norm_out: (p.take("decoder.norm_out.weight")?, p.take("decoder.norm_out.bias")?),
            dec_conv_out: Conv::load(&mut p, "decoder.conv_out", Conv2dParams::new(1, 1))?,
            config,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Random weights — convolutions and linears N(0, 1/fan-in), unit norms, zero biases — for
    /// benchmarks and tests.
    pub fn random_weights(config: &TokenizerConfig, seed: u64) -> Result<Weights> {
        config.validate().map_err(|msg| Error::invalid("magvit2.random", &[config.z_channels], msg))?;
        let mut rng = infinity_runtime::rng::Philox::new(seed);
        let mut tensors = Vec::new();
        for e in config.entries() {
            let n: usize = e.shape.iter().product();
            let values = if e.shape.len() >= 2 {
                let fan_in = (e.shape[1..].iter().product::<usize>() as f32).sqrt();
                rng.normal(n).into_iter().map(|x| x / fan_in).collect()
            } else if e.key.contains("norm") && e.key.ends_with(".weight") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            };
            tensors.push((e.key, Tensor::from_vec::<f32>(values, &e.shape)?));
        }
        Weights::new("<random Open-MAGVIT2 tokenizer>", tensors, Default::default())
    }

    /// RGB (B, 3, H, W) in [−1, 1], sides multiples of the downsampling → the latent z
    /// (B, d, H/f, W/f) on the host.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let (s, f) = (image.shape(), self.config.downsample());
        if s.len() != 4 || s[1] != 3 || !s[2].is_multiple_of(f) || !s[3].is_multiple_of(f) || s[2] == 0 || s[3] == 0 {
            return Err(Error::invalid(
                "magvit2.encode",
                s,
                format!("expected an RGB image (B, 3, H, W) with H and W multiples of {f}"),
            ));
        }
        let x = image.to_device(&self.device)?;
        let mut h = conv2d(&x, &self.conv_in, None, Conv2dParams::new(1, 1))?;
        for level in &self.down {
            h = run(&level.blocks, h)?;
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
            }
        }
        h = run(&self.enc_mid, h)?;
        let h = group_norm_silu(&h, GROUPS, &self.enc_norm_out.0, &self.enc_norm_out.1, EPS)?;
        self.conv_out.forward(&h)?.to_cpu()
    }

    /// Image → z → its LFQ tokens.
    pub fn tokenize(&self, image: &Tensor) -> Result<Quantized> {
        quantize(&self.encode(image)?)
    }

    /// Codes (B, d, h, w) (±1 for tokens, or any latent) → image (B, 3, f·h, f·w) on the host,
    /// not clamped (as the official decoder).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let d = self.config.z_channels;
        if codes.rank() != 4 || codes.dim(1)? != d {
            return Err(Error::invalid("magvit2.decode", codes.shape(), format!("expected codes (B, {d}, h, w)")));
        }
        let style = style(codes)?;
        let style = Style { std: style.std.to_device(&self.device)?, mean: style.mean.to_device(&self.device)? };
        let mut h = run(&self.dec_mid, self.dec_conv_in.forward(&codes.to_device(&self.device)?)?)?;
        for l in (0..self.config.num_levels()).rev() {
            h = self.adaptive[l].forward(&h, &style)?;
            h = run(&self.up[l].blocks, h)?;
            if let Some(conv) = &self.up[l].resample {
                h = depth_to_space(&conv.forward(&h)?)?;
            }
        }
        let h = group_norm_silu(&h, GROUPS, &self.dec_norm_out.0, &self.dec_norm_out.1, EPS)?;
        self.dec_conv_out.forward(&h)?.to_cpu()
    }
}

/// The per-channel statistics of `codes` (B, d, h, w) over its h·w positions, in f64 then f32:
/// √(unbiased variance + ε) and the mean.
fn style(codes: &Tensor) -> Result<Style> {
    let (b, d) = (codes.dim(0)?, codes.dim(1)?);
    let n = codes.dim(2)? * codes.dim(3)?;
    let v = codes.to_cpu()?.to_f32_vec()?;
    let (mut std, mut mean) = (Vec::with_capacity(b * d), Vec::with_capacity(b * d));
    for plane in v.chunks(n.max(1)) {
        let m = plane.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = plane.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        std.push((var as f32 + EPS).sqrt());
        mean.push(m as f32);
    }
    Ok(Style { std: Tensor::from_vec(std, &[b, d])?, mean: Tensor::from_vec(mean, &[b, d])? })
}

/// Depth-to-space, DCR order: out[c, 2y + i, 2x + j] = in[(2i + j)·C + c, y, x], as rank-3
/// concatenations (every device copies those).
fn depth_to_space(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = (x.dim(0)?, x.dim(1)?, x.dim(2)?, x.dim(3)?);
    let c = c4 / 4;
    let part = |k: usize| x.narrow(1, k * c, c)?.contiguous()?.reshape(&[b * c * h, w, 1]);
    // Row i of every 2×2 block: its two columns interleaved along W.
    let row = |i: usize| -> Result<Tensor> {
        concat(&[&part(2 * i)?, &part(2 * i + 1)?], 2)?.reshape(&[b * c * h, 1, 2 * w])
    };
    concat(&[&row(0)?, &row(1)?], 1)?.reshape(&[b, c, 2 * h, 2 * w])
}

/// LFQ of a latent (B, d, h, w): bit k = z_k > 0 (0 and NaN give 0), code ±1, index Σ bit_k·2^k.
pub fn quantize(z: &Tensor) -> Result<Quantized> {
    let (b, d, h, w) = (z.dim(0)?, z.dim(1)?, z.dim(2)?, z.dim(3)?);
    let v = z.to_cpu()?.to_f32_vec()?;
    let codes: Vec<f32> = v.iter().map(|&x| if x > 0.0 { 1.0 } else { -1.0 }).collect();
    let mut indices = vec![0i64; b * h * w];
    for (i, &x) in v.iter().enumerate() {
        if x > 0.0 {
            let (bi, k, p) = (i / (d * h * w), i / (h * w) % d, i % (h * w));
            indices[bi * h * w + p] |= 1 << k;
        }
    }
    Ok(Quantized { codes: Tensor::from_vec(codes, &[b, d, h, w])?, indices: Tensor::from_vec(indices, &[b, h * w])? })
}

/// The two sub-tokens of full indices (B, N): pre = index mod 2^f0, post = index >> f0.
pub fn split(indices: &Tensor, bits: [usize; 2]) -> Result<(Tensor, Tensor)> {
    let v = indices.to_vec::<i64>()?;
    let mask = (1i64 << bits[0]) - 1;
    let pre = v.iter().map(|&i| i & mask).collect();
    let post = v.iter().map(|&i| i >> bits[0]).collect();
    Ok((Tensor::from_vec(pre, indices.shape())?, Tensor::from_vec(post, indices.shape())?))
}

/// The ±1 codes (B, f0 + f1, g, g) of sub-tokens (B, g²): pre's bits on the first f0 channels,
/// post's on the rest (bit k of each on its k-th channel).
pub fn codes_of(pre: &Tensor, post: &Tensor, bits: [usize; 2], grid: usize) -> Result<Tensor> {
    let (b, n) = (pre.dim(0)?, grid * grid);
    let (pre, post) = (pre.to_vec::<i64>()?, post.to_vec::<i64>()?);
    if pre.len() != b * n || post.len() != b * n {
        return Err(Error::invalid(
            "magvit2.codes",
            &[pre.len(), post.len()],
            format!("expected {b} × {n} sub-tokens"),
        ));
    }
    let d = bits[0] + bits[1];
    let mut codes = vec![-1f32; b * d * n];
    for bi in 0..b {
        for p in 0..n {
            let (a, c) = (pre[bi * n + p], post[bi * n + p]);
            for k in 0..d {
                let bit = if k < bits[0] { a >> k & 1 } else { c >> (k - bits[0]) & 1 };
                if bit == 1 {
                    codes[(bi * d + k) * n + p] = 1.0;
                }
            }
        }
    }
    Tensor::from_vec(codes, &[b, d, grid, grid]).and_then(|t| t.to_dtype(DType::F32))
}
