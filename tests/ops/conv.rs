//! conv2d: the im2col/gemm fast path against the direct 7-loop for kernel sizes 1–3, strides
//! 1–2 and asymmetric padding, on strided inputs and on maps large enough to be cut into
//! several im2col bands; exact results for identity kernels and BitVAE's downsample padding;
//! the argument errors. The weight gradient (the forward's product transposed) against its own
//! direct loop on the same problems.

use infinity::ops::conv::{Conv2dParams, conv2d, conv2d_weight_grad, reference, upsample2x_conv3x3};
use infinity::ops::resize::{ResizeMode, resize};
use infinity::runtime::{DType, Tensor};
use proptest::prelude::*;

use crate::support::{abs, assert_within_dot_bound, config, padded_view, randn, strided_copy};

/// Fast path vs reference, within the dot-product rounding bound (see `assert_within_dot_bound`)
/// over the Cin·kh·kw products and the bias.
#[track_caller]
fn check(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) {
    let got = conv2d(x, w, bias, p).unwrap();
    let want = reference::conv2d(x, w, bias, p).unwrap();
    let abs_bias = bias.map(abs);
    let magnitude = reference::conv2d(&abs(x), &abs(w), abs_bias.as_ref(), p).unwrap();
    let terms = w.shape()[1..].iter().product::<usize>() + 1;
    assert_within_dot_bound(&got, &want, &magnitude, terms);
}

/// Weight gradient vs reference, within the rounding bound of its N·Ho·Wo-term sums.
#[track_caller]
fn check_weight_grad(x: &Tensor, dy: &Tensor, kernel: (usize, usize), p: Conv2dParams) {
    let got = conv2d_weight_grad(x, dy, kernel, p).unwrap();
    let want = reference::conv2d_weight_grad(x, dy, kernel, p).unwrap();
    let magnitude = reference::conv2d_weight_grad(&abs(x), &abs(dy), kernel, p).unwrap();
    let terms = dy.shape()[0] * dy.shape()[2] * dy.shape()[3];
    assert_within_dot_bound(&got, &want, &magnitude, terms);
}

/// The output shape of `conv2d` for these shapes.
fn out_shape(xs: [usize; 4], ws: [usize; 4], p: Conv2dParams) -> [usize; 4] {
    let [top, bottom, left, right] = p.padding;
    [xs[0], ws[0], (xs[2] + top + bottom - ws[2]) / p.stride + 1, (xs[3] + left + right - ws[3]) / p.stride + 1]
}

