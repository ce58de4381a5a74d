//! Generators and comparisons shared by the op property tests.

use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Tensor};
use proptest::prelude::*;

/// Proptest settings for op tests: enough cases to hit edge shapes, few enough for CI.
pub fn config() -> ProptestConfig {
    ProptestConfig { cases: 48, ..ProptestConfig::default() }
}

/// A tensor of standard normals (scaled by `scale`) drawn from `seed`.
pub fn randn(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v = Philox::new(seed).normal(n).into_iter().map(|x| x * scale).collect();
    Tensor::from_vec::<f32>(v, shape).unwrap()
}

/// The same values as `t` but laid out with non-contiguous strides: the data is stored in
/// the order given by `perm` of the dimensions and viewed back through the inverse permutation.
pub fn strided_copy(t: &Tensor, perm: &[usize]) -> Tensor {
    let permuted = t.permute(perm).unwrap().contiguous().unwrap();
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let v = permuted.permute(&inverse).unwrap();
    assert!(v.same_values(t));
    v
}

/// A view of `t` whose rows are not adjacent: `t` is embedded in a larger buffer, offset 1.
pub fn padded_view(t: &Tensor) -> Tensor {
    let shape = t.shape();
    let last = *shape.last().unwrap_or(&1);
    let mut big_shape = shape.to_vec();
    if big_shape.is_empty() {
        return t.clone();
    }
    *big_shape.last_mut().unwrap() = last + 3;
    let big = Tensor::zeros(&big_shape, DType::F32).to_vec::<f32>().unwrap();
    let mut big = big;
    let vals = t.to_vec::<f32>().unwrap();
    let rows = vals.len() / last.max(1);
    for r in 0..rows {
        for c in 0..last {
            big[r * (last + 3) + 1 + c] = vals[r * last + c];
        }
    }
    let b = Tensor::from_vec(big, &big_shape).unwrap();
    let v = b.narrow(shape.len() - 1, 1, last).unwrap();
    assert!(v.same_values(t));
    v
}

/// Shapes of rank 1..=max_rank with dimensions in 1..=max_dim.
pub fn shape(max_rank: usize, max_dim: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max_dim, 1..=max_rank)
}

/// Asserts |a - b| <= atol + rtol * |b| elementwise (same shape required), naming the worst
/// index. NaN must appear in both tensors at the same places.
#[track_caller]
pub fn assert_close(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "shape");
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let mut worst = (0usize, 0f32);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        // Equal values (infinities included) and NaN against NaN agree.
        if a == b || (a.is_nan() && b.is_nan()) {
            continue;
        }
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        // NaN in only one of the two is the worst mismatch there is.
        let excess = if excess.is_nan() { f32::INFINITY } else { excess };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    assert!(
        worst.1 == 0.0,
        "mismatch at flat index {}: got {} want {} (atol {atol}, rtol {rtol})",
        worst.0,
        g[worst.0],
        w[worst.0]
    );
}

/// A shape (rank 1..=4, dimensions 1..=7), a permutation of its dimensions and a data seed.
pub fn shape_perm_seed() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
    shape(4, 7).prop_flat_map(|s| {
        let identity: Vec<usize> = (0..s.len()).collect();
        (Just(s), Just(identity).prop_shuffle(), any::<u64>())
    })
}

/// Runs `f` on `t`, on a copy of `t` stored in `perm` order and on a padded (offset,
/// non-adjacent rows) view of it; asserts the three results are bit-identical (NaN included).
pub fn assert_layout_invariant(t: &Tensor, perm: &[usize], f: impl Fn(&Tensor) -> Tensor) {
    let want = f(t);
    let bits = |t: &Tensor| {
        (t.dtype(), t.shape().to_vec(), t.to_f32_vec().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>())
    };
    for (name, view) in [("strided", strided_copy(t, perm)), ("padded", padded_view(t))] {
        let got = f(&view);
        assert_eq!(bits(&got), bits(&want), "{name} input: {got:?} != {want:?}");
    }
}

/// Elementwise |t| (a contiguous f32 copy).
pub fn abs(t: &Tensor) -> Tensor {
    let v = t.to_vec::<f32>().unwrap().into_iter().map(f32::abs).collect();
    Tensor::from_vec::<f32>(v, t.shape()).unwrap()
}

/// Asserts |got − want| ≤ terms·ε·magnitude + ε·|want| elementwise, where `magnitude` holds
/// Σ|a_i·b_i| of each output's dot product (the same op run on absolute values) and `want` is
/// the f64 result rounded to f32. The first term is the classical worst-case bound on the
/// rounding error of an f32 sum of `terms` products in ANY order, with or without FMA
/// (γ_n = n·u/(1 − n·u) ≤ n·ε for u = ε/2); the second covers the rounding of `want`.
/// Being relative to Σ|a·b|, it neither loosens with the data's scale nor fails on cancellation.
#[track_caller]
pub fn assert_within_dot_bound(got: &Tensor, want: &Tensor, magnitude: &Tensor, terms: usize) {
    assert_eq!(got.shape(), want.shape(), "shape");
    let (g, w, m) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap(), magnitude.to_vec::<f32>().unwrap());
    for (i, ((&g, &w), &m)) in g.iter().zip(&w).zip(&m).enumerate() {
        let bound = terms as f32 * f32::EPSILON * m + f32::EPSILON * w.abs();
        assert!((g - w).abs() <= bound, "index {i}: got {g}, want {w}, bound {bound}");
    }
}

/// Normals rounded to bf16 (kept in f32): GEMM operands that a device's bf16 rounding leaves
/// as they are, so both sides multiply the same numbers.
pub fn bf16_exact(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed, 1.0)
        .to_dtype(infinity::runtime::DType::BF16)
        .unwrap()
        .to_dtype(infinity::runtime::DType::F32)
        .unwrap()
}
