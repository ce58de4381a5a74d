//! Reductions: the fast path against the reference over random sets of dimensions (with and
//! without keepdim), layout invariance, argmax tie and NaN rules, hand-checked values,
//! empty-set semantics, the parallel paths on large inputs, and argument errors.
//!
//! Tolerance rule: sum, mean and variance accumulate in f64 on both paths, which then differ
//! only by summation order (~1e-16 relative) before the final rounding to f32, so at most by
//! one f32 ulp: atol 1e-6 + rtol 1e-6 (sums of N(0, 4) samples can cancel to near 0, hence
//! the atol). max, min and argmax involve no rounding and must match exactly.

use infinity::ops::reduce::{self, ReduceOp, reference};
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, assert_layout_invariant, config, randn, shape_perm_seed};

fn reduce_op() -> impl Strategy<Value = ReduceOp> {
    prop_oneof![
        Just(ReduceOp::Sum),
        Just(ReduceOp::Mean),
        Just(ReduceOp::Max),
        Just(ReduceOp::Min),
        any::<bool>().prop_map(|unbiased| ReduceOp::Variance { unbiased }),
    ]
}

/// The tolerance rule of the header; NaN (an unbiased variance of one element) must be NaN
/// in both.
#[track_caller]
fn assert_matches(op: ReduceOp, got: &Tensor, want: &Tensor) {
    if matches!(op, ReduceOp::Max | ReduceOp::Min) {
        assert!(got.same_values(want), "{op:?}: {got:?} != {want:?}");
        return;
    }
    assert_close(got, want, 1e-6, 1e-6);
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reductions_match_reference_for_any_layout(
        (shape, perm, seed) in shape_perm_seed(),
        op in reduce_op(),
        mask in prop::collection::vec(any::<bool>(), 4),
        keepdim in any::<bool>(),
    ) {
        // An empty mask reduces every dimension.
        let dims: Vec<usize> = (0..shape.len()).filter(|&d| mask[d]).collect();
        let x = randn(&shape, seed, 2.0);
        let got = reduce::reduce(op, &x, &dims, keepdim).unwrap();
        assert_matches(op, &got, &reference::reduce(op, &x, &dims, keepdim).unwrap());
        assert_layout_invariant(&x, &perm, |v| reduce::reduce(op, v, &dims, keepdim).unwrap());
    }

    #[test]
    fn argmax_matches_reference_with_ties((shape, perm, seed) in shape_perm_seed(), dim in 0usize..4, keepdim in any::<bool>()) {
        let dim = dim % shape.len();
        // Values rounded to a few integers, so that ties are common.
        let rounded = randn(&shape, seed, 1.5).to_vec::<f32>().unwrap().into_iter().map(f32::round).collect();
        let x = Tensor::from_vec::<f32>(rounded, &shape).unwrap();
        let got = reduce::argmax(&x, dim, keepdim).unwrap();
        prop_assert_eq!(got.dtype(), DType::I64);
        prop_assert!(got.same_values(&reference::argmax(&x, dim, keepdim).unwrap()));
        assert_layout_invariant(&x, &perm, |v| reduce::argmax(v, dim, keepdim).unwrap());
        // The element at the returned index is the maximum.
        let index = reduce::argmax(&x, dim, true).unwrap().to_vec::<i64>().unwrap();
        let max = reduce::max(&x, &[dim], true).unwrap().to_vec::<f32>().unwrap();
        let (outer, d, inner): (usize, usize, usize) = (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product());
        let values = x.to_vec::<f32>().unwrap();
        for (k, (&i, &m)) in index.iter().zip(&max).enumerate() {
            let (o, j) = (k / inner, k % inner);
            prop_assert!(o < outer);
            prop_assert_eq!(values[(o * d + i as usize) * inner + j], m);
        }
    }
}

#[test]
fn known_values() {
    let x = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let values = |r: Tensor| (r.shape().to_vec(), r.to_vec::<f32>().unwrap());
    assert_eq!(values(reduce::sum(&x, &[0], false).unwrap()), (vec![2], vec![4.0, 6.0]));
    assert_eq!(values(reduce::sum(&x, &[1], true).unwrap()), (vec![2, 1], vec![3.0, 7.0]));
    assert_eq!(values(reduce::mean(&x, &[], false).unwrap()), (vec![], vec![2.5]));
    assert_eq!(values(reduce::mean(&x, &[0, 1], true).unwrap()), (vec![1, 1], vec![2.5]));
    assert_eq!(values(reduce::max(&x, &[1], false).unwrap()), (vec![2], vec![2.0, 4.0]));
    assert_eq!(values(reduce::min(&x, &[0], false).unwrap()), (vec![2], vec![1.0, 2.0]));
    assert_eq!(values(reduce::variance(&x, &[], true, false).unwrap()), (vec![], vec![5.0 / 3.0]));
    assert_eq!(values(reduce::variance(&x, &[], false, false).unwrap()), (vec![], vec![1.25]));
    let argmax = |v: &[f32]| reduce::argmax(&t(v, &[v.len()]), 0, false).unwrap().to_vec::<i64>().unwrap()[0];
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1, "ties go to the first index");
    assert_eq!(argmax(&[1.0, f32::NAN, 5.0, f32::NAN]), 1, "the first NaN wins");
    assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
}

