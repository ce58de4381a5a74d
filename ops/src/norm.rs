//! Normalisations: `layer_norm`, `rms_norm` and `l2_normalize` over the last dimension,
//! `group_norm` over (channel group × spatial) of an (N, C, *spatial) tensor. Infinity uses
//! eps = 1e-6 in its layer, RMS and group norms (1e-12 in `l2_normalize`, as F.normalize).
//!
//! All are one kernel: split the data into contiguous blocks, divide each block by its own
//! statistic (f64 accumulation), then apply a per-channel scale and shift.

use std::borrow::Cow;

use infinity_cuda::Executor;
use infinity_cuda::norm::RowStat;
use infinity_runtime::{DType, Error, Result, Tensor, recycle};

use crate::device::executor;
use crate::f32_data;
use crate::reduce::sum_map;
use crate::util::{for_row_blocks, widest_vectors};
use crate::vector_math;

/// (x - mean) / √(var + eps) · weight + bias over the last dimension, with the biased
/// variance (PyTorch `layer_norm` with `normalized_shape = [D]`). `weight` and `bias` must
/// have shape `[D]`; missing ones act as 1 and 0. Infinity uses eps = 1e-6.
/// Errors: `UnsupportedDType`, `ShapeMismatch` (weight/bias), `InvalidArgument` (rank 0, eps < 0).
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    if let Some(exec) = executor("layer_norm", &[Some(x), weight, bias].into_iter().flatten().collect::<Vec<_>>())? {
        return row_norm_on(&exec, "layer_norm", RowStat::Std, x, weight, bias, eps);
    }
    let setup = Setup::last_dim("layer_norm", x, weight, bias, eps)?;
    normalize("layer_norm", x, &setup, eps, Scale::Std)
}

/// x / √(mean(x²) + eps) · weight over the last dimension: T5-style RMS norm, no mean
/// subtraction and no bias. `weight` must have shape `[D]`. Infinity uses eps = 1e-6.
/// Errors: `UnsupportedDType`, `ShapeMismatch` (weight), `InvalidArgument` (rank 0, eps < 0).
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    // The kernels validate as the CPU path does; its setup reads the weights on the host.
    let inputs: Vec<&Tensor> = [Some(x), weight].into_iter().flatten().collect();
    if let Some(exec) = executor("rms_norm", &inputs)? {
        return row_norm_on(&exec, "rms_norm", RowStat::Rms, x, weight, None, eps);
    }
    let setup = Setup::last_dim("rms_norm", x, weight, None, eps)?;
    normalize("rms_norm", x, &setup, eps, Scale::Rms)
}

/// x / max(‖x‖₂, eps) over the last dimension (PyTorch `F.normalize(x, dim=-1, eps=eps)`);
/// Infinity puts q and k on the unit sphere this way, with eps = 1e-12.
/// Errors: `UnsupportedDType`, `InvalidArgument` (rank 0, eps < 0).
pub fn l2_normalize(x: &Tensor, eps: f32) -> Result<Tensor> {
    if let Some(exec) = executor("l2_normalize", &[x])? {
        return row_norm_on(&exec, "l2_normalize", RowStat::L2, x, None, None, eps);
    }
    let setup = Setup::last_dim("l2_normalize", x, None, None, eps)?;
    normalize("l2_normalize", x, &setup, eps, Scale::L2)
}

/// A row norm on an executor: one kernel, f32 statistics, x f32 (the kernel validates as the
/// CPU path does).
fn row_norm_on(
    exec: &Executor,
    op: &'static str,
    stat: RowStat,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    crate::require_f32(op, x)?;
    infinity_cuda::norm::row_norm(exec, stat, x, weight, bias, eps)
}

/// PyTorch `group_norm` of `x` with shape (N, C, *spatial): the C channels form `groups`
/// groups of C / groups consecutive channels, each (sample, group) is normalised by its own
/// mean and biased variance over its channels × spatial positions, then channel c is scaled
/// by `weight[c]` and shifted by `bias[c]` (shape `[C]`; missing ones act as 1 and 0). Infinity's
/// BitVAE uses 32 groups and eps = 1e-6.
/// Errors: `UnsupportedDType`, `ShapeMismatch` (weight/bias), `InvalidArgument` (rank < 2,
/// groups 0 or not dividing C, eps < 0).
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let inputs: Vec<&Tensor> = [Some(x), weight, bias].into_iter().flatten().collect();
    if let Some(exec) = executor("group_norm", &inputs)? {
        // The kernel always applies an affine: a missing one is the identity (1·x + 0, exact).
        let channels = x.shape().get(1).copied().unwrap_or(0);
        let identity = |value: f32| Tensor::full(&[channels], value, DType::F32).to_device(&x.device());
        let weight = match weight {
            Some(w) => w.clone(),
            None => identity(1.0)?,
        };
        let bias = match bias {
            Some(b) => b.clone(),
            None => identity(0.0)?,
        };
        return infinity_cuda::norm::group_norm(&exec, x, groups, &weight, &bias, eps, false);
    }
    let setup = Setup::groups("group_norm", x, groups, weight, bias, eps)?;
    normalize("group_norm", x, &setup, eps, Scale::Std)
}

