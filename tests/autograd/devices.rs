//! Backward rules on every device (the gradient half of tests/ops/devices.rs): each case's
//! input gradients, for a fixed random output gradient, computed on the CPU and, with its
//! inputs moved there, on every executor (the CPU shim, and a GPU when there is one); the
//! device's gradients must stay on the device and agree with the CPU's within the case's
//! bound. The CPU's rules are checked against finite differences by the other modules here.
//!
//! Covered so far: broadcast arithmetic, the one-input functions with a derivative kernel or
//! an op rule, reductions, softmax, the layer, RMS, L2 and group norms, views and concatenation,
//! linear and matmul (whose gradients' GEMMs round their operands to bf16 on an executor), and
//! attention (the flash backward kernel on an executor where it applies), the bitwise
//! cross-entropy (its fused kernel there) and the token cross-entropy, conv2d, the resizes, and the embedding and
//! index_select lookups (their index_add).

use infinity::autograd::attention::{attention, causal_attention};
use infinity::autograd::conv::conv2d;
use infinity::autograd::elementwise::{
    abs, add, clamp, div, exp, gelu_tanh, log, mul, neg, silu, sqrt, square, sub, tanh,
};
use infinity::autograd::index::{concat, embedding, index_select};
use infinity::autograd::loss::{bitwise_cross_entropy, cross_entropy};
use infinity::autograd::matmul::{linear, matmul};
use infinity::autograd::norm::{group_norm, l2_normalize, layer_norm, rms_norm};
use infinity::autograd::reduce::{mean, softmax, sum};
use infinity::autograd::resize::resize;
use infinity::autograd::{Tape, Var};
use infinity::cuda::testing::executors;
use infinity::ops::conv::Conv2dParams;
use infinity::ops::resize::ResizeMode;
use infinity::runtime::{Device, Result, Tensor};

use crate::op_support::{assert_close, bf16_exact, padded_view, randn, strided_copy};
use crate::support::randn_map;

/// One differentiable computation on given inputs, with the bound its device gradients are
/// held to: |device − cpu| ≤ atol + rtol·|cpu|.
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    run: fn(&[Var]) -> Result<Var>,
    atol: f32,
    rtol: f32,
}

