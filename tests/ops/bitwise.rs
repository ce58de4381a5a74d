//! Drawing bits (`sample_bits` on the CPU; tests/ops/devices.rs holds the device against it):
//! top-p makes confident bits deterministic, draws follow the pair's probability, guidance
//! combines the halves before the choice, and the stream advances by one position per bit.

use infinity::ops::bitwise::{Sampling, sample_bits};
use infinity::runtime::Tensor;
use infinity::runtime::rng::Philox;

const SAMPLED: Sampling = Sampling { cfg: 1.0, tau: 1.0, top_p: 0.0, greedy: false };

/// The fraction of ones among `n` draws of the pair (l0, l1).
fn ones(l0: f32, l1: f32, n: usize, sampling: &Sampling) -> f64 {
    let logits = Tensor::from_vec([l0, l1].repeat(n), &[1, n, 2]).unwrap();
    let bits = sample_bits(&logits, 1, sampling, &mut Philox::new(9)).unwrap().to_vec::<u8>().unwrap();
    bits.iter().map(|&b| f64::from(b)).sum::<f64>() / n as f64
}

#[test]
fn draws_follow_the_probability_and_top_p_decides_confident_bits() {
    let p1 = 1.0 / (1.0 + (-0.5f64).exp());
    assert!((ones(0.0, 0.5, 20_000, &SAMPLED) - p1).abs() < 0.01);
    // p1 = σ(4) ≈ 0.982: the minority's 0.018 ≤ 1 − 0.97, so always 1; σ(1) ≈ 0.73 is drawn.
    let nucleus = Sampling { top_p: 0.97, ..SAMPLED };
    assert_eq!(ones(0.0, 4.0, 1000, &nucleus), 1.0);
    assert!((ones(0.0, 1.0, 20_000, &nucleus) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 0.01);
    // Greedy: the larger logit, ties to bit 0.
    let greedy = Sampling { greedy: true, ..SAMPLED };
    assert_eq!(ones(0.3, 0.3, 10, &greedy), 0.0);
    assert_eq!(ones(0.3, 0.4, 10, &greedy), 1.0);
}

#[test]
fn guidance_combines_the_halves_before_the_choice() {
    // The conditional row prefers 1; guidance w = 3 against an unconditional row preferring 1
    // much more turns it to 0: 3·(1, 2) − 2·(0, 6) = (3, −6).
    let raw = Tensor::from_vec(vec![1.0f32, 2.0, 0.0, 6.0], &[2, 1, 2]).unwrap();
    let greedy = Sampling { cfg: 3.0, greedy: true, ..SAMPLED };
    assert_eq!(sample_bits(&raw, 1, &greedy, &mut Philox::new(1)).unwrap().to_vec::<u8>().unwrap(), [0]);
    let cond_only = raw.narrow(0, 0, 1).unwrap();
    assert_eq!(sample_bits(&cond_only, 1, &greedy, &mut Philox::new(1)).unwrap().to_vec::<u8>().unwrap(), [1]);
}

#[test]
fn the_stream_advances_by_one_position_per_bit() {
    let logits = Tensor::from_vec(vec![0.0f32; 2 * 6], &[2, 3, 2]).unwrap();
    let mut rng = Philox::new(4);
    sample_bits(&logits, 1, &Sampling { cfg: 2.0, ..SAMPLED }, &mut rng).unwrap();
    assert_eq!(rng.offset, 3);
    assert!(sample_bits(&logits, 3, &SAMPLED, &mut rng).is_err(), "2 rows are neither B = 3 nor 2B");
}
