//! The CUDA kernels against the CPU references, by property tests: odd sizes, sizes that are
//! not multiples of the block sizes, B > 1, several bit depths, strided inputs. Every body
//! runs on each executor of `infinity_cuda::testing::executors()`: the CPU shim (the very
//! .cu sources, built by g++) everywhere, a GPU as well when one is present.
//!
//! Exactness: the quantizer, resizes, sampler, Philox stream and gated residual round every
//! operation as the CPU code does, so they must agree bit for bit; the LayerNorm and the loss
//! use f32 reductions / transcendental functions and are held to written-down rounding bounds.

#[allow(dead_code)] // this binary uses part of the op tests' helpers
#[path = "ops/support.rs"]
mod support;

#[path = "common/cuda.rs"]
mod cuda_support;

use cuda_support::{assert_invalid, host, upload};
use infinity::models::bitvae::quantizer::quantize;
use infinity::ops::bitwise::sample_bits as cpu_sample_bits;
use infinity::ops::elementwise::{add, add_scalar, mul};
use infinity::ops::norm::layer_norm;
use infinity::ops::resize::{ResizeMode, resize};
use infinity::ops::softmax::reference::{log_softmax, softmax};
use infinity::ops::vq::nearest_code;
use infinity::runtime::half::bf16;
use infinity::runtime::rng::{Philox, philox_u32};
use infinity::runtime::{DType, Error, Tensor};
use infinity_cuda::bitwise_head::{Sampling, bit_loss, sample_bits};
use infinity_cuda::testing::executors;
use infinity_cuda::{adaln, quantize, rng};
use proptest::prelude::*;

use support::{padded_view, randn, strided_copy};

/// The shim runs a case's launches in milliseconds; 64 cases keep the file to seconds.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, ..ProptestConfig::default() }
}

/// `t` as stored contiguously (0), in reversed dimension order (1), or inside a wider buffer
/// at an offset (2): the kernels take strides.
fn arrange(t: &Tensor, layout: usize) -> Tensor {
    match layout {
        0 => t.clone(),
        1 => strided_copy(t, &(0..t.rank()).rev().collect::<Vec<_>>()),
        _ => padded_view(t),
    }
}

/// Scale grids for a latent of h×w: up to three smaller ones, coarse to fine, then h×w itself.
fn grids(h: usize, w: usize, fractions: &[(f64, f64)]) -> Vec<(usize, usize)> {
    let size = |f: f64, n: usize| ((f * n as f64).ceil() as usize).clamp(1, n);
    let mut g: Vec<(usize, usize)> = fractions.iter().map(|&(a, b)| (size(a, h), size(b, w))).collect();
    g.sort_by_key(|&(a, b)| a * b);
    g.push((h, w));
    g
}

