//! Index ops (concat, split, index_select, gather, embedding, index_add): hand-computed cases, invariants
//! between the ops on every dtype and on non-contiguous views, exactness for wide integers, and
//! typed errors for bad dims, shapes and indices.
//!
//! Data-movement ops must be exact, so every comparison here is `same_values` (bitwise).

use infinity::ops::index::{concat, embedding, gather, index_add, index_select, split};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{config, strided_copy};

/// A tensor of `dtype` whose element at row-major position p holds p: every value is exact in
/// every dtype for the small shapes used here (at most 256 elements), so an output value names the
/// source element it was copied from.
fn numbered(shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    assert!(n <= 256, "numbered tensors must stay exact in u8 and bf16");
    Tensor::from_vec((0..n).map(|p| p as f32).collect::<Vec<_>>(), shape).unwrap().to_dtype(dtype).unwrap()
}

/// The same values as `t` stored with the dimensions in reverse order, i.e. a non-contiguous view.
fn reversed_storage(t: &Tensor) -> Tensor {
    let perm: Vec<usize> = (0..t.rank()).rev().collect();
    strided_copy(t, &perm)
}

fn index_tensor(values: &[i64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap().to_dtype(dtype).unwrap()
}

fn f32s(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).unwrap()
}

/// Row-major coordinates of flat position `p` in `shape`.
fn coords(mut p: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = p % shape[d];
        p /= shape[d];
    }
    c
}

fn flat(c: &[usize], shape: &[usize]) -> usize {
    c.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// A shape of rank 1..=4 (sizes 1..=4, so numbered tensors stay below 256 elements), a dim
/// of it, and a dtype.
fn shape_dim_dtype() -> impl Strategy<Value = (Vec<usize>, usize, DType)> {
    prop::collection::vec(1usize..=4, 1..=4).prop_flat_map(|s| {
        let rank = s.len();
        (Just(s), 0..rank, prop::sample::select(DType::ALL.to_vec()))
    })
}

fn index_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![DType::I64, DType::I32])
}

#[test]
fn concat_hand_computed() {
    let a = f32s(&[1., 2., 3., 4.], &[2, 2]);
    let b = f32s(&[5., 6.], &[2, 1]);
    assert!(concat(&[&a, &b], 1).unwrap().same_values(&f32s(&[1., 2., 5., 3., 4., 6.], &[2, 3])));
    let c = f32s(&[7., 8.], &[1, 2]);
    assert!(concat(&[&c, &a], 0).unwrap().same_values(&f32s(&[7., 8., 1., 2., 3., 4.], &[3, 2])));
    // A single input is copied unchanged, a non-contiguous one into contiguous storage.
    let t = concat(&[&a.transpose(0, 1).unwrap()], 0).unwrap();
    assert!(t.is_contiguous() && t.same_values(&f32s(&[1., 3., 2., 4.], &[2, 2])));
}

