//! What the gradient checks share: the proptest settings, input generators and the assertion
//! that runs `GradCheck` (whose module header states the tolerance rule).

use infinity::autograd::Var;
use infinity::autograd::gradcheck::GradCheck;
use infinity::runtime::{Result, Tensor};
use proptest::prelude::*;

pub use crate::op_support::{padded_view, randn, shape, strided_copy};

/// Every case runs the forward four times per input element; with shapes this small, 64
/// cases per rule keep the whole binary near a second.
pub fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, ..ProptestConfig::default() }
}

/// Asserts that the gradients of `f` match finite differences at `inputs`.
#[track_caller]
pub fn check(inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    let report = GradCheck::default().check(f, inputs).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.passed(), "{report}");
}

/// Asserts that the gradients of `f`, a sum of products (matmul, linear, conv), match finite
/// differences at `inputs`, its rounding noise judged at the size of its terms.
#[track_caller]
pub fn check_sums_of_products(inputs: &[Tensor], f: impl Fn(&[Var]) -> Result<Var>) {
    let checker = GradCheck { magnitude_of_terms: true, ..GradCheck::default() };
    let report = checker.check(f, inputs).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.passed(), "{report}");
}

/// `t` as given or as one of two non-contiguous views holding the same values.
pub fn layout(t: &Tensor, which: u8) -> Tensor {
    match which % 3 {
        0 => t.clone(),
        1 => padded_view(t),
        _ => {
            let reversed: Vec<usize> = (0..t.rank()).rev().collect();
            strided_copy(t, &reversed)
        }
    }
}

/// Standard normals drawn from `seed` mapped through `f` (to keep inputs inside a domain or
/// away from a kink).
pub fn randn_map(shape: &[usize], seed: u64, f: impl Fn(f32) -> f32) -> Tensor {
    let v = randn(shape, seed, 1.0).to_vec::<f32>().unwrap().into_iter().map(f).collect();
    Tensor::from_vec::<f32>(v, shape).unwrap()
}