proptest! {
    #![proptest_config(config())]

    /// Bilinear, bicubic and area resizes equal ops::resize's fast path exactly (the CPU
    /// quantizers').
    #[test]
    fn resizes_equal_the_cpu_path(b in 1usize..=2, c in 1usize..=3, h in 1usize..=17, w in 1usize..=17,
                                  oh in 1usize..=17, ow in 1usize..=17,
                                  mode in prop::sample::select(vec![ResizeMode::Bilinear, ResizeMode::Bicubic, ResizeMode::Area]),
                                  layout in 0usize..3, seed: u64) {
        let x = arrange(&randn(&[b, c, h, w], seed, 2.0), layout);
        let want = resize(&x, (oh, ow), mode).unwrap().to_f32_vec().unwrap();
        for exec in executors() {
            let dx = upload(exec, &x);
            let got = match mode {
                ResizeMode::Area => quantize::resize_area(exec, &dx, (oh, ow)),
                ResizeMode::Bicubic => quantize::resize_bicubic(exec, &dx, (oh, ow)),
                _ => quantize::resize_bilinear(exec, &dx, (oh, ow)),
            };
            prop_assert_eq!(host(exec, got).to_f32_vec().unwrap(), want.clone(), "{}", exec.name());
        }
    }

    /// The nearest-code search picks exactly the CPU's codes (the same f32 arithmetic).
    #[test]
    fn nearest_codes_equal_the_cpu_path(n in 1usize..=40, c in 1usize..=33, v in 1usize..=300, layout in 0usize..3, seed: u64) {
        let z = arrange(&randn(&[n, c], seed, 1.0), layout);
        let codebook = arrange(&randn(&[v, c], seed ^ 7, 1.0), layout);
        let want = nearest_code(&z, &codebook).unwrap().to_vec::<i64>().unwrap();
        for exec in executors() {
            let got = quantize::nearest_code(exec, &upload(exec, &z), &upload(exec, &codebook));
            prop_assert_eq!(host(exec, got).to_vec::<i64>().unwrap(), want.clone(), "{}", exec.name());
        }
    }

    /// The whole multi-scale quantizer (models' `quantize`, its ops on the executor): the
    /// same bits and residuals at every scale and the same code sum as on the CPU.
    #[test]
    fn quantizer_gives_the_cpu_bits(b in 1usize..=2, d in prop::sample::select(vec![1usize, 3, 16, 32, 56, 64]),
                                    h in 1usize..=13, w in 1usize..=13,
                                    fractions in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 0..=3),
                                    layout in 0usize..3, seed: u64) {
        let latent = arrange(&randn(&[b, d, h, w], seed, 1.0), layout);
        let grids = grids(h, w, &fractions);
        let want = quantize(&latent, &grids).unwrap();
        for exec in executors() {
            let got = quantize(&upload(exec, &latent), &grids).unwrap_or_else(|e| panic!("{e}"));
            for (k, (g, c)) in got.scales.iter().zip(&want.scales).enumerate() {
                prop_assert!(g.bits.same_values(&c.bits), "{}: bits of scale {} {:?}", exec.name(), k, grids[k]);
                let residual = g.pre_sign.to_cpu().unwrap();
                prop_assert!(residual.same_values(&c.pre_sign), "{}: residual of scale {}", exec.name(), k);
            }
            prop_assert_eq!(got.summed.to_f32_vec().unwrap(), want.summed.to_f32_vec().unwrap(), "{}: summed", exec.name());
        }
    }

    /// Guidance + temperature + top-p + Philox draws give the CPU op's bits for the same seed
    /// and offset, and advance the stream alike.
    #[test]
    fn sampled_bits_equal_the_cpu_sampler(b in 1usize..=2, n in 1usize..=23, d in prop::sample::select(vec![1usize, 3, 16, 32]),
                                          with_uncond: bool, cfg in 0.5f32..4.0, tau in 0.5f32..2.0,
                                          top_p in prop::sample::select(vec![0.0f32, 0.9, 0.97, 1.0]), greedy: bool,
                                          padded: bool, seed: u64, offset in 0u64..1 << 40) {
        let rows = if with_uncond { 2 * b } else { b };
        let raw = randn(&[rows, n, 2 * d], seed, 3.0);
        let raw = if padded { padded_view(&raw) } else { raw };
        let sampling = Sampling { cfg, tau, top_p, greedy };
        let mut cpu_rng = Philox { seed, offset };
        let want = cpu_sample_bits(&raw, b, &sampling, &mut cpu_rng).unwrap();
        for exec in executors() {
            let mut rng = Philox { seed, offset };
            let got = host(exec, sample_bits(exec, &upload(exec, &raw), b, &sampling, &mut rng));
            prop_assert!(got.same_values(&want), "{}: {:?} vs {:?}", exec.name(), got, want);
            prop_assert_eq!(rng, cpu_rng);
        }
    }

    /// The device's Philox words are the runtime's, across the 2^32 boundary of the block
    /// counter's low word too.
    #[test]
    fn philox_words_equal_the_runtime_stream(seed: u64, near_wrap: bool, start in 0u64..1 << 20, len in 1usize..=700) {
        let offset = if near_wrap { (1u64 << 34) - start % 1024 } else { start };
        let want: Vec<u32> = (0..len as u64).map(|i| philox_u32(seed, offset + i)).collect();
        for exec in executors() {
            let mut rng = Philox { seed, offset };
            let got = host(exec, rng::philox_words(exec, &mut rng, len)).to_vec::<i32>().unwrap();
            prop_assert_eq!(got.into_iter().map(|w| w as u32).collect::<Vec<_>>(), want.clone(), "{}", exec.name());
            prop_assert_eq!(rng.offset, offset + len as u64);
        }
    }

    /// Loss = −log_softmax[label] and gradient = (softmax − onehot)·scale against ops'
    /// f64-evaluated references. The kernel forms z = l_other − l_label in f32, an error of
    /// u·|z| that the loss (slope σ(z)) and the gradient (relative slope ≤ |z|) carry on; expf
    /// and log1pf add at most 2 ulp each on the GPU and a few roundings follow (8ε relative).
    /// The references round too: ln of the f64 sum 1 + e^z is off by up to 2⁻⁵³ (the kernel
    /// uses log1p), and p next to 1 is rounded before 1 is subtracted (ε·scale).
    #[test]
    fn bit_loss_equals_log_softmax(b in 1usize..=2, n in 1usize..=5, d in prop::sample::select(vec![1usize, 7, 32]),
                                   scale in 0.01f32..2.0, padded: bool, seed: u64) {
        let logits = randn(&[b, n, 2 * d], seed, 6.0);
        let logits = if padded { padded_view(&logits) } else { logits };
        let labels: Vec<u8> = Philox::new(seed ^ 1).uniform(b * n * d).into_iter().map(|u| u8::from(u < 0.5)).collect();
        let labels = Tensor::from_vec(labels, &[b, n, d]).unwrap();
        let pairs = logits.reshape(&[b * n * d, 2]).unwrap();
        let (logp, p) = (log_softmax(&pairs, 1).unwrap().to_vec::<f32>().unwrap(), softmax(&pairs, 1).unwrap().to_vec::<f32>().unwrap());
        let (l, y) = (pairs.to_vec::<f32>().unwrap(), labels.to_vec::<u8>().unwrap());
        let eps = f32::EPSILON;
        for exec in executors() {
            let got = bit_loss(exec, &upload(exec, &logits), &upload(exec, &labels), scale).unwrap_or_else(|e| panic!("{e}"));
            let (loss, grad) = (got.loss.to_f32_vec().unwrap(), got.grad.to_f32_vec().unwrap());
            for (i, &label) in y.iter().enumerate() {
                let at = 2 * i + usize::from(label);
                let z = l[4 * i + 1 - at] - l[at];
                let sigma = p[4 * i + 1 - at];
                let want = -logp[at];
                let tol = 8.0 * eps * want + eps * z.abs() * sigma + f64::EPSILON as f32;
                prop_assert!((loss[i] - want).abs() <= tol, "{}: loss {}: got {} want {}", exec.name(), i, loss[i], want);
                for k in [2 * i, 2 * i + 1] {
                    let want = (p[k] - f32::from(u8::from(k == at))) * scale;
                    let tol = (8.0 + z.abs()) * eps * want.abs() + eps * scale;
                    prop_assert!((grad[k] - want).abs() <= tol, "{}: grad {}: got {} want {}", exec.name(), k, grad[k], want);
                }
            }
        }
    }

    /// LN(x)·(1 + scale) + shift against models' `modulate` (ops' layer_norm in f64, then
    /// f32 ops), f32 and bf16 activations, f32 activations to bf16 outputs, C not a multiple
    /// of the 128-thread block.
    #[test]
    fn adaln_modulate_matches_layer_norm(b in 1usize..=2, n in 1usize..=5, c in 1usize..=700, mean in -4.0f32..4.0,
                                         use_bf16: bool, bf16_out: bool, padded: bool, seed: u64) {
        let x = add_scalar(&randn(&[b, n, c], seed, 1.5), mean).unwrap();
        let x = if use_bf16 { x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { x };
        let (scale, shift) = (randn(&[b, c], seed ^ 2, 0.5), randn(&[b, c], seed ^ 3, 0.5));
        let normalized = layer_norm(&x, None, None, 1e-6).unwrap();
        let want = add(&mul(&normalized, &add_scalar(&scale.unsqueeze(1).unwrap(), 1.0).unwrap()).unwrap(),
                       &shift.unsqueeze(1).unwrap()).unwrap();
        let out_dtype = if use_bf16 || bf16_out { DType::BF16 } else { DType::F32 };
        let bound = modulate_bound(&x, &normalized, &scale, &want, out_dtype == DType::BF16);
        // padded_view builds f32 views only; bf16 inputs stay contiguous.
        let input = match (use_bf16, padded) {
            (true, _) => x.to_dtype(DType::BF16).unwrap(),
            (false, true) => padded_view(&x),
            (false, false) => x.clone(),
        };
        for exec in executors() {
            let (scale, shift) = (upload(exec, &scale), upload(exec, &shift));
            let got = host(exec, adaln::modulate(exec, &upload(exec, &input), &scale, &shift, 1e-6, out_dtype));
            prop_assert_eq!(got.dtype(), out_dtype);
            for (i, ((g, w), tol)) in got.to_f32_vec().unwrap().iter().zip(want.to_f32_vec().unwrap()).zip(&bound).enumerate() {
                prop_assert!((g - w).abs() <= *tol, "{}: index {}: got {} want {} tolerance {}", exec.name(), i, g, w, tol);
            }
        }
    }

    /// x + gate·y equals the CPU's add(x, mul(y, gate)) exactly in f32, and its bf16 rounding
    /// in bf16.
    #[test]
    fn gated_residual_is_exact(b in 1usize..=2, n in 1usize..=9, c in 1usize..=150, use_bf16: bool, layout in 0usize..3, seed: u64) {
        let dtype = if use_bf16 { DType::BF16 } else { DType::F32 };
        let x = randn(&[b, n, c], seed, 2.0).to_dtype(dtype).unwrap();
        let y = randn(&[b, n, c], seed ^ 5, 2.0).to_dtype(dtype).unwrap();
        let gate = randn(&[b, c], seed ^ 7, 1.0);
        let exact = add(&x.to_dtype(DType::F32).unwrap(), &mul(&y.to_dtype(DType::F32).unwrap(), &gate.unsqueeze(1).unwrap()).unwrap()).unwrap();
        let want = exact.to_dtype(dtype).unwrap();
        let (xs, ys) = if use_bf16 { (x.clone(), y.clone()) } else { (arrange(&x, layout), arrange(&y, 2 - layout)) };
        for exec in executors() {
            let got = host(exec, adaln::gated_residual(exec, &upload(exec, &xs), &upload(exec, &ys), &upload(exec, &gate)));
            prop_assert!(got.same_values(&want), "{}", exec.name());
        }
    }
}

