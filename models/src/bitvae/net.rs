//! The BitVAE encoder and decoder: GroupNorm + SiLU ResBlocks, stride-2 convolutions down,
//! nearest ×2 + convolution up, no attention.
//!
//! The layers hold their parameters as `Var`s and have one forward written against `Var`
//! (as the transformer does): with constant weights it is the inference path and records
//! nothing; built from a training tape's leaves ([`super::BitVae::on_tape`]) it records every
//! op for backpropagation.

use infinity_autograd::Var;
use infinity_autograd::conv::conv2d;
use infinity_autograd::elementwise::add;
use infinity_autograd::norm::group_norm_silu;
use infinity_autograd::resize::resize;
use infinity_ops::conv::Conv2dParams;
use infinity_ops::elementwise::clamp;
use infinity_ops::resize::ResizeMode;
use infinity_runtime::{Result, Tensor};

use super::config::BitVaeConfig;
use crate::params::Source;

const GROUPS: usize = 32;
const EPS: f32 = 1e-6;

struct Conv {
    weight: Var,
    bias: Var,
    params: Conv2dParams,
}

impl Conv {
    fn load(p: Source, name: &str, params: Conv2dParams) -> Result<Self> {
        Ok(Conv { weight: p(&format!("{name}.conv.weight"))?, bias: p(&format!("{name}.conv.bias"))?, params })
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        conv2d(x, &self.weight, Some(&self.bias), self.params)
    }
}

struct GroupNorm {
    weight: Var,
    bias: Var,
}

impl GroupNorm {
    fn load(p: Source, name: &str) -> Result<Self> {
        Ok(GroupNorm { weight: p(&format!("{name}.norm.weight"))?, bias: p(&format!("{name}.norm.bias"))? })
    }

    /// GroupNorm followed by SiLU: the only way the network uses its norms.
    fn forward_silu(&self, x: &Var) -> Result<Var> {
        group_norm_silu(x, GROUPS, &self.weight, &self.bias, EPS)
    }
}

struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    /// 1×1 projection when the channel count changes.
    shortcut: Option<Conv>,
}

impl ResBlock {
    fn load(p: Source, name: &str, cin: usize, cout: usize) -> Result<Self> {
        let same = Conv2dParams::new(1, 1);
        Ok(ResBlock {
            norm1: GroupNorm::load(p, &format!("{name}.norm1"))?,
            conv1: Conv::load(p, &format!("{name}.conv1"), same)?,
            norm2: GroupNorm::load(p, &format!("{name}.norm2"))?,
            conv2: Conv::load(p, &format!("{name}.conv2"), same)?,
            shortcut: (cin != cout)
                .then(|| Conv::load(p, &format!("{name}.nin_shortcut"), Conv2dParams::new(1, 0)))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => add(&s.forward(x)?, &h),
            None => add(x, &h),
        }
    }
}

fn run_blocks(blocks: &[ResBlock], mut h: Var) -> Result<Var> {
    for b in blocks {
        h = b.forward(&h)?;
    }
    Ok(h)
}

/// One resolution level: its ResBlocks and the optional resampling convolution after them.
struct Level {
    blocks: Vec<ResBlock>,
    resample: Option<Conv>,
}

pub struct Encoder {
    conv_in: Conv,
    levels: Vec<Level>,
    mid: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    pub(super) fn load(p: Source, c: &BitVaeConfig) -> Result<Self> {
        let top = c.base_ch * c.ch_mult[c.num_levels() - 1];
        let mut levels = Vec::with_capacity(c.num_levels());
        for l in 0..c.num_levels() {
            let blocks = c
                .encoder_blocks(l)
                .into_iter()
                .enumerate()
                .map(|(b, (cin, cout))| ResBlock::load(p, &format!("encoder.down.{l}.block.{b}"), cin, cout))
                .collect::<Result<_>>()?;
            // The official Downsample pads right and bottom by one, then convolves unpadded.
            let down = Conv2dParams { stride: 2, padding: [0, 1, 0, 1] };
            let resample = c
                .encoder_downsamples(l)
                .then(|| Conv::load(p, &format!("encoder.down.{l}.downsample.conv"), down))
                .transpose()?;
            levels.push(Level { blocks, resample });
        }
        Ok(Encoder {
            conv_in: Conv::load(p, "encoder.conv_in", Conv2dParams::new(1, 1))?,
            levels,
            mid: mid_blocks(p, "encoder", top)?,
            norm_out: GroupNorm::load(p, "encoder.norm_out")?,
            conv_out: Conv::load(p, "encoder.conv_out", Conv2dParams::new(1, 1))?,
        })
    }

