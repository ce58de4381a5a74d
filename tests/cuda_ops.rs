//! The row-norm, softmax, elementwise, embedding and RoPE kernels (cuda/kernels/norm.cu,
//! elementwise.cu, index.cu, rope.cu) against the CPU references of ops/, by property tests:
//! odd sizes, sizes that are not multiples of the block sizes, B > 1, strided, offset and
//! broadcast (stride 0) inputs, f32 and bf16. Every body runs on each executor of
//! `infinity_cuda::testing::executors()`: the CPU shim everywhere, a GPU as well when present.
//!
//! Exactness: add, multiply and the embedding gather are exact (bit for bit); the norms,
//! softmax, activations and RoPE use f32 reductions and the library's expf, and each test
//! writes down the rounding bound it holds them to, relative to the f64 references. ε is
//! f32::EPSILON = 2u; bf16 outputs add half a bf16 ulp, at most 2⁻⁸ relative.

#[allow(dead_code)] // this binary uses part of the op tests' helpers
#[path = "ops/support.rs"]
mod support;

#[path = "common/cuda.rs"]
mod cuda_support;

use cuda_support::{assert_dtype_error, assert_invalid, host, upload};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

use infinity::ops::elementwise::reference as elementwise;
use infinity::ops::index::{concat, embedding as cpu_embedding};
use infinity::ops::norm::reference::{
    group_norm as cpu_group_norm, l2_normalize as cpu_l2_normalize, rms_norm as cpu_rms_norm,
};
use infinity::ops::rope::reference::rope_interleaved as cpu_rope;
use infinity::ops::rope::rope2d_table;
use infinity::ops::softmax::reference::softmax as cpu_softmax;
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Tensor};
use infinity_cuda::elementwise::{self as gpu_elementwise, BinaryOp, UnaryOp};
use infinity_cuda::norm::RowStat;
use infinity_cuda::testing::executors;
use infinity_cuda::{Executor, index, norm, rope};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use support::{padded_view, randn, strided_copy};

const EPS: f32 = f32::EPSILON;
/// Half an ulp of bf16 relative to the value: the rounding of a bf16 output.
const BF16_HALF_ULP: f32 = 1.0 / 256.0;

/// The shim runs each case's launch in milliseconds (a few thousand emulated threads at most).
fn config() -> ProptestConfig {
    ProptestConfig { cases: 32, ..ProptestConfig::default() }
}

/// `t` stored contiguously (0), in reversed dimension order (1), or inside a wider buffer at an
/// offset (2, f32 only; other dtypes fall back to 1): the kernels take strides.
fn arrange(t: &Tensor, layout: usize) -> Tensor {
    match layout {
        0 => t.clone(),
        2 if t.dtype() == DType::F32 => padded_view(t),
        _ => strided_copy(t, &(0..t.rank()).rev().collect::<Vec<_>>()),
    }
}

fn dtype(use_bf16: bool) -> DType {
    if use_bf16 { DType::BF16 } else { DType::F32 }
}

/// `t` rounded to `dtype` and back: the f32 values the reference sees for a `dtype` input.
fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// |got − want| ≤ bound elementwise (NaN only where want is NaN), with the dtype and shape of
/// the reference's.
fn check_within(
    exec: &Executor,
    got: &Tensor,
    want: &Tensor,
    bound: impl Fn(usize, f32) -> f32,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), want.shape(), "{}: shape", exec.name());
    for (i, (g, w)) in got.to_f32_vec().unwrap().into_iter().zip(want.to_f32_vec().unwrap()).enumerate() {
        let tol = bound(i, w);
        let ok = if w.is_nan() { g.is_nan() } else { (g - w).abs() <= tol };
        prop_assert!(ok, "{}: index {}: got {} want {} bound {}", exec.name(), i, g, w, tol);
    }
    Ok(())
}

/// A bound for an f32 result, widened for a bf16 output's final rounding.
fn output_bound(f32_bound: f32, want: f32, bf16_out: bool) -> f32 {
    if bf16_out { f32_bound * (1.0 + BF16_HALF_ULP) + BF16_HALF_ULP * want.abs() } else { f32_bound }
}

/// A broadcast operand for the output shape `shape`: each dimension kept or set to 1 (bit i of
/// `ones`), and the `drop` leading dimensions removed (rank ≥ 1 is kept).
fn operand_shape(shape: &[usize], ones: u8, drop: usize) -> Vec<usize> {
    let own: Vec<usize> = shape.iter().enumerate().map(|(i, &n)| if (ones >> i) & 1 == 1 { 1 } else { n }).collect();
    own[drop.min(own.len() - 1)..].to_vec()
}

