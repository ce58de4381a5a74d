//! RoPE: the interleaved rotation's fast path against the reference (random and 2-D tables,
//! strided inputs), the 2-D table's exact values and layout, identity at the origin, pair norms,
//! the relative-position property, and errors.

use infinity::ops::rope::{reference, rope_interleaved, rope2d_table};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, config, randn, strided_copy};

/// Unit roundoff of f32.
const U: f32 = f32::EPSILON / 2.0;
const BASE: f32 = 10000.0;

fn max_abs(t: &Tensor) -> f32 {
    t.to_f32_vec().unwrap().iter().fold(0.0, |m, &x| m.max(x.abs()))
}

fn f32s(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).unwrap()
}

/// `n` grid positions with coordinates below `limit`, drawn from `seed`.
fn positions(n: usize, limit: usize, seed: u64) -> Vec<(usize, usize)> {
    let u = Philox::new(seed).uniform(2 * n);
    let coord = |x: f32| ((x * limit as f32) as usize).min(limit - 1);
    u.chunks_exact(2).map(|p| (coord(p[0]), coord(p[1]))).collect()
}

proptest! {
    #![proptest_config(config())]

    /// Fast path vs the f64 reference, on random tables (any values, not only rotations) and on
    /// 2-D tables, with x stored as (B, L, H, hd) and tables stored transposed.
    ///
    /// Tolerance: the fast path rounds c·a, s·b and their sum, so it is off from the exact value
    /// by at most 2u·(|c·a| + |s·b|); the reference is off by at most u·|result| (+ f64 noise).
    /// Hence |fast − reference| ≤ 3u · max|x| · max(|c| + |s|), the atol used.
    #[test]
    fn fast_matches_reference(
        (b, h, len, pairs) in (1usize..=2, 1usize..=3, 1usize..=9, 1usize..=8),
        from_grid in any::<bool>(),
        strided in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // 2-D tables need an even number of pairs (one half per axis).
        let hd = if from_grid { 4 * pairs.div_ceil(2) } else { 2 * pairs };
        let x = randn(&[b, h, len, hd], seed, 1.0);
        let (cos, sin) = if from_grid {
            rope2d_table(&positions(len, 128, seed ^ 1), hd, BASE).unwrap()
        } else {
            (randn(&[len, hd / 2], seed ^ 2, 1.0), randn(&[len, hd / 2], seed ^ 3, 1.0))
        };
        let (x, cos, sin) =
            if strided { (strided_copy(&x, &[0, 2, 1, 3]), strided_copy(&cos, &[1, 0]), strided_copy(&sin, &[1, 0])) } else { (x, cos, sin) };
        let got = rope_interleaved(&x, &cos, &sin).unwrap();
        let want = reference::rope_interleaved(&x, &cos, &sin).unwrap();
        let (c, s) = (cos.to_f32_vec().unwrap(), sin.to_f32_vec().unwrap());
        let max_cs = c.iter().zip(&s).fold(0f32, |m, (c, s)| m.max(c.abs() + s.abs()));
        prop_assert!(got.is_contiguous());
        assert_close(&got, &want, 3.0 * U * max_abs(&x) * max_cs, 0.0);
    }

    /// A rotation keeps the length of every pair (up to the rounding of cos, sin and the products).
    #[test]
    fn rotation_preserves_pair_norms(
        (len, quads) in (1usize..=9, 1usize..=8),
        seed in any::<u64>(),
    ) {
        let hd = 4 * quads;
        let x = randn(&[1, 1, len, hd], seed, 1.0);
        let (cos, sin) = rope2d_table(&positions(len, 128, seed ^ 1), hd, BASE).unwrap();
        let (xv, ov) = (x.to_f32_vec().unwrap(), rope_interleaved(&x, &cos, &sin).unwrap().to_f32_vec().unwrap());
        for (a, o) in xv.chunks_exact(2).zip(ov.chunks_exact(2)) {
            let (na, no) = (f64::from(a[0]).hypot(f64::from(a[1])), f64::from(o[0]).hypot(f64::from(o[1])));
            // Relative error: cos² + sin² is 1 within ~2u, and each output rounds twice.
            prop_assert!((na - no).abs() <= 8.0 * f64::from(U) * na, "pair norm {na} became {no}");
        }
    }

    /// ⟨rope(q, p1), rope(k, p2)⟩ depends only on p1 − p2, separately per axis: shifting both
    /// positions by (dy, dx) leaves the score unchanged.
    ///
    /// Tolerance: angles are formed in f32, so an angle of position ≤ 191 is off by at most
    /// 191·u ≈ 1.1e-5 rad; each rotated vector then moves by at most that times its norm, so
    /// the two scores differ by at most 4 · 1.1e-5 · |q|·|k| (plus f32 noise): 1e-4·|q|·|k|.
    #[test]
    fn score_depends_only_on_relative_position(
        quads in 1usize..=8,
        p in (0usize..128, 0usize..128, 0usize..128, 0usize..128),
        (dy, dx) in (0usize..64, 0usize..64),
        seed in any::<u64>(),
    ) {
        let hd = 4 * quads;
        let (p1, p2) = ((p.0, p.1), (p.2, p.3));
        let shifted = |(y, x): (usize, usize)| (y + dy, x + dx);
        let (cos, sin) = rope2d_table(&[p1, p2, shifted(p1), shifted(p2)], hd, BASE).unwrap();
        let q = randn(&[1, 1, 1, hd], seed, 1.0);
        let k = randn(&[1, 1, 1, hd], seed ^ 1, 1.0);
        let at = |t: &Tensor, row: usize| {
            let (c, s) = (cos.narrow(0, row, 1).unwrap(), sin.narrow(0, row, 1).unwrap());
            rope_interleaved(t, &c, &s).unwrap().to_f32_vec().unwrap()
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>();
        let (s12, s_shifted) = (dot(&at(&q, 0), &at(&k, 1)), dot(&at(&q, 2), &at(&k, 3)));
        let norms = dot(&q.to_f32_vec().unwrap(), &q.to_f32_vec().unwrap()).sqrt() * dot(&k.to_f32_vec().unwrap(), &k.to_f32_vec().unwrap()).sqrt();
        prop_assert!((s12 - s_shifted).abs() <= 1e-4 * norms, "{s12} vs {s_shifted}");
    }
}

/// At grid position (0, 0) every angle is 0: cos is exactly 1, sin exactly 0, x is unchanged.
#[test]
fn origin_is_the_identity() {
    let (cos, sin) = rope2d_table(&[(0, 0); 3], 16, BASE).unwrap();
    assert!(cos.same_values(&Tensor::full(&[3, 8], 1.0, DType::F32)));
    assert!(sin.same_values(&Tensor::zeros(&[3, 8], DType::F32)));
    let x = randn(&[2, 2, 3, 16], 5, 1.0);
    assert!(rope_interleaved(&x, &cos, &sin).unwrap().same_values(&x));
    assert!(reference::rope_interleaved(&x, &cos, &sin).unwrap().same_values(&x));
}

/// hd = 8: half = 4, inv_freq = [1, 1/10000^(2/4) = 0.01]; at (y, x) = (3, 5) the angles of
/// the four pairs are [3, 0.03, 5, 0.05] (rows first, then columns).
#[test]
fn table_hand_computed() {
    let (cos, sin) = rope2d_table(&[(3, 5)], 8, BASE).unwrap();
    let angles = [3.0f64, 0.03, 5.0, 0.05];
    assert_close(&cos, &f32s(&angles.map(|a| a.cos() as f32), &[1, 4]), 1e-7, 0.0);
    assert_close(&sin, &f32s(&angles.map(|a| a.sin() as f32), &[1, 4]), 1e-7, 0.0);
    // hd = 128 (the 2B model): at (1, 2) pair j < 32 turns by 10000^(−j/32) and pair 32 + j by
    // twice that; the exponent uses 2i/half, not 2i/hd.
    let (cos, sin) = rope2d_table(&[(1, 2)], 128, BASE).unwrap();
    let want: Vec<f64> =
        (0..64).map(|j| f64::from(1 + (j / 32) as u8) * 10000f64.powf(-((j % 32) as f64) / 32.0)).collect();
    assert_close(&cos, &f32s(&want.iter().map(|a| a.cos() as f32).collect::<Vec<_>>(), &[1, 64]), 1e-6, 0.0);
    assert_close(&sin, &f32s(&want.iter().map(|a| a.sin() as f32).collect::<Vec<_>>(), &[1, 64]), 1e-6, 0.0);
}

/// Interleaved pairs with exactly representable tables: pair j is (2j, 2j+1), not (j, j + hd/2).
#[test]
fn rotation_hand_computed() {
    let x = f32s(&[2., 4., 1., -2.], &[1, 1, 1, 4]);
    let (cos, sin) = (f32s(&[0.5, 0.], &[1, 2]), f32s(&[0.75, 1.], &[1, 2]));
    // Pair 0: (0.5·2 − 0.75·4, 0.75·2 + 0.5·4); pair 1 turns by 90°: (−(−2), 1).
    let want = f32s(&[-2., 3.5, 2., 1.], &[1, 1, 1, 4]);
    assert!(rope_interleaved(&x, &cos, &sin).unwrap().same_values(&want));
    assert!(reference::rope_interleaved(&x, &cos, &sin).unwrap().same_values(&want));
    // Any leading shape works: (L, hd) alone.
    let flat = want.reshape(&[1, 4]).unwrap();
    assert!(rope_interleaved(&x.reshape(&[1, 4]).unwrap(), &cos, &sin).unwrap().same_values(&flat));
}

/// Rows drive the first half of the head dims and columns the second: at (y, 0) the second
/// half is untouched, at (0, x) the first.
#[test]
fn rows_then_columns() {
    let x = randn(&[1, 1, 2, 16], 11, 1.0);
    let (cos, sin) = rope2d_table(&[(7, 0), (0, 7)], 16, BASE).unwrap();
    let out = rope_interleaved(&x, &cos, &sin).unwrap();
    let part = |t: &Tensor, row: usize, start: usize| t.narrow(2, row, 1).unwrap().narrow(3, start, 8).unwrap();
    assert!(part(&out, 0, 8).same_values(&part(&x, 0, 8)) && !part(&out, 0, 0).same_values(&part(&x, 0, 0)));
    assert!(part(&out, 1, 0).same_values(&part(&x, 1, 0)) && !part(&out, 1, 8).same_values(&part(&x, 1, 8)));
}

#[test]
fn bad_arguments_are_errors() {
    let x = randn(&[1, 2, 3, 8], 1, 1.0);
    let table = randn(&[3, 4], 2, 1.0);
    assert!(rope_interleaved(&x, &table, &table).is_ok());
    let odd = randn(&[1, 2, 3, 7], 1, 1.0);
    assert!(matches!(
        rope_interleaved(&odd, &randn(&[3, 3], 2, 1.0), &randn(&[3, 3], 2, 1.0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(rope_interleaved(&randn(&[8], 1, 1.0), &table, &table), Err(Error::InvalidArgument { .. })));
    // Table rows must match L, columns hd/2, for cos and sin alike.
    for bad in [randn(&[4, 4], 2, 1.0), randn(&[3, 8], 2, 1.0), randn(&[1, 3, 4], 2, 1.0)] {
        assert!(matches!(rope_interleaved(&x, &bad, &table), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(reference::rope_interleaved(&x, &table, &bad), Err(Error::ShapeMismatch { .. })));
    }
    assert!(matches!(
        rope_interleaved(&x.to_dtype(DType::BF16).unwrap(), &table, &table),
        Err(Error::UnsupportedDType { .. })
    ));
    assert!(matches!(
        rope_interleaved(&x, &table.to_dtype(DType::F16).unwrap(), &table),
        Err(Error::UnsupportedDType { .. })
    ));
    // 2-D tables need hd a positive multiple of 4 and a positive finite base.
    for hd in [0, 2, 6, 10] {
        assert!(matches!(rope2d_table(&[(0, 0)], hd, BASE), Err(Error::InvalidArgument { .. })));
    }
    for base in [0.0, -2.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(rope2d_table(&[(0, 0)], 8, base), Err(Error::InvalidArgument { .. })));
    }
}
