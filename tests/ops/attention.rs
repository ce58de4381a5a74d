//! Attention: the online-softmax fast path against the f64 reference on random shapes (key
//! counts crossing the 64-key block), strided inputs and every kind of mask; the block-causal
//! mask against attention over prefixes; hand-computed cases; fully masked rows; errors.

use infinity::ops::attention::{attention, block_causal_mask, causal_attention, causal_mask, reference};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{assert_close, config, padded_view, randn, strided_copy};

/// Fast vs reference tolerance. The fast path rounds each score (a dot of D ≤ 9 products,
/// scaled, plus the mask) in f32, and sums ≤ 140 exp terms and weighted v rows in f32; the
/// reference does all of it in f64. A score off by δ moves each weight by a relative ~2δ, and
/// the output is a convex combination of v rows (|v| ≲ 4.5 for these normals), so
/// |error| ≲ 4.5 · (2δ + Lk·2⁻²⁴) with δ ≲ D·2⁻²⁴·|score| ≈ 9·6e-8·10: about 1e-5 even when
/// every rounding error has the same sign. Measured errors are ~1e-6.
const ATOL: f32 = 2e-5;
const RTOL: f32 = 1e-5;

/// Which additive mask a case uses.
#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    /// Random finite values of full shape (B, H, Lq, Lk).
    Finite,
    /// Random finite values of shape (1, 1, Lq, Lk), broadcast over batch and heads.
    Broadcast,
    /// A key-padding mask of shape (B, 1, 1, Lk): 0 or -inf per key, broadcast over queries.
    KeyPadding,
    /// Random -inf entries of full shape, with some rows masked entirely.
    NegInf,
}

fn mask_kind() -> impl Strategy<Value = MaskKind> {
    prop::sample::select(vec![
        MaskKind::None,
        MaskKind::Finite,
        MaskKind::Broadcast,
        MaskKind::KeyPadding,
        MaskKind::NegInf,
    ])
}

fn make_mask(kind: MaskKind, [b, h, lq, lk]: [usize; 4], seed: u64) -> Option<Tensor> {
    let holes = |shape: &[usize], p: f32, fill: &dyn Fn(usize) -> f32| {
        let u = Philox::new(seed).uniform(shape.iter().product());
        let v: Vec<f32> = u.iter().enumerate().map(|(i, &x)| if x < p { f32::NEG_INFINITY } else { fill(i) }).collect();
        Tensor::from_vec(v, shape).unwrap()
    };
    match kind {
        MaskKind::None => None,
        MaskKind::Finite => Some(randn(&[b, h, lq, lk], seed, 2.0)),
        MaskKind::Broadcast => Some(randn(&[1, 1, lq, lk], seed, 2.0)),
        MaskKind::KeyPadding => Some(holes(&[b, 1, 1, lk], 0.3, &|_| 0.0)),
        MaskKind::NegInf => {
            // Rows whose first draw is below 0.2 are masked entirely; the rest lose ~40% of keys.
            let row_draw = Philox::new(seed ^ 1).uniform(b * h * lq);
            let finite = randn(&[b, h, lq, lk], seed ^ 2, 2.0).to_vec::<f32>().unwrap();
            Some(holes(&[b, h, lq, lk], 0.4, &|i| if row_draw[i / lk] < 0.2 { f32::NEG_INFINITY } else { finite[i] }))
        }
    }
}

/// Attention inputs (B, H, L, D) for q and k, (B, H, Lk, Dv) for v.
fn qkv(b: usize, h: usize, lq: usize, lk: usize, d: usize, dv: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    (
        randn(&[b, h, lq, d], seed, 1.0),
        randn(&[b, h, lk, d], seed ^ 0x10, 1.0),
        randn(&[b, h, lk, dv], seed ^ 0x20, 1.0),
    )
}