proptest! {
    #![proptest_config(config())]

    /// RMS norm against ops' f64 reference. The kernel's f32 sum of D squares errs by at most
    /// D·u relative (positive terms); the mean, + eps, the root and the reciprocal add 4u, the
    /// root halving what came before; the two products 2u and the reference's rounding u: in
    /// all below (D/4 + 4)·ε relative, which the test doubles for the higher-order terms.
    #[test]
    fn rms_norm_matches_the_reference(b in 1usize..=2, n in 1usize..=5, d in 1usize..=300, weighted: bool,
                                      flat: bool, use_bf16: bool, layout in 0usize..3, seed: u64) {
        let shape = if flat { vec![b * n, d] } else { vec![b, n, d] };
        let x = rounded(&randn(&shape, seed, 1.5), dtype(use_bf16));
        let weight = randn(&[d], seed ^ 1, 1.0);
        let weight = weighted.then_some(&weight);
        let want = cpu_rms_norm(&x, weight, 1e-6).unwrap();
        let input = arrange(&x.to_dtype(dtype(use_bf16)).unwrap(), layout);
        for exec in executors() {
            let w = weight.map(|w| upload(exec, &padded_view(w)));
            let got = host(exec, norm::row_norm(exec, RowStat::Rms, &upload(exec, &input), w.as_ref(), None, 1e-6));
            prop_assert_eq!(got.dtype(), input.dtype());
            check_within(exec, &got, &want, |_, w| output_bound((d as f32 / 2.0 + 8.0) * EPS * w.abs(), w, use_bf16))?;
        }
    }

    /// Group norm (+ SiLU) against ops' f64 reference, groups that are not multiples of the
    /// block size, means far from 0. See `group_norm_bound` for the bound.
    #[test]
    fn group_norm_matches_the_reference(n in 1usize..=2, groups in prop::sample::select(vec![1usize, 2, 4]),
                                        per_group in 1usize..=3, h in 1usize..=7, w in 1usize..=7,
                                        mean in -4.0f32..4.0, silu: bool, layout in 0usize..3, seed: u64) {
        let c = groups * per_group;
        let x = elementwise::add_scalar(&randn(&[n, c, h, w], seed, 1.5), mean).unwrap();
        let (weight, bias) = (randn(&[c], seed ^ 1, 1.0), randn(&[c], seed ^ 2, 1.0));
        let affine = cpu_group_norm(&x, groups, Some(&weight), Some(&bias), 1e-6).unwrap();
        let want = if silu { elementwise::silu(&affine).unwrap() } else { affine.clone() };
        let bound = group_norm_bound(&x, groups, &weight, &affine, silu);
        let input = arrange(&x, layout);
        for exec in executors() {
            let (dw, db) = (upload(exec, &padded_view(&weight)), upload(exec, &bias));
            let got = host(exec, norm::group_norm(exec, &upload(exec, &input), groups, &dw, &db, 1e-6, silu));
            check_within(exec, &got, &want, |i, w| bound[i] + 8.0 * EPS * w.abs())?;
        }
    }

    /// Softmax against ops' f64 reference. e^(x − m) is off by |x − m|·u from the rounded
    /// difference plus 2 ulp from expf (GPU; glibc's is better); the sum of D positive terms by
    /// D·u relative; the reciprocal and the product 2u. With R = max |x − m| of the row, each
    /// output is within (D + 2R + 8)·ε relative (twice the first-order sum).
    #[test]
    fn softmax_matches_the_reference(b in 1usize..=2, n in 1usize..=4, d in 1usize..=300, scale in 0.1f32..8.0,
                                     flat: bool, layout in 0usize..3, seed: u64) {
        let shape = if flat { vec![b * n * d] } else { vec![b, n, d] };
        let x = randn(&shape, seed, scale);
        let want = cpu_softmax(&x, x.rank() - 1).unwrap();
        let width = *shape.last().unwrap();
        let spread: Vec<f32> = x.to_f32_vec().unwrap().chunks(width)
            .map(|row| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter().map(|v| (v - m).abs()).fold(0.0, f32::max)
            })
            .collect();
        let input = arrange(&x, layout);
        for exec in executors() {
            let got = host(exec, norm::softmax(exec, &upload(exec, &input)));
            check_within(exec, &got, &want, |i, w| (width as f32 + 2.0 * spread[i / width] + 8.0) * EPS * w)?;
        }
    }

    /// Broadcast add and multiply equal the CPU's bit for bit (each output is one correctly
    /// rounded f32 operation on exact inputs), with operands of lower rank, size-1 dimensions,
    /// stride-0 views and strided layouts; bf16 inputs are widened exactly.
    #[test]
    fn binary_ops_broadcast_exactly(shape in prop::collection::vec(1usize..=6, 1..=4), ones_a: u8, ones_b: u8,
                                    drop_a in 0usize..=3, drop_b in 0usize..=3, expand_b: bool, multiply: bool,
                                    use_bf16: bool, layout in 0usize..3, seed: u64) {
        let (sa, sb) = (operand_shape(&shape, ones_a, drop_a), operand_shape(&shape, ones_b, drop_b));
        let a = rounded(&randn(&sa, seed, 2.0), dtype(use_bf16));
        let b = rounded(&randn(&sb, seed ^ 1, 2.0), dtype(use_bf16));
        let (cpu, op) = if multiply { (elementwise::mul(&a, &b), BinaryOp::Mul) } else { (elementwise::add(&a, &b), BinaryOp::Add) };
        let want = cpu.unwrap();
        let a_in = arrange(&a.to_dtype(dtype(use_bf16)).unwrap(), layout);
        let b_in = b.to_dtype(dtype(use_bf16)).unwrap();
        // A view with stride 0 where the operand is broadcast, as the backend may pass one.
        let b_in = if expand_b { b_in.broadcast_to(want.shape()).unwrap() } else { arrange(&b_in, 2 - layout) };
        for exec in executors() {
            let got = host(exec, gpu_elementwise::binary(exec, op, &upload(exec, &a_in), &upload(exec, &b_in)));
            prop_assert!(got.same_values(&want), "{}: {:?} {:?} -> {:?}, got {:?} want {:?}", exec.name(), sa, sb, shape, got, want);
        }
    }

    /// Tanh GELU and SiLU against ops' f64 references. Both are x / (1 + e^−z), z = x for SiLU
    /// and 2√(2/π)·(x + 0.044715x³) for the GELU, formed with at most 5 roundings (relative 5u
    /// of z, no cancellation: both terms share x's sign); e^−z then errs by |z|·5u + 2 ulp, and
    /// the sum and division add 2u, so the result is within (3|z| + 6)·ε relative; the test
    /// allows (6|z| + 8)·ε and the smallest normal absolutely. The GELU reference forms
    /// 1 + tanh in f64, which cancels for very negative x: it is only within 2⁻⁵²·|x| of the
    /// true value there, which the bound adds.
    #[test]
    fn activations_match_the_reference(shape in prop::collection::vec(1usize..=7, 1..=4), gelu: bool, scale in 0.5f32..4.0,
                                       use_bf16: bool, bf16_out: bool, layout in 0usize..3, seed: u64) {
        let x = rounded(&randn(&shape, seed, scale), dtype(use_bf16));
        // bf16 outputs come from bf16 inputs only.
        let out = dtype(use_bf16 && bf16_out);
        let (want, op) = if gelu { (elementwise::gelu_tanh(&x), UnaryOp::GeluTanh) } else { (elementwise::silu(&x), UnaryOp::Silu) };
        let want = want.unwrap();
        let xs = x.to_f32_vec().unwrap();
        let two_k = (2.0 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2) as f32;
        let z = |v: f32| if gelu { two_k * (v + 0.044715 * v * v * v) } else { v };
        let input = arrange(&x.to_dtype(dtype(use_bf16)).unwrap(), layout);
        for exec in executors() {
            let got = host(exec, gpu_elementwise::unary(exec, op, &upload(exec, &input), out));
            prop_assert_eq!(got.dtype(), out);
            let reference_error = |v: f32| if gelu { f64::EPSILON as f32 * v.abs() } else { 0.0 };
            check_within(exec, &got, &want, |i, w| {
                let f32_bound = (6.0 * z(xs[i]).abs() + 8.0) * EPS * w.abs() + reference_error(xs[i]);
                output_bound(f32_bound, w, out == DType::BF16) + f32::MIN_POSITIVE
            })?;
        }
    }

    /// `cast` copies any strided f32/bf16 view (uploaded strided, or a device-side narrow and
    /// permute of an upload) into a contiguous tensor of either dtype: exact, except f32 → bf16,
    /// which rounds to nearest even as the host's `to_dtype` does.
    #[test]
    fn cast_gathers_views_and_rounds_like_the_host(shape in prop::collection::vec(1usize..=6, 1..=4), from_bf16: bool,
                                                   to_bf16: bool, layout in 0usize..3, device_view: bool, seed: u64) {
        let x = randn(&shape, seed, 3.0).to_dtype(dtype(from_bf16)).unwrap();
        let input = arrange(&x, layout);
        // The same elements reached through device-side views: a reversed permutation of a
        // tensor one row longer along dimension 0, narrowed back.
        let rank = shape.len();
        let reversed: Vec<usize> = (0..rank).rev().collect();
        let padded = concat(&[&x, &x.narrow(0, 0, 1).unwrap()], 0).unwrap().permute(&reversed).unwrap().contiguous().unwrap();
        for exec in executors() {
            let source = if device_view {
                upload(exec, &padded).permute(&reversed).unwrap().narrow(0, 0, shape[0]).unwrap()
            } else {
                upload(exec, &input)
            };
            let got = host(exec, gpu_elementwise::cast(exec, &source, dtype(to_bf16)));
            let want = x.to_dtype(dtype(to_bf16)).unwrap();
            prop_assert!(got.layout().is_contiguous(), "{}: contiguous", exec.name());
            prop_assert!(got.same_values(&want), "{}: {:?} got {:?} want {:?}", exec.name(), shape, got, want);
        }
    }

    /// `copy_into` writes a source into rows `start..` of one dimension of a larger tensor (the KV
    /// cache's append) and leaves every other element as it was.
    #[test]
    fn copy_into_writes_only_its_slice(shape in prop::collection::vec(1usize..=5, 1..=4), dim_pick: usize, extra in 0usize..=4,
                                       start_pick: usize, src_bf16: bool, dst_bf16: bool, seed: u64) {
        let dim = dim_pick % shape.len();
        let start = start_pick % (extra + 1);
        let mut big = shape.clone();
        big[dim] += extra;
        let src = randn(&shape, seed, 2.0).to_dtype(dtype(src_bf16)).unwrap();
        let dst = randn(&big, seed ^ 7, 2.0).to_dtype(dtype(dst_bf16)).unwrap();
        // The host's answer: the destination's rows before, the (cast) source, the rows after.
        let after = big[dim] - start - shape[dim];
        let parts = [dst.narrow(dim, 0, start).ok(), Some(src.to_dtype(dtype(dst_bf16)).unwrap()), dst.narrow(dim, start + shape[dim], after).ok()];
        let parts: Vec<&Tensor> = parts.iter().flatten().filter(|t| t.numel() > 0).collect();
        let want = concat(&parts, dim).unwrap();
        for exec in executors() {
            let mut target = upload(exec, &dst);
            gpu_elementwise::copy_into(exec, &upload(exec, &src), &mut target, dim, start).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            let got = target.to_cpu().unwrap();
            prop_assert!(got.same_values(&want), "{}: {:?} into {:?} at {} of dim {}", exec.name(), shape, big, start, dim);
        }
    }

    /// The embedding gather equals ops' `embedding` exactly, for f32 and bf16 tables (strided
    /// too) and I64 or I32 ids of rank 1 to 3 (strided too).
    #[test]
    fn embedding_gathers_the_rows(vocab in 1usize..=20, width in 1usize..=40, ids_shape in prop::collection::vec(1usize..=5, 1..=3),
                                  use_bf16: bool, i32_ids: bool, layout in 0usize..3, seed: u64) {
        let table = randn(&[vocab, width], seed, 1.0).to_dtype(dtype(use_bf16)).unwrap();
        let count = ids_shape.iter().product();
        let raw: Vec<i64> = Philox::new(seed ^ 1).uniform(count).into_iter().map(|u| (u * vocab as f32) as i64 % vocab as i64).collect();
        let ids = Tensor::from_vec(raw, &ids_shape).unwrap();
        let ids = if i32_ids { Tensor::from_vec(ids.to_vec::<i64>().unwrap().into_iter().map(|i| i as i32).collect(), &ids_shape).unwrap() } else { ids };
        let want = cpu_embedding(&table, &ids).unwrap();
        let (table_in, ids_in) = (arrange(&table, layout), strided_copy(&ids, &(0..ids.rank()).rev().collect::<Vec<_>>()));
        for exec in executors() {
            let got = host(exec, index::embedding(exec, &upload(exec, &table_in), &upload(exec, &ids_in)));
            prop_assert!(got.same_values(&want), "{}: got {:?} want {:?}", exec.name(), got, want);
        }
    }

    /// Interleaved RoPE with rope2d_table's tables against ops' f64 reference: each output is
    /// c·a ∓ s·b from two rounded products and one rounded sum (or an FMA), within
    /// ε·(|c·a| + |s·b|) of the exact value, plus ε·|want| for the reference's rounding.
    #[test]
    fn rope_matches_the_reference(b in 1usize..=2, heads in 1usize..=3, len in 1usize..=6,
                                  d in prop::sample::select(vec![4usize, 8, 12, 64]), use_bf16: bool,
                                  padded_tables: bool, layout in 0usize..3, seed: u64) {
        let positions: Vec<(usize, usize)> = (0..len).map(|l| (l / 3 + seed as usize % 5, l % 3 + 2 * (seed as usize % 7))).collect();
        let (cos, sin) = rope2d_table(&positions, d, 10_000.0).unwrap();
        let x = rounded(&randn(&[b, heads, len, d], seed, 2.0), dtype(use_bf16));
        let want = cpu_rope(&x, &cos, &sin).unwrap();
        let bound = rope_bound(&x, &cos, &sin);
        let input = arrange(&x.to_dtype(dtype(use_bf16)).unwrap(), layout);
        let (cos_in, sin_in) = if padded_tables { (padded_view(&cos), padded_view(&sin)) } else { (cos.clone(), sin.clone()) };
        for exec in executors() {
            let got = host(exec, rope::rope_interleaved(exec, &upload(exec, &input), &upload(exec, &cos_in), &upload(exec, &sin_in)));
            prop_assert_eq!(got.dtype(), input.dtype());
            check_within(exec, &got, &want, |i, w| output_bound(bound[i] + EPS * w.abs(), w, use_bf16))?;
        }
    }

    /// The fused attention inputs against the CPU block's own ops: q̃ = rope(l2_normalize(q)·s),
    /// k̃ = rope(l2_normalize(k)) and v, q̃ returned and k̃, v written into the caches at
    /// `start..start + n`, every other cache position left as it was. Normalised components
    /// are at most 1 (q̃'s at most s), so the f32 arithmetic of kernel and reference each err
    /// by a few ε·s; the bf16 output adds half an ulp.
    #[test]
    fn attention_inputs_match_the_block(b in 1usize..=2, heads in 1usize..=3, n in 1usize..=7, start in 0usize..5,
                                        d in prop::sample::select(vec![8usize, 64, 96, 104, 112, 120, 128]), transposed: bool, seed: u64) {
        let positions: Vec<(usize, usize)> = (0..n).map(|l| (l / 3, l % 3 + seed as usize % 4)).collect();
        let (cos, sin) = rope2d_table(&positions, d, 10_000.0).unwrap();
        let qkv = rounded(&randn(&[b, n, 3, heads, d], seed, 2.0), DType::BF16);
        // Head 0 zero now and then: the norm's floor keeps it zero.
        let keep: Vec<f32> = (0..heads).map(|h| if h == 0 && seed % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let qkv = elementwise::mul(&qkv, &Tensor::from_vec(keep, &[heads, 1]).unwrap()).unwrap();
        let head_scale = elementwise::add_scalar(&randn(&[heads], seed ^ 1, 1.0), 3.0).unwrap();
        let part = |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap().permute(&[0, 2, 1, 3]).unwrap().contiguous().unwrap();
        let scale_column = head_scale.reshape(&[1, heads, 1, 1]).unwrap();
        let q_want = cpu_rope(&elementwise::mul(&cpu_l2_normalize(&part(0), 1e-12).unwrap(), &scale_column).unwrap(), &cos, &sin).unwrap();
        let k_want = cpu_rope(&cpu_l2_normalize(&part(1), 1e-12).unwrap(), &cos, &sin).unwrap();
        let cache_len = start + n + 2;
        let cache = rounded(&randn(&[b, heads, cache_len, d], seed ^ 2, 1.0), DType::BF16).to_dtype(DType::BF16).unwrap();
        let input = qkv.to_dtype(DType::BF16).unwrap();
        // Stored with tokens outermost: the kernel takes any strides but D's.
        let input = if transposed { strided_copy(&input, &[1, 0, 2, 3, 4]) } else { input };
        let tolerance = |scale: f32| move |_: usize, w: f32| output_bound(64.0 * EPS * scale, w, true);
        let s_max = head_scale.to_f32_vec().unwrap().into_iter().fold(0f32, |m, v| m.max(v.abs()));
        for exec in executors() {
            let (mut k_cache, mut v_cache) = (upload(exec, &cache), upload(exec, &cache));
            let q = rope::attention_inputs(exec, &upload(exec, &input), &upload(exec, &cos), &upload(exec, &sin),
                                           &upload(exec, &head_scale), &mut k_cache, &mut v_cache, start);
            let q = host(exec, q);
            check_within(exec, &q.to_dtype(DType::F32).unwrap(), &q_want, tolerance(s_max))?;
            let download = |t: &Tensor| t.to_cpu().unwrap().to_dtype(DType::F32).unwrap();
            let (k_got, v_got) = (download(&k_cache), download(&v_cache));
            check_within(exec, &k_got.narrow(2, start, n).unwrap(), &k_want, tolerance(1.0))?;
            prop_assert!(v_got.narrow(2, start, n).unwrap().same_values(&part(2)), "{}: v", exec.name());
            for got in [&k_got, &v_got] {
                for (from, len) in [(0, start), (start + n, cache_len - start - n)] {
                    if len > 0 {
                        let kept = got.narrow(2, from, len).unwrap();
                        prop_assert!(kept.same_values(&cache.to_dtype(DType::F32).unwrap().narrow(2, from, len).unwrap()),
                                     "{}: cache positions {}..{} were written", exec.name(), from, from + len);
                    }
                }
            }
        }
    }
}

