//! The encoder and decoder of [`NetShape`]: GroupNorm + SiLU ResBlocks, stride-2 convolutions
//! down, nearest ×2 + convolution up, optional single-head attention blocks.
//!
//! The layers hold their parameters as `Var`s and have one forward written against `Var`
//! (as the transformer does): with constant weights it is the inference path and records
//! nothing; built from a training tape's leaves (`BitVae::on_tape`) it records every op for
//! backpropagation.

use infinity_autograd::Var;
use infinity_autograd::attention::attention;
use infinity_autograd::conv::conv2d;
use infinity_autograd::elementwise::add;
use infinity_autograd::norm::{group_norm, group_norm_silu};
use infinity_autograd::resize::resize;
use infinity_ops::conv::{Conv2dParams, upsample2x_conv3x3};
use infinity_ops::elementwise::clamp;
use infinity_ops::resize::ResizeMode;
use infinity_runtime::{Result, Tensor};

use super::{KeyStyle, NetShape};
use crate::params::Source;

const GROUPS: usize = 32;
const EPS: f32 = 1e-6;

/// A convolution with bias.
pub(crate) struct Conv {
    weight: Var,
    bias: Var,
    params: Conv2dParams,
}

impl Conv {
    pub(crate) fn load(p: Source, keys: KeyStyle, name: &str, params: Conv2dParams) -> Result<Self> {
        Ok(Conv { weight: p(&keys.conv(name, "weight"))?, bias: p(&keys.conv(name, "bias"))?, params })
    }

    pub(crate) fn forward(&self, x: &Var) -> Result<Var> {
        conv2d(x, &self.weight, Some(&self.bias), self.params)
    }

    /// The conv of x upsampled ×2 (nearest): without a gradient to record, one op that never
    /// builds the upsampled map (`upsample2x_conv3x3`: each output phase is a 2×2 conv of x,
    /// 4 taps a pixel instead of 9); in training, the composition, whose backward rules exist.
    pub(crate) fn forward_upsampled(&self, x: &Var) -> Result<Var> {
        let square3 = self.params == Conv2dParams::same(3) && self.weight.shape()[2..] == [3, 3];
        if [x, &self.weight, &self.bias].iter().any(|v| v.is_tracked()) || !square3 {
            let (h, w) = (x.dim(2)?, x.dim(3)?);
            return self.forward(&resize(x, (2 * h, 2 * w), ResizeMode::Nearest)?);
        }
        let y = upsample2x_conv3x3(x.value(), self.weight.value(), Some(self.bias.value()))?;
        Ok(Var::constant(y))
    }

    /// Where the weights are.
    pub(crate) fn device(&self) -> infinity_runtime::Device {
        self.weight.value().device()
    }
}

struct GroupNorm {
    weight: Var,
    bias: Var,
}

impl GroupNorm {
    fn load(p: Source, keys: KeyStyle, name: &str) -> Result<Self> {
        Ok(GroupNorm { weight: p(&keys.norm(name, "weight"))?, bias: p(&keys.norm(name, "bias"))? })
    }

