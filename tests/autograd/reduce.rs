//! sum, mean, softmax and log_softmax.

use infinity::autograd::reduce;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn, shape};

/// A shape, a subset of its dimensions (possibly empty: reduce everything) and a seed.
fn shape_dims() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
    shape(4, 4).prop_flat_map(|s| {
        let rank = s.len();
        (Just(s), prop::sample::subsequence((0..rank).collect::<Vec<_>>(), 0..=rank), any::<u64>())
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sum_and_mean((s, dims, seed) in shape_dims(), keepdim in any::<bool>(), mean in any::<bool>(), l in any::<u8>()) {
        let x = layout(&randn(&s, seed, 1.0), l);
        check(&[x], |v| if mean { reduce::mean(&v[0], &dims, keepdim) } else { reduce::sum(&v[0], &dims, keepdim) });
    }

    #[test]
    fn softmax_and_log_softmax(
        (s, dim) in shape(4, 5).prop_flat_map(|s| { let r = s.len(); (Just(s), 0..r) }),
        seed in any::<u64>(),
        log in any::<bool>(),
        l in any::<u8>(),
    ) {
        let x = layout(&randn(&s, seed, 2.0), l);
        check(&[x], |v| if log { reduce::log_softmax(&v[0], dim) } else { reduce::softmax(&v[0], dim) });
    }
}
