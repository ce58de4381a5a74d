//! layer_norm, rms_norm, l2_normalize (on both sides of its eps clamp) and group_norm, with
//! and without affine parameters.

use infinity::autograd::norm;
use infinity::ops::elementwise::affine;
use infinity::runtime::Tensor;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn, randn_map, shape};

fn eps() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-6f32), Just(1e-3), Just(0.5)]
}

/// Inputs whose normalised blocks have a spread of about 1 whatever their size: ±1 by
/// alternating flat index plus 0.3 × normal noise, then `shift`. Finite differences need the
/// step to be small against the block's standard deviation (or RMS), which random normals
/// do not guarantee for blocks of two or three elements.
fn spread(shape: &[usize], seed: u64, shift: f32) -> Tensor {
    let noise = randn(shape, seed, 0.3).to_vec::<f32>().unwrap();
    let v = noise.iter().enumerate().map(|(i, &n)| if i % 2 == 0 { 1.0 } else { -1.0 } + n + shift).collect();
    Tensor::from_vec::<f32>(v, shape).unwrap()
}

/// Per-channel parameters around `center`.
fn param(len: usize, seed: u64, center: f32) -> Tensor {
    affine(&randn(&[len], seed, 0.5), 1.0, center).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn layer_norm(
        s in shape(3, 6),
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        shift in -3f32..3.0,
        eps in eps(),
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let d = s[s.len() - 1];
        let x = layout(&spread(&s, seed, shift), l);
        let mut inputs = vec![x];
        inputs.extend(with_weight.then(|| param(d, seed ^ 1, 1.0)));
        inputs.extend(with_bias.then(|| param(d, seed ^ 2, 0.0)));
        check(&inputs, |v| {
            let w = with_weight.then(|| &v[1]);
            let b = with_bias.then(|| &v[v.len() - 1]);
            norm::layer_norm(&v[0], w, b, eps)
        });
    }

    #[test]
    fn rms_norm(s in shape(3, 6), with_weight in any::<bool>(), eps in eps(), seed in any::<u64>(), l in any::<u8>()) {
        let x = layout(&spread(&s, seed, 0.0), l);
        let mut inputs = vec![x];
        inputs.extend(with_weight.then(|| param(s[s.len() - 1], seed ^ 1, 1.0)));
        check(&inputs, |v| norm::rms_norm(&v[0], v.get(1), eps));
    }

    /// eps 1e-12 (the q/k normalisation) divides by the norm (kept at least 0.5: a single
    /// element near 0 would put the sign flip within the step); eps 1 with inputs of norm
    /// below 0.1 divides by the constant eps.
    #[test]
    fn l2_normalize(s in shape(3, 6), clamped in any::<bool>(), seed in any::<u64>(), l in any::<u8>()) {
        let (x, eps) = if clamped {
            (randn(&s, seed, 0.01), 1.0)
        } else {
            (randn_map(&s, seed, |v| (0.5 + v.abs()).copysign(v)), 1e-12)
        };
        let x = layout(&x, l);
        check(&[x], |v| norm::l2_normalize(&v[0], eps));
    }

    #[test]
    fn group_norm(
        (n, groups, per_group) in (1usize..=2, 1usize..=3, 1usize..=3),
        spatial in prop::collection::vec(1usize..=4, 0..=2),
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        eps in eps(),
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let c = groups * per_group;
        let s: Vec<usize> = [n, c].into_iter().chain(spatial).collect();
        let x = layout(&spread(&s, seed, 0.5), l);
        let mut inputs = vec![x];
        inputs.extend(with_weight.then(|| param(c, seed ^ 1, 1.0)));
        inputs.extend(with_bias.then(|| param(c, seed ^ 2, 0.0)));
        check(&inputs, |v| {
            let w = with_weight.then(|| &v[1]);
            let b = with_bias.then(|| &v[v.len() - 1]);
            norm::group_norm(&v[0], groups, w, b, eps)
        });
    }
}
