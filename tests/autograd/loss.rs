//! The fused bitwise cross-entropy and VAR's token cross-entropy: gradients against finite
//! differences, hand values, the official per-token losses, and input validation.

use infinity::autograd::Var;
use infinity::autograd::loss::{bitwise_cross_entropy, cross_entropy};
use infinity::runtime::{DType, Tensor};
use proptest::prelude::*;

use crate::common::open;
use crate::support::{check, config, layout, randn, randn_map};

fn labels(shape: &[usize], seed: u64) -> Tensor {
    let bits = randn(shape, seed, 1.0).to_vec::<f32>().unwrap().into_iter().map(|v| u8::from(v > 0.0)).collect();
    Tensor::from_vec::<u8>(bits, shape).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// Each token's label is its least likely class: a confident right answer would make the
    /// loss (lse − logit) a cancellation far smaller than the logits it is rounded at, outside
    /// the finite-difference rule's premise (the hand values below cover that regime's value).
    #[test]
    fn token_cross_entropy_gradients((b, l, v) in (1usize..=2, 1usize..=4, 1usize..=9), seed in any::<u64>(), lay in any::<u8>()) {
        let values = randn(&[b, l, v], seed, 3.0);
        let ids: Vec<i64> = values.to_vec::<f32>().unwrap().chunks(v)
            .map(|row| (0..v).fold(0, |min, j| if row[j] < row[min] { j } else { min }) as i64).collect();
        let logits = layout(&values, lay);
        let labels = Tensor::from_vec(ids, &[b, l]).unwrap();
        let w = randn_map(&[l], seed ^ 2, |x| 0.1 + x.abs());
        check(&[logits], |vars| Ok(cross_entropy(&vars[0], &labels, &w)?.loss));
    }

    #[test]
    fn gradients(
        (b, l, d) in (1usize..=2, 1usize..=4, 1usize..=4),
        per_sample_weights in any::<bool>(),
        seed in any::<u64>(),
        lay in any::<u8>(),
    ) {
        let logits = layout(&randn(&[b, l, 2 * d], seed, 2.0), lay);
        let y = labels(&[b, l, d], seed ^ 1);
        let w_shape = if per_sample_weights { vec![b, l] } else { vec![l] };
        // Positive weights, as the trainer's: weights of both signs could cancel in the sum,
        // leaving a loss much smaller than its terms (outside the checker's tolerance rule).
        let w = randn_map(&w_shape, seed ^ 2, |v| 0.1 + v.abs());
        check(&[logits], |v| Ok(bitwise_cross_entropy(&v[0], &y, &w)?.loss));
    }
}

/// All-zero logits: every bit costs ln 2, so each token's loss is ln 2 and the total is
/// ln 2 × Σ weights (weights shared by the batch, mean over the batch).
#[test]
fn zero_logits_cost_ln2_per_bit() {
    let logits = Var::constant(Tensor::zeros(&[2, 3, 8], DType::F32));
    let y = labels(&[2, 3, 4], 7);
    let w = Tensor::from_vec(vec![0.5f32, 0.25, 0.25], &[3]).unwrap();
    let out = bitwise_cross_entropy(&logits, &y, &w).unwrap();
    let ln2 = std::f32::consts::LN_2;
    assert!(out.per_token.to_vec::<f32>().unwrap().iter().all(|&v| (v - ln2).abs() <= 1e-7));
    assert!((out.loss.value().to_f32_vec().unwrap()[0] - ln2).abs() <= 1e-7);
}