    /// Image (B, 3, H, W) in [-1, 1], on any device → latent (B, d, H/patch, W/patch),
    /// unnormalised, on the encoder's device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&self.conv_in.weight.value().device())?;
        Ok(self.forward_var(&Var::constant(x))?.into_value())
    }

    /// [`Encoder::forward`] on `Var`s: records when the parameters are on a tape.
    pub fn forward_var(&self, x: &Var) -> Result<Var> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.levels {
            h = run_blocks(&level.blocks, h)?;
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
            }
        }
        h = run_blocks(&self.mid, h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

pub struct Decoder {
    conv_in: Conv,
    mid: Vec<ResBlock>,
    /// Indexed by level (0 = finest); executed from the top level down.
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    pub(super) fn load(p: Source, c: &BitVaeConfig) -> Result<Self> {
        let top = c.base_ch * c.ch_mult[c.num_levels() - 1];
        let conv_in = Conv::load(p, "decoder.conv_in", Conv2dParams::new(1, 1))?;
        let mid = mid_blocks(p, "decoder", top)?;
        let mut levels = Vec::with_capacity(c.num_levels());
        for l in 0..c.num_levels() {
            let blocks = c
                .decoder_blocks(l)
                .into_iter()
                .enumerate()
                .map(|(b, (cin, cout))| ResBlock::load(p, &format!("decoder.up.{l}.block.{b}"), cin, cout))
                .collect::<Result<_>>()?;
            let resample = c
                .decoder_upsamples(l)
                .then(|| Conv::load(p, &format!("decoder.up.{l}.upsample.conv"), Conv2dParams::new(1, 1)))
                .transpose()?;
            levels.push(Level { blocks, resample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            levels,
            norm_out: GroupNorm::load(p, "decoder.norm_out")?,
            conv_out: Conv::load(p, "decoder.conv_out", Conv2dParams::new(1, 1))?,
        })
    }

    /// Latent (B, d, h, w) on any device → image (B, 3, h·patch, w·patch) on the host (where
    /// images are written), clamped to [-1, 1].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_device(&self.conv_in.weight.value().device())?;
        clamp(&self.forward_var(&Var::constant(z))?.into_value().to_cpu()?, -1.0, 1.0)
    }

    /// [`Decoder::forward`] on `Var`s, unclamped: the clamp is display post-processing, and
    /// in training it would cut the gradient of every out-of-range pixel.
    pub fn forward_var(&self, z: &Var) -> Result<Var> {
        let mut h = run_blocks(&self.mid, self.conv_in.forward(z)?)?;
        for level in self.levels.iter().rev() {
            h = run_blocks(&level.blocks, h)?;
            if let Some(up) = &level.resample {
                let (hh, ww) = (h.dim(2)?, h.dim(3)?);
                h = up.forward(&resize(&h, (2 * hh, 2 * ww), ResizeMode::Nearest)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

fn mid_blocks(p: Source, part: &str, c: usize) -> Result<Vec<ResBlock>> {
    ["block_1", "block_2"].iter().map(|m| ResBlock::load(p, &format!("{part}.mid.{m}"), c, c)).collect()
}
