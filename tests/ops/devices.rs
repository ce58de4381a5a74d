//! One harness for every device (as ggml's test-backend-ops): each op case runs through the
//! public op on the CPU and, with its inputs moved there, on every executor (the CPU shim,
//! and a GPU when there is one); the device's result must stay on the device and agree with
//! the CPU's within the case's bound. Inputs have odd sizes, strides, offsets and broadcasts.

use infinity::cuda::testing::executors;
use infinity::ops::adaln::{gated_residual, modulate};
use infinity::ops::attention::{Packing, attention, attention_inputs, causal_attention, packed_attention};
use infinity::ops::bitwise::{Sampling, bit_cross_entropy, quantize_scale, sample_bits};
use infinity::ops::conv::{Conv2dParams, conv2d};
use infinity::ops::elementwise::{
    abs, add, add_scalar, affine, clamp, div, erf, exp, gelu_tanh, log, mul, mul_scalar, sigmoid, sign, silu, sqrt,
    square, sub, sub_scalar, tanh,
};
use infinity::ops::index::{concat, copy_into, embedding, index_add, index_select};
use infinity::ops::matmul::{linear, matmul};
use infinity::ops::norm::{group_norm, group_norm_silu, l2_normalize, layer_norm, rms_norm};
use infinity::ops::reduce::{max, mean, min, sum};
use infinity::ops::resize::{ResizeMode, resize};
use infinity::ops::rope::rope_interleaved;
use infinity::ops::softmax::{log_softmax, softmax};
use infinity::ops::vq::nearest_code;
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Result, Tensor};

use super::support::{assert_close, bf16_exact, padded_view, randn, strided_copy};

/// One op on given inputs, with the bound its device results are held to.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    run: fn(&[Tensor]) -> Result<Tensor>,
    /// |device − cpu| ≤ atol + rtol·|cpu|.
    atol: f32,
    rtol: f32,
    /// Inputs that take bf16 on a device (GEMM operands, by the models' dtype policy); their
    /// values are bf16-exact, so both sides multiply the same numbers.
    bf16_on_device: &'static [usize],
}

/// Random 0/1 labels.
fn bits(shape: &[usize], seed: u64) -> Tensor {
    let v = randn(shape, seed, 1.0).to_vec::<f32>().unwrap();
    Tensor::from_vec(v.into_iter().map(|x| u8::from(x > 0.0)).collect(), shape).unwrap()
}

fn ids(values: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap()
}

/// Bound of results delivered in bf16 (attention on an executor): 2⁻⁸ relative on top of
/// the bf16 rounding of its probabilities.
const BF16_RESULT: f32 = 1.0 / 128.0;

/// The self-attention inputs of a 5-token scale written at position 2 of 8-token caches,
/// returned as q̃ followed by both caches along the token axis.
fn attention_inputs_case(t: &[Tensor]) -> Result<Tensor> {
    let device = t[0].device();
    let (b, heads, d) = (t[0].shape()[0], t[0].shape()[3], t[0].shape()[4]);
    let cache = || Tensor::zeros_on(&[b, heads, 8, d], t[0].dtype(), &device);
    let (mut k, mut v) = (cache()?, cache()?);
    let q = attention_inputs(&t[0], &t[1], &t[2], &t[3], &mut k, &mut v, 2)?;
    concat(&[&q, &k, &v], 2)
}

/// Each of two samples' 3 queries over its own 2 or 4 packed keys.
fn packed_case(t: &[Tensor]) -> Result<Tensor> {
    packed_attention(&t[0], &t[1], &t[2], &Packing::new(&[2, 4], &t[0].device())?, 0.3)
}

