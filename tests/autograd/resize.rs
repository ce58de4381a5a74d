//! resize in the four modes, enlarging and shrinking (also by non-integer factors) on each
//! axis independently, over leading plane dimensions.

use infinity::autograd::resize;
use infinity::ops::resize::ResizeMode;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resize_modes(
        lead in prop::collection::vec(1usize..=2, 0..=2),
        (h, w, oh, ow) in (1usize..=5, 1usize..=5, 1usize..=7, 1usize..=7),
        mode in prop_oneof![Just(ResizeMode::Nearest), Just(ResizeMode::Bilinear), Just(ResizeMode::Area),
                          Just(ResizeMode::Bicubic)],
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let shape: Vec<usize> = lead.into_iter().chain([h, w]).collect();
        check(&[layout(&randn(&shape, seed, 1.0), l)], |v| resize::resize(&v[0], (oh, ow), mode));
    }
}