fn f32s(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// The fast path equals the reference for every mask kind, with q stored as (B, L, H, D)
    /// (the layout a fused qkv projection produces) and k, v as padded row views.
    #[test]
    fn fast_matches_reference(
        (b, h, lq, lk) in (1usize..=2, 1usize..=3, 1usize..=70, 1usize..=140),
        (d, dv) in (1usize..=9, 1usize..=6),
        kind in mask_kind(),
        strided in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (q, k, v) = qkv(b, h, lq, lk, d, dv, seed);
        let (q, k, v) = if strided { (strided_copy(&q, &[0, 2, 1, 3]), padded_view(&k), padded_view(&v)) } else { (q, k, v) };
        let mask = make_mask(kind, [b, h, lq, lk], seed ^ 0x30);
        let scale = 1.0 / (d as f32).sqrt();
        let got = attention(&q, &k, &v, mask.as_ref(), scale).unwrap();
        let want = reference::attention(&q, &k, &v, mask.as_ref(), scale).unwrap();
        prop_assert!(got.is_contiguous());
        assert_close(&got, &want, ATOL, RTOL);
    }

    /// Under the block-causal mask, the queries of scale k get exactly what attention without a
    /// mask over the keys of scales 0..=k gives them (and the reference agrees).
    #[test]
    fn block_causal_equals_attention_over_prefixes(
        scale_lens in prop::collection::vec(1usize..=7, 1..=5),
        (b, h, d) in (1usize..=2, 1usize..=2, 1usize..=8),
        seed in any::<u64>(),
    ) {
        let total: usize = scale_lens.iter().sum();
        let (q, k, v) = qkv(b, h, total, total, d, d, seed);
        let mask = block_causal_mask(&scale_lens).unwrap();
        let got = attention(&q, &k, &v, Some(&mask), 1.0).unwrap();
        assert_close(&got, &reference::attention(&q, &k, &v, Some(&mask), 1.0).unwrap(), ATOL, RTOL);
        let mut start = 0;
        for &n in &scale_lens {
            let (qs, ks, vs) = (q.narrow(2, start, n).unwrap(), k.narrow(2, 0, start + n).unwrap(), v.narrow(2, 0, start + n).unwrap());
            let prefix = attention(&qs, &ks, &vs, None, 1.0).unwrap();
            assert_close(&got.narrow(2, start, n).unwrap().contiguous().unwrap(), &prefix, ATOL, RTOL);
            start += n;
        }
    }

    /// Softmax ignores a constant added to a whole row: a (Lq, 1) mask, broadcast along the
    /// keys through a zero stride, leaves the output unchanged.
    #[test]
    fn row_constant_mask_changes_nothing(
        (b, h, lq, lk, d) in (1usize..=2, 1usize..=2, 1usize..=9, 1usize..=80, 1usize..=8),
        seed in any::<u64>(),
    ) {
        let (q, k, v) = qkv(b, h, lq, lk, d, d, seed);
        let shift = randn(&[lq, 1], seed ^ 0x40, 5.0);
        let plain = reference::attention(&q, &k, &v, None, 1.0).unwrap();
        assert_close(&attention(&q, &k, &v, Some(&shift), 1.0).unwrap(), &plain, ATOL, RTOL);
        assert_close(&reference::attention(&q, &k, &v, Some(&shift), 1.0).unwrap(), &plain, 1e-6, 1e-6);
    }
}

#[test]
fn block_causal_mask_hand_computed() {
    let inf = f32::NEG_INFINITY;
    let m = block_causal_mask(&[1, 2]).unwrap();
    assert!(m.same_values(&f32s(&[0., inf, inf, 0., 0., 0., 0., 0., 0.], &[3, 3])));
    let m = block_causal_mask(&[2, 1]).unwrap();
    assert!(m.same_values(&f32s(&[0., 0., inf, 0., 0., inf, 0., 0., 0.], &[3, 3])));
    assert_eq!(block_causal_mask(&[]).unwrap().shape(), [0, 0]);
    assert!(matches!(block_causal_mask(&[usize::MAX, 2]), Err(Error::InvalidArgument { .. })));
}

/// Small cases worked out by hand, on both implementations.
#[test]
fn causal_mask_hand_computed_and_causal_attention_uses_it() {
    // 2 queries at the end of 4 positions: the first sees keys 0..=2, the second all.
    let m = causal_mask(2, 4).unwrap().to_vec::<f32>().unwrap();
    let ninf = f32::NEG_INFINITY;
    assert_eq!(m, [0.0, 0.0, 0.0, ninf, 0.0, 0.0, 0.0, 0.0]);
    // The whole sequence: the block-causal mask of single-position blocks.
    assert!(causal_mask(3, 3).unwrap().same_values(&block_causal_mask(&[1, 1, 1]).unwrap()));
    assert!(causal_mask(3, 2).is_err());
    let (q, k, v) = qkv(2, 2, 3, 5, 4, 4, 9);
    let want = attention(&q, &k, &v, Some(&causal_mask(3, 5).unwrap()), 0.5).unwrap();
    assert!(causal_attention(&q, &k, &v, 0.5).unwrap().same_values(&want));
}