/// f32 results of one rounding (a sum, a product) agree bit for bit; those through exp and a
/// reduction within a few ulps.
fn cases() -> Vec<Case> {
    let x = randn(&[3, 5, 7], 1, 1.0);
    let strided = strided_copy(&x, &[2, 0, 1]);
    let padded = padded_view(&randn(&[4, 9], 2, 2.0));
    vec![
        Case {
            name: "add",
            inputs: vec![strided.clone(), randn(&[5, 1], 3, 1.0)],
            run: |t| add(&t[0], &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "mul",
            inputs: vec![padded.clone(), randn(&[9], 4, 1.0)],
            run: |t| mul(&t[0], &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "gelu_tanh",
            inputs: vec![strided.clone()],
            run: |t| gelu_tanh(&t[0]),
            atol: 1e-7,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "silu",
            inputs: vec![padded.clone()],
            run: |t| silu(&t[0]),
            atol: 1e-7,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "softmax",
            inputs: vec![strided.clone()],
            run: |t| softmax(&t[0], 2),
            atol: 1e-7,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "rms_norm",
            inputs: vec![padded.clone(), randn(&[9], 5, 1.0)],
            run: |t| rms_norm(&t[0], Some(&t[1]), 1e-6),
            atol: 1e-6,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "layer_norm",
            inputs: vec![strided.clone(), randn(&[7], 63, 1.0), randn(&[7], 64, 1.0)],
            run: |t| layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-6),
            atol: 1e-6,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "layer_norm without affine, l2_normalize",
            inputs: vec![padded.clone()],
            run: |t| add(&layer_norm(&t[0], None, None, 1e-6)?, &l2_normalize(&t[0], 1e-12)?),
            atol: 1e-6,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "group_norm",
            inputs: vec![randn(&[2, 6, 3, 5], 6, 1.5), randn(&[6], 7, 1.0), randn(&[6], 8, 1.0)],
            run: |t| group_norm(&t[0], 3, Some(&t[1]), Some(&t[2]), 1e-6),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "group_norm without affine",
            inputs: vec![randn(&[2, 6, 3, 5], 6, 1.5)],
            run: |t| group_norm(&t[0], 3, None, None, 1e-6),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "embedding",
            inputs: vec![randn(&[11, 6], 9, 1.0), ids(&[3, 0, 10, 3, 7, 1], &[2, 3])],
            run: |t| embedding(&t[0], &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "index_select",
            inputs: vec![strided_copy(&randn(&[3, 6, 5], 37, 1.0), &[0, 2, 1]), ids(&[4, 0, 4, 2], &[4])],
            run: |t| index_select(&t[0], 1, &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        // Repeated indices, a strided source, the middle dimension, rows nobody picks.
        Case {
            name: "index_add",
            inputs: vec![strided_copy(&randn(&[3, 6, 5], 36, 1.0), &[0, 2, 1]), ids(&[4, 0, 4, 2, 4, 0], &[6])],
            run: |t| index_add(&t[0], 1, &t[1], 7),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "group_norm_silu",
            inputs: vec![
                strided_copy(&randn(&[2, 4, 3, 5], 10, 2.0), &[0, 2, 3, 1]),
                randn(&[4], 11, 1.0),
                randn(&[4], 12, 1.0),
            ],
            run: |t| group_norm_silu(&t[0], 2, &t[1], &t[2], 1e-6),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        // Sums of a few dozen exact products, in another order: f32 rounding only.
        Case {
            name: "conv2d",
            inputs: vec![bf16_exact(&[2, 3, 7, 6], 13), bf16_exact(&[5, 3, 3, 3], 14), randn(&[5], 15, 1.0)],
            run: |t| conv2d(&t[0], &t[1], Some(&t[2]), Conv2dParams::new(2, 1)),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[1],
        },
        Case {
            name: "linear",
            inputs: vec![bf16_exact(&[2, 5, 24], 17), bf16_exact(&[7, 24], 18), randn(&[7], 19, 1.0)],
            run: |t| linear(&t[0], &t[1], Some(&t[2])),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[1],
        },
        Case {
            name: "matmul",
            inputs: vec![bf16_exact(&[3, 4, 9], 20), bf16_exact(&[3, 6, 9], 21).transpose(1, 2).unwrap()],
            run: |t| matmul(&t[0], &t[1]),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "matmul of rank 4, batch broadcast",
            inputs: vec![bf16_exact(&[2, 3, 4, 9], 61), bf16_exact(&[1, 3, 9, 5], 62)],
            run: |t| matmul(&t[0], &t[1]),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "concat",
            inputs: vec![randn(&[2, 3, 4], 22, 1.0), strided_copy(&randn(&[2, 5, 4], 23, 1.0), &[2, 1, 0])],
            run: |t| concat(&[&t[0], &t[1]], 1),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "concat and contiguous of u8 labels",
            inputs: vec![bits(&[2, 3, 4], 25), bits(&[2, 5, 4], 26)],
            run: |t| concat(&[&t[0].permute(&[0, 2, 1])?.contiguous()?.permute(&[0, 2, 1])?, &t[1]], 1),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "sub",
            inputs: vec![padded.clone(), randn(&[4, 1], 24, 1.0)],
            run: |t| sub(&t[0], &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "div",
            inputs: vec![strided.clone(), randn(&[7], 25, 1.0)],
            run: |t| div(&t[0], &t[1]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "resize bilinear",
            inputs: vec![strided_copy(&randn(&[2, 3, 5, 7], 26, 1.0), &[3, 2, 1, 0])],
            run: |t| resize(&t[0], (9, 4), ResizeMode::Bilinear),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "resize bicubic",
            inputs: vec![strided_copy(&randn(&[2, 3, 4, 5], 31, 1.0), &[3, 2, 1, 0])],
            run: |t| resize(&t[0], (13, 16), ResizeMode::Bicubic),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        // Indices, so exact: both sides do the same f32 arithmetic.
        Case {
            name: "nearest code",
            inputs: vec![
                strided_copy(&randn(&[5, 37], 32, 1.0), &[1, 0]),
                randn(&[64, 5], 33, 1.0).transpose(0, 1).unwrap(),
            ],
            run: |t| nearest_code(&t[0].transpose(0, 1)?, &t[1].transpose(0, 1)?),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "resize area",
            inputs: vec![randn(&[1, 4, 9, 8], 27, 1.0)],
            run: |t| resize(&t[0], (4, 3), ResizeMode::Area),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        // The BitVAE encoder's downsampling: zeros added below and right only.
        Case {
            name: "conv2d padded on two sides",
            inputs: vec![bf16_exact(&[1, 4, 6, 5], 28), bf16_exact(&[3, 4, 3, 3], 29), randn(&[3], 30, 1.0)],
            run: |t| conv2d(&t[0], &t[1], Some(&t[2]), Conv2dParams { stride: 2, padding: [0, 1, 0, 1] }),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[1],
        },
        Case {
            name: "modulate",
            inputs: vec![
                strided_copy(&randn(&[2, 5, 24], 31, 2.0), &[1, 0, 2]),
                randn(&[2, 24], 32, 0.5),
                randn(&[2, 24], 33, 0.5),
            ],
            run: |t| modulate(&t[0], &t[1], &t[2], 1e-6, DType::F32),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "gated_residual",
            inputs: vec![
                randn(&[2, 5, 24], 34, 1.0),
                padded_view(&randn(&[2, 5, 24], 35, 1.0)),
                randn(&[2, 24], 36, 1.0),
            ],
            run: |t| gated_residual(&t[0], &t[1], &t[2]),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "rope_interleaved",
            inputs: vec![
                strided_copy(&randn(&[2, 3, 5, 8], 37, 1.0), &[0, 2, 1, 3]),
                randn(&[5, 4], 38, 1.0),
                randn(&[5, 4], 39, 1.0),
            ],
            run: |t| rope_interleaved(&t[0], &t[1], &t[2]),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "rope_interleaved of rank 3",
            inputs: vec![randn(&[3, 5, 8], 40, 1.0), randn(&[5, 4], 41, 1.0), randn(&[5, 4], 42, 1.0)],
            run: |t| rope_interleaved(&t[0], &t[1], &t[2]),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "exp",
            inputs: vec![strided.clone()],
            run: |t| exp(&t[0]),
            atol: 0.0,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "tanh, sigmoid, square and sqrt",
            inputs: vec![strided.clone()],
            run: |t| add(&add(&tanh(&t[0])?, &sigmoid(&t[0])?)?, &sqrt(&square(&t[0])?)?),
            atol: 1e-6,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        // Zeros among the inputs: abs(±0) and sign(0); log of |x| and of a zero (−inf).
        Case {
            name: "abs, sign and log",
            inputs: vec![
                mul(&strided, &clamp(&affine(&abs(&strided).unwrap(), 10.0, -3.0).unwrap(), 0.0, 1.0).unwrap())
                    .unwrap(),
            ],
            run: |t| add(&add(&abs(&t[0])?, &sign(&t[0])?)?, &log(&abs(&t[0])?)?),
            atol: 0.0,
            rtol: 1e-6,
            bf16_on_device: &[],
        },
        Case {
            name: "clamp",
            inputs: vec![padded.clone()],
            run: |t| clamp(&t[0], -0.5, 0.7),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "affine",
            inputs: vec![strided.clone()],
            run: |t| affine(&t[0], 1.5, -0.25),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "scalar forms",
            inputs: vec![padded.clone()],
            run: |t| sub_scalar(&mul_scalar(&add_scalar(&t[0], 0.3)?, -1.7)?, 0.1),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "copy_into",
            inputs: vec![strided_copy(&randn(&[2, 3, 4], 43, 1.0), &[1, 0, 2])],
            run: |t| {
                let mut dst = Tensor::zeros_on(&[2, 7, 4], DType::F32, &t[0].device())?;
                copy_into(&t[0], &mut dst, 1, 2)?;
                Ok(dst)
            },
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        // Head dim 64: the flash kernel on an executor (its output bf16).
        Case {
            name: "attention (flash)",
            inputs: vec![
                bf16_exact(&[2, 3, 5, 64], 44),
                strided_copy(&bf16_exact(&[2, 3, 7, 64], 45), &[0, 2, 1, 3]),
                bf16_exact(&[2, 3, 7, 64], 46),
            ],
            run: |t| attention(&t[0], &t[1], &t[2], None, 0.125),
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[0, 1, 2],
        },
        // The flash kernel's causal mode over a cache (5 queries at the end of 11 keys), and the
        // whole sequence at head dim 6 (the explicit mask, composed).
        Case {
            name: "causal attention (flash)",
            inputs: vec![
                bf16_exact(&[2, 3, 5, 64], 61),
                bf16_exact(&[2, 3, 11, 64], 62),
                bf16_exact(&[2, 3, 11, 64], 63),
            ],
            run: |t| causal_attention(&t[0], &t[1], &t[2], 0.125),
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[0, 1, 2],
        },
        Case {
            name: "causal attention (composed)",
            inputs: vec![bf16_exact(&[1, 2, 7, 6], 64), bf16_exact(&[1, 2, 7, 6], 65), bf16_exact(&[1, 2, 7, 6], 66)],
            run: |t| causal_attention(&t[0], &t[1], &t[2], 0.4),
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[],
        },
        // Head dim 6 and a mask: the composition of device GEMMs and softmax.
        Case {
            name: "attention (composed)",
            inputs: vec![
                bf16_exact(&[2, 3, 5, 6], 47),
                bf16_exact(&[2, 3, 7, 6], 48),
                bf16_exact(&[2, 3, 7, 6], 49),
                randn(&[1, 1, 5, 7], 50, 1.0),
            ],
            run: |t| attention(&t[0], &t[1], &t[2], Some(&t[3]), 0.4),
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[],
        },
        Case {
            name: "packed_attention (flash)",
            inputs: vec![bf16_exact(&[2, 2, 3, 64], 51), bf16_exact(&[6, 2, 64], 52), bf16_exact(&[6, 2, 64], 53)],
            run: packed_case,
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[0, 1, 2],
        },
        Case {
            name: "packed_attention (per sample)",
            inputs: vec![bf16_exact(&[2, 2, 3, 6], 54), bf16_exact(&[6, 2, 6], 55), bf16_exact(&[6, 2, 6], 56)],
            run: packed_case,
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[],
        },
        Case {
            name: "attention_inputs",
            inputs: vec![
                // A width of the presets', 104 (layer32).
                bf16_exact(&[2, 5, 3, 2, 104], 57),
                randn(&[5, 52], 58, 1.0),
                randn(&[5, 52], 59, 1.0),
                randn(&[2], 60, 1.0),
            ],
            run: attention_inputs_case,
            atol: BF16_RESULT,
            rtol: BF16_RESULT,
            bf16_on_device: &[0],
        },
        // f32 sums in a tree against the CPU's f64 lanes.
        Case {
            name: "sum over two dims",
            inputs: vec![strided.clone()],
            run: |t| sum(&t[0], &[0, 2], false),
            atol: 1e-5,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "mean of rows, kept",
            inputs: vec![padded.clone()],
            run: |t| mean(&t[0], &[1], true),
            atol: 1e-6,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "max over a middle dim",
            inputs: vec![strided.clone()],
            run: |t| max(&t[0], &[1], false),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        Case {
            name: "min of everything",
            inputs: vec![strided.clone()],
            run: |t| min(&t[0], &[], false),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        // The same draws from the same stream: the kernel rounds as the CPU does.
        Case {
            name: "sample_bits with guidance and top-p",
            inputs: vec![randn(&[4, 5, 16], 68, 2.0)],
            run: |t| {
                let sampling = Sampling { cfg: 3.0, tau: 0.8, top_p: 0.9, greedy: false };
                sample_bits(&t[0], 2, &sampling, &mut Philox::new(69))
            },
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        // The codes carry the bits: equal bits give equal codes.
        Case {
            name: "quantize_scale",
            inputs: vec![strided_copy(&randn(&[2, 6, 3, 4], 67, 1.0), &[0, 2, 3, 1])],
            run: |t| Ok(quantize_scale(&t[0])?.codes),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
        // f32 against the CPU's f64, rounded once.
        Case {
            name: "bit_cross_entropy (loss, then gradient)",
            inputs: vec![randn(&[2, 3, 8], 65, 3.0), bits(&[2, 3, 4], 66)],
            run: |t| {
                let bits = bit_cross_entropy(&t[0], &t[1])?;
                concat(&[&bits.loss, &bits.grad], 2)
            },
            atol: 1e-6,
            rtol: 1e-5,
            bf16_on_device: &[],
        },
        Case {
            name: "resize nearest ×2",
            inputs: vec![padded_view(&randn(&[2, 3, 4, 5], 16, 1.0))],
            run: |t| resize(&t[0], (8, 10), ResizeMode::Nearest),
            atol: 0.0,
            rtol: 0.0,
            bf16_on_device: &[],
        },
    ]
}

#[test]
fn every_op_case_agrees_with_the_cpu_on_every_executor() {
    for exec in executors() {
        let device = exec.device();
        for case in cases() {
            let want = (case.run)(&case.inputs).unwrap_or_else(|e| panic!("{} on the CPU: {e}", case.name));
            let inputs: Vec<Tensor> = (case.inputs.iter().enumerate())
                .map(|(i, t)| {
                    let t = if case.bf16_on_device.contains(&i) { t.to_dtype(DType::BF16).unwrap() } else { t.clone() };
                    t.to_device(&device).unwrap()
                })
                .collect();
            let got = (case.run)(&inputs).unwrap_or_else(|e| panic!("{} on {device}: {e}", case.name));
            assert_eq!(got.device(), device, "{}: the result stays on the device", case.name);
            eprintln!("{} on {device}: checked", case.name);
            assert_close(&got.to_cpu().unwrap(), &want, case.atol, case.rtol);
        }
    }
}

/// Inputs on two devices are refused by name (nothing is moved behind the caller's back), and
/// an op without a kernel on a device says so.
#[test]
fn mixed_devices_and_missing_kernels_are_errors_naming_the_op() {
    let exec = &executors()[0];
    let (a, b) = (randn(&[2, 3], 1, 1.0), randn(&[2, 3], 2, 1.0));
    let on_device = a.to_device(&exec.device()).unwrap();
    let err = add(&on_device, &b).unwrap_err().to_string();
    assert!(err.starts_with("add: ") && err.contains("move them to one device"), "{err}");
    let err = erf(&on_device).unwrap_err().to_string();
    assert!(err.starts_with("erf: ") && err.contains("has no kernel on CPU shim"), "{err}");
    let err = log_softmax(&on_device, 1).unwrap_err().to_string();
    assert!(err.starts_with("log_softmax: ") && err.contains("no kernel"), "{err}");
}
