//! Scaled dot-product attention, `softmax(q·kᵀ·scale + mask)·v`, and the block-causal mask of
//! Infinity's next-scale prediction.
//!
//! Shapes: q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) → (B, H, Lq, Dv). The optional
//! mask is additive, f32, broadcastable to (B, H, Lq, Lk); its entries are finite or -inf.
//!
//! Fully masked rows: a query row whose keys are all masked with -inf (or that has no keys at
//! all) attends to nothing and its output is zero. Softmax is 0/0 there; zero is what an
//! online-softmax kernel yields naturally (its running sum stays 0) and keeps padding finite.
//!
//! The fast path is the flash-attention formulation (running max and sum per query row over
//! blocks of keys, each block's products done by GEMMs) that the CUDA kernel mirrors;
//! `reference` is the naive two-pass softmax in f64.
//!
//! On an executor, attention without a mask and of a head dimension the CUDA kernels take runs
//! as one flash-attention launch (bf16 operands, f32 softmax and accumulation); anything else
//! runs as the composition of device GEMMs and softmax (a fully masked row is NaN there, not
//! zero). Either way f32 inputs give an f32 output, so that what follows does not depend on
//! the head width; bf16 inputs get the kernel's bf16 output, written token-major and returned
//! as a (B, H, Lq, D) view of it, so that the output projection reads it in place.
//!
//! Two more ops serve a transformer's inference: [`packed_attention`], each sample's queries
//! over its own keys packed with the other samples' (cross-attention to texts of different
//! lengths, one launch for the batch), and [`attention_inputs`], the pass from a qkv
//! projection to the KV cache.

use std::borrow::Cow;
use std::sync::Arc;

use gemm::Parallelism;
use infinity_cuda::Executor;
use infinity_cuda::attention::{Attention, BlockCausal, PackedKeys, Scores, kernel_fits};
use infinity_runtime::{DType, Device, Error, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::device::executor;
use crate::elementwise::{UnaryOp, add, mul, mul_scalar, unary_grad};
use crate::index::{concat, copy_into};
use crate::matmul::{MatRef, gemm_into, gemm_operand, matmul};
use crate::norm::l2_normalize;
use crate::reduce::max;
use crate::rope::rope_interleaved;
use crate::softmax::{softmax, softmax_grad};
use crate::vector_math;
use crate::{f32_data, require_f32, zip_map};

/// Queries per parallel task: the rows of its GEMMs.
const QUERY_BLOCK: usize = 64;
/// Keys per online-softmax step: the scores of a task's queries against one block of keys
/// (QUERY_BLOCK·KEY_BLOCK floats) stay in cache between the two GEMMs.
const KEY_BLOCK: usize = 128;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

/// Read access to the additive mask broadcast to (B, H, Lq, Lk) through its strides, so a
/// (1, 1, Lq, Lk) mask is never expanded.
struct Mask<'a> {
    data: Cow<'a, [f32]>,
    layout: Layout,
}

impl Mask<'_> {
    /// The storage offset of entry (b, h, i, 0) and the stride between keys.
    fn row(&self, b: usize, h: usize, i: usize) -> (usize, usize) {
        let s = self.layout.strides();
        (self.layout.offset() + b * s[0] + h * s[1] + i * s[2], s[3])
    }
}

/// Validated inputs in row-major order, shared by the fast path and the reference.
struct Inputs<'a> {
    dims: Dims,
    q: Cow<'a, [f32]>,
    k: Cow<'a, [f32]>,
    v: Cow<'a, [f32]>,
    mask: Option<Mask<'a>>,
}

/// The dimensions of q (B, H, Lq, D), k (B, H, Lk, D) and v (B, H, Lk, Dv), checked.
fn check_shapes(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    let mismatch =
        |a: &Tensor, b: &Tensor| Error::ShapeMismatch { op, lhs: a.shape().to_vec(), rhs: b.shape().to_vec() };
    let (&[b, h, lq, d], &[kb, kh, lk, kd], &[vb, vh, vl, dv]) = (q.shape(), k.shape(), v.shape()) else {
        let bad = [q, k, v].into_iter().find(|t| t.rank() != 4).unwrap_or(q);
        return Err(Error::invalid(op, bad.shape(), "q, k and v must be 4-D (batch, heads, length, head dim)"));
    };
    if (kb, kh, kd) != (b, h, d) {
        return Err(mismatch(q, k));
    }
    if (vb, vh, vl) != (b, h, lk) {
        return Err(mismatch(k, v));
    }
    Ok(Dims { b, h, lq, lk, d, dv })
}

