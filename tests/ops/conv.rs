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

    /// 3×3 'same' convolutions with enough channels and tiles take Winograd F(4×4, 3×3): held
    /// to its own bound, on maps with partial tiles (heights 1–13, any width remainder) widened
    /// to at least 64 tiles, and strided inputs.
    #[test]
    fn winograd_convs_are_within_their_bound(
        n in 1usize..=2, cin in 16usize..=19, cout in 16usize..=18, h in 1usize..=13, w in 1usize..=13,
        with_bias: bool, seed: u64,
    ) {
        let w = w + 4 * 64usize.div_ceil(h.div_ceil(4));
        let x = strided_copy(&randn(&[n, cin, h, w], seed, 1.0), &[0, 2, 3, 1]);
        let (wt, bias) = (randn(&[cout, cin, 3, 3], seed ^ 1, 0.5), randn(&[cout], seed ^ 2, 1.0));
        check_winograd(&x, &wt, with_bias.then_some(&bias));
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

/// F(4×4, 3×3)'s transforms (points 0, ±1, ±2, ∞), for the bound's magnitude.
const WINOGRAD_BT: [[f64; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const WINOGRAD_G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const WINOGRAD_AT: [[f64; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// |M| d |M|ᵀ for a 6 × K transform M and a K × K array d given elementwise.
fn abs_sandwich<const K: usize>(m: &[[f64; K]; 6], d: impl Fn(usize, usize) -> f64) -> [[f64; 6]; 6] {
    let mut t = [[0.0; 6]; 6];
    for (p, row) in t.iter_mut().enumerate() {
        for (q, v) in row.iter_mut().enumerate() {
            for r in 0..K {
                for s in 0..K {
                    *v += m[p][r].abs() * d(r, s) * m[q][s].abs();
                }
            }
        }
    }
    t
}

/// |bias| + Σ_ci Aᵀ-weighted Σ_ξ (|G||g||Gᵀ|)_ξ (|Bᵀ||d||B|)_ξ for each output of a 3×3 'same'
/// convolution: Winograd's computation in absolute values, the magnitude its rounding error
/// is bounded by (u·(Cin + 25) times it: 6 rounding steps in the input transform, 10 in the
/// kernel's, Cin in the sum over channels, 8 in the output transform, one for the bias).
fn winograd_magnitude(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (&[n, cin, h, wd], &[cout, ..]) = (x.shape(), w.shape()) else { panic!("rank") };
    let (xv, wv) = (abs(x).to_vec::<f32>().unwrap(), abs(w).to_vec::<f32>().unwrap());
    let bv = bias.map_or(vec![0.0; cout], |b| abs(b).to_vec::<f32>().unwrap());
    // |G||g||Gᵀ| per (co, ci).
    let u: Vec<[[f64; 6]; 6]> =
        wv.chunks(9).map(|g| abs_sandwich(&WINOGRAD_G, |k, l| f64::from(g[k * 3 + l]))).collect();
    let pixel = |img: usize, c: usize, y: isize, x: isize| {
        if y < 0 || x < 0 || y >= h as isize || x >= wd as isize {
            0.0
        } else {
            f64::from(xv[((img * cin + c) * h + y as usize) * wd + x as usize])
        }
    };
    let mut out = vec![0.0f32; n * cout * h * wd];
    for img in 0..n {
        for (ty, tx) in (0..h.div_ceil(4)).flat_map(|ty| (0..wd.div_ceil(4)).map(move |tx| (ty, tx))) {
            // |Bᵀ||d||B| per input channel.
            let patch = |c: usize| {
                move |r: usize, s: usize| pixel(img, c, (4 * ty + r) as isize - 1, (4 * tx + s) as isize - 1)
            };
            let v: Vec<[[f64; 6]; 6]> = (0..cin).map(|c| abs_sandwich(&WINOGRAD_BT, patch(c))).collect();
            for co in 0..cout {
                for (k, l) in (0..4).flat_map(|k| (0..4).map(move |l| (k, l))) {
                    let (oy, ox) = (4 * ty + k, 4 * tx + l);
                    if oy >= h || ox >= wd {
                        continue;
                    }
                    let mut sum = f64::from(bv[co]);
                    for (ci, vc) in v.iter().enumerate() {
                        for p in 0..6 {
                            for q in 0..6 {
                                let weight = WINOGRAD_AT[k][p].abs() * WINOGRAD_AT[l][q].abs();
                                sum += weight * u[co * cin + ci][p][q] * vc[p][q];
                            }
                        }
                    }
                    out[((img * cout + co) * h + oy) * wd + ox] = sum as f32;
                }
            }
        }
    }
    Tensor::from_vec(out, &[n, cout, h, wd]).unwrap()
}

/// A Winograd convolution against the direct reference within its bound.
#[track_caller]
fn check_winograd(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) {
    let p = Conv2dParams::same(3);
    let got = conv2d(x, w, bias, p).unwrap();
    let want = reference::conv2d(x, w, bias, p).unwrap();
    assert_within_dot_bound(&got, &want, &winograd_magnitude(x, w, bias), w.shape()[1] + 25);
}

#[test]
fn winograd_blocks_cover_every_tile() {
    // 10 × 9 tiles of two images: several blocks of tile rows, a partial last tile row and column.
    let x = randn(&[2, 16, 40, 35], 11, 1.0);
    check_winograd(&x, &randn(&[17, 16, 3, 3], 12, 0.3), Some(&randn(&[17], 13, 1.0)));
}

#[test]
fn large_upsampling_convs_are_one_winograd_conv() {
    // From 48² with 16 channels the four phase kernels are one 3×3 conv of 4·Cout outputs on
    // the Winograd path: held to that conv's bound (its kernel's taps are sums of up to four of
    // w's, 3 more rounding steps), with the magnitude of the embedded problem interleaved.
    let (cin, cout, side) = (16, 16, 48);
    let x = randn(&[1, cin, side, side], 21, 1.0);
    let (w, bias) = (randn(&[cout, cin, 3, 3], 22, 0.3), randn(&[cout], 23, 1.0));
    let got = upsample2x_conv3x3(&x, &w, Some(&bias)).unwrap();
    let up = resize(&x, (2 * side, 2 * side), ResizeMode::Nearest).unwrap();
    let want = reference::conv2d(&up, &w, Some(&bias), Conv2dParams::same(3)).unwrap();
    // Which of w's rows (or columns) each of a phase's two window rows sums.
    const SUMMED: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
    let phases = [(0, 0), (0, 1), (1, 0), (1, 1)];
    let wv = &abs(&w).to_vec::<f32>().unwrap()[..];
    let mut embedded = vec![0.0f32; 4 * cout * cin * 9];
    for (phase, &(py, px)) in phases.iter().enumerate() {
        for pair in 0..cout * cin {
            for (r, rows) in SUMMED[py].iter().enumerate() {
                for (c, cols) in SUMMED[px].iter().enumerate() {
                    embedded[(phase * cout * cin + pair) * 9 + (py + r) * 3 + px + c] =
                        rows.iter().flat_map(|&i| cols.iter().map(move |&j| wv[pair * 9 + i * 3 + j])).sum();
                }
            }
        }
    }
    let embedded = Tensor::from_vec(embedded, &[4 * cout, cin, 3, 3]).unwrap();
    let bias4 = infinity::ops::index::concat(&[&bias, &bias, &bias, &bias], 0).unwrap();
    let m = winograd_magnitude(&x, &embedded, Some(&bias4)).to_vec::<f32>().unwrap();
    let mut magnitude = vec![0.0f32; cout * 4 * side * side];
    for (phase, &(py, px)) in phases.iter().enumerate() {
        for co in 0..cout {
            for (i, j) in (0..side).flat_map(|i| (0..side).map(move |j| (i, j))) {
                magnitude[(co * 2 * side + 2 * i + py) * 2 * side + 2 * j + px] =
                    m[((phase * cout + co) * side + i) * side + j];
            }
        }
    }
    let magnitude = Tensor::from_vec(magnitude, &[1, cout, 2 * side, 2 * side]).unwrap();
    assert_within_dot_bound(&got, &want, &magnitude, cin + 28);
}

#[test]
fn an_image_gets_the_same_bits_alone_and_in_a_batch() {
    // The server batches requests: the path (Winograd from 64 tiles an image) and its blocks
    // must be chosen per image. 16² has 16 tiles (im2col), 40² 100 (Winograd).
    for side in [16, 40] {
        let (x, w, bias) =
            (randn(&[4, 16, side, side], 31, 1.0), randn(&[16, 16, 3, 3], 32, 0.3), randn(&[16], 33, 1.0));
        let batch = conv2d(&x, &w, Some(&bias), Conv2dParams::same(3)).unwrap();
        for i in 0..4 {
            let alone = conv2d(&x.narrow(0, i, 1).unwrap(), &w, Some(&bias), Conv2dParams::same(3)).unwrap();
            assert!(alone.same_values(&batch.narrow(0, i, 1).unwrap()), "side {side}, image {i}");
        }
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