/// Per-element bound of the group norm (before the final ε·|want| the caller adds). The f32
/// sums over a group's m elements err by at most m·ε relative to Σ|x| (any order), which
/// moves the normalised value by m·ε·(κ + |n̂|), κ = mean|x| / std of the group; the affine
/// step scales that by |w| and adds 2ε·|n̂·w| + ε·|y|. The test takes (m + 4)·ε·(κ + |n̂|)·|w| +
/// 2ε·|y|. SiLU, whose slope is at most 1.1, carries that over and adds its own (|y| + 6)·ε
/// relative (see `activations_match_the_reference`).
fn group_norm_bound(x: &Tensor, groups: usize, weight: &Tensor, affine: &Tensor, silu: bool) -> Vec<f32> {
    let &[n, c, h, w] = x.shape() else { unreachable!("group norm inputs are 4-D") };
    let (xv, wv, yv) = (x.to_f32_vec().unwrap(), weight.to_f32_vec().unwrap(), affine.to_f32_vec().unwrap());
    let members = c / groups * h * w;
    let mut bound = vec![0f32; xv.len()];
    for (g, group) in xv.chunks(members).enumerate() {
        let count = members as f64;
        let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
        let std = (group.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / count + 1e-6).sqrt();
        let kappa = (group.iter().map(|&v| f64::from(v.abs())).sum::<f64>() / count / std) as f32;
        for (j, &v) in group.iter().enumerate() {
            let i = g * members + j;
            let normalized = ((f64::from(v) - mean) / std) as f32;
            let channel = i / (h * w) % c;
            let y = yv[i];
            let affine_bound = (members as f32 + 4.0) * EPS * (kappa + normalized.abs()) * wv[channel].abs()
                + 2.0 * EPS * (normalized * wv[channel]).abs()
                + 2.0 * EPS * y.abs();
            bound[i] = if silu {
                1.1 * affine_bound + (y.abs() + 6.0) * EPS * (y / (1.0 + (-y).exp())).abs()
            } else {
                affine_bound
            };
        }
    }
    debug_assert_eq!(bound.len(), n * c * h * w);
    bound
}