/// SiLU of [`group_norm`] with an affine, fused: how the BitVAE uses its norms. One pass that
/// writes the activation (the same bits as the two ops composed), on an executor one kernel.
pub fn group_norm_silu(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if let Some(exec) = executor("group_norm_silu", &[x, weight, bias])? {
        crate::require_f32("group_norm_silu", x)?;
        return infinity_cuda::norm::group_norm(&exec, x, groups, weight, bias, eps, true);
    }
    let setup = Setup::groups("group_norm_silu", x, groups, Some(weight), Some(bias), eps)?;
    normalize_then("group_norm_silu", x, &setup, eps, Scale::Std, true)
}

/// What each block is divided by.
#[derive(Clone, Copy)]
enum Scale {
    /// Its standard deviation after subtracting its mean, √(var + eps) (layer and group norm).
    Std,
    /// Its root mean square, no centring: √(mean(x²) + eps).
    Rms,
    /// Its Euclidean norm, no centring: max(‖x‖₂, eps).
    L2,
}

impl Scale {
    fn centered(self) -> bool {
        matches!(self, Scale::Std)
    }

    /// 1 / the statistic, from the sum of squared deviations of a block of `count` elements.
    fn inverse(self, squares: f64, count: f64, eps: f64) -> f64 {
        match self {
            Scale::Std | Scale::Rms => 1.0 / (squares / count + eps).sqrt(),
            Scale::L2 => 1.0 / squares.sqrt().max(eps),
        }
    }
}

/// Validated arguments: how `x` splits into normalised blocks, and the affine per channel.
struct Setup<'a> {
    /// Blocks cycle through the groups: block b belongs to group b % groups.
    groups: usize,
    channels_per_group: usize,
    /// Consecutive elements per channel inside a block (1 for the last-dimension norms).
    spatial: usize,
    weight: Cow<'a, [f32]>,
    bias: Cow<'a, [f32]>,
}

impl<'a> Setup<'a> {
    /// Each row of the last dimension is a block; each of its elements a channel.
    fn last_dim(
        op: &'static str,
        x: &Tensor,
        weight: Option<&'a Tensor>,
        bias: Option<&'a Tensor>,
        eps: f32,
    ) -> Result<Self> {
        check(op, x, eps)?;
        let &d = x.shape().last().ok_or_else(|| Error::invalid(op, x.shape(), "needs at least one dimension"))?;
        let (weight, bias) = (param(op, x, weight, d, 1.0)?, param(op, x, bias, d, 0.0)?);
        Ok(Setup { groups: 1, channels_per_group: d, spatial: 1, weight, bias })
    }

    fn groups(
        op: &'static str,
        x: &Tensor,
        groups: usize,
        weight: Option<&'a Tensor>,
        bias: Option<&'a Tensor>,
        eps: f32,
    ) -> Result<Self> {
        check(op, x, eps)?;
        let &[_, channels, ref spatial @ ..] = x.shape() else {
            return Err(Error::invalid(op, x.shape(), "expects (N, C, *spatial)"));
        };
        if groups == 0 || channels % groups != 0 {
            return Err(Error::invalid(op, x.shape(), format!("{groups} groups do not divide {channels} channels")));
        }
        let (weight, bias) = (param(op, x, weight, channels, 1.0)?, param(op, x, bias, channels, 0.0)?);
        Ok(Setup { groups, channels_per_group: channels / groups, spatial: spatial.iter().product(), weight, bias })
    }
}

fn check(op: &'static str, x: &Tensor, eps: f32) -> Result<()> {
    crate::require_f32(op, x)?;
    if eps >= 0.0 { Ok(()) } else { Err(Error::invalid(op, x.shape(), format!("eps must be non-negative, got {eps}"))) }
}

/// The values of an optional per-channel parameter of shape `[channels]`, `default` if absent.
fn param<'a>(
    op: &'static str,
    x: &Tensor,
    p: Option<&'a Tensor>,
    channels: usize,
    default: f32,
) -> Result<Cow<'a, [f32]>> {
    match p {
        None => Ok(Cow::Owned(vec![default; channels])),
        Some(p) if p.shape() != [channels] => {
            Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: p.shape().to_vec() })
        }
        Some(p) => f32_data(op, p),
    }
}

fn normalize(op: &'static str, x: &Tensor, setup: &Setup, eps: f32, scale: Scale) -> Result<Tensor> {
    normalize_then(op, x, setup, eps, scale, false)
}

/// [`normalize`], then SiLU where `silu`.
fn normalize_then(op: &'static str, x: &Tensor, setup: &Setup, eps: f32, scale: Scale, silu: bool) -> Result<Tensor> {
    let data = f32_data(op, x)?;
    let (cpg, spatial) = (setup.channels_per_group, setup.spatial);
    let block = cpg * spatial;
    let mut out = recycle::for_overwrite(data.len());
    for_row_blocks(&mut out, block, 2 * block, |start, outs| {
        for (i, out_block) in outs.chunks_mut(block).enumerate() {
            let b = start + i;
            let c0 = (b % setup.groups) * cpg;
            let (w, bias) = (&setup.weight[c0..][..cpg], &setup.bias[c0..][..cpg]);
            normalize_block(&data[b * block..][..block], out_block, (w, bias), spatial, f64::from(eps), scale, silu);
        }
    });
    Tensor::from_vec(out, x.shape())
}

