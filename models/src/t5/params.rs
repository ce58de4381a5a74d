//! Gathers a T5 encoder's tensors from a checkpoint: a single safetensors or `.pth` file, or a
//! sharded Hugging Face checkpoint through its `model.safetensors.index.json`. Every encoder
//! entry must be present (the tied embedding under either of its names) with its exact shape;
//! the decoder and LM head of a full T5 checkpoint are ignored, anything else is refused.

use std::collections::HashSet;
use std::path::Path;

use infinity_runtime::Result;
use infinity_runtime::io::{self, Weights};

use super::config::T5Config;
use crate::params::{Params, Use, refuse_unexpected};

/// Tensors of a full encoder-decoder checkpoint that the encoder does not use.
fn is_ignored(key: &str) -> bool {
    key.starts_with("decoder.") || key.starts_with("lm_head.")
}

/// Opens a T5 checkpoint (see [`infinity_runtime::io::open_checkpoint`]); the shards of a
/// full encoder-decoder checkpoint that hold only the decoder are not opened.
pub fn open_checkpoint(path: &Path) -> Result<Weights> {
    io::open_checkpoint(path, |key| !is_ignored(key))
}

/// How the encoder uses its tensor `key`. Matrices are used in their stored dtype on the CPU
/// (the linear layers and the embedding gather take bf16/f16 directly), so a half-precision
/// checkpoint stays mapped; the relative position bias is added to scores in f32.
pub(crate) fn use_of(key: &str, shape: &[usize]) -> Use {
    if key == "shared.weight" || key == "encoder.embed_tokens.weight" {
        Use::Rows
    } else if shape.len() == 2 && !key.contains("relative_attention_bias") {
        Use::AsStored
    } else {
        Use::F32
    }
}

pub(super) fn gather(weights: &Weights, config: &T5Config) -> Result<Params> {
    let mut p = Params::new(weights);
    let entries = config.entries();
    let mut used = HashSet::new();
    for entry in entries.iter().filter(|e| e.alias_of.is_none()) {
        // The entry's own name first, then its aliases; every stored name must fit.
        let names: Vec<&String> = std::iter::once(&entry.key)
            .chain(entries.iter().filter(|a| a.alias_of.as_ref() == Some(&entry.key)).map(|a| &a.key))
            .collect();
        let present: Vec<&String> = names.iter().copied().filter(|n| weights.contains(n)).collect();
        if present.is_empty() {
            let aliases = names[1..].iter().map(|a| format!(", nor under its alias '{a}'")).collect::<String>();
            return Err(p.error(&entry.key, format!("missing{aliases} (expected shape {:?})", entry.shape)));
        }
        let use_ = use_of(&entry.key, &entry.shape);
        for &name in &present {
            p.insert(weights, &entry.key, name, &entry.shape, use_)?;
            used.insert(name.as_str());
        }
    }
    refuse_unexpected(weights, |k| used.contains(k) || is_ignored(k), "T5 encoder configuration")?;
    Ok(p)
}
