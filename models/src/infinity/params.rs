//! Gathers a transformer's tensors from a checkpoint: every entry of the configuration with its
//! exact shape; the zero K-bias buffers are re-created rather than read, and the legacy buffers
//! of the official files are ignored.

use std::collections::HashSet;

use infinity_runtime::Result;
use infinity_runtime::io::Weights;

use super::config::InfinityConfig;
use crate::params::{Params, Use, refuse_unexpected};

/// Keys the official checkpoints may carry that no computation uses.
const IGNORED: [&str; 4] = ["lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"];

/// How the transformer uses its tensor `key`: linear weights as GEMM operands, the rest
/// (the level embedding added to activations among them) in f32.
pub(crate) fn use_of(key: &str, shape: &[usize]) -> Use {
    let linear_weight = shape.len() == 2 && key.ends_with(".weight") && key != "lvl_embed.weight";
    if linear_weight { Use::AsStored } else { Use::F32 }
}

pub(super) fn gather(weights: &Weights, config: &InfinityConfig) -> Result<Params> {
    let mut p = Params::new(weights);
    let entries = config.entries();
    for entry in entries.iter().filter(|e| !e.buffer) {
        if !weights.contains(&entry.key) {
            return Err(p.error(&entry.key, format!("missing (expected shape {:?})", entry.shape)));
        }
        p.insert(weights, &entry.key, &entry.key, &entry.shape, use_of(&entry.key, &entry.shape))?;
    }
    let known: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    refuse_unexpected(weights, |k| known.contains(k) || IGNORED.contains(&k), "transformer configuration")?;
    Ok(p)
}