fn prepare<'a>(
    op: &'static str,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    mask: Option<&'a Tensor>,
) -> Result<Inputs<'a>> {
    let dims = check_shapes(op, q, k, v)?;
    let Dims { b, h, lq, lk, .. } = dims;
    let mask = match mask {
        None => None,
        Some(m) => {
            require_f32(op, m)?;
            let layout = m.layout().broadcast_to(&[b, h, lq, lk]).map_err(|_| Error::ShapeMismatch {
                op,
                lhs: m.shape().to_vec(),
                rhs: vec![b, h, lq, lk],
            })?;
            Some(Mask { data: m.cpu_storage(op)?.elements::<f32>(), layout })
        }
    };
    Ok(Inputs { dims, q: f32_data(op, q)?, k: f32_data(op, k)?, v: f32_data(op, v)?, mask })
}

/// softmax(q·kᵀ·scale + mask)·v; see the module header for shapes and fully masked rows.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
    if let Some(exec) = executor("attention", &[q, k, v])? {
        return match mask {
            None if flash_fits(q, k, v) => {
                let out = flash(&exec, q, k, v, None, None, scale)?;
                if q.dtype() == DType::F32 { out.to_dtype(DType::F32) } else { Ok(out) }
            }
            _ => composed(q, k, v, mask, scale),
        };
    }
    let inp = prepare("attention", q, k, v, mask)?;
    let Dims { b, h, lq, dv, .. } = inp.dims;
    let mut out = vec![0f32; b * h * lq * dv];
    // Empty outputs have nothing to compute (and zero-sized chunks are not allowed below).
    if !out.is_empty() {
        out.par_chunks_mut(lq * dv).enumerate().for_each(|(bh, out_bh)| {
            out_bh.par_chunks_mut(QUERY_BLOCK * dv).enumerate().for_each(|(blk, out_blk)| {
                attend_block(&inp, bh, blk * QUERY_BLOCK, out_blk, scale);
            });
        });
    }
    Tensor::from_vec(out, &[b, h, lq, dv])
}

/// Most attention scores (B·H·rows·Lk) materialised at once by [`attention_grad`].
const SCORE_BUDGET: usize = 1 << 22;

