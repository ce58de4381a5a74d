//! What every sampler shares once its logits are filtered: the softmax of a row and a draw
//! from it by inverse CDF with one uniform of the project's Philox stream (so a seed draws the
//! same token on every device; torch's generator is not reproduced).

/// exp(x − max) / Σ exp(x − max); −∞ entries get 0.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The index whose cumulative softmax mass of `logits` first exceeds `u` ∈ [0, 1) of the total,
/// never one of zero mass.
pub fn draw(logits: &[f32], u: f32) -> usize {
    let probs = softmax(logits);
    let target = u * probs.iter().sum::<f32>();
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if cum > target && *p > 0.0 {
            return i;
        }
    }
    // Rounding left the target past the sum: the last token with mass.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}