fn cases() -> Vec<Case> {
    let x = randn(&[3, 5, 7], 1, 1.0);
    let strided = strided_copy(&x, &[2, 0, 1]);
    let padded = padded_view(&randn(&[4, 9], 2, 1.5));
    vec![
        Case {
            name: "add, sub, mul and div with broadcasting",
            inputs: vec![strided.clone(), randn(&[5, 1], 3, 1.0), randn_map(&[7], 4, |x| x.abs() + 0.5)],
            run: |v| div(&mul(&sub(&add(&v[0], &v[1])?, &v[1])?, &v[0])?, &v[2]),
            atol: 1e-6,
            rtol: 1e-5,
        },
        Case {
            name: "unary functions",
            inputs: vec![padded.clone(), randn_map(&[4, 9], 5, |x| x.abs() + 0.5)],
            run: |v| {
                let a = add(&gelu_tanh(&v[0])?, &silu(&v[0])?)?;
                let b = add(&tanh(&v[0])?, &clamp(&exp(&v[0])?, 0.3, 2.0)?)?;
                add(&add(&a, &neg(&b)?)?, &add(&sqrt(&v[1])?, &square(&v[1])?)?)
            },
            atol: 1e-5,
            rtol: 1e-5,
        },
        Case {
            name: "sum, mean and softmax",
            inputs: vec![strided.clone()],
            run: |v| add(&mul(&softmax(&v[0], 2)?, &mean(&v[0], &[1], true)?)?, &sum(&v[0], &[0, 2], true)?),
            atol: 1e-5,
            rtol: 1e-5,
        },
        Case {
            name: "views and concat",
            inputs: vec![strided.clone(), randn(&[3, 2, 7], 6, 1.0)],
            run: |v| {
                let joined = concat(&[&v[0].narrow(1, 1, 3)?, &v[1]], 1)?;
                mul(&joined.permute(&[2, 0, 1])?, &joined.permute(&[2, 0, 1])?)
            },
            atol: 1e-6,
            rtol: 1e-6,
        },
        Case {
            name: "layer, RMS and L2 norms",
            inputs: vec![strided.clone(), randn(&[7], 15, 1.0), randn(&[7], 16, 1.0)],
            run: |v| {
                let a = layer_norm(&v[0], Some(&v[1]), Some(&v[2]), 1e-6)?;
                add(&add(&a, &rms_norm(&v[0], Some(&v[1]), 1e-6)?)?, &l2_normalize(&v[0], 1e-12)?)
            },
            atol: 1e-5,
            rtol: 1e-4,
        },
        Case {
            name: "bitwise cross-entropy",
            inputs: vec![randn(&[2, 3, 8], 17, 3.0)],
            run: |v| {
                let labels =
                    randn(&[2, 3, 4], 18, 1.0).to_vec::<f32>()?.into_iter().map(|x| u8::from(x > 0.0)).collect();
                let weights = randn_map(&[3], 19, |x| x.abs());
                Ok(bitwise_cross_entropy(&v[0], &Tensor::from_vec(labels, &[2, 3, 4])?, &weights)?.loss)
            },
            atol: 1e-6,
            rtol: 1e-5,
        },
        // VAR's loss: row statistics, a gather and a scatter, each with its kernel.
        Case {
            name: "token cross-entropy",
            inputs: vec![strided_copy(&randn(&[2, 3, 37], 20, 3.0), &[1, 0, 2])],
            run: |v| {
                let labels = Tensor::from_vec(vec![0i64, 36, 5, 17, 17, 2], &[2, 3])?;
                Ok(cross_entropy(&v[0], &labels, &randn_map(&[3], 21, |x| x.abs()))?.loss)
            },
            atol: 1e-6,
            rtol: 1e-5,
        },
        Case {
            name: "group norm",
            inputs: vec![
                strided_copy(&randn(&[2, 6, 3, 5], 23, 1.5), &[0, 2, 3, 1]),
                randn(&[6], 24, 1.0),
                randn(&[6], 25, 1.0),
            ],
            run: |v| group_norm(&v[0], 3, Some(&v[1]), Some(&v[2]), 1e-6),
            atol: 1e-5,
            rtol: 1e-4,
        },
        // The gradients' GEMMs round the output gradient to bf16 on an executor.
        Case {
            name: "linear",
            inputs: vec![bf16_exact(&[2, 5, 24], 7), bf16_exact(&[7, 24], 8), randn(&[7], 9, 1.0)],
            run: |v| linear(&v[0], &v[1], Some(&v[2])),
            atol: 2e-2,
            rtol: 1e-2,
        },
        Case {
            name: "matmul",
            inputs: vec![bf16_exact(&[3, 4, 9], 10), bf16_exact(&[3, 9, 6], 11)],
            run: |v| matmul(&v[0], &v[1]),
            atol: 2e-2,
            rtol: 1e-2,
        },
        // Head dim 64 without a mask: the flash backward kernel on an executor.
        Case {
            name: "attention (flash)",
            inputs: vec![
                bf16_exact(&[2, 2, 5, 64], 20),
                bf16_exact(&[2, 2, 9, 64], 21),
                bf16_exact(&[2, 2, 9, 64], 22),
            ],
            run: |v| attention(&v[0], &v[1], &v[2], None, 0.125),
            atol: 2e-2,
            rtol: 2e-2,
        },
        // The flash kernels' causal mode (Open-MAGVIT2's spatial attention): 4 queries over 9 keys.
        Case {
            name: "causal attention (flash)",
            inputs: vec![
                bf16_exact(&[2, 2, 4, 64], 23),
                bf16_exact(&[2, 2, 9, 64], 24),
                bf16_exact(&[2, 2, 9, 64], 25),
            ],
            run: |v| causal_attention(&v[0], &v[1], &v[2], 0.125),
            atol: 2e-2,
            rtol: 2e-2,
        },
        // GEMMs on a device: the gradient and the interpolation weights rounded to bf16.
        Case {
            name: "bilinear, area, nearest and bicubic resizes",
            inputs: vec![randn(&[2, 3, 6, 5], 33, 1.0)],
            run: |v| {
                let up = resize(&v[0], (9, 7), ResizeMode::Bilinear)?;
                let down = resize(&up, (3, 4), ResizeMode::Area)?;
                let near = resize(&down, (6, 8), ResizeMode::Nearest)?;
                resize(&near, (7, 11), ResizeMode::Bicubic)
            },
            atol: 2e-2,
            rtol: 2e-2,
        },
        // The BitVAE's downsampling conv (stride 2, zeros below and right) and a padded one.
        // Gradients reach ~50 through the two layers; the bf16 operands err by ~2⁻⁸ of that.
        Case {
            name: "conv2d",
            inputs: vec![
                bf16_exact(&[2, 3, 7, 6], 29),
                bf16_exact(&[4, 3, 3, 3], 30),
                randn(&[4], 31, 1.0),
                bf16_exact(&[5, 4, 3, 3], 32),
            ],
            run: |v| {
                let down = conv2d(&v[0], &v[1], Some(&v[2]), Conv2dParams { stride: 2, padding: [0, 1, 0, 1] })?;
                conv2d(&down, &v[3], None, Conv2dParams::new(1, 1))
            },
            atol: 0.25,
            rtol: 2e-2,
        },
        // Some keys masked, and the first query's all of them (its probabilities are zero).
        Case {
            name: "attention with a mask",
            inputs: vec![bf16_exact(&[1, 2, 5, 6], 26), bf16_exact(&[1, 2, 7, 6], 27), bf16_exact(&[1, 2, 7, 6], 28)],
            run: |v| {
                let mask: Vec<f32> =
                    (0..35).map(|i| if i < 7 || (i % 7) > i / 7 + 2 { f32::NEG_INFINITY } else { 0.0 }).collect();
                attention(
                    &v[0],
                    &v[1],
                    &v[2],
                    Some(&Tensor::from_vec(mask, &[1, 1, 5, 7])?.to_device(&v[0].value().device())?),
                    0.4,
                )
            },
            atol: 2e-2,
            rtol: 2e-2,
        },
        // Repeated ids accumulate in the same order everywhere, so the sums are exact.
        Case {
            name: "embedding and index_select",
            inputs: vec![randn(&[11, 6], 34, 1.0), strided_copy(&randn(&[2, 5, 6], 35, 1.0), &[0, 2, 1])],
            run: |v| {
                let device = v[0].value().device();
                let ids = Tensor::from_vec(vec![3i64, 0, 10, 3, 7, 3], &[2, 3])?.to_device(&device)?;
                let picks = Tensor::from_vec(vec![1i32, 1, 3], &[3])?.to_device(&device)?;
                add(&embedding(&v[0], &ids)?, &index_select(&v[1], 1, &picks)?)
            },
            atol: 0.0,
            rtol: 0.0,
        },
        Case {
            name: "abs and log",
            inputs: vec![padded.clone()],
            run: |v| log(&add(&abs(&v[0])?, &abs(&v[0])?)?),
            atol: 1e-6,
            rtol: 1e-5,
        },
        Case {
            name: "attention",
            inputs: vec![bf16_exact(&[1, 2, 5, 6], 12), bf16_exact(&[1, 2, 7, 6], 13), bf16_exact(&[1, 2, 7, 6], 14)],
            run: |v| attention(&v[0], &v[1], &v[2], None, 0.4),
            atol: 2e-2,
            rtol: 2e-2,
        },
    ]
}