/// The gradients of q, k and v (those `needs` asks for) of [`attention`] for the output
/// gradient g. With P the attention probabilities and dO = g: dV = Pᵀ·dO,
/// dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ)) (the softmax adjoint), dQ = scale·dS·K and
/// dK = scale·dSᵀ·Q. P is recomputed from q and k, one block of query rows at a time, so at
/// most `SCORE_BUDGET` scores exist at once whatever the sequence length; rows whose keys are
/// all masked output zero in the forward, so they get P = 0 (no gradient). On an executor,
/// without a mask and at a head dim the kernels take, the flash backward kernel runs instead
/// (after a forward launch for the row statistics it reads; bf16 operands, f32 gradients).
pub fn attention_grad(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
    g: &Tensor,
    needs: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    check_shapes("attention_grad", q, k, v)?;
    if let Some(exec) = executor("attention_grad", &[q, k, v, g])?
        && mask.is_none()
        && flash_fits(q, k, v)
    {
        let dense = |t: &Tensor| -> Result<Tensor> { gemm_operand("attention_grad", t)?.contiguous() };
        let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
        let one_block = [0, k.shape()[2]];
        let call = unmasked(&q, &k, &v, &one_block, scale);
        let grads = call.backward(&exec, &call.forward(&exec)?, &dense(g)?)?;
        return Ok([needs[0].then_some(grads.dq), needs[1].then_some(grads.dk), needs[2].then_some(grads.dv)]);
    }
    let (b, h, lq, lk) = (q.shape()[0], q.shape()[1], q.shape()[2], k.shape()[2]);
    let mask = mask.map(|m| m.broadcast_to(&[b, h, lq, lk])).transpose()?;
    let (kt, vt) = (k.transpose(2, 3)?, v.transpose(2, 3)?);
    let rows = (SCORE_BUDGET / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let mut dq_blocks = Vec::new();
    // Sums over the query blocks; the first block's product starts each (no zero-filled
    // tensor to add it to).
    let (mut dk, mut dv): (Option<Tensor>, Option<Tensor>) = (None, None);
    let accumulate = |sum: &mut Option<Tensor>, term: Tensor| -> Result<()> {
        *sum = Some(match sum.take() {
            Some(s) => add(&s, &term)?,
            None => term,
        });
        Ok(())
    };
    for i0 in (0..lq).step_by(rows) {
        let n = rows.min(lq - i0);
        let (qb, gb) = (q.narrow(2, i0, n)?, g.narrow(2, i0, n)?);
        let mut scores = mul_scalar(&matmul(&qb, &kt)?, scale)?;
        if let Some(m) = &mask {
            scores = add(&scores, &m.narrow(2, i0, n)?)?;
        }
        let p = probabilities(&scores, mask.is_some())?;
        if needs[2] {
            accumulate(&mut dv, matmul(&p.transpose(2, 3)?, &gb)?)?;
        }
        if needs[0] || needs[1] {
            let ds = mul_scalar(&softmax_grad(&p, &matmul(&gb, &vt)?, 3)?, scale)?;
            if needs[0] {
                dq_blocks.push(matmul(&ds, k)?);
            }
            if needs[1] {
                accumulate(&mut dk, matmul(&ds.transpose(2, 3)?, &qb)?)?;
            }
        }
    }
    let dq = match dq_blocks.as_slice() {
        // No query rows: q is empty.
        [] => needs[0].then(|| Tensor::zeros_on(q.shape(), DType::F32, &q.device())).transpose()?,
        blocks => Some(concat(&blocks.iter().collect::<Vec<_>>(), 2)?),
    };
    // No query rows: nothing reached k or v.
    let or_zeros = |sum: Option<Tensor>, like: &Tensor| match sum {
        Some(s) => Ok(s),
        None => Tensor::zeros_on(like.shape(), DType::F32, &like.device()),
    };
    let dk = if needs[1] { Some(or_zeros(dk, k)?) } else { None };
    let dv = if needs[2] { Some(or_zeros(dv, v)?) } else { None };
    Ok([dq, dk, dv])
}

/// The additive causal mask (Lq, Lk) of queries at the last Lq of Lk positions: query i sees
/// keys 0..=Lk − Lq + i.
pub fn causal_mask(lq: usize, lk: usize) -> Result<Tensor> {
    if lq > lk {
        return Err(Error::invalid("causal_mask", &[lq, lk], "more queries than keys"));
    }
    let start = lk - lq;
    let data =
        (0..lq).flat_map(|i| (0..lk).map(move |j| if j <= start + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(data, &[lq, lk])
}

/// Causal attention: [`attention`] of queries at the last Lq of the Lk key positions, each
/// seeing the keys up to its own (a prefix over a KV cache, or the whole sequence). On an
/// executor at a head dim the kernels take, the flash kernel's causal mode; otherwise the
/// explicit [`causal_mask`].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let Dims { lq, lk, .. } = check_shapes("causal_attention", q, k, v)?;
    if let Some(exec) = executor("causal_attention", &[q, k, v])?
        && flash_fits(q, k, v)
        && lq <= lk
    {
        return flash(&exec, q, k, v, Some(BlockCausal::causal(lk - lq)), None, scale);
    }
    attention(q, k, v, Some(&causal_mask(lq, lk)?.to_device(&q.device())?), scale)
}

/// The gradients of [`causal_attention`] (see [`attention_grad`]); on an executor at a head
/// dim the kernels take, the flash backward kernel's causal mode.
pub fn causal_attention_grad(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    g: &Tensor,
    needs: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let Dims { lq, lk, .. } = check_shapes("causal_attention_grad", q, k, v)?;
    if let Some(exec) = executor("causal_attention_grad", &[q, k, v, g])?
        && flash_fits(q, k, v)
        && lq <= lk
    {
        let dense = |t: &Tensor| -> Result<Tensor> { gemm_operand("causal_attention_grad", t)?.contiguous() };
        let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
        let call = Attention { q: &q, k: &k, v: &v, mask: BlockCausal::causal(lk - lq), scores: Scores::Dot(scale) };
        let grads = call.backward(&exec, &call.forward(&exec)?, &dense(g)?)?;
        return Ok([needs[0].then_some(grads.dq), needs[1].then_some(grads.dk), needs[2].then_some(grads.dv)]);
    }
    attention_grad(q, k, v, Some(&causal_mask(lq, lk)?.to_device(&q.device())?), scale, g, needs)
}

/// softmax over the keys, with all-masked rows (every score −inf, which softmax turns into
/// NaN) set to zero as the forward treats them.
fn probabilities(scores: &Tensor, masked: bool) -> Result<Tensor> {
    let p = softmax(scores, 3)?;
    if !masked {
        return Ok(p);
    }
    let row_max = max(scores, &[3], true)?.broadcast_to(p.shape())?;
    if p.is_cpu() {
        return zip_map("attention", [&p, &row_max], |[p, m]| if m == f32::NEG_INFINITY { 0.0 } else { p });
    }
    // On a device: p where the row's max is above −inf (the clamp's gradient rule passes what
    // lies within its bounds), else 0.
    unary_grad(UnaryOp::Clamp { lo: f32::MIN, hi: f32::INFINITY }, &p, &row_max, &row_max)
}

/// Whether the flash kernel takes these shapes: 4-D, a head dim it takes, v as wide as q, at
/// least one key.
fn flash_fits(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    q.rank() == 4
        && k.rank() == 4
        && v.rank() == 4
        && kernel_fits(q.shape()[3])
        && v.shape()[3] == q.shape()[3]
        && k.shape()[2] > 0
}

/// A flash-kernel call without a mask: `one_block` = [0, Lk], one scale block, so every query
/// sees every key.
fn unmasked<'a>(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, one_block: &'a [usize; 2], scale: f32) -> Attention<'a> {
    Attention { q, k, v, mask: BlockCausal { offsets: one_block, q_start: 0 }, scores: Scores::Dot(scale) }
}

