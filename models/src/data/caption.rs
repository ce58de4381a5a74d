//! Caption choice for one training sample: the official dynamic-length rule (spec §7.1 "Caption
//! choice", `enable_dynamic_length_prompt=1`) or the plain long caption. Draws come from a
//! Philox stream position fixed by the batch order, so a resumed run picks the same captions.

use infinity_runtime::rng::Philox;

/// The official default `short_cap_prob` (train.sh sets 0.5).
pub const DEFAULT_SHORT_CAP_PROB: f32 = 0.2;

/// `long_caption_type` of user-written prompts: they are never cut into fewer sentences.
const USER_PROMPT: &str = "user_prompt";

/// Uniforms the dynamic rule draws per sample; the batch order spaces samples this far apart
/// in the stream.
pub(super) const CAPTION_DRAWS: u64 = 2;

/// A first sentence with at least this many words makes a short caption of one sentence.
const LONG_FIRST_SENTENCE_WORDS: usize = 15;

/// The text side of one dataset item.
#[derive(Clone, Debug, PartialEq)]
pub struct Caption {
    pub long: String,
    /// The item's own short caption (`text` in the jsonl), if any.
    pub short: Option<String>,
    /// `long_caption_type` (e.g. "InternVL 2.0"); "user_prompt" disables sentence sub-sampling.
    pub kind: Option<String>,
}

/// How a sample's caption is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CaptionRule {
    /// Always the whole long caption.
    Plain,
    /// The official rule: the short caption with probability `short_cap_prob`, else a prefix of
    /// at least N+1 sentences of the long one.
    Dynamic { short_cap_prob: f32 },
}

impl CaptionRule {
    /// The caption to train on. The dynamic rule takes two uniforms from `rng` whatever it
    /// picks, so every sample consumes the same stream length.
    pub fn choose(self, caption: &Caption, rng: &mut Philox) -> String {
        let short_cap_prob = match self {
            CaptionRule::Plain => return caption.long.clone(),
            CaptionRule::Dynamic { short_cap_prob } => short_cap_prob,
        };
        let u = rng.uniform(CAPTION_DRAWS as usize);
        // Python's `[s for s in caption.split('.') if s]`: only empty pieces are dropped.
        let sentences: Vec<&str> = caption.long.split('.').filter(|s| !s.is_empty()).collect();
        let Some(first) = sentences.first() else { return cut_after_dashes(&caption.long) };
        let n = if first.split_whitespace().count() >= LONG_FIRST_SENTENCE_WORDS { 1 } else { 2 };
        let chosen = if u[0] < short_cap_prob {
            caption.short.clone().unwrap_or_else(|| sentences[..n.min(sentences.len())].join("."))
        } else if sentences.len() <= n || caption.kind.as_deref() == Some(USER_PROMPT) {
            caption.long.clone()
        } else {
            // m uniform in [N+1, #sentences]; `min` guards the u → 1 edge of f32 rounding.
            let choices = sentences.len() - n;
            let m = n + 1 + ((u[1] * choices as f32) as usize).min(choices - 1);
            sentences[..m].join(".")
        };
        cut_after_dashes(&chosen)
    }
}

/// Drops everything from the first "--" on, unless nothing but blanks would remain.
fn cut_after_dashes(caption: &str) -> String {
    match caption.split_once("--") {
        Some((before, _)) if !before.trim().is_empty() => before.to_string(),
        _ => caption.to_string(),
    }
}