/// The inputs' gradients of Σ run(inputs)·w on `device`, on the host.
fn gradients(case: &Case, device: &Device) -> Vec<Tensor> {
    let tape = Tape::new();
    let leaves: Vec<Var> = case.inputs.iter().map(|t| tape.leaf(t.to_device(device).unwrap()).unwrap()).collect();
    let out = (case.run)(&leaves).unwrap_or_else(|e| panic!("{} on {device}: {e}", case.name));
    let w = randn(out.shape(), 99, 1.0).to_device(device).unwrap();
    let grads = tape.backward_with_grad(&out, w).unwrap_or_else(|e| panic!("{} backward on {device}: {e}", case.name));
    leaves
        .iter()
        .map(|v| {
            let g = grads.get(v).unwrap_or_else(|| panic!("{}: no gradient", case.name));
            assert_eq!(g.device(), *device, "{}: the gradient stays on the device", case.name);
            g.to_cpu().unwrap()
        })
        .collect()
}

#[test]
fn every_gradient_case_agrees_with_the_cpu_on_every_executor() {
    for case in cases() {
        let want = gradients(&case, &Device::Cpu);
        for exec in executors() {
            let device = exec.device();
            for (i, (got, want)) in gradients(&case, &device).iter().zip(&want).enumerate() {
                eprintln!("{} on {device}: input {i} checked", case.name);
                assert_close(got, want, case.atol, case.rtol);
            }
        }
    }
}
