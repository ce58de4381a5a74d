//! matmul with broadcast batch dimensions and linear with and without bias, on transposed
//! and strided operands.

use infinity::autograd::matmul;
use proptest::prelude::*;

use crate::support::{check_sums_of_products, config, layout, randn};

/// Batch shapes of a and b that broadcast against each other (either may be missing).
fn batches() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (prop::collection::vec(1usize..=3, 0..=2), any::<u8>()).prop_map(|(full, bits)| {
        let other: Vec<usize> = full.iter().enumerate().map(|(i, &n)| if bits >> i & 1 == 1 { 1 } else { n }).collect();
        let other = if bits & 4 != 0 { other[other.len().min(1)..].to_vec() } else { other };
        if bits & 8 != 0 { (full, other) } else { (other, full) }
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batched_matmul(
        (ba, bb) in batches(),
        (m, k, n) in (1usize..=4, 1usize..=5, 1usize..=4),
        seed in any::<u64>(),
        (la, lb) in (any::<u8>(), any::<u8>()),
    ) {
        let sa: Vec<usize> = ba.iter().copied().chain([m, k]).collect();
        let sb: Vec<usize> = bb.iter().copied().chain([k, n]).collect();
        let (a, b) = (layout(&randn(&sa, seed, 1.0), la), layout(&randn(&sb, seed ^ 1, 1.0), lb));
        check_sums_of_products(&[a, b], |v| matmul::matmul(&v[0], &v[1]));
    }

    #[test]
    fn linear(
        lead in prop::collection::vec(1usize..=3, 0..=2),
        (inp, out) in (1usize..=5, 1usize..=4),
        with_bias in any::<bool>(),
        seed in any::<u64>(),
        (lx, lw) in (any::<u8>(), any::<u8>()),
    ) {
        let sx: Vec<usize> = lead.iter().copied().chain([inp]).collect();
        let mut inputs = vec![layout(&randn(&sx, seed, 1.0), lx), layout(&randn(&[out, inp], seed ^ 1, 1.0), lw)];
        inputs.extend(with_bias.then(|| randn(&[out], seed ^ 2, 1.0)));
        check_sums_of_products(&inputs, |v| matmul::linear(&v[0], &v[1], v.get(2)));
    }
}