/// The flash kernel over q (B, H, Lq, D) and k, v (B, H, Lk, D) under `mask` (none: every key
/// visible), or with `packing` over k, v (1, H, ΣLᵢ, D) holding every sample's keys. The output is allocated token-major
/// (B, Lq, H, D) and returned as its (B, H, Lq, D) view.
fn flash(
    exec: &Executor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<BlockCausal>,
    packing: Option<&PackedKeys>,
    scale: f32,
) -> Result<Tensor> {
    let operand = |t: &Tensor| gemm_operand("attention", t);
    let (q, k, v) = (operand(q)?, operand(k)?, operand(v)?);
    let (&[b, h, lq, d], lk) = (q.shape(), k.shape()[2]) else {
        return Err(Error::invalid("attention", q.shape(), "q must be 4-D (batch, heads, length, head dim)"));
    };
    let mut out = exec.empty(&[b, lq, h, d], DType::BF16)?;
    let one_block = [0, lk];
    let call = match mask {
        Some(mask) => Attention { q: &q, k: &k, v: &v, mask, scores: Scores::Dot(scale) },
        None => unmasked(&q, &k, &v, &one_block, scale),
    };
    match packing {
        None => call.forward_into(exec, &mut out, 0)?,
        Some(keys) => call.forward_packed_into(exec, keys, &mut out, 0)?,
    }
    out.permute(&[0, 2, 1, 3])
}

