//! Gathers a T5 encoder's tensors from a checkpoint: a single safetensors or `.pth` file, or a
//! sharded Hugging Face checkpoint through its `model.safetensors.index.json`. Every encoder
//! entry must be present (the tied embedding under either of its names) with its exact shape;
//! the decoder and LM head of a full T5 checkpoint are ignored, anything else is refused.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use infinity_runtime::io::Weights;
use infinity_runtime::{Error, Result};
use serde_json::Value;

use super::config::T5Config;
use crate::params::{Params, Use, refuse_unexpected};

/// The files a Hugging Face T5 folder holds its weights in, sharded first.
const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// Tensors of a full encoder-decoder checkpoint that the encoder does not use.
fn is_ignored(key: &str) -> bool {
    key.starts_with("decoder.") || key.starts_with("lm_head.")
}

/// Opens a checkpoint: a `.safetensors`/`.pth` file, a `*.index.json` of shards, or a Hugging
/// Face folder holding `model.safetensors.index.json` or `model.safetensors`.
pub fn open_checkpoint(path: &Path) -> Result<Weights> {
    if path.is_dir() {
        return match [INDEX_FILE, SINGLE_FILE].map(|f| path.join(f)).into_iter().find(|p| p.is_file()) {
            Some(file) => open_checkpoint(&file),
            None => Err(Error::format(path, format!("the folder holds neither {INDEX_FILE} nor {SINGLE_FILE}"))),
        };
    }
    if path.to_string_lossy().ends_with(".index.json") { open_sharded(path) } else { Weights::open(path) }
}

/// The encoder tensors named by an index's `weight_map` (key → shard file in the same folder),
/// read from their shards (memory-mapped, not copied).
fn open_sharded(index: &Path) -> Result<Weights> {
    let text = std::fs::read(index).map_err(|e| Error::io(index, e))?;
    let json: Value =
        serde_json::from_slice(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(index, "no 'weight_map' object (key → shard file)"))?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, file) in map.iter().filter(|(key, _)| !is_ignored(key)) {
        // A bare file name: shards live beside the index, and a path must not lead elsewhere.
        let file = file
            .as_str()
            .filter(|f| Path::new(f).file_name().is_some_and(|name| name == *f))
            .ok_or_else(|| Error::tensor(index, key, format!("weight_map entry {file} is not a file name")))?;
        shards.entry(file).or_default().push(key);
    }
    let folder = index.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::with_capacity(map.len());
    for (file, keys) in shards {
        let shard = Weights::open(folder.join(file))?;
        for key in keys {
            entries.push((key.to_string(), shard.get(key)?.clone()));
        }
    }
    Weights::new(index, entries, Default::default())
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
        // Matrices are used in their stored dtype on the CPU (the linear layers and the
        // embedding gather take bf16/f16 directly), so a half-precision checkpoint stays mapped.
        let use_ = if entry.key == "shared.weight" {
            Use::Rows
        } else if entry.shape.len() == 2 && !entry.key.contains("relative_attention_bias") {
            Use::AsStored
        } else {
            Use::F32
        };
        for &name in &present {
            p.insert(weights, &entry.key, name, &entry.shape, use_)?;
            used.insert(name.as_str());
        }
    }
    refuse_unexpected(weights, |k| used.contains(k) || is_ignored(k), "T5 encoder configuration")?;
    Ok(p)
}