#[test]
fn hand_computed() {
    type Attn = fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, f32) -> infinity::runtime::Result<Tensor>;
    for attn in [attention as Attn, reference::attention as Attn] {
        // Equal scores: the mean of the values.
        let q = f32s(&[1., 0.], &[1, 1, 1, 2]);
        let k = f32s(&[1., 0., 1., 0.], &[1, 1, 2, 2]);
        let v = f32s(&[1., 10., 3., 20.], &[1, 1, 2, 2]);
        assert_close(&attn(&q, &k, &v, None, 1.0).unwrap(), &f32s(&[2., 15.], &[1, 1, 1, 2]), 1e-6, 1e-6);
        // Scores ln 3 and 0: weights 3/4 and 1/4.
        let q = f32s(&[3f32.ln(), 0.], &[1, 1, 1, 2]);
        let k = f32s(&[1., 0., 0., 0.], &[1, 1, 2, 2]);
        assert_close(&attn(&q, &k, &v, None, 1.0).unwrap(), &f32s(&[1.5, 12.5], &[1, 1, 1, 2]), 1e-6, 1e-6);
        // The same weights from the scale (2·ln 3 · 1/2) and from a mask (ln 3 on key 0).
        let q2 = f32s(&[2. * 3f32.ln(), 0.], &[1, 1, 1, 2]);
        assert_close(&attn(&q2, &k, &v, None, 0.5).unwrap(), &f32s(&[1.5, 12.5], &[1, 1, 1, 2]), 1e-6, 1e-6);
        let zero_q = f32s(&[0., 0.], &[1, 1, 1, 2]);
        let mask = f32s(&[3f32.ln(), 0.], &[2]);
        assert_close(&attn(&zero_q, &k, &v, Some(&mask), 1.0).unwrap(), &f32s(&[1.5, 12.5], &[1, 1, 1, 2]), 1e-6, 1e-6);
        // A -inf key gets weight exactly 0.
        let mask = f32s(&[f32::NEG_INFINITY, 0.], &[1, 2]);
        assert!(attn(&q, &k, &v, Some(&mask), 1.0).unwrap().same_values(&f32s(&[3., 20.], &[1, 1, 1, 2])));
    }
}

/// Rows with every key masked, and queries with no keys at all, output zeros.
#[test]
fn fully_masked_rows_output_zero() {
    let inf = f32::NEG_INFINITY;
    let (q, k, v) = qkv(1, 2, 3, 70, 4, 3, 7);
    // Row 0 masked entirely; row 1 sees only the last key (in the second 64-key block); row 2 sees all.
    let mut m = vec![inf; 3 * 70];
    m[70 + 69] = 0.0;
    m[140..].fill(0.0);
    let mask = Tensor::from_vec(m, &[3, 70]).unwrap();
    let got = attention(&q, &k, &v, Some(&mask), 0.5).unwrap();
    let want = reference::attention(&q, &k, &v, Some(&mask), 0.5).unwrap();
    assert_close(&got, &want, ATOL, RTOL);
    for t in [&got, &want] {
        for head in 0..2 {
            let rows = t.narrow(1, head, 1).unwrap();
            assert!(rows.narrow(2, 0, 1).unwrap().to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
            // One visible key: its value row, exactly.
            let last_v = v.narrow(1, head, 1).unwrap().narrow(2, 69, 1).unwrap();
            assert!(rows.narrow(2, 1, 1).unwrap().same_values(&last_v));
        }
    }
    let (q, k, v) = qkv(2, 1, 4, 0, 3, 5, 8);
    for t in [attention(&q, &k, &v, None, 1.0).unwrap(), reference::attention(&q, &k, &v, None, 1.0).unwrap()] {
        assert!(t.same_values(&Tensor::zeros(&[2, 1, 4, 5], DType::F32)));
    }
}

#[test]
fn bad_arguments_are_errors() {
    let (q, k, v) = qkv(1, 2, 3, 4, 5, 6, 9);
    let ok = |q: &Tensor, k: &Tensor, v: &Tensor, m: Option<&Tensor>| attention(q, k, v, m, 1.0);
    assert!(ok(&q, &k, &v, None).is_ok());
    assert!(matches!(ok(&q.squeeze(0).unwrap(), &k, &v, None), Err(Error::InvalidArgument { .. })));
    assert!(matches!(ok(&q, &k, &v.squeeze(0).unwrap(), None), Err(Error::InvalidArgument { .. })));
    // Head dims of q and k differ; key counts of k and v differ; batch or heads differ.
    assert!(matches!(ok(&q, &randn(&[1, 2, 4, 4], 1, 1.0), &v, None), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(ok(&q, &k, &randn(&[1, 2, 5, 6], 1, 1.0), None), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(ok(&q, &randn(&[1, 1, 4, 5], 1, 1.0), &v, None), Err(Error::ShapeMismatch { .. })));
    // The mask must broadcast to (1, 2, 3, 4) and be f32.
    assert!(matches!(ok(&q, &k, &v, Some(&randn(&[3, 5], 1, 1.0))), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(ok(&q, &k, &v, Some(&randn(&[2, 1, 3, 4], 1, 1.0))), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        ok(&q, &k, &v, Some(&randn(&[3, 4], 1, 1.0).to_dtype(DType::BF16).unwrap())),
        Err(Error::UnsupportedDType { .. })
    ));
    assert!(matches!(ok(&q.to_dtype(DType::F16).unwrap(), &k, &v, None), Err(Error::UnsupportedDType { .. })));
    assert!(matches!(
        reference::attention(&q, &k.to_dtype(DType::BF16).unwrap(), &v, None, 1.0),
        Err(Error::UnsupportedDType { .. })
    ));
}
