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
    let permuted = t.permute(perm).unwrap().contiguous();
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

/// Asserts |a - b| <= atol + rtol * |b| elementwise (same shape required), naming the worst index.
#[track_caller]
pub fn assert_close(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "shape");
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let mut worst = (0usize, 0f32);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        if !(excess <= 0.0) && (excess > worst.1 || excess.is_nan()) {
            worst = (i, if excess.is_nan() { f32::INFINITY } else { excess });
        }
    }
    assert!(worst.1 == 0.0, "mismatch at flat index {}: got {} want {} (atol {atol}, rtol {rtol})", worst.0, g[worst.0], w[worst.0]);
}