/// The official step's per-token losses (tokens 0..24 of both samples) within 1e-6 relative
/// (the golden's own f32-vs-f64 difference is 6.5e-8 on the mean); the total over them with
/// weight 1/L (L = 521, the golden's uniform weighting) matches an f64 recomputation.
#[test]
fn matches_the_official_per_token_loss() {
    let g = open("train/train_golden_subset.safetensors");
    let logits = Var::constant(g.get("logits_first24").unwrap().clone());
    let bits = g.get("gt_bits_first24").unwrap();
    let golden = g.get("loss_per_token_first24").unwrap().to_vec::<f32>().unwrap();
    let w = Tensor::full(&[24], 1.0 / 521.0, DType::F32);
    let out = bitwise_cross_entropy(&logits, bits, &w).unwrap();
    let got = out.per_token.to_vec::<f32>().unwrap();
    for (i, (&a, &b)) in got.iter().zip(&golden).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "token {i}: {a} vs golden {b}");
    }
    let want = golden.iter().map(|&v| f64::from(v) / 521.0).sum::<f64>() / 2.0;
    let loss = f64::from(out.loss.value().to_f32_vec().unwrap()[0]);
    assert!((loss - want).abs() <= 1e-6 * want, "loss {loss} vs {want}");
}

#[test]
fn rejects_bad_inputs() {
    let logits = Var::constant(Tensor::zeros(&[1, 2, 4], DType::F32));
    let w = Tensor::full(&[2], 0.5, DType::F32);
    let two = Tensor::from_vec(vec![0u8, 1, 2, 0], &[1, 2, 2]).unwrap();
    let err = bitwise_cross_entropy(&logits, &two, &w).err().expect("label 2");
    assert!(err.to_string().contains("label 2 at flat position 2"), "{err}");
    let wide = Tensor::zeros(&[1, 2, 3], DType::U8);
    assert!(bitwise_cross_entropy(&logits, &wide, &w).is_err());
    let float_labels = Tensor::zeros(&[1, 2, 2], DType::F32);
    assert!(bitwise_cross_entropy(&logits, &float_labels, &w).is_err());
    let odd = Var::constant(Tensor::zeros(&[1, 2, 3], DType::F32));
    assert!(bitwise_cross_entropy(&odd, &Tensor::zeros(&[1, 2, 1], DType::U8), &w).is_err());
    assert!(
        bitwise_cross_entropy(&logits, &Tensor::zeros(&[1, 2, 2], DType::U8), &Tensor::zeros(&[3], DType::F32))
            .is_err()
    );
}

/// Token cross-entropy by hand: uniform logits cost ln V per token; a label whose logit leads
/// by ln 3 over two others costs ln(5/3) (the other token, uniform, ln 3); the total is the weighted sum over the batch mean;
/// labels outside the vocabulary are refused by position.
#[test]
fn token_cross_entropy_hand_values_and_refusals() {
    let w = Tensor::from_vec(vec![0.5f32, 0.5], &[2]).unwrap();
    let flat = Var::constant(Tensor::zeros(&[1, 2, 3], DType::F32));
    let labels = Tensor::from_vec(vec![0i64, 2], &[1, 2]).unwrap();
    let out = cross_entropy(&flat, &labels, &w).unwrap();
    assert!(out.per_token.to_vec::<f32>().unwrap().iter().all(|&v| (v - 3f32.ln()).abs() <= 1e-6));
    let lead = Var::constant(Tensor::from_vec(vec![3f32.ln(), 0.0, 0.0, 0.0, 0.0, 0.0], &[1, 2, 3]).unwrap());
    let out = cross_entropy(&lead, &labels, &w).unwrap();
    let per = out.per_token.to_vec::<f32>().unwrap();
    assert!((per[0] - (5f32 / 3.0).ln()).abs() <= 1e-6 && (per[1] - 3f32.ln()).abs() <= 1e-6, "{per:?}");
    let total = out.loss.value().to_f32_vec().unwrap()[0];
    assert!((total - 0.5 * (per[0] + per[1])).abs() <= 1e-6);
    let bad = Tensor::from_vec(vec![0i64, 3], &[1, 2]).unwrap();
    let err = cross_entropy(&flat, &bad, &w).err().unwrap().to_string();
    assert!(err.contains("cross_entropy") && err.contains("label 3 at position 1"), "{err}");
}
