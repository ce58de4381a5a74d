//! resize: the table-driven fast path against the per-element reference in all four modes,
//! on odd sizes, enlarging and shrinking, with strided inputs; PyTorch's exact values for the
//! cases the spec calls out (bilinear without antialias, overlapping area windows, 'nearest'
//! rather than 'nearest-exact', bicubic's overshoot and replicated edges); exact identity at the same size; the argument errors.

use infinity::ops::resize::{ResizeMode, reference, resize};
use infinity::runtime::{DType, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, config, padded_view, randn, strided_copy};

/// Fast path vs reference. Nearest copies values, so it must be exact. Bilinear mixes 4 values
/// with weights in [0, 1] in f32 against f64: a few roundings of at most u·max|x| each, bounded
/// here by 4·ε·max|x| (8 u). Area sums a window of n values in f32 (error ≤ (n − 1)·u·max|x|)
/// then divides twice: bounded by (n + 2)·ε·max|x| with n the largest possible window. Bicubic
/// sums 16 products with weights of total magnitude below 1.6: bounded by 16·ε·max|x|.
#[track_caller]
fn check(x: &Tensor, size: (usize, usize), mode: ResizeMode) {
    let got = resize(x, size, mode).unwrap();
    let want = reference::resize(x, size, mode).unwrap();
    let max = x.to_vec::<f32>().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
    let (h, w) = (x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]);
    let window = (h / size.0 + 2) * (w / size.1 + 2);
    let atol = match mode {
        ResizeMode::Nearest => 0.0,
        ResizeMode::Bilinear => 4.0 * f32::EPSILON * max,
        ResizeMode::Area => (window + 2) as f32 * f32::EPSILON * max,
        ResizeMode::Bicubic => 16.0 * f32::EPSILON * max,
    };
    assert_close(&got, &want, atol, 0.0);
}