/// ε·(|c·a| + |s·b|) for out[2j] and ε·(|s·a| + |c·b|) for out[2j+1] (the same sum), per
/// output element of the rotation of x (B, H, L, D) by (L, D/2) tables.
fn rope_bound(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Vec<f32> {
    let &[.., len, d] = x.shape() else { unreachable!("rope inputs are 4-D") };
    let (xv, cv, sv) = (x.to_f32_vec().unwrap(), cos.to_f32_vec().unwrap(), sin.to_f32_vec().unwrap());
    let half = d / 2;
    let mut bound = vec![0f32; xv.len()];
    for (row, pairs) in xv.chunks(d).enumerate() {
        let l = row % len;
        for (j, pair) in pairs.chunks(2).enumerate() {
            let (c, s) = (cv[l * half + j].abs(), sv[l * half + j].abs());
            let (a, b) = (pair[0].abs(), pair[1].abs());
            bound[row * d + 2 * j] = EPS * (c * a + s * b);
            bound[row * d + 2 * j + 1] = EPS * (s * a + c * b);
        }
    }
    bound
}

/// Rows that hold NaN or +inf, or only −inf, come out all NaN, as on the CPU; −inf entries of
/// an otherwise finite row get probability 0.
#[test]
fn softmax_special_rows_follow_the_cpu() {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let rows = [[1.0, nan, 2.0], [inf, 0.0, 1.0], [-inf, -inf, -inf], [-inf, 0.0, 0.0]];
    let x = Tensor::from_vec(rows.concat(), &[4, 3]).unwrap();
    let want = cpu_softmax(&x, 1).unwrap().to_f32_vec().unwrap();
    assert!(want[..9].iter().all(|v| v.is_nan()) && want[9..] == [0.0, 0.5, 0.5], "{want:?}");
    for exec in executors() {
        let got = host(exec, norm::softmax(exec, &upload(exec, &x))).to_f32_vec().unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{}: {i}: {g} vs {w}", exec.name());
        }
    }
}

