//! nearest_code: the chosen code is the nearest in exact arithmetic up to f32 rounding of the
//! expanded distance, on strided inputs; exact ties go to the first index; the argument errors.

use infinity::ops::vq::{nearest_code, reference};
use infinity::runtime::Tensor;
use proptest::prelude::*;

use crate::support::{config, randn, strided_copy};

/// Each row's pick is within the rounding of ‖z‖² + ‖e‖² − 2·z·e (a few ulps of the summed
/// magnitudes) of the exact minimum.
#[track_caller]
fn check(z: &Tensor, codebook: &Tensor) {
    let got = nearest_code(z, codebook).unwrap().to_vec::<i64>().unwrap();
    let exact = reference::distances(z, codebook).unwrap();
    let (zv, ev) = (z.to_vec::<f32>().unwrap(), codebook.to_vec::<f32>().unwrap());
    let c = z.shape()[1];
    let e_max = ev.chunks(c).map(|e| e.iter().map(|x| (x * x) as f64).sum::<f64>()).fold(0.0, f64::max);
    for (r, (pick, d)) in got.iter().zip(&exact).enumerate() {
        let z2: f64 = zv[r * c..][..c].iter().map(|x| (x * x) as f64).sum();
        let bound = 8.0 * (c as f64 + 2.0) * f32::EPSILON as f64 * (z2 + e_max + 2.0 * (z2 * e_max).sqrt());
        let min = d.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(d[*pick as usize] <= min + bound, "row {r}: picked {} at {}, minimum {min}", pick, d[*pick as usize]);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn picks_the_nearest_code(n in 0usize..=9, c in 1usize..=33, v in 1usize..=70, seed: u64, transposed: bool) {
        let z = randn(&[n, c], seed, 1.0);
        let codebook = randn(&[v, c], seed ^ 1, 1.0);
        let z = if transposed { strided_copy(&z, &[1, 0]) } else { z };
        check(&z, &codebook);
    }
}

#[test]
fn ties_go_to_the_first_index_and_exact_matches_win() {
    let codebook = Tensor::from_vec::<f32>(vec![1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0], &[4, 2]).unwrap();
    // (0, 0) is as far from all four codes: the first; (0, 1) equals code 3; (1, 0) equals
    // codes 0 and 2: the first of them.
    let z = Tensor::from_vec::<f32>(vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0], &[3, 2]).unwrap();
    assert_eq!(nearest_code(&z, &codebook).unwrap().to_vec::<i64>().unwrap(), [0, 3, 0]);
}

#[test]
fn bad_arguments_are_errors() {
    let (z, e) = (randn(&[3, 4], 1, 1.0), randn(&[5, 3], 2, 1.0));
    let err = nearest_code(&z, &e).unwrap_err().to_string();
    assert!(err.contains("nearest_code"), "{err}");
    assert!(nearest_code(&randn(&[3], 1, 1.0), &e).is_err());
    assert!(nearest_code(&randn(&[2, 3], 1, 1.0), &Tensor::zeros(&[0, 3], infinity::runtime::DType::F32)).is_err());
}