#[test]
fn index_select_hand_computed() {
    let x = f32s(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let cols = index_select(&x, 1, &index_tensor(&[2, 0, 2], &[3], DType::I64)).unwrap();
    assert!(cols.same_values(&f32s(&[3., 1., 3., 6., 4., 6.], &[2, 3])));
    let rows = index_select(&x, 0, &index_tensor(&[1], &[1], DType::I32)).unwrap();
    assert!(rows.same_values(&f32s(&[4., 5., 6.], &[1, 3])));
    let none = index_select(&x, 0, &index_tensor(&[], &[0], DType::I64)).unwrap();
    assert_eq!(none.shape(), [0, 3]);
}

/// Repeated indices accumulate, unpicked slices are zero, and a bad index or count is refused.
#[test]
fn index_add_hand_computed() {
    let g = f32s(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let cols = index_add(&g, 1, &index_tensor(&[2, 0, 2], &[3], DType::I64), 4).unwrap();
    assert!(cols.same_values(&f32s(&[2., 0., 4., 0., 5., 0., 10., 0.], &[2, 4])));
    let e = index_add(&g, 1, &index_tensor(&[2, 4, 0], &[3], DType::I32), 4).unwrap_err().to_string();
    assert!(e.contains("index 4 at flat position 1 is outside 0..4"), "{e}");
    let e = index_add(&g, 0, &index_tensor(&[0], &[1], DType::I64), 4).unwrap_err().to_string();
    assert!(e.contains("1 indices for 2 slices at dim 0"), "{e}");
}

/// The example of the `torch.gather` documentation, then a broadcast (stride 0) source.
#[test]
fn gather_hand_computed() {
    let t = f32s(&[1., 2., 3., 4.], &[2, 2]);
    let index = index_tensor(&[0, 0, 1, 0], &[2, 2], DType::I64);
    assert!(gather(&t, 1, &index).unwrap().same_values(&f32s(&[1., 1., 4., 3.], &[2, 2])));
    // Each of the three identical rows of the view picks its own columns.
    let rows = f32s(&[10., 20., 30.], &[1, 3]).broadcast_to(&[3, 3]).unwrap();
    let index = index_tensor(&[2, 1, 0], &[3, 1], DType::I32);
    assert!(gather(&rows, 1, &index).unwrap().same_values(&f32s(&[30., 20., 10.], &[3, 1])));
}

#[test]
fn embedding_hand_computed() {
    let weight = f32s(&[0., 1., 10., 11., 20., 21.], &[3, 2]);
    let ids = index_tensor(&[2, 0, 0, 1], &[2, 2], DType::I64);
    let out = embedding(&weight, &ids).unwrap();
    assert!(out.same_values(&f32s(&[20., 21., 0., 1., 0., 1., 10., 11.], &[2, 2, 2])));
    // A scalar id gives one row.
    let one = embedding(&weight, &Tensor::scalar(1i32)).unwrap();
    assert!(one.same_values(&f32s(&[10., 11.], &[2])));
}

/// Values that f32 cannot hold (beyond 2^24) come through every op unchanged.
#[test]
fn wide_integers_are_moved_exactly() {
    let base = (1i64 << 53) + 1;
    let x = Tensor::from_vec((0..6).map(|i| base + i).collect::<Vec<i64>>(), &[2, 3]).unwrap();
    let i64s = |v: &[i64], s: &[usize]| Tensor::from_vec(v.to_vec(), s).unwrap();
    let idx = index_tensor(&[1, 0], &[2], DType::I64);
    assert!(concat(&[&x, &x], 0).unwrap().to_vec::<i64>().unwrap()[6..] == x.to_vec::<i64>().unwrap()[..]);
    assert!(index_select(&x, 0, &idx).unwrap().same_values(&i64s(&[3, 4, 5, 0, 1, 2].map(|i| base + i), &[2, 3])));
    let index = index_tensor(&[2, 0], &[2, 1], DType::I64);
    assert!(gather(&x, 1, &index).unwrap().same_values(&i64s(&[base + 2, base + 3], &[2, 1])));
    assert!(embedding(&x, &idx).unwrap().same_values(&index_select(&x, 0, &idx).unwrap()));
}

proptest! {
    #![proptest_config(config())]

    /// Splitting at random cut points (empty pieces included) gives the narrows of `x`, and
    /// concatenating the pieces restores `x`, for every dtype and a non-contiguous source.
    #[test]
    fn split_then_concat_is_identity((shape, dim, dtype) in shape_dim_dtype(), seed in any::<u64>()) {
        let x = reversed_storage(&numbered(&shape, dtype));
        let n = shape[dim];
        // Up to four cut points in 0..=n, sorted: consecutive differences are the piece sizes.
        let mut cuts: Vec<usize> = Philox::new(seed).uniform(4).iter().map(|u| (u * (n + 1) as f32) as usize).collect();
        cuts.push(0);
        cuts.push(n);
        cuts.sort_unstable();
        let sizes: Vec<usize> = cuts.windows(2).map(|w| w[1] - w[0]).collect();
        let pieces = split(&x, &sizes, dim).unwrap();
        prop_assert_eq!(pieces.len(), sizes.len());
        for (piece, (&start, &len)) in pieces.iter().zip(cuts.iter().zip(&sizes)) {
            prop_assert!(piece.same_values(&x.narrow(dim, start, len).unwrap()));
        }
        let refs: Vec<&Tensor> = pieces.iter().collect();
        let joined = concat(&refs, dim).unwrap();
        prop_assert!(joined.is_contiguous() && joined.same_values(&x));
    }

    /// index_select picks whole slices in index order, repeats included: it equals the concat
    /// of the one-wide narrows at those positions.
    #[test]
    fn index_select_equals_concat_of_narrows(
        (shape, dim, dtype) in shape_dim_dtype(),
        picks in prop::collection::vec(0usize..64, 0..7),
        idx_dtype in index_dtype(),
    ) {
        let x = reversed_storage(&numbered(&shape, dtype));
        let idx: Vec<i64> = picks.iter().map(|&p| (p % shape[dim]) as i64).collect();
        let got = index_select(&x, dim, &index_tensor(&idx, &[idx.len()], idx_dtype)).unwrap();
        let mut want_shape = shape.clone();
        want_shape[dim] = idx.len();
        prop_assert_eq!(got.shape(), &want_shape[..]);
        if !idx.is_empty() {
            let narrows: Vec<Tensor> = idx.iter().map(|&i| x.narrow(dim, i as usize, 1).unwrap()).collect();
            let refs: Vec<&Tensor> = narrows.iter().collect();
            prop_assert!(got.same_values(&concat(&refs, dim).unwrap()));
        }
    }

    /// index_add is index_select's adjoint: ⟨select(x), y⟩ = ⟨x, index_add(y)⟩, with small
    /// integers so that both sums are exact.
    #[test]
    fn index_add_is_the_adjoint_of_index_select(
        (shape, dim, _dtype) in shape_dim_dtype(),
        picks in prop::collection::vec(0usize..64, 0..7),
        idx_dtype in index_dtype(),
    ) {
        let n: usize = shape.iter().product();
        let x = Tensor::from_vec((0..n).map(|i| (i % 7) as f32 - 3.0).collect(), &shape).unwrap();
        let idx: Vec<i64> = picks.iter().map(|&p| (p % shape[dim]) as i64).collect();
        let indices = index_tensor(&idx, &[idx.len()], idx_dtype);
        let picked = index_select(&x, dim, &indices).unwrap();
        let y: Vec<f32> = (0..picked.numel()).map(|i| (i % 5) as f32 - 2.0).collect();
        let back = index_add(&Tensor::from_vec(y.clone(), picked.shape()).unwrap(), dim, &indices, shape[dim]).unwrap();
        prop_assert_eq!(back.shape(), x.shape());
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
        prop_assert_eq!(dot(&picked.to_vec::<f32>().unwrap(), &y), dot(&x.to_vec::<f32>().unwrap(), &back.to_vec::<f32>().unwrap()));
    }

    /// out[p] = x[p with coordinate dim replaced by index[p]], checked element by element: the
    /// numbered source makes each output value the flat position it was read from.
    #[test]
    fn gather_follows_the_coordinate_rule(
        (shape, dim, dtype) in shape_dim_dtype(),
        shrink in prop::collection::vec(0usize..4, 4),
        dim_len in 0usize..5,
        seed in any::<u64>(),
        idx_dtype in index_dtype(),
    ) {
        let x = reversed_storage(&numbered(&shape, dtype));
        // The index may be smaller than x at every other dim and of any size at dim.
        let index_shape: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(d, &n)| if d == dim { dim_len } else { n - shrink[d] % n })
            .collect();
        let count: usize = index_shape.iter().product();
        let idx: Vec<i64> =
            Philox::new(seed).uniform(count).iter().map(|u| ((u * shape[dim] as f32) as usize).min(shape[dim] - 1) as i64).collect();
        let got = gather(&x, dim, &index_tensor(&idx, &index_shape, idx_dtype)).unwrap();
        prop_assert_eq!(got.shape(), &index_shape[..]);
        let values = got.to_f32_vec().unwrap();
        for (p, &i) in idx.iter().enumerate() {
            let mut c = coords(p, &index_shape);
            c[dim] = i as usize;
            prop_assert_eq!(values[p], flat(&c, &shape) as f32);
        }
    }

    /// embedding(weight, ids) is the row selection of weight by the flattened ids, viewed with
    /// the ids' shape in front, for ids of rank 0 to 3.
    #[test]
    fn embedding_equals_index_select_of_rows(
        vocab in 1usize..=8,
        width in 1usize..=5,
        ids_shape in prop::collection::vec(1usize..=3, 0..=3),
        seed in any::<u64>(),
        dtype in prop::sample::select(DType::ALL.to_vec()),
        idx_dtype in index_dtype(),
    ) {
        let weight = reversed_storage(&numbered(&[vocab, width], dtype));
        let count: usize = ids_shape.iter().product();
        let ids: Vec<i64> = Philox::new(seed).uniform(count).iter().map(|u| ((u * vocab as f32) as usize).min(vocab - 1) as i64).collect();
        let got = embedding(&weight, &index_tensor(&ids, &ids_shape, idx_dtype)).unwrap();
        let rows = index_select(&weight, 0, &index_tensor(&ids, &[count], idx_dtype)).unwrap();
        let mut want_shape = ids_shape.clone();
        want_shape.push(width);
        prop_assert!(got.same_values(&rows.reshape(&want_shape).unwrap()));
    }
}

/// Asserts an `InvalidArgument` whose message names `needle` (the offending index).
#[track_caller]
fn assert_invalid_naming(err: Error, needle: &str) {
    match err {
        Error::InvalidArgument { msg, .. } => assert!(msg.contains(needle), "message {msg:?} does not name {needle:?}"),
        other => panic!("expected InvalidArgument naming {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_indices_are_named() {
    let x = numbered(&[2, 3], DType::BF16);
    for dtype in [DType::I64, DType::I32] {
        let err = index_select(&x, 1, &index_tensor(&[0, 3], &[2], dtype)).unwrap_err();
        assert_invalid_naming(err, "index 3 at flat position 1");
        let err = gather(&x, 0, &index_tensor(&[0, -1], &[1, 2], dtype)).unwrap_err();
        assert_invalid_naming(err, "index -1 at flat position 1");
        let err = embedding(&x, &index_tensor(&[1, 2, 0], &[3], dtype)).unwrap_err();
        assert_invalid_naming(err, "index 2 at flat position 1");
    }
    // Indices must be integers.
    let float_idx = f32s(&[0.], &[1]);
    assert!(matches!(index_select(&x, 0, &float_idx), Err(Error::UnsupportedDType { dtype: DType::F32, .. })));
    assert!(matches!(embedding(&x, &float_idx), Err(Error::UnsupportedDType { .. })));
    // index_select takes a 1-D index list.
    assert!(matches!(
        index_select(&x, 0, &index_tensor(&[0], &[1, 1], DType::I64)),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn bad_dims_and_shapes_are_errors() {
    let x = numbered(&[2, 3], DType::F32);
    let idx = index_tensor(&[0], &[1], DType::I64);
    assert!(matches!(concat(&[&x], 2), Err(Error::DimOutOfRange { dim: 2, .. })));
    assert!(matches!(split(&x, &[3], 2), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(index_select(&x, 2, &idx), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(gather(&x, 2, &index_tensor(&[0], &[1, 1], DType::I64)), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(concat(&[], 0), Err(Error::InvalidArgument { .. })));
    // Off-dim sizes, ranks and dtypes must agree.
    let y = numbered(&[3, 3], DType::F32);
    assert!(matches!(concat(&[&x, &y], 1), Err(Error::ShapeMismatch { .. })));
    assert!(concat(&[&x, &y], 0).is_ok());
    assert!(matches!(concat(&[&x, &numbered(&[2, 3, 1], DType::F32)], 0), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(concat(&[&x, &x.to_dtype(DType::F16).unwrap()], 0), Err(Error::DTypeMismatch { .. })));
    // Split sizes must cover the dimension exactly.
    assert!(matches!(split(&x, &[1, 1], 1), Err(Error::InvalidArgument { .. })));
    assert!(matches!(split(&x, &[usize::MAX, 4], 1), Err(Error::InvalidArgument { .. })));
    // A gather index may not exceed x off the gathered dim, nor differ in rank.
    assert!(matches!(gather(&x, 1, &index_tensor(&[0; 3], &[3, 1], DType::I64)), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(gather(&x, 1, &idx), Err(Error::ShapeMismatch { .. })));
    // The embedding table is 2-D.
    assert!(matches!(embedding(&numbered(&[4], DType::F32), &idx), Err(Error::InvalidArgument { .. })));
}
