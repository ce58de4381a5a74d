//! layer_norm, rms_norm, l2_normalize and group_norm: the fast path against the f64 reference with and
//! without weight/bias, inputs with a large mean, several eps, layout invariance (input and
//! parameters), hand-checked values, the parallel path, and argument errors.
//!
//! Tolerance rule: statistics are accumulated in f64 on both paths; the fast path then
//! forms ((x - mean_hi) - mean_lo) · rstd · w + b in f32, a few roundings of quantities no
//! larger than the output plus the bias, i.e. a few ulp (1 ulp ≤ 1.2e-7 relative). The
//! worst seen over many inputs is 1.5e-7 · (1 + |out|); atol 1e-6 + rtol 1e-6 allows ~8 ulp.

use infinity::ops::elementwise::affine;
use infinity::ops::norm::{self, reference};
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, assert_layout_invariant, config, padded_view, randn, shape_perm_seed};

const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-6;

fn eps() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-6f32), Just(1e-3), Just(0.5)]
}

/// (N, C = groups × channels per group, *spatial with 0 to 2 dimensions), groups, a
/// permutation of the dimensions and a seed.
fn group_case() -> impl Strategy<Value = (Vec<usize>, usize, Vec<usize>, u64)> {
    (1usize..=3, 1usize..=4, 1usize..=3, prop::collection::vec(1usize..=6, 0..=2)).prop_flat_map(
        |(n, groups, cpg, spatial)| {
            let shape: Vec<usize> = [n, groups * cpg].into_iter().chain(spatial).collect();
            let identity: Vec<usize> = (0..shape.len()).collect();
            (Just(shape), Just(groups), Just(identity).prop_shuffle(), any::<u64>())
        },
    )
}

/// Optional parameters of length `len`: absent, or random and handed over as a strided view.
fn param(present: bool, len: usize, seed: u64, offset: f32) -> Option<Tensor> {
    present.then(|| padded_view(&affine(&randn(&[len], seed, 0.5), 1.0, offset).unwrap()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn last_dim_norms_match_reference(
        (shape, perm, seed) in shape_perm_seed(),
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        scale in 0.01f32..5.0,
        shift in -20f32..20.0,
        eps in eps(),
    ) {
        let x = affine(&randn(&shape, seed, 1.0), scale, shift).unwrap();
        let d = shape[shape.len() - 1];
        let (w, b) = (param(with_weight, d, seed ^ 1, 1.0), param(with_bias, d, seed ^ 2, 0.0));
        let (w, b) = (w.as_ref(), b.as_ref());
        let got = norm::layer_norm(&x, w, b, eps).unwrap();
        assert_close(&got, &reference::layer_norm(&x, w, b, eps).unwrap(), ATOL, RTOL);
        assert_layout_invariant(&x, &perm, |v| norm::layer_norm(v, w, b, eps).unwrap());
        let got = norm::rms_norm(&x, w, eps).unwrap();
        assert_close(&got, &reference::rms_norm(&x, w, eps).unwrap(), ATOL, RTOL);
        assert_layout_invariant(&x, &perm, |v| norm::rms_norm(v, w, eps).unwrap());
        let got = norm::l2_normalize(&x, eps).unwrap();
        assert_close(&got, &reference::l2_normalize(&x, eps).unwrap(), ATOL, RTOL);
        assert_layout_invariant(&x, &perm, |v| norm::l2_normalize(v, eps).unwrap());
    }

    #[test]
    fn group_norm_matches_reference(
        (shape, groups, perm, seed) in group_case(),
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        shift in -20f32..20.0,
        eps in eps(),
    ) {
        let x = affine(&randn(&shape, seed, 2.0), 1.0, shift).unwrap();
        let (w, b) = (param(with_weight, shape[1], seed ^ 1, 1.0), param(with_bias, shape[1], seed ^ 2, 0.0));
        let (w, b) = (w.as_ref(), b.as_ref());
        let got = norm::group_norm(&x, groups, w, b, eps).unwrap();
        assert_close(&got, &reference::group_norm(&x, groups, w, b, eps).unwrap(), ATOL, RTOL);
        assert_layout_invariant(&x, &perm, |v| norm::group_norm(v, groups, w, b, eps).unwrap());
    }

    /// The fused group norm + SiLU gives the composition's bits, with and without spatial
    /// dimensions (the flat and the per-channel loops).
    #[test]
    fn group_norm_silu_is_the_composition(
        (shape, groups, _perm, seed) in group_case(),
        shift in -20f32..20.0,
        eps in eps(),
    ) {
        let x = affine(&randn(&shape, seed, 2.0), 1.0, shift).unwrap();
        let (w, b) = (param(true, shape[1], seed ^ 1, 1.0).unwrap(), param(true, shape[1], seed ^ 2, 0.0).unwrap());
        let fused = norm::group_norm_silu(&x, groups, &w, &b, eps).unwrap();
        let composed = infinity::ops::elementwise::silu(&norm::group_norm(&x, groups, Some(&w), Some(&b), eps).unwrap()).unwrap();
        prop_assert!(fused.same_values(&composed));
    }
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).unwrap()
}

#[test]
fn known_values() {
    let bias = t(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5]);
    let constant = Tensor::full(&[3, 5], 7.0, DType::F32);
    let out = norm::layer_norm(&constant, Some(&t(&[9.0; 5], &[5])), Some(&bias), 1e-6).unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0].repeat(3), "a constant row gives the bias");
    // Biased variance of [1, 2, 3] is 2/3.
    let out = norm::layer_norm(&t(&[1.0, 2.0, 3.0], &[3]), None, None, 0.0).unwrap();
    assert_close(&out, &t(&[-1.2247449, 0.0, 1.2247449], &[3]), 1e-7, 1e-7);
    // RMS of [3, 4] is √12.5.
    let out = norm::rms_norm(&t(&[3.0, 4.0], &[1, 2]), Some(&t(&[2.0, 0.5], &[2])), 0.0).unwrap();
    assert_close(&out, &t(&[1.6970563, 0.5656854], &[1, 2]), 1e-7, 1e-7);
    // ‖[3, 4]‖ = 5; a zero row stays zero; eps bounds the divisor from below.
    let out = norm::l2_normalize(&t(&[3.0, 4.0, 0.0, 0.0, 0.03, 0.04], &[3, 2]), 0.1).unwrap();
    assert_close(&out, &t(&[0.6, 0.8, 0.0, 0.0, 0.3, 0.4], &[3, 2]), 1e-7, 1e-7);
    // Two groups of two channels × two positions: [0, 1, 2, 3] (mean 1.5, variance 1.25) and a constant.
    let x = t(&[0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 10.0], &[1, 4, 2]);
    let (w, b) = (t(&[1.0, 2.0, 1.0, 1.0], &[4]), t(&[0.0, 0.0, 5.0, 6.0], &[4]));
    let out = norm::group_norm(&x, 2, Some(&w), Some(&b), 1e-6).unwrap();
    let s = 1.0 / 1.25f32.sqrt();
    assert_close(&out, &t(&[-1.5 * s, -0.5 * s, 1.0 * s, 3.0 * s, 5.0, 5.0, 6.0, 6.0], &[1, 4, 2]), 1e-6, 1e-6);
}

