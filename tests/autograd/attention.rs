//! attention: gradients for q, k and v, without a mask, with a random additive mask, and
//! with the block-causal mask (the first query rows see only the first keys); causal
//! attention, over a whole sequence or a cache; plus the
//! query blocking of the backward on a sequence long enough to need several blocks.

use infinity::autograd::attention;
use infinity::ops::attention::block_causal_mask;
use infinity::runtime::Tensor;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn};

#[derive(Clone, Copy, Debug)]
enum Mask {
    None,
    Random,
    BlockCausal,
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn attention_grads(
        (b, h) in (1usize..=2, 1usize..=2),
        scales in prop::collection::vec(1usize..=3, 1..=3),
        (d, dv) in (1usize..=4, 1usize..=4),
        mask_kind in prop_oneof![Just(Mask::None), Just(Mask::Random), Just(Mask::BlockCausal)],
        scale in 0.3f32..1.5,
        seed in any::<u64>(),
        (lq, lk, lv) in (any::<u8>(), any::<u8>(), any::<u8>()),
    ) {
        // Self-attention over a sequence made of scales (Lq = Lk = Σ scales).
        let len: usize = scales.iter().sum();
        let mask: Option<Tensor> = match mask_kind {
            Mask::None => None,
            Mask::Random => Some(randn(&[1, h, len, len], seed ^ 3, 1.0)),
            Mask::BlockCausal => Some(block_causal_mask(&scales).unwrap()),
        };
        let q = layout(&randn(&[b, h, len, d], seed, 1.0), lq);
        let k = layout(&randn(&[b, h, len, d], seed ^ 1, 1.0), lk);
        let v = layout(&randn(&[b, h, len, dv], seed ^ 2, 1.0), lv);
        check(&[q, k, v], |x| attention::attention(&x[0], &x[1], &x[2], mask.as_ref(), scale));
    }

    /// Causal attention of the last Lq of Lk positions (a whole sequence, or queries over a cache).
    #[test]
    fn causal_attention_grads((b, h, d) in (1usize..=2, 1usize..=2, 1usize..=4), lk in 1usize..=7, lq_pick in any::<usize>(),
                              seed in any::<u64>(), lay in any::<u8>()) {
        let lq = 1 + lq_pick % lk;
        let q = layout(&randn(&[b, h, lq, d], seed, 1.0), lay);
        let k = randn(&[b, h, lk, d], seed ^ 1, 1.0);
        let v = randn(&[b, h, lk, d], seed ^ 2, 1.0);
        check(&[q, k, v], |x| attention::causal_attention(&x[0], &x[1], &x[2], 0.7));
    }
}

/// With 2²¹ keys the backward holds two query rows at a time, so three queries take two
/// blocks; its gradients must equal those of the same attention written with the separate
/// ops (matmul, scale, softmax, matmul), whose rules the other checks cover.
#[test]
fn blocked_backward_matches_the_composed_ops() {
    use infinity::autograd::{Tape, elementwise, matmul, reduce};
    let (lq, lk, scale) = (3, 1 << 21, 0.7);
    let (q, k, v) = (randn(&[1, 1, lq, 1], 1, 1.0), randn(&[1, 1, lk, 1], 2, 1.0), randn(&[1, 1, lk, 2], 3, 1.0));
    let seed = randn(&[1, 1, lq, 2], 4, 1.0);
    let run = |fused: bool| {
        let tape = Tape::new();
        let [q, k, v] = [&q, &k, &v].map(|t| tape.leaf(t.clone()).unwrap());
        let out = if fused {
            attention::attention(&q, &k, &v, None, scale).unwrap()
        } else {
            let scores =
                elementwise::mul_scalar(&matmul::matmul(&q, &k.transpose(2, 3).unwrap()).unwrap(), scale).unwrap();
            matmul::matmul(&reduce::softmax(&scores, 3).unwrap(), &v).unwrap()
        };
        let grads = tape.backward_with_grad(&out, seed.clone()).unwrap();
        [&q, &k, &v].map(|x| grads.get(x).unwrap().to_vec::<f32>().unwrap())
    };
    let (fused, composed) = (run(true), run(false));
    for (name, (a, b)) in ["q", "k", "v"].iter().zip(fused.iter().zip(&composed)) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-5 * scale, "d{name}: max |diff| {worst:e} vs max |grad| {scale:e}");
    }
}