/// Random conv problems whose kernel fits the padded input.
fn problem() -> impl Strategy<Value = ([usize; 4], [usize; 4], Conv2dParams)> {
    let sizes = (1usize..=2, 1usize..=5, 1usize..=9, 1usize..=9, 1usize..=5, 1usize..=3, 1usize..=3);
    let params = (1usize..=2, [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2]);
    (sizes, params)
        .prop_filter("kernel must fit the padded input", |&((_, _, h, w, _, kh, kw), (_, [t, b, l, r]))| {
            kh <= h + t + b && kw <= w + l + r
        })
        .prop_map(|((n, cin, h, w, cout, kh, kw), (stride, padding))| {
            ([n, cin, h, w], [cout, cin, kh, kw], Conv2dParams { stride, padding })
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv_matches_reference((xs, ws, p) in problem(), with_bias: bool, seed: u64) {
        let (x, w, bias) = (randn(&xs, seed, 1.0), randn(&ws, seed ^ 1, 0.5), randn(&ws[..1], seed ^ 2, 1.0));
        check(&x, &w, with_bias.then_some(&bias), p);
    }

    #[test]
    fn conv_takes_strided_inputs((xs, ws, p) in problem(), seed: u64) {
        let (x, w, bias) = (randn(&xs, seed, 1.0), randn(&ws, seed ^ 1, 0.5), randn(&ws[..1], seed ^ 2, 1.0));
        // Channels-last storage, padded rows, and a weight stored (kh, kw, Cin, Cout).
        check(&strided_copy(&x, &[0, 2, 3, 1]), &strided_copy(&w, &[2, 3, 1, 0]), Some(&bias), p);
        check(&padded_view(&x), &w, Some(&padded_view(&bias)), p);
    }

    /// The phase decomposition against the reference convolution of the upsampled map, on
    /// odd sizes, within the rounding of its 9·Cin-term sums (the 2×2 phase kernels' own sums of
    /// up to four taps included).
    #[test]
    fn upsampling_conv_matches_the_conv_of_the_upsampled_map(
        n in 1usize..=2, cin in 1usize..=5, cout in 1usize..=4, h in 1usize..=7, w in 1usize..=6, with_bias: bool,
        seed: u64,
    ) {
        let x = strided_copy(&randn(&[n, cin, h, w], seed, 1.0), &[0, 2, 3, 1]);
        let (wt, bias) = (randn(&[cout, cin, 3, 3], seed ^ 1, 0.5), randn(&[cout], seed ^ 2, 1.0));
        let bias = with_bias.then_some(&bias);
        let up = resize(&x, (2 * h, 2 * w), ResizeMode::Nearest).unwrap();
        let p = Conv2dParams::same(3);
        let got = upsample2x_conv3x3(&x, &wt, bias).unwrap();
        let want = reference::conv2d(&up, &wt, bias, p).unwrap();
        let magnitude = reference::conv2d(&abs(&up), &abs(&wt), bias.map(abs).as_ref(), p).unwrap();
        assert_within_dot_bound(&got, &want, &magnitude, 9 * cin + 1);
    }

    #[test]
    fn weight_grad_matches_reference((xs, ws, p) in problem(), seed: u64) {
        let (x, dy) = (randn(&xs, seed, 1.0), randn(&out_shape(xs, ws, p), seed ^ 3, 1.0));
        check_weight_grad(&x, &dy, (ws[2], ws[3]), p);
        check_weight_grad(&strided_copy(&x, &[0, 2, 3, 1]), &padded_view(&dy), (ws[2], ws[3]), p);
    }
}

#[test]
fn large_maps_are_cut_into_bands() {
    // 64 channels × 3×3 taps × 64×64 outputs exceeds one im2col band; stride 2 with BitVAE's
    // right/bottom padding and a 1×1 conv on the same map take the other paths.
    let x = randn(&[1, 64, 64, 64], 1, 1.0);
    let bias = randn(&[3], 3, 1.0);
    check(&x, &randn(&[3, 64, 3, 3], 2, 0.1), Some(&bias), Conv2dParams::same(3));
    check(&x, &randn(&[3, 64, 3, 3], 4, 0.1), Some(&bias), Conv2dParams { stride: 2, padding: [0, 1, 0, 1] });
    check(&x, &randn(&[3, 64, 1, 1], 5, 0.1), Some(&bias), Conv2dParams::same(1));
    for (k, p) in
        [(3, Conv2dParams::same(3)), (3, Conv2dParams { stride: 2, padding: [0, 1, 0, 1] }), (1, Conv2dParams::same(1))]
    {
        let dy = randn(&out_shape([1, 64, 64, 64], [3, 64, k, k], p), 6, 1.0);
        check_weight_grad(&x, &dy, (k, k), p);
    }
}

/// A (c, c, k, k) kernel that copies each channel through the centre tap.
fn identity_kernel(c: usize, k: usize) -> Tensor {
    let mut w = vec![0.0f32; c * c * k * k];
    for i in 0..c {
        w[((i * c + i) * k + k / 2) * k + k / 2] = 1.0;
    }
    Tensor::from_vec(w, &[c, c, k, k]).unwrap()
}

#[test]
fn identity_kernels_copy_the_input() {
    let x = randn(&[2, 3, 7, 5], 9, 1.0);
    for k in [1, 3] {
        let y = conv2d(&x, &identity_kernel(3, k), None, Conv2dParams::same(k)).unwrap();
        assert!(y.same_values(&x), "k = {k}");
    }
}

#[test]
fn downsample_padding_is_right_and_bottom_only() {
    // 4×4 input 0..16, all-ones 3×3 kernel, stride 2, one zero row/column after the data:
    // the outputs sum rows×cols {0,1,2}×{0,1,2}, {0,1,2}×{2,3}, {2,3}×{0,1,2} and {2,3}×{2,3}.
    let x = Tensor::from_vec::<f32>((0..16).map(|v| v as f32).collect(), &[1, 1, 4, 4]).unwrap();
    let w = Tensor::full(&[1, 1, 3, 3], 1.0, DType::F32);
    let p = Conv2dParams { stride: 2, padding: [0, 1, 0, 1] };
    let y = conv2d(&x, &w, None, p).unwrap();
    assert_eq!(y.shape(), [1, 1, 2, 2]);
    assert_eq!(y.to_vec::<f32>().unwrap(), [45.0, 39.0, 66.0, 50.0]);
    assert!(reference::conv2d(&x, &w, None, p).unwrap().same_values(&y));
}

#[test]
fn bad_arguments_are_errors() {
    let f = |s: &[usize]| Tensor::zeros(s, DType::F32);
    let same = Conv2dParams::same(3);
    for (x, w, b, p) in [
        (f(&[3, 8, 8]), f(&[4, 3, 3, 3]), None, same),             // input rank
        (f(&[1, 3, 8, 8]), f(&[4, 3, 3]), None, same),             // weight rank
        (f(&[1, 3, 8, 8]), f(&[4, 2, 3, 3]), None, same),          // channels
        (f(&[1, 3, 8, 8]), f(&[4, 3, 3, 3]), Some(f(&[3])), same), // bias length
        (f(&[1, 3, 8, 8]), f(&[4, 3, 3, 3]), None, Conv2dParams::new(0, 1)), // stride 0
        (f(&[1, 3, 2, 2]), f(&[4, 3, 5, 5]), None, Conv2dParams::new(1, 1)), // kernel too big
        (f(&[1, 3, 8, 8]), f(&[4, 3, 0, 3]), None, same),          // empty kernel
        (Tensor::zeros(&[1, 3, 8, 8], DType::BF16), f(&[4, 3, 3, 3]), None, same),
    ] {
        assert!(conv2d(&x, &w, b.as_ref(), p).is_err(), "{:?} {:?}", x.shape(), w.shape());
        assert!(reference::conv2d(&x, &w, b.as_ref(), p).is_err());
        if p == same {
            assert!(upsample2x_conv3x3(&x, &w, b.as_ref()).is_err(), "{:?} {:?}", x.shape(), w.shape());
        }
    }
    // The upsampling conv takes 3×3 kernels only.
    assert!(upsample2x_conv3x3(&f(&[1, 3, 8, 8]), &f(&[4, 3, 1, 1]), None).is_err());
}