/// Per-element tolerance of the fused modulation against the reference: its f32 sums over C
/// elements err by at most (C + 2)·ε relative to Σ|x| (classical bound), which moves the
/// normalised value by (C + 2)·ε·(κ + |n|) with κ = rstd·mean|x|; a few more roundings scale
/// that by |1 + scale| and add ε·|want| each. bf16 output adds half an ulp (2⁻⁸ relative).
fn modulate_bound(x: &Tensor, normalized: &Tensor, scale: &Tensor, want: &Tensor, bf16_out: bool) -> Vec<f32> {
    let c = *x.shape().last().unwrap();
    let (xv, nv, sv, wv) = (
        x.to_f32_vec().unwrap(),
        normalized.to_f32_vec().unwrap(),
        scale.to_f32_vec().unwrap(),
        want.to_f32_vec().unwrap(),
    );
    let rows = xv.len() / c;
    let eps = f32::EPSILON;
    let mut bound = Vec::with_capacity(xv.len());
    for r in 0..rows {
        let row = &xv[r * c..][..c];
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / c as f64;
        let kappa = (row.iter().map(|&v| f64::from(v.abs())).sum::<f64>() / c as f64 / (var + 1e-6).sqrt()) as f32;
        let batch = r / (rows / scale.shape()[0]);
        for j in 0..c {
            let i = r * c + j;
            let f32_bound = 4.0 * (c as f32 + 2.0) * eps * (kappa + nv[i].abs()) * (1.0 + sv[batch * c + j]).abs()
                + 4.0 * eps * wv[i].abs();
            bound.push(if bf16_out { f32_bound * (1.0 + 1.0 / 256.0) + wv[i].abs() / 256.0 } else { f32_bound });
        }
    }
    bound
}