/// softmax(q·kᵀ·scale + mask)·v from device GEMMs and softmax (heads of any width, a mask).
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
    let Dims { b, h, lq, lk, d, dv } = check_shapes("attention", q, k, v)?;
    let heads = |t: &Tensor, rows: usize, cols: usize| t.reshape(&[b * h, rows, cols]);
    let scores = mul_scalar(&matmul(&heads(q, lq, d)?, &heads(k, lk, d)?.transpose(1, 2)?)?, scale)?;
    let mut scores = scores.reshape(&[b, h, lq, lk])?;
    if let Some(m) = mask {
        scores = add(&scores, m)?;
    }
    let p = softmax(&scores, 3)?.reshape(&[b * h, lq, lk])?;
    matmul(&p, &heads(v, lk, dv)?)?.reshape(&[b, h, lq, dv])
}

/// How the keys of a batch's samples lie in one packed tensor of ΣLᵢ rows (each sample's own
/// text, of its own length): sample i owns rows Σ_{j<i} Lⱼ .. Σ_{j≤i} Lⱼ, at least one. Made
/// once per batch for the device its keys are on; on an executor it holds the row offsets in
/// device memory too, so that no launch waits on a host copy.
#[derive(Clone)]
pub struct Packing {
    lens: Vec<usize>,
    device: Device,
    keys: Option<Arc<PackedKeys>>,
}

impl Packing {
    pub fn new(lens: &[usize], device: &Device) -> Result<Self> {
        if lens.is_empty() || lens.contains(&0) {
            return Err(Error::invalid("packing", lens, "each sample needs at least one key"));
        }
        let keys = Executor::on(device).map(|exec| PackedKeys::new(&exec, lens).map(Arc::new)).transpose()?;
        Ok(Packing { lens: lens.to_vec(), device: device.clone(), keys })
    }

    /// Keys per sample.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Checks q (B, H, n, D) and k (ΣLᵢ, H, D) against this packing.
    pub fn check(&self, op: &'static str, q: &[usize], k: &[usize]) -> Result<()> {
        let total: usize = self.lens.iter().sum();
        if q.len() != 4 || q[0] != self.lens.len() || k.len() != 3 || k[0] != total {
            let msg =
                format!("q (B, H, n, D) and k (ΣLᵢ, H, D) for {} samples of {:?} keys", self.lens.len(), self.lens);
            return Err(Error::invalid(op, k, msg));
        }
        Ok(())
    }
}

/// Attention of each sample's queries over its own keys: q (B, H, n, D), k and v (ΣLᵢ, H, D)
/// packed as `packing` says. Returns (B, H, n, D). On an executor with a head dim the flash
/// kernel takes, one launch for the batch; otherwise [`attention`] per sample.
pub fn packed_attention(q: &Tensor, k: &Tensor, v: &Tensor, packing: &Packing, scale: f32) -> Result<Tensor> {
    const OP: &str = "packed_attention";
    packing.check(OP, q.shape(), k.shape())?;
    let exec = executor(OP, &[q, k, v])?;
    if q.device() != packing.device {
        return Err(Error::invalid(
            OP,
            q.shape(),
            format!("a packing made for {}, tensors on {}", packing.device, q.device()),
        ));
    }
    // (ΣLᵢ, H, D) → (1, H, ΣLᵢ, D).
    let heads_first = |t: &Tensor| t.permute(&[1, 0, 2])?.unsqueeze(0);
    if let (Some(exec), Some(keys)) = (&exec, &packing.keys)
        && flash_fits(q, &heads_first(k)?, &heads_first(v)?)
    {
        return flash(exec, q, &heads_first(k)?, &heads_first(v)?, None, Some(keys), scale);
    }
    let mut outs = Vec::with_capacity(packing.lens.len());
    let mut start = 0;
    for (b, &len) in packing.lens.iter().enumerate() {
        let part = |t: &Tensor| heads_first(&t.narrow(0, start, len)?);
        outs.push(attention(&q.narrow(0, b, 1)?, &part(k)?, &part(v)?, None, scale)?);
        start += len;
    }
    concat(&outs.iter().collect::<Vec<_>>(), 0)
}