#[test]
fn nan_and_empty_sets() {
    let with_nan = t(&[1.0, f32::NAN, 5.0], &[3]);
    for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
        assert!(reduce::reduce(op, &with_nan, &[], false).unwrap().to_vec::<f32>().unwrap()[0].is_nan(), "{op:?}");
    }
    let one = t(&[3.0], &[1]);
    assert!(reduce::variance(&one, &[0], true, false).unwrap().to_vec::<f32>().unwrap()[0].is_nan());
    assert_eq!(reduce::variance(&one, &[0], false, false).unwrap().to_vec::<f32>().unwrap(), [0.0]);
    let empty = Tensor::zeros(&[0, 3], DType::F32);
    assert_eq!(reduce::sum(&empty, &[0], false).unwrap().to_vec::<f32>().unwrap(), [0.0; 3]);
    assert!(reduce::mean(&empty, &[0], false).unwrap().to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
    assert_eq!(reduce::max(&empty, &[1], false).unwrap().shape(), [0]);
    let scalar = Tensor::scalar(4.5f32);
    assert!(reduce::sum(&scalar, &[], false).unwrap().same_values(&scalar));
}

#[test]
fn large_inputs_take_the_parallel_paths() {
    // One long row (split within the row), many rows, and a non-innermost reduction.
    let long = randn(&[2, 150_001], 3, 1.0);
    let wide = randn(&[400, 1000], 4, 1.0);
    for (x, dims) in [(&long, vec![1]), (&long, vec![]), (&wide, vec![1]), (&wide, vec![0])] {
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Variance { unbiased: true }] {
            let got = reduce::reduce(op, x, &dims, false).unwrap();
            assert_matches(op, &got, &reference::reduce(op, x, &dims, false).unwrap());
        }
    }
    let mut planted = randn(&[300_000], 5, 1.0).to_vec::<f32>().unwrap();
    planted[123_456] = 10.0;
    planted[234_567] = 10.0;
    assert_eq!(reduce::argmax(&t(&planted, &[300_000]), 0, false).unwrap().to_vec::<i64>().unwrap(), [123_456]);
    planted[200_000] = f32::NAN;
    planted[250_000] = f32::NAN;
    assert_eq!(reduce::argmax(&t(&planted, &[300_000]), 0, false).unwrap().to_vec::<i64>().unwrap(), [200_000]);
}

#[test]
fn bad_arguments_are_errors() {
    let x = randn(&[2, 3], 1, 1.0);
    assert!(matches!(reduce::sum(&x, &[2], false), Err(Error::DimOutOfRange { op: "sum", dim: 2, .. })));
    assert!(matches!(reference::sum(&x, &[2], false), Err(Error::DimOutOfRange { op: "sum", dim: 2, .. })));
    assert!(matches!(reduce::mean(&x, &[1, 1], false), Err(Error::InvalidArgument { op: "mean", .. })));
    assert!(matches!(reduce::argmax(&x, 5, false), Err(Error::DimOutOfRange { op: "argmax", .. })));
    let empty = Tensor::zeros(&[2, 0], DType::F32);
    assert!(matches!(reduce::max(&empty, &[1], false), Err(Error::InvalidArgument { op: "max", .. })));
    assert!(matches!(reduce::argmax(&empty, 1, false), Err(Error::InvalidArgument { op: "argmax", .. })));
    assert!(matches!(reference::min(&empty, &[], false), Err(Error::InvalidArgument { op: "min", .. })));
    let ints = Tensor::zeros(&[2, 3], DType::I64);
    assert!(matches!(reduce::variance(&ints, &[0], true, false), Err(Error::UnsupportedDType { op: "variance", .. })));
    assert!(matches!(reduce::argmax(&ints, 0, false), Err(Error::UnsupportedDType { op: "argmax", .. })));
}