#[test]
fn group_norm_with_one_group_is_layer_norm_of_rows() {
    let x = randn(&[6, 9], 3, 2.0);
    let (w, b) = (randn(&[9], 4, 1.0), randn(&[9], 5, 1.0));
    let layer = norm::layer_norm(&x, Some(&w), Some(&b), 1e-6).unwrap();
    assert_close(&norm::group_norm(&x, 1, Some(&w), Some(&b), 1e-6).unwrap(), &layer, ATOL, RTOL);
    assert_close(&reference::group_norm(&x, 1, Some(&w), Some(&b), 1e-6).unwrap(), &layer, ATOL, RTOL);
}

#[test]
fn large_inputs_take_the_parallel_path() {
    let x = randn(&[256, 520], 6, 3.0);
    let (w, b) = (randn(&[520], 7, 1.0), randn(&[520], 8, 1.0));
    let want = reference::layer_norm(&x, Some(&w), Some(&b), 1e-6).unwrap();
    assert_close(&norm::layer_norm(&x, Some(&w), Some(&b), 1e-6).unwrap(), &want, ATOL, RTOL);
    let x = randn(&[2, 64, 24, 24], 9, 3.0);
    let (w, b) = (randn(&[64], 10, 1.0), randn(&[64], 11, 1.0));
    let want = reference::group_norm(&x, 32, Some(&w), Some(&b), 1e-6).unwrap();
    assert_close(&norm::group_norm(&x, 32, Some(&w), Some(&b), 1e-6).unwrap(), &want, ATOL, RTOL);
}

#[test]
fn bad_arguments_are_errors() {
    let x = randn(&[2, 6, 3], 1, 1.0);
    let w6 = randn(&[6], 2, 1.0);
    let w3 = randn(&[3], 3, 1.0);
    for layer_norm in [norm::layer_norm, reference::layer_norm] {
        assert!(matches!(layer_norm(&x, Some(&w6), None, 1e-6), Err(Error::ShapeMismatch { op: "layer_norm", .. })));
        let half = w3.to_dtype(DType::BF16).unwrap();
        assert!(matches!(
            layer_norm(&x, Some(&w3), Some(&half), 1e-6),
            Err(Error::UnsupportedDType { op: "layer_norm", .. })
        ));
        assert!(matches!(layer_norm(&Tensor::scalar(1.0f32), None, None, 1e-6), Err(Error::InvalidArgument { .. })));
        assert!(matches!(layer_norm(&x, None, None, -1.0), Err(Error::InvalidArgument { op: "layer_norm", .. })));
    }
    for rms_norm in [norm::rms_norm, reference::rms_norm] {
        assert!(matches!(
            rms_norm(&x.to_dtype(DType::I32).unwrap(), None, 1e-6),
            Err(Error::UnsupportedDType { op: "rms_norm", .. })
        ));
        assert!(matches!(rms_norm(&x, Some(&w6.reshape(&[1, 6]).unwrap()), 1e-6), Err(Error::ShapeMismatch { .. })));
    }
    for l2_normalize in [norm::l2_normalize, reference::l2_normalize] {
        assert!(matches!(
            l2_normalize(&Tensor::scalar(1.0f32), 1e-12),
            Err(Error::InvalidArgument { op: "l2_normalize", .. })
        ));
        assert!(matches!(l2_normalize(&x, -1e-12), Err(Error::InvalidArgument { op: "l2_normalize", .. })));
    }
    for group_norm in [norm::group_norm, reference::group_norm] {
        assert!(matches!(group_norm(&x, 4, None, None, 1e-6), Err(Error::InvalidArgument { op: "group_norm", .. })));
        assert!(matches!(group_norm(&x, 0, None, None, 1e-6), Err(Error::InvalidArgument { op: "group_norm", .. })));
        assert!(matches!(group_norm(&w6, 2, None, None, 1e-6), Err(Error::InvalidArgument { op: "group_norm", .. })));
        assert!(matches!(group_norm(&x, 3, None, Some(&w3), 1e-6), Err(Error::ShapeMismatch { op: "group_norm", .. })));
        assert!(matches!(group_norm(&x, 3, Some(&w6), None, f32::NAN), Err(Error::InvalidArgument { .. })));
    }
}
