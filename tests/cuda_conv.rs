//! The convolution and upsampling of cuda/src/conv.rs (im2col + GEMM, nearest ×2) against the
//! CPU references of ops/, by property tests: odd sizes, kernel 1 and 3, stride 1 and 2,
//! padding 0 and 1, B = 1 and 2, with and without bias, contiguous, strided and offset
//! inputs. Every body runs on each executor of `infinity_cuda::testing::executors()`.
//!
//! Bound: the inputs are rounded to bf16 before the reference sees them, so the device's
//! rounding of x and w to bf16 is exact and only the arithmetic differs from ops' f64 direct
//! loop. Each output is Σ x·w over K = Cin·kh·kw taps plus the bias: the bf16 products are
//! exact in f32, the GEMM's K − 1 sums in an order cuBLAS picks are each off by at most
//! ε = f32::EPSILON relative to the partial sum (a full ulp: tensor cores may truncate), and
//! the bias is added with one more rounding, so the result is within
//! (K + 1)·ε·(Σ|x·w| + |bias|) of the exact value, plus ε·|want| for the reference's own
//! rounding to f32. Upsampling is a copy, so it must agree bit for bit.

#[allow(dead_code)] // this binary uses part of the op tests' helpers
#[path = "ops/support.rs"]
mod support;

#[path = "common/cuda.rs"]
mod cuda_support;

use cuda_support::{assert_dtype_error, assert_invalid, host, upload};
use infinity::ops::conv::Conv2dParams;
use infinity::ops::conv::reference::conv2d as cpu_conv2d;
use infinity::ops::resize::{ResizeMode, resize};
use infinity::runtime::{DType, Tensor};
use infinity_cuda::conv::{conv2d, im2col, upsample_nearest2x};
use infinity_cuda::testing::executors;
use proptest::prelude::*;

use support::{abs, padded_view, randn, strided_copy};

/// A case is a few thousand multiply-adds; the shim runs one in milliseconds.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 48, ..ProptestConfig::default() }
}

/// `t` stored contiguously (0), in reversed dimension order (1), or inside a wider buffer at
/// an offset (2): the kernels take strides.
fn arrange(t: &Tensor, layout: usize) -> Tensor {
    match layout {
        0 => t.clone(),
        1 => strided_copy(t, &(0..t.rank()).rev().collect::<Vec<_>>()),
        _ => padded_view(t),
    }
}

/// `t` rounded to bf16 and widened back: values the device's bf16 operands hold exactly.
fn bf16_values(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// conv2d against ops' f64 direct loop, within the bound of the module doc.
    #[test]
    fn conv2d_matches_the_reference(b in 1usize..=2, cin in 1usize..=5, cout in 1usize..=6, h in 1usize..=9,
                                    w in 1usize..=9, kernel in prop::sample::select(vec![1usize, 3]),
                                    stride in 1usize..=2, padding in 0usize..=1, with_bias: bool,
                                    layout in 0usize..3, seed: u64) {
        // The kernel must fit the padded input.
        let (h, w) = (h.max(kernel - 2 * padding.min(kernel / 2)), w.max(kernel - 2 * padding.min(kernel / 2)));
        let x = bf16_values(&randn(&[b, cin, h, w], seed, 1.5));
        let weight = bf16_values(&randn(&[cout, cin, kernel, kernel], seed ^ 1, 0.5));
        let bias = with_bias.then(|| randn(&[cout], seed ^ 2, 1.0));
        let params = Conv2dParams::new(stride, padding);
        let want = cpu_conv2d(&x, &weight, bias.as_ref(), params).unwrap();
        let magnitude = cpu_conv2d(&abs(&x), &abs(&weight), bias.as_ref().map(abs).as_ref(), params).unwrap();
        let terms = (cin * kernel * kernel + 1) as f32;
        let input = arrange(&x, layout);
        for exec in executors() {
            let dw = upload(exec, &weight.to_dtype(DType::BF16).unwrap());
            let db = bias.as_ref().map(|b| upload(exec, &padded_view(b)));
            let got = host(exec, conv2d(exec, &upload(exec, &input), &dw, db.as_ref(), stride, padding));
            prop_assert_eq!(got.shape(), want.shape(), "{}", exec.name());
            let (g, t, m) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap(), magnitude.to_f32_vec().unwrap());
            for (i, ((&g, &t), &m)) in g.iter().zip(&t).zip(&m).enumerate() {
                let bound = terms * f32::EPSILON * m + f32::EPSILON * t.abs();
                prop_assert!((g - t).abs() <= bound, "{}: index {}: got {} want {} bound {}", exec.name(), i, g, t,
                             bound);
            }
        }
    }

    /// Nearest ×2 equals ops' resize to twice the size, bit for bit.
    #[test]
    fn upsample_nearest2x_repeats_exactly(b in 1usize..=2, c in 1usize..=5, h in 1usize..=9, w in 1usize..=9,
                                          layout in 0usize..3, seed: u64) {
        let x = randn(&[b, c, h, w], seed, 2.0);
        let want = resize(&x, (2 * h, 2 * w), ResizeMode::Nearest).unwrap();
        let input = arrange(&x, layout);
        for exec in executors() {
            let got = host(exec, upsample_nearest2x(exec, &upload(exec, &input)));
            prop_assert!(got.layout().is_contiguous(), "{}: contiguous", exec.name());
            prop_assert!(got.same_values(&want), "{}: got {:?} want {:?}", exec.name(), got, want);
        }
    }
}

