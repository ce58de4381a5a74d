//! The BitVAE decoder's forward on a CUDA [`Executor`] (a GPU, or the CPU shim that runs the
//! same kernels in tests): convolutions as im2col + cuBLAS GEMMs on bf16 weights and
//! activations with f32 accumulation, activations, group norms and residuals in f32.
//!
//! The op order is [`super::Decoder::forward`]'s: conv_in, the mid blocks, the levels from the
//! top down (ResBlocks, then nearest ×2 + conv), norm_out + SiLU, conv_out, and the clamp to
//! [-1, 1], which runs on the host after the download (three channels, one pass).

use infinity_cuda::Executor;
use infinity_cuda::conv::{conv2d, upsample_nearest2x};
use infinity_cuda::elementwise::add;
use infinity_cuda::norm::group_norm;
use infinity_ops::elementwise::clamp;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::BitVae;
use super::net::{Conv, EPS, GROUPS, GroupNorm, Level, ResBlock};
use crate::device_util::put;

/// A convolution's weight (Cout, Cin, kh, kw) bf16, bias (Cout,) f32, stride and padding.
struct DeviceConv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl DeviceConv {
    /// Refuses an asymmetric padding, which the device convolution does not take (only the
    /// encoder's downsampling has one).
    fn upload(exec: &Executor, c: &Conv) -> Result<Self> {
        let [padding, bottom, left, right] = c.params.padding;
        if [bottom, left, right] != [padding; 3] {
            let msg = format!("padding {:?}: the device convolution pads every side alike", c.params.padding);
            return Err(Error::invalid("bitvae.upload", c.weight.value().shape(), msg));
        }
        Ok(DeviceConv {
            weight: put(exec, c.weight.value(), DType::BF16)?,
            bias: put(exec, c.bias.value(), DType::F32)?,
            stride: c.params.stride,
            padding,
        })
    }

    fn forward(&self, exec: &Executor, x: &Tensor) -> Result<Tensor> {
        conv2d(exec, x, &self.weight, Some(&self.bias), self.stride, self.padding)
    }
}

/// A group norm's affine weight and bias, (C,) f32.
struct DeviceNorm {
    weight: Tensor,
    bias: Tensor,
}

impl DeviceNorm {
    fn upload(exec: &Executor, n: &GroupNorm) -> Result<Self> {
        Ok(DeviceNorm {
            weight: put(exec, n.weight.value(), DType::F32)?,
            bias: put(exec, n.bias.value(), DType::F32)?,
        })
    }

    /// GroupNorm followed by SiLU, fused in one kernel.
    fn forward_silu(&self, exec: &Executor, x: &Tensor) -> Result<Tensor> {
        group_norm(exec, x, GROUPS, &self.weight, &self.bias, EPS, true)
    }
}

struct DeviceResBlock {
    norm1: DeviceNorm,
    conv1: DeviceConv,
    norm2: DeviceNorm,
    conv2: DeviceConv,
    shortcut: Option<DeviceConv>,
}

impl DeviceResBlock {
    fn upload(exec: &Executor, b: &ResBlock) -> Result<Self> {
        Ok(DeviceResBlock {
            norm1: DeviceNorm::upload(exec, &b.norm1)?,
            conv1: DeviceConv::upload(exec, &b.conv1)?,
            norm2: DeviceNorm::upload(exec, &b.norm2)?,
            conv2: DeviceConv::upload(exec, &b.conv2)?,
            shortcut: b.shortcut.as_ref().map(|s| DeviceConv::upload(exec, s)).transpose()?,
        })
    }

    fn forward(&self, exec: &Executor, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(exec, &self.norm1.forward_silu(exec, x)?)?;
        let h = self.conv2.forward(exec, &self.norm2.forward_silu(exec, &h)?)?;
        match &self.shortcut {
            Some(s) => add(exec, &s.forward(exec, x)?, &h),
            None => add(exec, x, &h),
        }
    }
}

fn upload_blocks(exec: &Executor, blocks: &[ResBlock]) -> Result<Vec<DeviceResBlock>> {
    blocks.iter().map(|b| DeviceResBlock::upload(exec, b)).collect()
}

fn run_blocks(exec: &Executor, blocks: &[DeviceResBlock], mut h: Tensor) -> Result<Tensor> {
    for b in blocks {
        h = b.forward(exec, &h)?;
    }
    Ok(h)
}

/// One resolution level: its ResBlocks and the convolution after its nearest ×2 upsampling.
struct DeviceLevel {
    blocks: Vec<DeviceResBlock>,
    upsample: Option<DeviceConv>,
}

impl DeviceLevel {
    fn upload(exec: &Executor, l: &Level) -> Result<Self> {
        Ok(DeviceLevel {
            blocks: upload_blocks(exec, &l.blocks)?,
            upsample: l.resample.as_ref().map(|c| DeviceConv::upload(exec, c)).transpose()?,
        })
    }
}

/// The BitVAE decoder's weights in an executor's memory.
pub struct DeviceDecoder<'e> {
    exec: &'e Executor,
    z_channels: usize,
    conv_in: DeviceConv,
    mid: Vec<DeviceResBlock>,
    /// Indexed by level (0 = finest); executed from the top level down.
    levels: Vec<DeviceLevel>,
    norm_out: DeviceNorm,
    conv_out: DeviceConv,
}

impl<'e> DeviceDecoder<'e> {
    /// Uploads `vae`'s decoder: convolution weights rounded to bf16, biases and group-norm
    /// affines in f32.
    pub fn upload(exec: &'e Executor, vae: &BitVae) -> Result<Self> {
        let d = &vae.decoder;
        Ok(DeviceDecoder {
            exec,
            z_channels: vae.config.z_channels,
            conv_in: DeviceConv::upload(exec, &d.conv_in)?,
            mid: upload_blocks(exec, &d.mid)?,
            levels: d.levels.iter().map(|l| DeviceLevel::upload(exec, l)).collect::<Result<_>>()?,
            norm_out: DeviceNorm::upload(exec, &d.norm_out)?,
            conv_out: DeviceConv::upload(exec, &d.conv_out)?,
        })
    }

    /// Latent (B, d, h, w) on the host → image (B, 3, h·patch, w·patch) f32 on the host,
    /// clamped to [-1, 1], as [`BitVae::decode`].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        if z.rank() != 4 || z.dim(1)? != self.z_channels {
            return Err(Error::invalid(
                "bitvae.decode",
                z.shape(),
                format!("expected a latent (B, {}, h, w)", self.z_channels),
            ));
        }
        let image = self.forward(z)?;
        clamp(&image, -1.0, 1.0)
    }

    /// The unclamped image, downloaded.
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let exec = self.exec;
        let mut h = run_blocks(exec, &self.mid, self.conv_in.forward(exec, &put(exec, z, DType::F32)?)?)?;
        for level in self.levels.iter().rev() {
            h = run_blocks(exec, &level.blocks, h)?;
            if let Some(up) = &level.upsample {
                h = up.forward(exec, &upsample_nearest2x(exec, &h)?)?;
            }
        }
        let image = self.conv_out.forward(exec, &self.norm_out.forward_silu(exec, &h)?)?;
        image.to_cpu()
    }
}