/// Infinity's self-attention inputs of one scale at inference, from the fused projection qkv
/// (B, n, 3, H, D): returns q̃ = head_scale[h]·rope(q / max(‖q‖, 1e-12)) (B, H, n, D), and
/// writes k̃ = rope(k / max(‖k‖, 1e-12)) and v into the caches (B, H, L, D) at positions
/// `start..start + n`. cos and sin are the scale's (n, D/2) tables, head_scale (H,). Attention
/// over q̃ and the caches is then plain scale-1 attention. On an executor one pass (bf16 qkv
/// and caches, D 64 or 128); on the CPU the composition, in the official order.
#[allow(clippy::too_many_arguments)]
pub fn attention_inputs(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_scale: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    start: usize,
) -> Result<Tensor> {
    const OP: &str = "attention_inputs";
    let &[b, n, 3, heads, d] = qkv.shape() else {
        return Err(Error::invalid(OP, qkv.shape(), "expected (B, n, 3, H, D)"));
    };
    // The fused kernel for the widths it is built for; on the CPU, and for other widths on an
    // executor, the composition of the ops it fuses (each with its own kernel there).
    if let Some(exec) = executor(OP, &[qkv, cos, sin, head_scale, k_cache, v_cache])?
        && infinity_cuda::rope::inputs_fit(d)
    {
        return infinity_cuda::rope::attention_inputs(&exec, qkv, cos, sin, head_scale, k_cache, v_cache, start);
    }
    // (3, B, H, n, D), in f32 (an executor's projection gives bf16); q is returned in the
    // projection's dtype, as the kernel returns it.
    // (Cast at rank 3: the device copies index at most 4 dimensions.)
    let qkv32 = qkv.reshape(&[b * n * 3, heads, d])?.to_dtype(DType::F32)?.reshape(qkv.shape())?;
    let parts = qkv32.permute(&[2, 0, 3, 1, 4])?;
    let part = |i: usize| parts.narrow(0, i, 1)?.squeeze(0);
    let q = mul(&l2_normalize(&part(0)?, QK_EPS)?, &head_scale.reshape(&[1, heads, 1, 1])?)?;
    let k = l2_normalize(&part(1)?, QK_EPS)?;
    let (k_dtype, v_dtype) = (k_cache.dtype(), v_cache.dtype());
    copy_into(&rope_interleaved(&k, cos, sin)?.to_dtype(k_dtype)?, k_cache, 2, start)?;
    copy_into(&part(2)?.to_dtype(v_dtype)?, v_cache, 2, start)?;
    rope_interleaved(&q, cos, sin)?.to_dtype(qkv.dtype())
}

/// The floor of the q/k norms (F.normalize's default).
pub const QK_EPS: f32 = 1e-12;

/// Online softmax for the queries i0.. of head `bh` whose output rows are `out` (zeroed on
/// entry, used as the accumulator). Per row it keeps the running max `m` of the scores seen so
/// far and the running sum `l` of exp(score − m); when a key block raises the max, the sum and
/// the accumulated output are rescaled by exp(m_old − m_new). The block's scores and its
/// P·V update are two small GEMMs (k read transposed in place).
fn attend_block(inp: &Inputs, bh: usize, i0: usize, out: &mut [f32], scale: f32) {
    let Dims { h, lq, lk, d, dv, .. } = inp.dims;
    let rows = out.len() / dv;
    let q = MatRef { data: &inp.q, offset: (bh * lq + i0) * d, row_stride: d, col_stride: 1 };
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut s = vec![0f32; rows * KEY_BLOCK];
    for j0 in (0..lk).step_by(KEY_BLOCK) {
        let kn = KEY_BLOCK.min(lk - j0);
        let kt = MatRef { data: &inp.k, offset: (bh * lk + j0) * d, row_stride: 1, col_stride: d };
        gemm_into(&mut s, kn, q, kt, (rows, d, kn), false, Parallelism::None);
        for (r, scores) in s.chunks_exact_mut(kn).take(rows).enumerate() {
            scores.iter_mut().for_each(|sc| *sc *= scale);
            if let Some(mask) = &inp.mask {
                let (base, stride) = mask.row(bh / h, bh % h, i0 + r);
                for (c, sc) in scores.iter_mut().enumerate() {
                    *sc += mask.data[base + (j0 + c) * stride];
                }
            }
            let m_new = scores.iter().fold(m[r], |a, &x| a.max(x));
            // Every key so far is masked: nothing to add (the zero probabilities leave the
            // accumulator as it is), and exp(-inf − -inf) would be NaN.
            if m_new == f32::NEG_INFINITY {
                scores.fill(0.0);
                continue;
            }
            if m_new > m[r] {
                // exp(-inf) = 0 on the first unmasked block, where the row and l are still zero.
                let correction = (m[r] - m_new).exp();
                l[r] *= correction;
                out[r * dv..(r + 1) * dv].iter_mut().for_each(|a| *a *= correction);
                m[r] = m_new;
            }
            vector_math::map_in_place(scores, |sc| vector_math::exp(sc - m_new));
            l[r] += scores.iter().sum::<f32>();
        }
        let p = MatRef { data: &s, offset: 0, row_stride: kn, col_stride: 1 };
        let vb = MatRef { data: &inp.v, offset: (bh * lk + j0) * dv, row_stride: dv, col_stride: 1 };
        gemm_into(out, dv, p, vb, (rows, kn, dv), true, Parallelism::None);
    }
    for (acc, &sum) in out.chunks_exact_mut(dv).zip(&l) {
        // sum ≥ 1 whenever the row saw an unmasked key (its max contributes exp(0)); a fully
        // masked row keeps its zero accumulator.
        if sum > 0.0 {
            acc.iter_mut().for_each(|a| *a /= sum);
        }
    }
}

