//! The block-causal flash-attention kernels (cuda/kernels/attention.cu) against the CPU
//! attention and its autograd, on every executor of `infinity_cuda::testing::executors()`:
//! odd scale blocks that are no multiple of the 64-row tiles, B and H up to 2, strided
//! operands, KV-cache windows (q_start > 0), plain and cosine scores, and every head dim the
//! kernels take: 64 and 128 (their two builds), and the narrower widths that run in them with
//! zero columns (every preset's 96–120, and a few small ones).
//!
//! Both sides see the same bf16-rounded q, k, v (and dO); the CPU computes in f64 (forward) or
//! f32 (autograd) from there. What remains is the kernels' own rounding, bounded below.

#[allow(dead_code)] // this binary uses part of the op tests' helpers
#[path = "ops/support.rs"]
mod support;

#[path = "common/cuda.rs"]
mod cuda_support;

use cuda_support::{assert_invalid, upload};
use infinity::autograd::attention::attention as autograd_attention;
use infinity::autograd::elementwise::mul as autograd_mul;
use infinity::autograd::norm::l2_normalize as autograd_l2_normalize;
use infinity::autograd::{Tape, Var};
use infinity::ops::attention::block_causal_mask;
use infinity::ops::attention::reference::attention as reference_attention;
use infinity::ops::elementwise::mul;
use infinity::ops::norm::l2_normalize;
use infinity::runtime::{DType, Error, Tensor};
use infinity_cuda::Executor;
use infinity_cuda::attention::{Attention, BlockCausal, Output, PackedKeys, Scores};
use infinity_cuda::testing::executors;
use proptest::prelude::*;

use support::{randn, strided_copy};

/// Infinity's norm floor (F.normalize's eps).
const NORM_EPS: f32 = 1e-12;

/// Every emulated case runs thousands of fibered threads; 16 cases keep the file to seconds.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 16, ..ProptestConfig::default() }
}

/// One test problem: bf16 operands and the f32 values they hold.
struct Case {
    lens: Vec<usize>,
    /// Run as the kernels' causal mode (every position its own block, `lens` all 1) instead of
    /// a table of `lens`.
    causal: bool,
    q_start: usize,
    heads: usize,
    /// (B, H, Lq, D), (B, H, Lk, D) ×2, f32 holding bf16 values.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Per-head multipliers of cosine attention (H,), or None for scale·q·kᵀ.
    head_scale: Option<Tensor>,
    scale: f32,
}