    /// GroupNorm followed by SiLU: how the ResBlocks and the output use their norms.
    fn forward_silu(&self, x: &Var) -> Result<Var> {
        group_norm_silu(x, GROUPS, &self.weight, &self.bias, EPS)
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        group_norm(x, GROUPS, Some(&self.weight), Some(&self.bias), EPS)
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
    fn load(p: Source, keys: KeyStyle, name: &str, cin: usize, cout: usize) -> Result<Self> {
        let same = Conv2dParams::new(1, 1);
        Ok(ResBlock {
            norm1: GroupNorm::load(p, keys, &format!("{name}.norm1"))?,
            conv1: Conv::load(p, keys, &format!("{name}.conv1"), same)?,
            norm2: GroupNorm::load(p, keys, &format!("{name}.norm2"))?,
            conv2: Conv::load(p, keys, &format!("{name}.conv2"), same)?,
            shortcut: (cin != cout)
                .then(|| Conv::load(p, keys, &format!("{name}.nin_shortcut"), Conv2dParams::new(1, 0)))
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

/// Single-head self-attention over the H·W positions (taming's AttnBlock): one 1×1
/// convolution to [q; k; v] on the normalised input, softmax scale C^−½, a 1×1 output
/// projection, and the residual.
struct AttnBlock {
    norm: GroupNorm,
    qkv: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    fn load(p: Source, keys: KeyStyle, name: &str) -> Result<Self> {
        let pointwise = Conv2dParams::new(1, 0);
        Ok(AttnBlock {
            norm: GroupNorm::load(p, keys, &format!("{name}.norm"))?,
            qkv: Conv::load(p, keys, &format!("{name}.qkv"), pointwise)?,
            proj_out: Conv::load(p, keys, &format!("{name}.proj_out"), pointwise)?,
        })
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        let (b, c, h, w) = (x.dim(0)?, x.dim(1)?, x.dim(2)?, x.dim(3)?);
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?;
        // (B, 3C, H, W) → q, k, v as (B, 1 head, H·W, C).
        let part = |i: usize| qkv.narrow(1, i * c, c)?.reshape(&[b, c, h * w])?.permute(&[0, 2, 1])?.unsqueeze(1);
        let o = attention(&part(0)?, &part(1)?, &part(2)?, None, 1.0 / (c as f32).sqrt())?;
        let o = o.squeeze(1)?.permute(&[0, 2, 1])?.reshape(&[b, c, h, w])?;
        add(x, &self.proj_out.forward(&o)?)
    }
}

/// A ResBlock, or an attention block after one.
enum Layer {
    Res(Box<ResBlock>),
    Attn(Box<AttnBlock>),
}

impl Layer {
    fn forward(&self, x: &Var) -> Result<Var> {
        match self {
            Layer::Res(r) => r.forward(x),
            Layer::Attn(a) => a.forward(x),
        }
    }
}

fn run_layers(layers: &[Layer], mut h: Var) -> Result<Var> {
    for layer in layers {
        h = layer.forward(&h)?;
    }
    Ok(h)
}

/// The ResBlocks `blocks` of level `l` of `part` (`encoder.down` or `decoder.up`), each
/// followed by its attention block where the level attends.
fn level_layers(p: Source, net: &NetShape, part: &str, l: usize, blocks: Vec<(usize, usize)>) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    for (b, (cin, cout)) in blocks.into_iter().enumerate() {
        layers.push(Layer::Res(Box::new(ResBlock::load(p, net.keys, &format!("{part}.{l}.block.{b}"), cin, cout)?)));
        if net.level_attends(l) {
            layers.push(Layer::Attn(Box::new(AttnBlock::load(p, net.keys, &format!("{part}.{l}.attn.{b}"))?)));
        }
    }
    Ok(layers)
}

/// One resolution level: its layers and the optional resampling convolution after them.
struct Level {
    layers: Vec<Layer>,
    resample: Option<Conv>,
}

pub struct Encoder {
    conv_in: Conv,
    levels: Vec<Level>,
    mid: Vec<Layer>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    pub(crate) fn load(p: Source, net: &NetShape) -> Result<Self> {
        let keys = net.keys;
        let mut levels = Vec::with_capacity(net.num_levels());
        for l in 0..net.num_levels() {
            let layers = level_layers(p, net, "encoder.down", l, net.encoder_blocks(l))?;
            // The official Downsample pads right and bottom by one, then convolves unpadded.
            let down = Conv2dParams { stride: 2, padding: [0, 1, 0, 1] };
            let resample = net
                .encoder_downsamples(l)
                .then(|| Conv::load(p, keys, &format!("encoder.down.{l}.downsample.conv"), down))
                .transpose()?;
            levels.push(Level { layers, resample });
        }
        Ok(Encoder {
            conv_in: Conv::load(p, keys, "encoder.conv_in", Conv2dParams::new(1, 1))?,
            levels,
            mid: mid_layers(p, net, "encoder")?,
            norm_out: GroupNorm::load(p, keys, "encoder.norm_out")?,
            conv_out: Conv::load(p, keys, "encoder.conv_out", Conv2dParams::new(1, 1))?,
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
            h = run_layers(&level.layers, h)?;
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
            }
        }
        h = run_layers(&self.mid, h)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

pub struct Decoder {
    conv_in: Conv,
    mid: Vec<Layer>,
    /// Indexed by level (0 = finest); executed from the top level down.
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    pub(crate) fn load(p: Source, net: &NetShape) -> Result<Self> {
        let keys = net.keys;
        let conv_in = Conv::load(p, keys, "decoder.conv_in", Conv2dParams::new(1, 1))?;
        let mid = mid_layers(p, net, "decoder")?;
        let mut levels = Vec::with_capacity(net.num_levels());
        for l in 0..net.num_levels() {
            let layers = level_layers(p, net, "decoder.up", l, net.decoder_blocks(l))?;
            let resample = net
                .decoder_upsamples(l)
                .then(|| Conv::load(p, keys, &format!("decoder.up.{l}.upsample.conv"), Conv2dParams::new(1, 1)))
                .transpose()?;
            levels.push(Level { layers, resample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            levels,
            norm_out: GroupNorm::load(p, keys, "decoder.norm_out")?,
            conv_out: Conv::load(p, keys, "decoder.conv_out", Conv2dParams::new(1, 1))?,
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
        let mut h = run_layers(&self.mid, self.conv_in.forward(z)?)?;
        for level in self.levels.iter().rev() {
            h = run_layers(&level.layers, h)?;
            if let Some(up) = &level.resample {
                h = up.forward_upsampled(&h)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

/// The middle: ResBlock, [attention,] ResBlock at the top channel count.
fn mid_layers(p: Source, net: &NetShape, part: &str) -> Result<Vec<Layer>> {
    let c = net.top_channels();
    let block = |p: Source, m: &str| {
        ResBlock::load(p, net.keys, &format!("{part}.mid.{m}"), c, c).map(|r| Layer::Res(Box::new(r)))
    };
    let mut layers = vec![block(p, "block_1")?];
    if net.attention {
        layers.push(Layer::Attn(Box::new(AttnBlock::load(p, net.keys, &format!("{part}.mid.attn_1"))?)));
    }
    layers.push(block(p, "block_2")?);
    Ok(layers)
}
