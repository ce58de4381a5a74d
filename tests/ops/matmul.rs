//! matmul and linear: the gemm fast path against the f64 triple loop on odd shapes (1s, primes,
//! sizes off gemm's register tiles), transposed / strided / padded / broadcast operands, batch
//! broadcasting, the multi-threaded paths, and the argument errors.

use infinity::ops::index::concat;
use infinity::ops::matmul::{linear, matmul, reference};
use infinity::runtime::{DType, Tensor};
use proptest::prelude::*;

use crate::support::{abs, assert_within_dot_bound, config, padded_view, randn, strided_copy};

#[track_caller]
fn check_matmul(a: &Tensor, b: &Tensor) {
    let got = matmul(a, b).unwrap();
    let want = reference::matmul(a, b).unwrap();
    let magnitude = reference::matmul(&abs(a), &abs(b)).unwrap();
    assert_within_dot_bound(&got, &want, &magnitude, a.shape()[a.rank() - 1]);
}

#[track_caller]
fn check_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) {
    let got = linear(x, w, bias).unwrap();
    let want = reference::linear(x, w, bias).unwrap();
    let abs_bias = bias.map(abs);
    let magnitude = reference::linear(&abs(x), &abs(&w.to_dtype(DType::F32).unwrap()), abs_bias.as_ref()).unwrap();
    // The bias is one more term of the sum.
    assert_within_dot_bound(&got, &want, &magnitude, w.shape()[1] + 1);
}