/// The additive block-causal mask (L, L), L = Σ `scale_lens`, for a sequence made of scales
/// with the given token counts: a query of scale k sees every key of scales ≤ k (0) and no key
/// of a later scale (-inf), so attention is bidirectional within a scale and causal across.
pub fn block_causal_mask(scale_lens: &[usize]) -> Result<Tensor> {
    let total = scale_lens.iter().try_fold(0usize, |acc, &n| acc.checked_add(n));
    let Some((total, numel)) = total.and_then(|t| Some((t, t.checked_mul(t)?))) else {
        return Err(Error::invalid("block_causal_mask", scale_lens, "the mask would have too many elements"));
    };
    let mut data = Vec::with_capacity(numel);
    let mut visible = 0;
    for &n in scale_lens {
        // Rows of this scale see the keys up to the end of the scale.
        visible += n;
        for _ in 0..n {
            data.extend((0..total).map(|j| if j < visible { 0.0 } else { f32::NEG_INFINITY }));
        }
    }
    Tensor::from_vec(data, &[total, total])
}

pub mod reference {
    //! Naive attention: every score in f64, then a two-pass (max-subtracted) softmax and the
    //! weighted sum of v, also in f64.

    use infinity_runtime::{Result, Tensor};

    use super::{Dims, prepare};

    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
        let inp = prepare("attention", q, k, v, mask)?;
        let Dims { b, h, lq, lk, d, dv } = inp.dims;
        let mut out = vec![0f32; b * h * lq * dv];
        let mut s = vec![0f64; lk];
        for bi in 0..b {
            for hi in 0..h {
                let bh = bi * h + hi;
                for i in 0..lq {
                    for (j, sj) in s.iter_mut().enumerate() {
                        let dot: f64 = (0..d)
                            .map(|e| f64::from(inp.q[(bh * lq + i) * d + e]) * f64::from(inp.k[(bh * lk + j) * d + e]))
                            .sum();
                        let bias = inp.mask.as_ref().map_or(0.0, |m| {
                            let (base, stride) = m.row(bi, hi, i);
                            f64::from(m.data[base + j * stride])
                        });
                        *sj = dot * f64::from(scale) + bias;
                    }
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    // A fully masked row outputs zero (see the module header of `attention`).
                    if max == f64::NEG_INFINITY {
                        continue;
                    }
                    let w: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for e in 0..dv {
                        let num: f64 =
                            w.iter().enumerate().map(|(j, &wj)| wj * f64::from(inp.v[(bh * lk + j) * dv + e])).sum();
                        out[(bh * lq + i) * dv + e] = (num / sum) as f32;
                    }
                }
            }
        }
        Tensor::from_vec(out, &[b, h, lq, dv])
    }
}