fn mode() -> impl Strategy<Value = ResizeMode> {
    prop_oneof![
        Just(ResizeMode::Nearest),
        Just(ResizeMode::Bilinear),
        Just(ResizeMode::Area),
        Just(ResizeMode::Bicubic)
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resize_matches_reference(lead in prop::collection::vec(1usize..=3, 0..=2), h in 1usize..=13, w in 1usize..=13,
                                oh in 1usize..=13, ow in 1usize..=13, mode in mode(), seed: u64) {
        let x = randn(&[&lead[..], &[h, w]].concat(), seed, 2.0);
        check(&x, (oh, ow), mode);
    }

    #[test]
    fn resize_takes_strided_inputs(c in 1usize..=3, h in 1usize..=9, w in 1usize..=9, oh in 1usize..=9,
                                   ow in 1usize..=9, mode in mode(), seed: u64) {
        let x = randn(&[c, h, w], seed, 1.0);
        check(&strided_copy(&x, &[2, 1, 0]), (oh, ow), mode);
        check(&padded_view(&x), (oh, ow), mode);
    }
}

#[test]
fn large_inputs_run_planes_in_parallel() {
    let x = randn(&[2, 32, 40, 24], 3, 1.0);
    for mode in [ResizeMode::Nearest, ResizeMode::Bilinear, ResizeMode::Area, ResizeMode::Bicubic] {
        check(&x, (64, 48), mode);
        check(&x, (13, 7), mode);
    }
}

/// `resize` of a column (H values, W = 1) to `out` rows, as a Vec.
fn column(values: &[f32], out: usize, mode: ResizeMode) -> Vec<f32> {
    let x = Tensor::from_vec(values.to_vec(), &[values.len(), 1]).unwrap();
    resize(&x, (out, 1), mode).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn bilinear_known_values() {
    // Shrinking samples half-pixel centres without antialias: 4→2 averages pairs...
    assert_eq!(column(&[1.0, 2.0, 4.0, 8.0], 2, ResizeMode::Bilinear), [1.5, 6.0]);
    // ...and 64→2 samples rows 15.5 and 47.5 — nothing else of the 64 rows contributes.
    let ramp: Vec<f32> = (0..64).map(|v| v as f32).collect();
    assert_eq!(column(&ramp, 2, ResizeMode::Bilinear), [15.5, 47.5]);
    let x = randn(&[64, 3], 5, 1.0);
    let y = resize(&x, (2, 3), ResizeMode::Bilinear).unwrap().to_vec::<f32>().unwrap();
    let xv = x.to_vec::<f32>().unwrap();
    for (i, r) in [15, 47].into_iter().enumerate() {
        for c in 0..3 {
            assert_eq!(y[i * 3 + c], 0.5 * xv[r * 3 + c] + 0.5 * xv[(r + 1) * 3 + c]);
        }
    }
    // Enlarging 2→4: the first position (−0.25) clamps to 0, the last (1.25) to the last row.
    assert_eq!(column(&[0.0, 4.0], 4, ResizeMode::Bilinear), [0.0, 1.0, 3.0, 4.0]);
    // The same along W.
    let row = Tensor::from_vec::<f32>(vec![1.0, 2.0, 4.0, 8.0], &[1, 1, 4]).unwrap();
    assert_eq!(resize(&row, (1, 2), ResizeMode::Bilinear).unwrap().to_vec::<f32>().unwrap(), [1.5, 6.0]);
}

#[test]
fn area_known_values() {
    // 5→2: windows [0, 3) and [2, 5) share row 2.
    assert_eq!(column(&[1.0, 2.0, 4.0, 8.0, 16.0], 2, ResizeMode::Area), [7.0 / 3.0, 28.0 / 3.0]);
    // 64→6: windows [0,11), [10,22), [21,32), [32,43), [42,54), [53,64) of a ramp have these means.
    let ramp: Vec<f32> = (0..64).map(|v| v as f32).collect();
    assert_eq!(column(&ramp, 6, ResizeMode::Area), [5.0, 15.5, 26.0, 37.0, 47.5, 58.0]);
    // Columns too: 4→2 over a 2-D window averages 2×2 blocks.
    let x = Tensor::from_vec::<f32>((0..16).map(|v| v as f32).collect(), &[4, 4]).unwrap();
    assert_eq!(resize(&x, (2, 2), ResizeMode::Area).unwrap().to_vec::<f32>().unwrap(), [2.5, 4.5, 10.5, 12.5]);
}

#[test]
fn bicubic_known_values() {
    // 2→4: sources −0.25, 0.25, 0.75, 1.25 with Keys' weights at A = −0.75 (dyadic, so exact in
    // f32); the taps outside [0, 1] replicate the edges, and the cubic overshoots past them.
    assert_eq!(column(&[0.0, 4.0], 4, ResizeMode::Bicubic), [-0.421875, 0.90625, 3.09375, 4.421875]);
    // A constant stays constant (the weights sum to 1); a ramp does not stay a ramp, since
    // only A = −0.5 reproduces linear functions: at t = 0.25 inside an 8-ramp the taps 0..3
    // give 0.87890625 + 2·0.26171875 − 3·0.03515625 = 1.296875, not 1.25.
    assert_eq!(column(&[3.0; 5], 10, ResizeMode::Bicubic), [3.0; 10]);
    let ramp: Vec<f32> = (0..8).map(|v| v as f32).collect();
    assert_eq!(column(&ramp, 16, ResizeMode::Bicubic)[3], 1.296875);
    // Along W the same weights apply.
    let row = Tensor::from_vec::<f32>(vec![0.0, 4.0], &[1, 1, 2]).unwrap();
    assert_eq!(
        resize(&row, (1, 4), ResizeMode::Bicubic).unwrap().to_vec::<f32>().unwrap(),
        [-0.421875, 0.90625, 3.09375, 4.421875]
    );
}

#[test]
fn nearest_known_values() {
    // floor(dst · 3/5) = 0, 0, 1, 1, 2 ('nearest-exact' would give 0, 1, 1, 2, 2).
    assert_eq!(column(&[10.0, 20.0, 30.0], 5, ResizeMode::Nearest), [10.0, 10.0, 20.0, 20.0, 30.0]);
    // ×2 (the VAE decoder's upsample) replicates each pixel 2×2.
    let x = Tensor::from_vec::<f32>(vec![1.0, 2.0, 3.0, 4.0], &[1, 2, 2]).unwrap();
    let y = resize(&x, (4, 4), ResizeMode::Nearest).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
}

#[test]
fn same_size_is_an_exact_identity() {
    let special = [-0.0, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE, -1e30];
    let mut v = randn(&[2, 5, 3], 7, 1.0).to_vec::<f32>().unwrap();
    v[..special.len()].copy_from_slice(&special);
    let x = Tensor::from_vec(v, &[2, 5, 3]).unwrap();
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
    // A column-major copy (`strided_copy` and `padded_view` compare values, and NaN != NaN).
    let strided = x.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    for mode in [ResizeMode::Nearest, ResizeMode::Bilinear, ResizeMode::Area, ResizeMode::Bicubic] {
        assert_eq!(bits(&resize(&x, (5, 3), mode).unwrap()), bits(&x), "{mode:?}");
        assert_eq!(bits(&resize(&strided, (5, 3), mode).unwrap()), bits(&x), "{mode:?} strided");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let f = |s: &[usize]| Tensor::zeros(s, DType::F32);
    for (x, size) in [(f(&[5]), (2, 2)), (f(&[2, 5, 5]), (0, 3)), (f(&[2, 5, 5]), (3, 0)), (f(&[2, 0, 5]), (3, 3))] {
        for mode in [ResizeMode::Nearest, ResizeMode::Bilinear, ResizeMode::Area, ResizeMode::Bicubic] {
            assert!(resize(&x, size, mode).is_err(), "{:?} → {size:?}", x.shape());
            assert!(reference::resize(&x, size, mode).is_err());
        }
    }
    assert!(resize(&Tensor::zeros(&[4, 4], DType::BF16), (2, 2), ResizeMode::Bilinear).is_err());
}