/// Two batch shapes that broadcast together: a common shape with some dimensions set to 1 or
/// dropped (from the front) on either side.
fn batch_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    let dims = prop::collection::vec((1usize..=3, 0u8..3), 0..=3);
    (dims, 0usize..=2, 0usize..=2).prop_map(|(dims, drop_a, drop_b)| {
        let side = |keep_on: u8, drop: usize| -> Vec<usize> {
            let v: Vec<usize> = dims.iter().map(|&(d, who)| if who == keep_on || who == 2 { d } else { 1 }).collect();
            v[drop.min(v.len())..].to_vec()
        };
        (side(0, drop_a), side(1, drop_b))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matmul_2d_matches_reference(m in 1usize..=37, k in 1usize..=37, n in 1usize..=37, seed: u64) {
        check_matmul(&randn(&[m, k], seed, 1.0), &randn(&[k, n], seed ^ 1, 3.0));
    }

    #[test]
    fn matmul_broadcasts_batches((ba, bb) in batch_pair(), m in 1usize..=9, k in 1usize..=9, n in 1usize..=9,
                                 seed: u64) {
        let a = randn(&[&ba[..], &[m, k]].concat(), seed, 1.0);
        let b = randn(&[&bb[..], &[k, n]].concat(), seed ^ 1, 1.0);
        check_matmul(&a, &b);
    }

    #[test]
    fn matmul_takes_strided_operands(batch in 1usize..=3, m in 1usize..=13, k in 1usize..=13, n in 1usize..=13,
                                     seed: u64) {
        let a = randn(&[batch, m, k], seed, 1.0);
        let b = randn(&[batch, k, n], seed ^ 1, 1.0);
        // Column-major and batch-innermost storage, rows inside a wider buffer, and b as the
        // transposed view of a contiguous (n, k) tensor.
        check_matmul(&strided_copy(&a, &[2, 1, 0]), &padded_view(&b));
        check_matmul(&padded_view(&a), &strided_copy(&b, &[0, 2, 1]));
        let bt = randn(&[batch, n, k], seed ^ 2, 1.0).transpose(1, 2).unwrap();
        check_matmul(&a, &bt);
        // A row broadcast down the rows of b: row stride 0.
        let row = randn(&[1, n], seed ^ 3, 1.0).broadcast_to(&[k, n]).unwrap();
        check_matmul(&a, &row);
    }

    #[test]
    fn linear_matches_reference(lead in prop::collection::vec(1usize..=4, 0..=2), inp in 1usize..=33,
                                out in 1usize..=33, with_bias: bool, seed: u64) {
        let x = randn(&[&lead[..], &[inp]].concat(), seed, 1.0);
        let w = randn(&[out, inp], seed ^ 1, 0.5);
        let bias = randn(&[out], seed ^ 2, 1.0);
        check_linear(&x, &w, with_bias.then_some(&bias));
    }

    #[test]
    fn linear_takes_half_precision_weights(lead in 1usize..=5, inp in 1usize..=40, out in 1usize..=40,
                                           with_bias: bool, seed: u64) {
        let x = randn(&[lead, inp], seed, 1.0);
        let bias = randn(&[out], seed ^ 2, 1.0);
        for dtype in [DType::BF16, DType::F16] {
            let w = randn(&[out, inp], seed ^ 1, 0.5).to_dtype(dtype).unwrap();
            check_linear(&x, &w, with_bias.then_some(&bias));
        }
    }

    #[test]
    fn linear_takes_strided_operands(rows in 1usize..=5, cols in 1usize..=5, inp in 1usize..=17, out in 1usize..=17,
                                     seed: u64) {
        let x = randn(&[rows, cols, inp], seed, 1.0);
        let bias = randn(&[out], seed ^ 2, 1.0);
        // w as the transpose of an (in, out) tensor: strides (1, out).
        let w = randn(&[inp, out], seed ^ 1, 1.0).transpose(0, 1).unwrap();
        check_linear(&x, &w, Some(&bias));
        // Leading dimensions that do not merge into one row index, and padded rows.
        check_linear(&strided_copy(&x, &[1, 0, 2]), &w, Some(&bias));
        check_linear(&padded_view(&x), &padded_view(&w.contiguous().unwrap()), None);
    }
}

#[test]
fn large_products_use_the_threaded_paths() {
    // Above gemm's threading threshold: one threaded gemm, a folded batch, a threaded batch loop.
    check_matmul(&randn(&[301, 203], 1, 1.0), &randn(&[203, 257], 2, 1.0));
    check_linear(&randn(&[3, 70, 160], 3, 1.0), &randn(&[190, 160], 4, 1.0), Some(&randn(&[190], 5, 1.0)));
    // A deep product: the sum split over the threads (an odd depth splits unevenly), onto a bias.
    check_linear(&randn(&[2, 150, 1001], 11, 1.0), &randn(&[200, 1001], 12, 1.0), Some(&randn(&[200], 13, 1.0)));
    // Few rows of x (the small scales' path, one band per thread and more) in f32 and bf16.
    let (x, w, bias) = (randn(&[2, 9, 300], 8, 1.0), randn(&[517, 300], 9, 1.0), randn(&[517], 10, 1.0));
    check_linear(&x, &w, Some(&bias));
    check_linear(&x, &w.to_dtype(DType::BF16).unwrap(), Some(&bias));
    check_matmul(&randn(&[3, 90, 100], 6, 1.0), &randn(&[3, 100, 110], 7, 1.0));
}

#[test]
fn known_product() {
    let a = Tensor::from_vec::<f32>(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let b = Tensor::from_vec::<f32>(vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]).unwrap();
    assert_eq!(matmul(&a, &b).unwrap().to_vec::<f32>().unwrap(), [58.0, 64.0, 139.0, 154.0]);
    // linear(x, w) with w = bᵀ is the same product; a vector input gives a vector.
    let bias = Tensor::from_vec::<f32>(vec![0.5, -1.0], &[2]).unwrap();
    let w = b.transpose(0, 1).unwrap();
    assert_eq!(linear(&a, &w, Some(&bias)).unwrap().to_vec::<f32>().unwrap(), [58.5, 63.0, 139.5, 153.0]);
    let v = linear(&a.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(), &w, None).unwrap();
    assert_eq!((v.shape(), v.to_vec::<f32>().unwrap()), (&[2][..], vec![58.0, 64.0]));
}

#[test]
fn empty_dimensions() {
    let (a, b) = (Tensor::zeros(&[3, 0], DType::F32), Tensor::zeros(&[0, 2], DType::F32));
    assert_eq!(matmul(&a, &b).unwrap().to_vec::<f32>().unwrap(), [0.0; 6]);
    let bias = Tensor::from_vec::<f32>(vec![1.0, 2.0], &[2]).unwrap();
    let w = Tensor::zeros(&[2, 0], DType::F32);
    assert_eq!(linear(&a, &w, Some(&bias)).unwrap().to_vec::<f32>().unwrap(), [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
    // No output features at all.
    let y = linear(
        &Tensor::zeros(&[3, 2], DType::F32),
        &Tensor::zeros(&[0, 2], DType::F32),
        Some(&Tensor::zeros(&[0], DType::F32)),
    );
    assert_eq!(y.unwrap().shape(), [3, 0]);
}

#[test]
fn bad_arguments_are_errors() {
    let f = |s: &[usize]| Tensor::zeros(s, DType::F32);
    for (a, b) in [
        (f(&[2, 3]), f(&[4, 2])),       // inner dims
        (f(&[3]), f(&[3, 2])),          // rank 1
        (f(&[2, 2, 3]), f(&[3, 3, 2])), // batches 2 vs 3
    ] {
        assert!(matmul(&a, &b).is_err(), "{:?} x {:?}", a.shape(), b.shape());
        assert!(reference::matmul(&a, &b).is_err());
    }
    assert!(matmul(&Tensor::zeros(&[2, 3], DType::BF16), &f(&[3, 2])).is_err());
    for (x, w, b) in [
        (f(&[2, 3]), f(&[4, 2]), None),          // in features
        (f(&[2, 3]), f(&[1, 4, 3]), None),       // weight rank
        (f(&[2, 3]), f(&[4, 3]), Some(f(&[3]))), // bias length
        (f(&[]), f(&[4, 3]), None),              // scalar input
        (Tensor::zeros(&[2, 3], DType::F16), f(&[4, 3]), None),
        (f(&[2, 3]), f(&[4, 3]), Some(Tensor::zeros(&[4], DType::I32))),
    ] {
        assert!(linear(&x, &w, b.as_ref()).is_err(), "{:?} {:?}", x.shape(), w.shape());
        assert!(reference::linear(&x, &w, b.as_ref()).is_err());
    }
}

/// A half-precision weight wide enough to be widened in several blocks, with a ragged last one
/// (x has more rows than the few-rows path takes).
#[test]
fn half_precision_weights_span_several_blocks() {
    let x = randn(&[520, 2048], 5, 1.0);
    let w = randn(&[300, 2048], 6, 0.02).to_dtype(DType::BF16).unwrap();
    let bias = randn(&[300], 7, 1.0);
    check_linear(&x, &w, Some(&bias));
    // The same numbers as multiplying the widened weight.
    let widened = linear(&x, &w.to_dtype(DType::F32).unwrap(), Some(&bias)).unwrap();
    assert_within_dot_bound(
        &linear(&x, &w, Some(&bias)).unwrap(),
        &widened,
        &reference::linear(&abs(&x), &abs(&w.to_dtype(DType::F32).unwrap()), Some(&abs(&bias))).unwrap(),
        2049,
    );
}

/// An item of a stacked x gets the same bits alone and among others, on either side of the
/// few-rows path's threshold (64 rows per item in f32, 256 with a bf16 weight): stacking must
/// not move it from one path to the other, whose last bits differ.
#[test]
fn an_item_gets_the_same_bits_alone_and_stacked() {
    for (dtype, rows) in [(DType::F32, 36), (DType::F32, 64), (DType::F32, 144), (DType::BF16, 144), (DType::BF16, 256)]
    {
        let (k, n) = (320, 1280);
        let w = randn(&[n, k], 2, 0.05).to_dtype(dtype).unwrap();
        let bias = randn(&[n], 3, 1.0);
        let x = randn(&[1, rows, k], 1, 1.0);
        let alone = linear(&x, &w, Some(&bias)).unwrap();
        for items in [2, 8] {
            let stacked = concat(&[&x, &randn(&[items - 1, rows, k], 4, 1.0)], 0).unwrap();
            let first = linear(&stacked, &w, Some(&bias)).unwrap().narrow(0, 0, 1).unwrap();
            let differing = alone
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(first.to_vec::<f32>().unwrap())
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differing, 0, "{dtype:?}, {rows} rows: the item differs in {items} stacked");
        }
    }
}
