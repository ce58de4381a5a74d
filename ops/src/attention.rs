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
//! blocks of keys, each block's products done by GEMMs) that the CUDA kernel mirrors; `reference` is the naive two-pass softmax in f64.

use std::borrow::Cow;

use gemm::Parallelism;
use infinity_runtime::{Error, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::matmul::{MatRef, gemm_into};
use crate::{f32_data, require_f32};

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

fn prepare<'a>(
    op: &'static str,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    mask: Option<&'a Tensor>,
) -> Result<Inputs<'a>> {
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
    let dims = Dims { b, h, lq, lk, d, dv };
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
            for sc in scores.iter_mut() {
                *sc = (*sc - m_new).exp();
                l[r] += *sc;
            }
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
