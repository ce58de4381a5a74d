//! Normalisations on `Var`s (`layer_norm`, `rms_norm`, `l2_normalize`, `group_norm`),
//! mirroring `infinity_ops::norm`, with one backward kernel for all four.
//!
//! As in the forward, the data splits into contiguous blocks, each divided by its own
//! statistic; with x̂ the normalised block, gy = g·weight (per channel), n the block size and
//! s the statistic's inverse:
//! - layer / group norm (centred, s = 1/√(var + eps)): dx = s·(gy − mean(gy) − x̂·mean(gy·x̂))
//! - RMS norm (s = 1/√(mean(x²) + eps)):                dx = s·(gy − x̂·mean(gy·x̂))
//! - L2 (s = 1/max(‖x‖, eps)):                          dx = s·(gy − x̂·Σ(gy·x̂)), or s·gy
//!   where the norm is below eps and the divisor is the constant eps
//! - weight: dw_c = Σ g·x̂ and bias: db_c = Σ g over every element of channel c.
//!
//! Block sums are accumulated in f64 on the CPU; on a device the rules run as the same
//! formulas in ops.

use std::borrow::Cow;

use infinity_ops::elementwise::{self as ew, UnaryOp};
use infinity_ops::{f32_data, norm as nm, reduce as rd};
use infinity_runtime::{Result, Tensor};
use rayon::prelude::*;

use crate::Var;

/// Elements per parallel task of the backward kernel.
const TASK_ELEMENTS: usize = 1 << 15;

/// What each block is divided by (see the module header).
#[derive(Clone, Copy)]
enum Stat {
    Std,
    Rms,
    L2,
}

/// One normalisation: how the data splits into blocks (block b belongs to group b % groups
/// and holds `channels_per_group` channels of `spatial` consecutive elements each), what each
/// block is divided by, and eps.
#[derive(Clone, Copy)]
struct Norm {
    groups: usize,
    channels_per_group: usize,
    spatial: usize,
    stat: Stat,
    eps: f64,
    /// The dimension the weight and bias run along: the last one, or 1 for a group norm.
    channel_dim: usize,
}

impl Norm {
    /// One block per row of the last dimension, one channel per element.
    fn last_dim(x: &Var, stat: Stat, eps: f32) -> Self {
        let d = x.shape().last().copied().unwrap_or(1);
        Norm {
            groups: 1,
            channels_per_group: d,
            spatial: 1,
            stat,
            eps: f64::from(eps),
            channel_dim: x.rank().saturating_sub(1),
        }
    }

    fn len(&self) -> usize {
        self.channels_per_group * self.spatial
    }

    fn channels(&self) -> usize {
        self.groups * self.channels_per_group
    }
}

/// (x - mean) / √(var + eps) · weight + bias over the last dimension.
pub fn layer_norm(x: &Var, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
    let value = nm::layer_norm(x.value(), weight.map(Var::value), bias.map(Var::value), eps)?;
    record("layer_norm", value, x, weight, bias, Norm::last_dim(x, Stat::Std, eps))
}

/// x / √(mean(x²) + eps) · weight over the last dimension.
pub fn rms_norm(x: &Var, weight: Option<&Var>, eps: f32) -> Result<Var> {
    let value = nm::rms_norm(x.value(), weight.map(Var::value), eps)?;
    record("rms_norm", value, x, weight, None, Norm::last_dim(x, Stat::Rms, eps))
}

/// x / max(‖x‖₂, eps) over the last dimension.
pub fn l2_normalize(x: &Var, eps: f32) -> Result<Var> {
    let value = nm::l2_normalize(x.value(), eps)?;
    record("l2_normalize", value, x, None, None, Norm::last_dim(x, Stat::L2, eps))
}

/// Group norm of x (N, C, *spatial) with `groups` groups of channels.
pub fn group_norm(x: &Var, groups: usize, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
    let value = nm::group_norm(x.value(), groups, weight.map(Var::value), bias.map(Var::value), eps)?;
    // The forward validated (N, C, *spatial) and that `groups` divides C.
    let norm = Norm {
        groups,
        channels_per_group: x.shape()[1] / groups,
        spatial: x.shape()[2..].iter().product(),
        stat: Stat::Std,
        eps: f64::from(eps),
        channel_dim: 1,
    };
    record("group_norm", value, x, weight, bias, norm)
}