/// Standard normals rounded to bf16, returned as f32.
fn bf16_values(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    randn(shape, seed, scale).to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

impl Case {
    /// Queries from block `first_block` to the end: the whole sequence for 0, the last scale
    /// against its KV cache for lens.len() − 1.
    fn new(b: usize, heads: usize, d: usize, lens: Vec<usize>, first_block: usize, cosine: bool, seed: u64) -> Case {
        let lk: usize = lens.iter().sum();
        let q_start: usize = lens[..first_block].iter().sum();
        let lq = lk - q_start;
        // Cosine scores are bounded by the head scale; plain ones get a scale that keeps the
        // softmax away from one-hot.
        let head_scale = cosine.then(|| {
            let v: Vec<f32> = (0..heads).map(|h| 2.0 + 3.0 * h as f32 + (seed % 5) as f32).collect();
            Tensor::from_vec(v, &[heads]).unwrap()
        });
        Case {
            q: bf16_values(&[b, heads, lq, d], seed, 1.0),
            k: bf16_values(&[b, heads, lk, d], seed ^ 1, 1.0),
            v: bf16_values(&[b, heads, lk, d], seed ^ 2, 1.0),
            lens,
            causal: false,
            q_start,
            heads,
            head_scale,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    /// Cross-attention: `lq` queries, any number, each seeing all `lk` keys (one block).
    fn cross(b: usize, heads: usize, lq: usize, lk: usize, seed: u64) -> Case {
        let mut case = Case::new(b, heads, 64, vec![lk], 0, false, seed);
        case.q = bf16_values(&[b, heads, lq, 64], seed ^ 3, 1.0);
        case
    }

    fn offsets(&self) -> Vec<usize> {
        let mut offsets = vec![0];
        for n in &self.lens {
            offsets.push(offsets[offsets.len() - 1] + n);
        }
        offsets
    }

    /// The additive mask of the query rows (Lq, Lk).
    fn mask(&self) -> Tensor {
        let lq = self.q.shape()[2];
        if self.lens.len() == 1 {
            return Tensor::zeros(&[lq, self.lens[0]], DType::F32);
        }
        block_causal_mask(&self.lens).unwrap().narrow(0, self.q_start, lq).unwrap().contiguous().unwrap()
    }

    /// head_scale as (1, H, 1, 1), to scale q̂ per head.
    fn head_scale_column(&self) -> Option<Tensor> {
        self.head_scale.as_ref().map(|s| s.reshape(&[1, self.heads, 1, 1]).unwrap())
    }

    /// CPU forward: (q̂·s_h, k̂) for cosine scores, then the f64 reference attention.
    fn reference(&self) -> Tensor {
        match self.head_scale_column() {
            None => reference_attention(&self.q, &self.k, &self.v, Some(&self.mask()), self.scale).unwrap(),
            Some(s) => {
                let q = mul(&l2_normalize(&self.q, NORM_EPS).unwrap(), &s).unwrap();
                let k = l2_normalize(&self.k, NORM_EPS).unwrap();
                reference_attention(&q, &k, &self.v, Some(&self.mask()), 1.0).unwrap()
            }
        }
    }

    /// Per-element bounds on the kernels' gradient errors, from the magnitudes of the terms each
    /// gradient sums (not of the sum: cancellation would make those vanish). Plain f64 loops.
    ///
    /// Write the scores as qe·ke (qe = scale·q, ke = k; for cosine scores qe = s_h·q̂, ke = k̂).
    /// The kernels round P to bf16 for dV (2⁻⁹ relative) and dS = P∘(dP − delta) to bf16 for
    /// dQ and dK (P's and dS's roundings: 2⁻⁸ of |dS|), and take delta = rowsum(dO∘O) from their
    /// own bf16 output `out`, which moves each dS_ij by P_ij·|Δdelta_i| (computed exactly here).
    /// So with e_ij = 2⁻⁸|dS_ij| + P_ij(|Δdelta_i| + the f32 rounding of dP_ij and delta_i):
    ///   |ΔdV_j| ≤ 2⁻⁹ Σ_i P_ij|dO_i|,  |ΔdQe_i| ≤ Σ_j e_ij|ke_j|,  |ΔdKe_j| ≤ Σ_i e_ij|qe_i|,
    ///   |Δd_head_scale_h| ≤ Σ_ij e_ij|q̂_i·k̂_j|,
    /// and the cosine chain rule dq = (dq̂ − q̂(q̂·dq̂))/‖q‖ maps an error bound b of dq̂ to
    /// (b + |q̂|(|q̂|·b))/‖q‖ (likewise for k).
    fn gradient_bounds(&self, dout: &Tensor, out: &Tensor) -> Vec<Vec<f64>> {
        let values = |t: &Tensor| t.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect::<Vec<f64>>();
        let [b, h, lq, d] = self.q.shape().try_into().unwrap();
        let lk = self.k.shape()[2];
        let (dout, v, mask) = (values(dout), values(&self.v), values(&self.mask()));
        let (out, reference_out) = (values(out), values(&self.reference()));
        // Effective operands: scores = qe·ke.
        let (mut qe, ke) = match &self.head_scale {
            None => (values(&self.q).iter().map(|x| x * f64::from(self.scale)).collect(), values(&self.k)),
            Some(_) => {
                (values(&l2_normalize(&self.q, NORM_EPS).unwrap()), values(&l2_normalize(&self.k, NORM_EPS).unwrap()))
            }
        };
        // Multiplies each (b, h, i) row of a query-shaped buffer by head_scale[h].
        let per_head = |x: &mut [f64], s: &[f64]| {
            for (n, row) in x.chunks_mut(d).enumerate() {
                row.iter_mut().for_each(|x| *x *= s[(n / lq) % h]);
            }
        };
        let head_scale = self.head_scale.as_ref().map(values);
        if let Some(s) = &head_scale {
            per_head(&mut qe, s);
        }
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let (mut dq, mut dk, mut dv) = (vec![0.0; qe.len()], vec![0.0; ke.len()], vec![0.0; ke.len()]);
        let mut d_head_scale = vec![0.0; h];
        for bh in 0..b * h {
            let (qrow, krow) = (
                |i: usize| (bh * lq + i) * d..(bh * lq + i + 1) * d,
                |j: usize| (bh * lk + j) * d..(bh * lk + j + 1) * d,
            );
            for i in 0..lq {
                let visible: Vec<usize> = (0..lk).filter(|&j| mask[i * lk + j].is_finite()).collect();
                let scores: Vec<f64> = visible.iter().map(|&j| dot(&qe[qrow(i)], &ke[krow(j)])).collect();
                let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let total: f64 = e.iter().sum();
                let dp: Vec<f64> = visible.iter().map(|&j| dot(&dout[qrow(i)], &v[krow(j)])).collect();
                let p: Vec<f64> = e.iter().map(|x| x / total).collect();
                let delta = dot(&p, &dp);
                let delta_error = dout[qrow(i)]
                    .iter()
                    .zip(out[qrow(i)].iter().zip(&reference_out[qrow(i)]))
                    .map(|(g, (o, r))| g * (o - r))
                    .sum::<f64>()
                    .abs();
                for (n, &j) in visible.iter().enumerate() {
                    // dP_ij and delta_i are f32 dot products of D terms: their rounding, generously.
                    let f32_dots = 2f64.powi(-20)
                        * (qrow(i).zip(krow(j))).map(|(a, c)| dout[a].abs() * (v[c].abs() + out[a].abs())).sum::<f64>();
                    let ds_error = 2f64.powi(-8) * (p[n] * (dp[n] - delta)).abs() + p[n] * (delta_error + f32_dots);
                    for e in 0..d {
                        dv[krow(j).start + e] += 2f64.powi(-9) * p[n] * dout[qrow(i).start + e].abs();
                        dq[qrow(i).start + e] += ds_error * ke[krow(j).start + e].abs();
                        dk[krow(j).start + e] += ds_error * qe[qrow(i).start + e].abs();
                    }
                    if let Some(s) = &head_scale {
                        d_head_scale[bh % h] += ds_error * (scores[n] / s[bh % h]).abs();
                    }
                }
            }
        }
        let Some(scales) = head_scale else {
            return vec![dq, dk, dv];
        };
        // Through the normalisations: q = q̂‖q‖, so the unit rows and norms of the inputs.
        let project = |bound: &mut [f64], x: &Tensor| {
            let (x, unit) = (values(x), values(&l2_normalize(x, NORM_EPS).unwrap()));
            for ((b, x), u) in bound.chunks_mut(d).zip(x.chunks(d)).zip(unit.chunks(d)) {
                let (norm, along) = (
                    dot(x, x).sqrt().max(f64::from(NORM_EPS)),
                    u.iter().zip(b.iter()).map(|(u, b)| u.abs() * b).sum::<f64>(),
                );
                b.iter_mut().zip(u).for_each(|(b, u)| *b = (*b + u.abs() * along) / norm);
            }
        };
        per_head(&mut dq, &scales); // dq̂ = s_h·dQe
        project(&mut dq, &self.q);
        project(&mut dk, &self.k);
        vec![dq, dk, dv, d_head_scale]
    }

    /// The kernels' call on `exec`, with the operands arranged by `layout` (0: contiguous,
    /// 1: stored as (B, L, H, D), the layout of a fused qkv projection).
    fn run<T>(&self, exec: &Executor, layout: usize, body: impl FnOnce(&Attention, &Self) -> T) -> T {
        let put = |t: &Tensor| {
            let t = t.to_dtype(DType::BF16).unwrap();
            let t = if layout == 1 { strided_copy(&t, &[0, 2, 1, 3]) } else { t };
            upload(exec, &t)
        };
        let (q, k, v) = (put(&self.q), put(&self.k), put(&self.v));
        let head_scale = self.head_scale.as_ref().map(|s| upload(exec, s));
        let offsets = self.offsets();
        let attention = Attention {
            q: &q,
            k: &k,
            v: &v,
            mask: if self.causal {
                BlockCausal::causal(self.q_start)
            } else {
                BlockCausal { offsets: &offsets, q_start: self.q_start }
            },
            scores: head_scale.as_ref().map_or(Scores::Dot(self.scale), Scores::Cosine),
        };
        body(&attention, self)
    }
}

fn host(exec: &Executor, t: &Tensor) -> Tensor {
    t.to_cpu().unwrap_or_else(|e| panic!("{}: {e}", exec.name())).to_dtype(DType::F32).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.to_vec::<f32>().unwrap().iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// ln Σ_j exp(score_ij) over the visible keys, in f64, with the scores of the reference.
fn reference_lse(case: &Case) -> Vec<f32> {
    let (q, k) = match case.head_scale_column() {
        None => (case.q.clone(), case.k.clone()),
        Some(s) => {
            (mul(&l2_normalize(&case.q, NORM_EPS).unwrap(), &s).unwrap(), l2_normalize(&case.k, NORM_EPS).unwrap())
        }
    };
    let scale = if case.head_scale.is_some() { 1.0 } else { f64::from(case.scale) };
    let [b, h, lq, d] = q.shape().try_into().unwrap();
    let lk = k.shape()[2];
    let (q, k, mask) = (q.to_vec::<f32>().unwrap(), k.to_vec::<f32>().unwrap(), case.mask().to_vec::<f32>().unwrap());
    let mut out = Vec::with_capacity(b * h * lq);
    for bh in 0..b * h {
        for i in 0..lq {
            let scores: Vec<f64> = (0..lk)
                .filter(|&j| mask[i * lk + j] == 0.0)
                .map(|j| {
                    let dot: f64 =
                        (0..d).map(|e| f64::from(q[(bh * lq + i) * d + e]) * f64::from(k[(bh * lk + j) * d + e])).sum();
                    dot * scale
                })
                .collect();
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push((top + scores.iter().map(|s| (s - top).exp()).sum::<f64>().ln()) as f32);
        }
    }
    out
}

/// Forward bound. O = bf16(Σ_j bf16(p_j)·v_j / Σ_j p_j): rounding each p_j to bf16 moves O by
/// at most 2⁻⁹·max|v| (a convex combination of relative errors ≤ 2⁻⁹), rounding O to bf16 by
/// 2⁻⁹·|O| ≤ 2⁻⁹·max|v|; the f32 scores, exponentials and sums add a few f32 ulps, covered by
/// the 2⁻¹² margin. So |O − O_ref| ≤ (2⁻⁸ + 2⁻¹²)·max|v|.
///
/// `forward_into` must write the same O, token-major, into samples 1.. of a zeroed tensor and
/// leave sample 0 as it was.
fn check_forward(exec: &Executor, case: &Case, layout: usize) {
    let (out, lse, into) = case.run(exec, layout, |attention, _| {
        let Output { out, lse } = attention.forward(exec).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
        let &[b, h, lq, d] = attention.q.shape() else { unreachable!("q is 4-D") };
        let mut into = upload(exec, &Tensor::zeros(&[b + 1, lq, h, d], DType::BF16));
        attention.forward_into(exec, &mut into, 1).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
        (host(exec, &out), host(exec, &lse), host(exec, &into))
    });
    let untouched = into.narrow(0, 0, 1).unwrap();
    assert!(untouched.to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0), "{}: sample 0 was written", exec.name());
    let written = into.narrow(0, 1, case.q.shape()[0]).unwrap().permute(&[0, 2, 1, 3]).unwrap();
    assert!(written.same_values(&out), "{}: forward_into differs from forward", exec.name());
    let want = case.reference();
    let bound = (2f32.powi(-8) + 2f32.powi(-12)) * max_abs(&case.v);
    for (i, (g, w)) in out.to_vec::<f32>().unwrap().iter().zip(want.to_vec::<f32>().unwrap()).enumerate() {
        assert!((g - w).abs() <= bound, "{}: O[{i}] = {g}, want {w} (bound {bound})", exec.name());
    }
    // The logsumexp is f32 arithmetic on exact-product scores: relative 1e-5 covers it.
    for (i, (g, w)) in lse.to_vec::<f32>().unwrap().iter().zip(reference_lse(case)).enumerate() {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{}: lse[{i}] = {g}, want {w}", exec.name());
    }
}

/// The autograd's gradients of Σ O·dO for q, k, v (and head_scale).
fn reference_gradients(case: &Case, dout: &Tensor) -> Vec<Tensor> {
    let tape = Tape::new();
    let leaf = |t: &Tensor| tape.leaf(t.clone()).unwrap();
    let (q, k, v) = (leaf(&case.q), leaf(&case.k), leaf(&case.v));
    let head_scale = case.head_scale_column().map(|s| leaf(&s));
    let out = match &head_scale {
        None => autograd_attention(&q, &k, &v, Some(&case.mask()), case.scale),
        Some(s) => {
            let q_hat = autograd_mul(&autograd_l2_normalize(&q, NORM_EPS).unwrap(), s).unwrap();
            let k_hat = autograd_l2_normalize(&k, NORM_EPS).unwrap();
            autograd_attention(&q_hat, &k_hat, &v, Some(&case.mask()), 1.0)
        }
    }
    .unwrap();
    let grads = tape.backward_with_grad(&out, dout.clone()).unwrap();
    let vars: Vec<&Var> = [&q, &k, &v].into_iter().chain(head_scale.as_ref()).collect();
    vars.into_iter().map(|x| grads.get(x).unwrap().clone()).collect()
}

/// Backward bound: twice [`Case::gradient_bounds`] per element, the factor covering the f32
/// arithmetic of both sides and second-order terms.
fn check_backward(exec: &Executor, case: &Case, layout: usize, seed: u64) {
    let dout = bf16_values(case.q.shape(), seed ^ 3, 1.0);
    let (out, got) = case.run(exec, layout, |attention, _| {
        let fail = |e: Error| -> ! { panic!("{}: {e}", exec.name()) };
        let output = attention.forward(exec).unwrap_or_else(|e| fail(e));
        let dout = upload(exec, &dout.to_dtype(DType::BF16).unwrap());
        let grads = attention.backward(exec, &output, &dout).unwrap_or_else(|e| fail(e));
        let mut all: Vec<Tensor> = [&grads.dq, &grads.dk, &grads.dv].into_iter().map(|t| host(exec, t)).collect();
        all.extend(grads.head_scale.as_ref().map(|t| host(exec, t)));
        (host(exec, &output.out), all)
    });
    let want = reference_gradients(case, &dout);
    assert_eq!(got.len(), want.len(), "a head-scale gradient exactly for cosine scores");
    let bounds = case.gradient_bounds(&dout, &out);
    for (name, ((g, w), bound)) in ["dq", "dk", "dv", "d_head_scale"].iter().zip(got.iter().zip(&want).zip(&bounds)) {
        let (g, w) = (g.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
        assert_eq!(g.len(), w.len(), "{name}");
        for (i, ((g, w), bound)) in g.iter().zip(&w).zip(bound).enumerate() {
            let error = f64::from((g - w).abs());
            assert!(error <= 2.0 * bound, "{}: {name}[{i}] = {g}, want {w} (bound {})", exec.name(), 2.0 * bound);
        }
    }
}

/// Scale blocks summing to at most ~80, most of them not multiples of 8 or 16.
fn scale_lens() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=23, 1..=5)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn forward_matches_the_cpu_attention(b in 1usize..=2, h in 1usize..=2, lens in scale_lens(), cached: bool,
                                         cosine: bool, layout in 0usize..2, seed: u64) {
        // The last scale against its cache, or the whole sequence.
        let first = if cached { lens.len() - 1 } else { 0 };
        let case = Case::new(b, h, 64, lens, first, cosine, seed);
        for exec in executors() {
            check_forward(exec, &case, layout);
        }
    }

    /// Cross-attention to a text memory: more or fewer queries than keys, nothing masked.
    #[test]
    fn unmasked_forward_takes_any_query_count(b in 1usize..=2, h in 1usize..=2, lq in 1usize..=40, lk in 1usize..=20,
                                              layout in 0usize..2, seed: u64) {
        let case = Case::cross(b, h, lq, lk, seed);
        for exec in executors() {
            check_forward(exec, &case, layout);
        }
    }

    /// Cross-attention over packed texts of different lengths: one launch gives each sample
    /// exactly what a launch of its own gives (its keys fall into the same tiles), and writes
    /// nothing outside the samples it was given.
    #[test]
    fn packed_keys_match_one_launch_per_sample(h in 1usize..=2, lq in 1usize..=40,
                                               lens in prop::collection::vec(1usize..=70, 1..=3),
                                               d in prop::sample::select(vec![40usize, 64, 104, 128]), seed: u64) {
        let (b, total) = (lens.len(), lens.iter().sum::<usize>());
        let bf16 = |shape: &[usize], seed| bf16_values(shape, seed, 1.0).to_dtype(DType::BF16).unwrap();
        let (q, k, v) = (bf16(&[b, h, lq, d], seed), bf16(&[1, h, total, d], seed ^ 1), bf16(&[1, h, total, d], seed ^ 2));
        let dot = Scores::Dot(0.125);
        for exec in executors() {
            let (q, k, v) = (upload(exec, &q), upload(exec, &k), upload(exec, &v));
            let keys = PackedKeys::new(exec, &lens).unwrap();
            let mut packed = upload(exec, &Tensor::zeros(&[b + 1, lq, h, d], DType::BF16));
            let attention = Attention { q: &q, k: &k, v: &v, mask: BlockCausal { offsets: &[0, total], q_start: 0 }, scores: dot };
            attention.forward_packed_into(exec, &keys, &mut packed, 1).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            let packed = host(exec, &packed);
            prop_assert!(packed.narrow(0, 0, 1).unwrap().to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
            let mut start = 0;
            for (i, &len) in lens.iter().enumerate() {
                let (ki, vi) = (k.narrow(2, start, len).unwrap(), v.narrow(2, start, len).unwrap());
                let mut alone = upload(exec, &Tensor::zeros(&[1, lq, h, d], DType::BF16));
                Attention { q: &q.narrow(0, i, 1).unwrap(), k: &ki, v: &vi, mask: BlockCausal { offsets: &[0, len], q_start: 0 }, scores: dot }
                    .forward_into(exec, &mut alone, 0)
                    .unwrap();
                prop_assert!(host(exec, &alone).same_values(&packed.narrow(0, i + 1, 1).unwrap()), "{}: sample {}", exec.name(), i);
                start += len;
            }
        }
    }

    #[test]
    fn backward_matches_the_cpu_autograd(b in 1usize..=2, h in 1usize..=2, lens in scale_lens(),
                                         first_pick in 0usize..8, cosine: bool, layout in 0usize..2, seed: u64) {
        // Queries from any block start: the whole sequence half of the time.
        let first = if first_pick < 4 { 0 } else { first_pick % lens.len() };
        let case = Case::new(b, h, 64, lens, first, cosine, seed);
        for exec in executors() {
            check_backward(exec, &case, layout, seed);
        }
    }

    /// The causal mode (Open-MAGVIT2's spatial attention) against the CPU reference with a
    /// causal mask, forward and backward, past the 32 blocks a table holds, the whole sequence
    /// or queries from any position against a cache.
    #[test]
    fn causal_mode_matches_the_cpu_attention(b in 1usize..=2, h in 1usize..=2, len in 1usize..=150, start_pick in 0usize..4,
                                             cosine: bool, layout in 0usize..2, seed: u64) {
        let first = if start_pick < 2 { 0 } else { seed as usize % len };
        let mut case = Case::new(b, h, 64, vec![1; len], first, cosine, seed);
        case.causal = true;
        for exec in executors() {
            check_forward(exec, &case, layout);
            check_backward(exec, &case, layout, seed);
        }
    }
}

/// A case whose head-scale gradient cancels to a fraction of its terms (it once broke a bound
/// taken relative to the result).
#[test]
fn head_scale_gradient_with_cancellation() {
    let case = Case::new(2, 2, 64, vec![7, 8, 9, 23], 0, true, 3908771339215829919);
    for exec in executors() {
        check_backward(exec, &case, 0, 3908771339215829919);
    }
}

/// Every head dim the presets use besides 64: 128 (the 2B's and the 8B's, the other build of
/// both kernels) and layer12–48's 96, 104, 112 and 120, which run in the 128-wide build with
/// zero columns; and 8 and 40 in the 64-wide one. Forward over the whole sequence and against
/// a cache, and backward, with plain and cosine scores.
#[test]
fn every_head_dim_forward_and_backward() {
    for d in [8, 40, 96, 104, 112, 120, 128] {
        for cosine in [false, true] {
            let seed = d as u64 * 2 + u64::from(cosine);
            let case = Case::new(1, 2, d, vec![1, 4, 9, 16, 41], 0, cosine, seed);
            let cached = Case::new(2, 1, d, vec![1, 4, 9, 16, 41], 4, cosine, seed ^ 1);
            for exec in executors() {
                check_forward(exec, &case, 1);
                check_forward(exec, &cached, 0);
                check_backward(exec, &case, 0, seed);
            }
        }
    }
}

/// Bad input is a typed error naming the op, never a panic or a launch.
#[test]
fn preconditions_are_typed_errors() {
    let exec = &executors()[0];
    let t = |shape: &[usize], dtype: DType| upload(exec, &Tensor::zeros(shape, dtype));
    let (q, k) = (t(&[1, 2, 5, 64], DType::BF16), t(&[1, 2, 5, 64], DType::BF16));
    let offsets = [0, 1, 5];
    let call = |q: &Tensor, k: &Tensor, v: &Tensor, offsets: &[usize], q_start, scores| {
        Attention { q, k, v, mask: BlockCausal { offsets, q_start }, scores }.forward(exec).map(|_| ())
    };
    let dot = Scores::Dot(0.125);
    const OP: &str = "attention_forward";
    assert!(call(&q, &k, &k, &offsets, 0, dot).is_ok());

    // Head dims off the 8-column grid, or wider than the kernels.
    for d in [36, 136] {
        let bad = t(&[1, 2, 5, d], DType::BF16);
        assert_invalid(call(&bad, &bad, &bad, &offsets, 0, dot), OP);
    }
    for bad in [&[0, 5, 1][..], &[0, 1, 4], &[1, 5], &[0, 2, 2, 5], &[5]] {
        assert_invalid(call(&q, &k, &k, bad, 0, dot), OP);
    }
    assert_invalid(call(&q, &k, &k, &offsets, 1, dot), OP);
    // No offsets is the causal mode, whose queries must be positions of the keys too.
    assert!(call(&q, &k, &k, &[], 0, dot).is_ok());
    assert_invalid(call(&q, &k, &k, &[], 1, dot), OP);
    // Rows 8-aligned in stride but starting one element into a 16-byte word.
    let misaligned = t(&[1, 2, 5, 72], DType::BF16).narrow(3, 1, 64).unwrap();
    assert_invalid(call(&misaligned, &k, &k, &offsets, 0, dot), OP);
    assert_invalid(call(&q, &t(&[1, 1, 5, 64], DType::BF16), &k, &offsets, 0, dot), OP);
    assert_invalid(call(&q, &k, &t(&[1, 2, 4, 64], DType::BF16), &[0, 4], 0, dot), OP);
    assert_invalid(call(&q, &k, &k, &offsets, 0, Scores::Dot(f32::NAN)), OP);
    let three_heads = t(&[3], DType::F32);
    assert_invalid(call(&q, &k, &k, &offsets, 0, Scores::Cosine(&three_heads)), OP);
    let f32_q = t(&[1, 2, 5, 64], DType::F32);
    assert!(matches!(call(&f32_q, &k, &k, &offsets, 0, dot), Err(Error::DTypeMismatch { op: OP, .. })));
    // Rows are moved as 16-byte words: their strides must be multiples of 8 elements.
    let wide = upload(exec, &Tensor::zeros(&[1, 2, 5, 72], DType::BF16).narrow(3, 8, 64).unwrap());
    assert!(call(&wide, &k, &k, &offsets, 0, dot).is_ok());
    let odd_rows = upload(exec, &Tensor::zeros(&[1, 2, 5, 68], DType::BF16).narrow(3, 0, 64).unwrap());
    assert_invalid(call(&odd_rows, &k, &k, &offsets, 0, dot), OP);
    let transposed = upload(exec, &Tensor::zeros(&[1, 2, 64, 5], DType::BF16).transpose(2, 3).unwrap());
    assert_invalid(call(&transposed, &k, &k, &offsets, 0, dot), OP);

    let attention = Attention { q: &q, k: &k, v: &k, mask: BlockCausal { offsets: &offsets, q_start: 0 }, scores: dot };
    // forward_into: a contiguous (B, Lq, H, D) tensor with room for the samples.
    assert!(attention.forward_into(exec, &mut t(&[2, 5, 2, 64], DType::BF16), 1).is_ok());
    for (shape, start) in [([1, 5, 2, 64], 1), ([1, 2, 5, 64], 0), ([1, 5, 2, 128], 0)] {
        assert_invalid(attention.forward_into(exec, &mut t(&shape, DType::BF16), start), OP);
    }
    let mut transposed = t(&[1, 2, 5, 64], DType::BF16).permute(&[0, 2, 1, 3]).unwrap();
    assert_invalid(attention.forward_into(exec, &mut transposed, 0), OP);
    assert!(matches!(
        attention.forward_into(exec, &mut t(&[1, 5, 2, 64], DType::F32), 0),
        Err(Error::DTypeMismatch { op: OP, .. })
    ));
    // Packed keys: offsets that cover k's rows exactly, k of one sample, the one-block mask.
    let (q2, k1) = (t(&[2, 2, 5, 64], DType::BF16), t(&[1, 2, 7, 64], DType::BF16));
    let packed = |q: &Tensor, k: &Tensor, offsets: &[usize], lens: &[usize]| {
        let keys = PackedKeys::new(exec, lens).unwrap();
        let call = Attention { q, k, v: k, mask: BlockCausal { offsets, q_start: 0 }, scores: dot };
        call.forward_packed_into(exec, &keys, &mut t(&[2, 5, 2, 64], DType::BF16), 0)
    };
    assert!(packed(&q2, &k1, &[0, 7], &[3, 4]).is_ok());
    assert_invalid(packed(&q2, &k1, &[0, 7], &[3, 3]), OP);
    assert_invalid(packed(&q2, &k1, &[0, 7], &[7]), OP);
    assert_invalid(packed(&q2, &k1, &[0, 3, 7], &[3, 4]), OP);
    assert_invalid(packed(&q2, &t(&[2, 2, 7, 64], DType::BF16), &[0, 7], &[3, 4]), OP);
    for lens in [&[][..], &[3, 0, 4]] {
        assert_invalid(PackedKeys::new(exec, lens), "packed_keys");
    }
    let output = attention.forward(exec).unwrap();
    assert_invalid(attention.backward(exec, &output, &t(&[1, 2, 4, 64], DType::BF16)), "attention_backward");
}