widest_vectors! {
    /// One block: its statistic, then each element normalised, scaled and shifted (and SiLU'd).
    fn normalize_block(
        xs: &[f32], out: &mut [f32], affine: (&[f32], &[f32]), spatial: usize, eps: f64, scale: Scale, silu: bool
    ) => normalize_block_plain
}

#[inline(always)]
fn normalize_block_plain(
    xs: &[f32],
    out: &mut [f32],
    (w, b): (&[f32], &[f32]),
    spatial: usize,
    eps: f64,
    scale: Scale,
    silu: bool,
) {
    let n = xs.len() as f64;
    let mean = if scale.centered() { sum_map(xs, f64::from) / n } else { 0.0 };
    let rstd = scale.inverse(sum_map(xs, |v| (f64::from(v) - mean).powi(2)), n, eps);
    // mean = hi + lo to about 2⁻⁴⁸ relative: (v - hi) - lo keeps the deviation accurate to
    // f32 even when |mean| ≫ std, where v - (mean as f32) would lose its low bits.
    let hi = mean as f32;
    let lo = (mean - f64::from(hi)) as f32;
    if spatial == 1 {
        // One channel per element (layer/RMS norm): a flat loop that vectorises.
        let rstd = rstd as f32;
        for (((o, &v), &w), &b) in out.iter_mut().zip(xs).zip(w).zip(b) {
            *o = ((v - hi) - lo) * rstd * w + b;
        }
        if silu {
            out.iter_mut().for_each(|o| *o *= vector_math::sigmoid(*o));
        }
    } else {
        for (((out_c, xs_c), &w), &b) in out.chunks_mut(spatial).zip(xs.chunks(spatial)).zip(w).zip(b) {
            let channel_scale = (rstd * f64::from(w)) as f32;
            for (o, &v) in out_c.iter_mut().zip(xs_c) {
                *o = ((v - hi) - lo) * channel_scale + b;
            }
            // SiLU while the channel is in cache, with the elementwise op's formula.
            if silu {
                out_c.iter_mut().for_each(|o| *o *= vector_math::sigmoid(*o));
            }
        }
    }
}

/// Plain implementations: PyTorch's group-norm definition as loops over (sample, group,
/// channel, position) in f64; the last-dimension norms are its (rows, D, 1) case with one group.
pub mod reference {
    use infinity_runtime::{Result, Tensor};

    use super::{Scale, Setup};

    /// Reference of [`super::layer_norm`].
    pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        normalize(x, &Setup::last_dim("layer_norm", x, weight, bias, eps)?, eps, Scale::Std)
    }

    /// Reference of [`super::rms_norm`].
    pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        normalize(x, &Setup::last_dim("rms_norm", x, weight, None, eps)?, eps, Scale::Rms)
    }

    /// Reference of [`super::l2_normalize`].
    pub fn l2_normalize(x: &Tensor, eps: f32) -> Result<Tensor> {
        normalize(x, &Setup::last_dim("l2_normalize", x, None, None, eps)?, eps, Scale::L2)
    }

    /// Reference of [`super::group_norm`].
    pub fn group_norm(
        x: &Tensor,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        normalize(x, &Setup::groups("group_norm", x, groups, weight, bias, eps)?, eps, Scale::Std)
    }

    fn normalize(x: &Tensor, setup: &Setup, eps: f32, scale: Scale) -> Result<Tensor> {
        let (groups, cpg, spatial) = (setup.groups, setup.channels_per_group, setup.spatial);
        let channels = groups * cpg;
        let v = x.to_vec::<f32>()?;
        let mut out = vec![0f32; v.len()];
        for n in 0..v.len() / (channels * spatial).max(1) {
            for g in 0..groups {
                // (channel, flat index) of every element of sample n, group g.
                let members = || {
                    (g * cpg..(g + 1) * cpg)
                        .flat_map(move |c| (0..spatial).map(move |s| (c, (n * channels + c) * spatial + s)))
                };
                let count = (cpg * spatial) as f64;
                let mean =
                    if scale.centered() { members().map(|(_, i)| f64::from(v[i])).sum::<f64>() / count } else { 0.0 };
                let squares = members().map(|(_, i)| (f64::from(v[i]) - mean).powi(2)).sum::<f64>();
                let inverse = scale.inverse(squares, count, f64::from(eps));
                for (c, i) in members() {
                    let normalized = (f64::from(v[i]) - mean) * inverse;
                    out[i] = (normalized * f64::from(setup.weight[c]) + f64::from(setup.bias[c])) as f32;
                }
            }
        }
        Tensor::from_vec(out, x.shape())
    }
}