/// Bad input is a typed error naming the op, never a panic or a launch.
#[test]
fn preconditions_are_typed_errors() {
    let exec = &executors()[0];
    let t = |shape: &[usize], dtype: DType| upload(exec, &Tensor::zeros(shape, dtype));
    let x = t(&[1, 4, 5, 5], DType::F32);
    let w = t(&[2, 4, 3, 3], DType::BF16);
    let bias = t(&[2], DType::F32);

    assert!(conv2d(exec, &x, &w, Some(&bias), 1, 1).is_ok(), "the valid call");
    assert_dtype_error(conv2d(exec, &t(&[1, 4, 5, 5], DType::BF16), &w, None, 1, 1));
    assert_dtype_error(conv2d(exec, &x, &t(&[2, 4, 3, 3], DType::F32), None, 1, 1));
    assert_dtype_error(conv2d(exec, &x, &w, Some(&t(&[2], DType::BF16)), 1, 1));
    assert_invalid(conv2d(exec, &t(&[4, 5, 5], DType::F32), &w, None, 1, 1), "conv2d");
    assert_invalid(conv2d(exec, &x, &t(&[2, 3, 3, 3], DType::BF16), None, 1, 1), "conv2d");
    assert_invalid(conv2d(exec, &x, &w, Some(&t(&[3], DType::F32)), 1, 1), "conv2d");
    assert_invalid(conv2d(exec, &x, &w, None, 0, 1), "conv2d");
    assert_invalid(conv2d(exec, &x, &t(&[2, 4, 9, 9], DType::BF16), None, 1, 1), "conv2d");
    assert_invalid(conv2d(exec, &x, &w, None, 1, usize::MAX / 2), "conv2d");
    // A strided weight is copied first, as a host tensor's would be.
    let w_t = w.permute(&[0, 1, 3, 2]).unwrap();
    let strided = conv2d(exec, &x, &w_t, None, 1, 1).unwrap();
    assert!(strided.same_values(&conv2d(exec, &x, &w_t.contiguous().unwrap(), None, 1, 1).unwrap()));

    assert_invalid(im2col(exec, &x, (3, 3), 0, 0), "im2col");
    assert_invalid(im2col(exec, &x, (6, 1), 1, 0), "im2col");
    assert_invalid(im2col(exec, &x, (1 << 30, 1 << 30), 1, 1 << 29), "im2col");
    assert_invalid(im2col(exec, &t(&[4, 5, 5], DType::F32), (1, 1), 1, 0), "im2col");
    assert_dtype_error(im2col(exec, &t(&[1, 4, 5, 5], DType::BF16), (1, 1), 1, 0));

    assert_invalid(upsample_nearest2x(exec, &t(&[4, 5, 5], DType::F32)), "upsample_nearest2x");
    assert_dtype_error(upsample_nearest2x(exec, &t(&[1, 4, 5, 5], DType::BF16)));
}