/// [`infinity_ops::norm::group_norm_silu`]: the fused op when nothing is tracked (inference),
/// else the two recorded ops, whose backward rules compose.
pub fn group_norm_silu(x: &Var, groups: usize, weight: &Var, bias: &Var, eps: f32) -> Result<Var> {
    if [x, weight, bias].iter().any(|v| v.is_tracked()) {
        return crate::elementwise::silu(&group_norm(x, groups, Some(weight), Some(bias), eps)?);
    }
    nm::group_norm_silu(x.value(), groups, weight.value(), bias.value(), eps).map(Var::constant)
}

fn record(
    op: &'static str,
    value: Tensor,
    x: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    norm: Norm,
) -> Result<Var> {
    let inputs: Vec<&Var> = [Some(x), weight, bias].into_iter().flatten().collect();
    let (xv, wv) = (x.value().clone(), weight.map(|w| w.value().clone()));
    let has_bias = bias.is_some();
    Var::record(op, &inputs, value, move |g, needs| {
        let grads = if xv.is_cpu() {
            backward(op, &xv, g, wv.as_ref(), norm)?
        } else {
            backward_by_ops(&xv, g, wv.as_ref(), norm)?
        };
        let mut out = vec![needs[0].then_some(grads.dx)];
        if wv.is_some() {
            out.push(Some(grads.dweight));
        }
        if has_bias {
            out.push(Some(grads.dbias));
        }
        Ok(out)
    })
}

struct NormGrads {
    dx: Tensor,
    dweight: Tensor,
    dbias: Tensor,
}

/// The gradients of a normalisation of `x` for output gradient `g` (see the module header).
fn backward(op: &'static str, x: &Tensor, g: &Tensor, weight: Option<&Tensor>, norm: Norm) -> Result<NormGrads> {
    let (xd, gd) = (f32_data(op, x)?, f32_data(op, g)?);
    let channels = norm.channels();
    let w = match weight {
        Some(w) => f32_data(op, w)?,
        None => Cow::Owned(vec![1.0; channels]),
    };
    let block = norm.len().max(1);
    let blocks_per_task = (TASK_ELEMENTS / block).max(1);
    let mut dx = vec![0f32; xd.len()];
    // Each task returns its partial (Σ g·x̂, Σ g) per channel; the partials are then added.
    let zero = || (vec![0f64; channels], vec![0f64; channels]);
    let (dw, db) = dx
        .par_chunks_mut(block * blocks_per_task)
        .enumerate()
        .map(|(task, chunk)| {
            let (mut dw, mut db) = zero();
            for (i, dx_block) in chunk.chunks_mut(block).enumerate() {
                let b = task * blocks_per_task + i;
                let c0 = (b % norm.groups) * norm.channels_per_group;
                let range = c0..c0 + norm.channels_per_group;
                let xb = &xd[b * block..][..block];
                let gb = &gd[b * block..][..block];
                let sums = BlockSums { dw: &mut dw[range.clone()], db: &mut db[range.clone()] };
                block_backward(&norm, xb, gb, &w[range], dx_block, sums);
            }
            (dw, db)
        })
        .reduce(zero, |(mut aw, mut ab), (bw, bb)| {
            aw.iter_mut().zip(bw).for_each(|(a, b)| *a += b);
            ab.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
            (aw, ab)
        });
    let to_tensor = |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(|s| s as f32).collect::<Vec<f32>>(), &[channels]);
    Ok(NormGrads { dx: Tensor::from_vec(dx, x.shape())?, dweight: to_tensor(dw)?, dbias: to_tensor(db)? })
}