/// Bad input is a typed error naming the kernel, never a panic or a launch.
#[test]
fn preconditions_are_typed_errors() {
    let exec = &executors()[0];
    let t = |shape: &[usize], dtype: DType| upload(exec, &Tensor::zeros(shape, dtype));
    let dtype_error = quantize::quantize_scale(exec, &t(&[1, 4, 2, 2], DType::BF16));
    assert!(matches!(dtype_error, Err(Error::DTypeMismatch { op: "bsq_quantize", .. })));
    assert_invalid(quantize::quantize_scale(exec, &t(&[4, 2, 2], DType::F32)), "bsq_quantize");
    assert_invalid(quantize::resize_area(exec, &t(&[1, 1, 3, 3], DType::F32), (0, 2)), "resize_area");
    let sampling = Sampling { cfg: 3.0, tau: 1.0, top_p: 0.97, greedy: false };
    let mut rng = Philox::new(0);
    assert_invalid(sample_bits(exec, &t(&[3, 2, 8], DType::F32), 2, &sampling, &mut rng), "bitwise_sample");
    assert_invalid(sample_bits(exec, &t(&[2, 2, 7], DType::F32), 2, &sampling, &mut rng), "bitwise_sample");
    let cold = Sampling { tau: 0.0, ..sampling };
    assert_invalid(sample_bits(exec, &t(&[2, 2, 8], DType::F32), 2, &cold, &mut rng), "bitwise_sample");
    assert_eq!(rng.offset, 0, "a rejected launch draws nothing");
    assert_invalid(bit_loss(exec, &t(&[1, 2, 8], DType::F32), &t(&[1, 2, 3], DType::U8), 1.0), "bitwise_loss");
    let x = t(&[2, 3, 5], DType::F32);
    assert_invalid(
        adaln::modulate(exec, &x, &t(&[2, 4], DType::F32), &t(&[2, 5], DType::F32), 1e-6, DType::BF16),
        "adaln_modulate_f32_bf16",
    );
    assert_invalid(
        adaln::gated_residual(exec, &x, &t(&[2, 3, 4], DType::F32), &t(&[2, 5], DType::F32)),
        "gated_residual_f32",
    );
    let (scale, shift) = (t(&[2, 5], DType::F32), t(&[2, 5], DType::F32));
    for (input, out) in [(DType::U8, DType::F32), (DType::BF16, DType::F32), (DType::F32, DType::U8)] {
        assert!(matches!(
            adaln::modulate(exec, &t(&[2, 3, 5], input), &scale, &shift, 1e-6, out),
            Err(Error::UnsupportedDType { op: "adaln_modulate", .. })
        ));
    }
    assert!(Tensor::zeros(&[0, 3], DType::F32).to_device(&exec.device()).is_err(), "empty tensors are refused");
}

/// bf16 values round-trip through the shim's bf16 type exactly (RNE both ways is the runtime's).
#[test]
fn bf16_inputs_round_trip_through_the_kernels() {
    let v: Vec<bf16> =
        [0.0f32, -0.0, 1.0, -3.140625, 65280.0, 1e-38, 7.5e-3].iter().map(|&f| bf16::from_f32(f)).collect();
    let x = Tensor::from_vec(v, &[1, 1, 7]).unwrap();
    let zero = Tensor::zeros(&[1, 7], DType::F32);
    for exec in executors() {
        let got = host(exec, adaln::gated_residual(exec, &upload(exec, &x), &upload(exec, &x), &upload(exec, &zero)));
        assert!(got.same_values(&x), "{}: {got:?}", exec.name());
    }
}
