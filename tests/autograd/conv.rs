//! conv2d: strides 1 to 3, asymmetric padding (including padding wider than the kernel,
//! which crops in the input-gradient path), with and without bias.

use infinity::autograd::conv;
use infinity::ops::conv::Conv2dParams;
use proptest::prelude::*;

use crate::support::{check_sums_of_products, config, layout, randn};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv2d(
        (n, cin, cout) in (1usize..=2, 1usize..=3, 1usize..=3),
        (kh, kw) in (1usize..=3, 1usize..=3),
        (h, w) in (1usize..=5, 1usize..=5),
        stride in 1usize..=3,
        padding in [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        with_bias in any::<bool>(),
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        // Grow the image until the kernel fits the padded input.
        let (h, w) = (h.max(kh.saturating_sub(padding[0] + padding[1])), w.max(kw.saturating_sub(padding[2] + padding[3])));
        let params = Conv2dParams { stride, padding };
        let mut inputs = vec![layout(&randn(&[n, cin, h, w], seed, 1.0), l), randn(&[cout, cin, kh, kw], seed ^ 1, 0.5)];
        inputs.extend(with_bias.then(|| randn(&[cout], seed ^ 2, 1.0)));
        check_sums_of_products(&inputs, |v| conv::conv2d(&v[0], &v[1], v.get(2), params));
    }
}
