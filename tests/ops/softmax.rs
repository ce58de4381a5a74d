//! softmax and log_softmax: the fast path against the f64 reference along every dimension,
//! layout invariance, hand-checked values, stability for large inputs, and argument errors.
//!
//! Tolerance rule: the fast path exponentiates in f32 (≤ 1 ulp) and sums in f64, so each
//! softmax output carries a few ulp of relative error; log_softmax adds a few ulp of its
//! magnitude (≤ ~30 here). atol 1e-6 + rtol 1e-6 covers both with margin.

use infinity::ops::softmax::{self, reference};
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, assert_layout_invariant, config, randn, shape_perm_seed};

type Op = fn(&Tensor, usize) -> infinity::runtime::Result<Tensor>;

/// (name, fast, reference) for both ops.
const OPS: [(&str, Op, Op); 2] =
    [("softmax", softmax::softmax, reference::softmax), ("log_softmax", softmax::log_softmax, reference::log_softmax)];

fn row(values: &[f32]) -> Tensor {
    Tensor::from_slice(values, &[values.len()]).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matches_reference_along_any_dim((shape, perm, seed) in shape_perm_seed(), dim in 0usize..4, scale in 0.1f32..8.0) {
        let dim = dim % shape.len();
        let x = randn(&shape, seed, scale);
        for (_, fast, slow) in OPS {
            assert_close(&fast(&x, dim).unwrap(), &slow(&x, dim).unwrap(), 1e-6, 1e-6);
            assert_layout_invariant(&x, &perm, |v| fast(v, dim).unwrap());
        }
        // Softmax slices sum to 1 and are unchanged by a shift of the input.
        let p = softmax::softmax(&x, dim).unwrap();
        let sums = infinity::ops::reduce::sum(&p, &[dim], false).unwrap();
        assert_close(&sums, &Tensor::full(sums.shape(), 1.0, DType::F32), 1e-6, 0.0);
        // Adding 50 in f32 rounds each input by at most half an ulp of 82 (3.8e-6), which
        // moves each output by at most twice that, relatively.
        let shifted = infinity::ops::elementwise::add_scalar(&x, 50.0).unwrap();
        assert_close(&softmax::softmax(&shifted, dim).unwrap(), &p, 1e-7, 1e-5);
    }
}

#[test]
fn known_values() {
    let x = row(&[0.0, 3f32.ln()]);
    assert_close(&softmax::softmax(&x, 0).unwrap(), &row(&[0.25, 0.75]), 1e-7, 1e-7);
    assert_close(&softmax::log_softmax(&x, 0).unwrap(), &row(&[0.25f32.ln(), 0.75f32.ln()]), 1e-7, 1e-7);
    // Along dim 0 of a 2×2: columns [0, ln 3] and [1, 1].
    let m = Tensor::from_slice(&[0.0, 1.0, 3f32.ln(), 1.0], &[2, 2]).unwrap();
    let want = Tensor::from_slice(&[0.25, 0.5, 0.75, 0.5], &[2, 2]).unwrap();
    assert_close(&softmax::softmax(&m, 0).unwrap(), &want, 1e-7, 1e-7);
}

#[test]
fn large_inputs_neither_overflow_nor_underflow() {
    let x = row(&[1000.0, 1000.0, -1000.0]);
    assert_eq!(softmax::softmax(&x, 0).unwrap().to_vec::<f32>().unwrap(), [0.5, 0.5, 0.0]);
    let log = softmax::log_softmax(&x, 0).unwrap().to_vec::<f32>().unwrap();
    assert_close(
        &row(&log),
        &row(&[-std::f32::consts::LN_2, -std::f32::consts::LN_2, -2000.0 - std::f32::consts::LN_2]),
        0.0,
        1e-7,
    );
    let with_nan = softmax::softmax(&row(&[1.0, f32::NAN]), 0).unwrap().to_vec::<f32>().unwrap();
    assert!(with_nan.iter().all(|v| v.is_nan()), "NaN poisons its slice, as in PyTorch");
}

#[test]
fn large_inputs_take_the_parallel_path() {
    let x = randn(&[96, 1500], 11, 3.0);
    for dim in [0, 1] {
        for (_, fast, slow) in OPS {
            assert_close(&fast(&x, dim).unwrap(), &slow(&x, dim).unwrap(), 1e-6, 1e-6);
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = randn(&[2, 3], 1, 1.0);
    for (name, fast, slow) in OPS {
        for f in [fast, slow] {
            assert!(matches!(f(&x, 2), Err(Error::DimOutOfRange { op, dim: 2, .. }) if op == name));
            assert!(matches!(f(&Tensor::scalar(1.0f32), 0), Err(Error::DimOutOfRange { .. })));
            assert!(
                matches!(f(&x.to_dtype(DType::F16).unwrap(), 0), Err(Error::UnsupportedDType { op, .. }) if op == name)
            );
        }
    }
}
