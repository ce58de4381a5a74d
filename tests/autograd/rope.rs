//! rope_interleaved on (B, H, L, hd) head vectors with tables from Infinity's 2-D RoPE.

use infinity::autograd::rope;
use infinity::ops::rope::rope2d_table;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rope_interleaved(
        (b, heads, len) in (1usize..=2, 1usize..=2, 1usize..=5),
        quarter in 1usize..=2,
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let head_dim = 4 * quarter;
        let positions: Vec<(usize, usize)> = (0..len).map(|i| (i / 2, i % 3 + i)).collect();
        let (cos, sin) = rope2d_table(&positions, head_dim, 10_000.0).unwrap();
        let x = layout(&randn(&[b, heads, len, head_dim], seed, 1.0), l);
        check(&[x], |v| rope::rope_interleaved(&v[0], &cos, &sin));
    }
}
