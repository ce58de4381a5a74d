//! The AdaLN ops' one-pass CPU paths against the official compositions (`reference`), bit for
//! bit: the same roundings in the same order, on strided tokens, broadcast rows and odd sizes;
//! and their shape errors.

use infinity::ops::adaln::{gated_residual, modulate, reference};
use infinity::runtime::{DType, Error};
use proptest::prelude::*;

use crate::support::{config, randn, strided_copy};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn one_pass_paths_equal_the_compositions(b in 1usize..4, n in 1usize..40, c in 1usize..70, seed in 0u64..1000) {
        let x = strided_copy(&randn(&[b, n, c], seed, 3.0), &[1, 0, 2]);
        let y = randn(&[b, n, c], seed + 1, 1.0);
        let (scale, shift) = (randn(&[b, c], seed + 2, 0.5), randn(&[1, c], seed + 3, 0.5).broadcast_to(&[b, c]).unwrap());
        let got = modulate(&x, &scale, &shift, 1e-6, DType::F32).unwrap();
        prop_assert!(got.same_values(&reference::modulate(&x, &scale, &shift, 1e-6).unwrap()));
        let got = gated_residual(&x, &y, &scale).unwrap();
        prop_assert!(got.same_values(&reference::gated_residual(&x, &y, &scale).unwrap()));
    }
}

#[test]
fn rows_of_another_shape_are_refused() {
    let x = randn(&[2, 3, 4], 1, 1.0);
    let err = modulate(&x, &randn(&[1, 4], 2, 1.0), &randn(&[2, 4], 3, 1.0), 1e-6, DType::F32).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "modulate", .. }), "{err}");
    let err = gated_residual(&x, &randn(&[2, 3, 5], 4, 1.0), &randn(&[2, 4], 5, 1.0)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "gated_residual", .. }), "{err}");
}