/// [`backward`] as ops, for any device (an executor's f32 arithmetic; the CPU's kernel above
/// accumulates in f64): the data as rows of one block each, the same formulas per row, the
/// parameters' sums over everything but the channel dimension (the last one, or dim 1 of a
/// group norm's (N, C, *spatial)).
fn backward_by_ops(x: &Tensor, g: &Tensor, weight: Option<&Tensor>, norm: Norm) -> Result<NormGrads> {
    let (len, shape, channel_dim) = (norm.len(), x.shape(), norm.channel_dim);
    // A per-channel tensor (C) seen against x's shape.
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        let mut s = vec![1; x.rank() - channel_dim];
        s[0] = t.numel();
        t.reshape(&s)
    };
    let rows = |t: &Tensor| t.reshape(&[t.numel() / len.max(1), len]);
    let (eps, per_row) = (norm.eps as f32, 1.0 / len as f32);
    let xr = rows(x)?;
    let centred = match norm.stat {
        Stat::Std => ew::sub(&xr, &rd::mean(&xr, &[1], true)?)?,
        Stat::Rms | Stat::L2 => xr,
    };
    let squares = rd::sum(&ew::square(&centred)?, &[1], true)?;
    let divisor = match norm.stat {
        Stat::Std | Stat::Rms => ew::sqrt(&ew::add_scalar(&ew::mul_scalar(&squares, per_row)?, eps)?)?,
        Stat::L2 => ew::clamp(&ew::sqrt(&squares)?, eps, f32::INFINITY)?,
    };
    let normalized = ew::div(&centred, &divisor)?;
    let gy = rows(&match weight {
        Some(w) => ew::mul(g, &per_channel(w)?)?,
        None => g.clone(),
    })?;
    let dot = rd::sum(&ew::mul(&gy, &normalized)?, &[1], true)?;
    let inner = match norm.stat {
        Stat::Std => {
            let centred_gy = ew::sub(&gy, &rd::mean(&gy, &[1], true)?)?;
            ew::sub(&centred_gy, &ew::mul(&normalized, &ew::mul_scalar(&dot, per_row)?)?)?
        }
        Stat::Rms => ew::sub(&gy, &ew::mul(&normalized, &ew::mul_scalar(&dot, per_row)?)?)?,
        Stat::L2 => {
            // Where the norm is below eps the divisor is the constant eps: no projection there.
            let norms = ew::sqrt(&squares)?;
            let dot = ew::unary_grad(UnaryOp::Clamp { lo: eps, hi: f32::INFINITY }, &dot, &norms, &norms)?;
            ew::sub(&gy, &ew::mul(&normalized, &dot)?)?
        }
    };
    let dx = ew::div(&inner, &divisor)?.reshape(shape)?;
    let weighted = ew::mul(g, &normalized.reshape(shape)?)?;
    let others: Vec<usize> = (0..x.rank()).filter(|&d| d != channel_dim).collect();
    let (dweight, dbias) = match others.as_slice() {
        // One row: nothing to sum over.
        [] => (weighted, g.clone()),
        dims => (rd::sum(&weighted, dims, false)?, rd::sum(g, dims, false)?),
    };
    Ok(NormGrads { dx, dweight, dbias })
}

/// Per-channel accumulators of one block's channels.
struct BlockSums<'a> {
    dw: &'a mut [f64],
    db: &'a mut [f64],
}

/// The input gradient of one block into `dx`, and its contributions to the parameter sums.
fn block_backward(norm: &Norm, x: &[f32], g: &[f32], w: &[f32], dx: &mut [f32], sums: BlockSums) {
    let (stat, eps, spatial) = (norm.stat, norm.eps, norm.spatial);
    let n = x.len() as f64;
    let channel = |i: usize| i / spatial;
    let mean = match stat {
        Stat::Std => x.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
        Stat::Rms | Stat::L2 => 0.0,
    };
    let squares: f64 = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
    let (inv, clamped) = match stat {
        Stat::Std | Stat::Rms => (1.0 / (squares / n + eps).sqrt(), false),
        Stat::L2 => {
            let norm = squares.sqrt();
            // F.normalize divides by clamp_min(norm, eps), whose gradient passes for norm >= eps.
            if norm >= eps { (1.0 / norm, false) } else { (1.0 / eps, true) }
        }
    };
    let normalized = |i: usize| (f64::from(x[i]) - mean) * inv;
    let gy = |i: usize| f64::from(g[i]) * f64::from(w[channel(i)]);
    let (mut sum_gy, mut sum_gyx) = (0.0, 0.0);
    for (i, &gi) in g.iter().enumerate() {
        sum_gy += gy(i);
        sum_gyx += gy(i) * normalized(i);
        sums.dw[channel(i)] += f64::from(gi) * normalized(i);
        sums.db[channel(i)] += f64::from(gi);
    }
    for (i, d) in dx.iter_mut().enumerate() {
        let v = match stat {
            Stat::Std => inv * (gy(i) - sum_gy / n - normalized(i) * sum_gyx / n),
            Stat::Rms => inv * (gy(i) - normalized(i) * sum_gyx / n),
            Stat::L2 if clamped => inv * gy(i),
            Stat::L2 => inv * (gy(i) - normalized(i) * sum_gyx),
        };
        *d = v as f32;
    }
}