/// An id outside 0..V is an error naming the id and its position, for both id dtypes.
#[test]
fn embedding_rejects_ids_out_of_range() {
    let table = randn(&[5, 3], 0, 1.0);
    for exec in executors() {
        let t = upload(exec, &table);
        let ids = Tensor::from_vec(vec![0i64, 4, 5, 1], &[2, 2]).unwrap();
        let err = index::embedding(exec, &t, &upload(exec, &ids)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("embedding_f32_i64") && err.contains("index 5 at flat position 2 is outside 0..5"),
            "{err}"
        );
        let ids = Tensor::from_vec(vec![-1i32, 2], &[2]).unwrap();
        let err = index::embedding(exec, &t, &upload(exec, &ids)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("index -1 at flat position 0"), "{err}");
    }
}

/// Bad input is a typed error naming the kernel, never a panic or a launch.
#[test]
fn preconditions_are_typed_errors() {
    let exec = &executors()[0];
    let t = |shape: &[usize], dtype: DType| upload(exec, &Tensor::zeros(shape, dtype));
    let x = t(&[2, 3, 8], DType::F32);

    let rms = |x: &Tensor, w: Option<&Tensor>, eps| norm::row_norm(exec, RowStat::Rms, x, w, None, eps);
    assert_invalid(rms(&x, Some(&t(&[7], DType::F32)), 1e-6), "row_norm_f32");
    assert_invalid(rms(&x, None, f32::NAN), "row_norm_f32");
    assert_invalid(rms(&t(&[1, 1, 1, 1, 8], DType::F32), None, 1e-6), "row_norm_f32");
    assert_dtype_error(rms(&t(&[2, 8], DType::I32), None, 1e-6));
    assert_dtype_error(rms(&x, Some(&t(&[8], DType::BF16)), 1e-6));

    let image = t(&[1, 6, 2, 2], DType::F32);
    let (w6, b6) = (t(&[6], DType::F32), t(&[6], DType::F32));
    assert_invalid(norm::group_norm(exec, &image, 4, &w6, &b6, 1e-6, true), "group_norm");
    assert_invalid(norm::group_norm(exec, &image, 0, &w6, &b6, 1e-6, true), "group_norm");
    assert_invalid(norm::group_norm(exec, &image, 3, &w6, &t(&[5], DType::F32), 1e-6, false), "group_norm");
    assert_invalid(norm::group_norm(exec, &image, 3, &w6, &b6, -1.0, false), "group_norm");
    assert_invalid(norm::group_norm(exec, &x, 1, &w6, &b6, 1e-6, false), "group_norm");

    assert_dtype_error(norm::softmax(exec, &t(&[2, 8], DType::BF16)));

    assert_invalid(gpu_elementwise::add(exec, &x, &t(&[3, 3], DType::F32)), "binary_f32");
    assert_invalid(gpu_elementwise::mul(exec, &t(&[1, 1, 1, 1, 2], DType::F32), &x), "binary_f32");
    assert_dtype_error(gpu_elementwise::add(exec, &x, &t(&[8], DType::BF16)));
    assert_dtype_error(gpu_elementwise::silu(exec, &t(&[8], DType::U8), DType::F32));
    assert_dtype_error(gpu_elementwise::silu(exec, &t(&[8], DType::F32), DType::BF16));
    assert_invalid(gpu_elementwise::gelu_tanh(exec, &t(&[1, 1, 1, 1, 2], DType::BF16), DType::F32), "unary_bf16");

    let mut cache = t(&[2, 4, 8], DType::BF16);
    assert_invalid(gpu_elementwise::copy_into(exec, &x, &mut cache, 1, 2), "copy_f32_bf16");
    assert_invalid(gpu_elementwise::copy_into(exec, &x, &mut cache, 3, 0), "copy_f32_bf16");
    let view = cache.narrow(1, 0, 3).unwrap();
    assert_invalid(gpu_elementwise::copy_into(exec, &x, &mut cache, 1, 0), "copy_f32_bf16");
    drop(view);
    assert!(gpu_elementwise::copy_into(exec, &x, &mut cache, 1, 1).is_ok(), "owned again once the view is gone");
    assert_dtype_error(gpu_elementwise::cast(exec, &x, DType::I32));
    // A strided device view reshapes through a copy on the device, as a host view does.
    let host = Tensor::from_vec((0..24).map(|i| i as f32).collect::<Vec<_>>(), &[2, 3, 4]).unwrap();
    let flat = |t: &Tensor| t.permute(&[1, 0, 2]).unwrap().reshape(&[24]).unwrap();
    let on_device = flat(&host.to_device(&exec.device()).unwrap());
    assert!(on_device.device() == exec.device() && on_device.same_values(&flat(&host)));

    let table = t(&[5, 3], DType::F32);
    assert_invalid(index::embedding(exec, &t(&[5, 3, 1], DType::F32), &t(&[2], DType::I64)), "embedding_f32_i64");
    assert_dtype_error(index::embedding(exec, &table, &t(&[2], DType::F32)));

    let (cos, sin) = (t(&[3, 4], DType::F32), t(&[3, 4], DType::F32));
    assert_invalid(rope::rope_interleaved(exec, &t(&[1, 2, 3, 7], DType::F32), &cos, &sin), "rope_interleaved_f32");
    assert_invalid(rope::rope_interleaved(exec, &t(&[1, 2, 4, 8], DType::F32), &cos, &sin), "rope_interleaved_f32");
    assert_invalid(
        rope::rope_interleaved(exec, &t(&[1, 2, 3, 8], DType::BF16), &cos, &t(&[3, 3], DType::F32)),
        "rope_interleaved_bf16",
    );

    // attention_inputs: qkv (B, n, 3, H, D) with D even and at most 128, tables (n, D/2),
    // head_scale (H,), caches (B, H, L, D) with room for the scale.
    const OP: &str = "attention_inputs";
    let (cos, sin, scale) = (t(&[3, 32], DType::F32), t(&[3, 32], DType::F32), t(&[2], DType::F32));
    let cache = || t(&[1, 2, 8, 64], DType::BF16);
    let call = |qkv: &Tensor, cos: &Tensor, scale: &Tensor, k: &mut Tensor, start| {
        rope::attention_inputs(exec, qkv, cos, &sin, scale, k, &mut cache(), start).map(|_| ())
    };
    let qkv = t(&[1, 3, 3, 2, 64], DType::BF16);
    assert!(call(&qkv, &cos, &scale, &mut cache(), 5).is_ok());
    assert_invalid(call(&qkv, &cos, &scale, &mut cache(), 6), OP);
    assert_invalid(call(&t(&[1, 3, 2, 2, 64], DType::BF16), &cos, &scale, &mut cache(), 0), OP);
    assert_invalid(call(&t(&[1, 3, 3, 2, 32], DType::BF16), &cos, &scale, &mut cache(), 0), OP);
    // Too wide for a warp's two pairs per lane, and odd.
    let wide = |d: usize| (t(&[1, 3, 3, 2, d], DType::BF16), t(&[3, d / 2], DType::F32), t(&[1, 2, 8, d], DType::BF16));
    let (qkv_wide, cos_wide, mut cache_wide) = wide(136);
    let result = rope::attention_inputs(
        exec,
        &qkv_wide,
        &cos_wide,
        &cos_wide,
        &scale,
        &mut cache_wide.clone(),
        &mut cache_wide,
        0,
    );
    assert_invalid(result.map(|_| ()), OP);
    let (qkv_odd, cos_odd, mut cache_odd) = wide(63);
    let result =
        rope::attention_inputs(exec, &qkv_odd, &cos_odd, &cos_odd, &scale, &mut cache_odd.clone(), &mut cache_odd, 0);
    assert_invalid(result.map(|_| ()), OP);
    assert_invalid(call(&qkv, &t(&[2, 32], DType::F32), &scale, &mut cache(), 0), OP);
    assert_invalid(call(&qkv, &cos, &t(&[3], DType::F32), &mut cache(), 0), OP);
    let every_other = t(&[2, 2], DType::F32).narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    assert_invalid(call(&qkv, &cos, &every_other, &mut cache(), 0), OP);
    assert_invalid(call(&qkv, &cos, &scale, &mut t(&[1, 3, 8, 64], DType::BF16), 0), OP);
    let mut transposed = t(&[1, 2, 64, 8], DType::BF16).permute(&[0, 1, 3, 2]).unwrap();
    assert_invalid(call(&qkv, &cos, &scale, &mut transposed, 0), OP);
    assert_dtype_error(call(&t(&[1, 3, 3, 2, 64], DType::F32), &cos, &scale, &mut cache(), 0));
}
