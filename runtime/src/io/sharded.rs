//! Checkpoints as released: one `.safetensors`/`.pth` file, or a Hugging Face sharded
//! checkpoint — a `*.index.json` whose `weight_map` names each tensor's shard beside it — or the
//! folder holding either (`model.safetensors.index.json`, else `model.safetensors`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::Weights;
use crate::{Error, Result};

/// The files a Hugging Face folder holds its weights in, sharded first.
const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// Opens the checkpoint at `path` (a file, an index or a folder, see the module), the tensors
/// of a sharded one for which `wanted` holds, memory-mapped from their shards (a shard none of
/// whose tensors is wanted is not opened).
pub fn open_checkpoint(path: &Path, wanted: impl Fn(&str) -> bool) -> Result<Weights> {
    if path.is_dir() {
        return match [INDEX_FILE, SINGLE_FILE].map(|f| path.join(f)).into_iter().find(|p| p.is_file()) {
            Some(file) => open_checkpoint(&file, wanted),
            None => Err(Error::format(path, format!("the folder holds neither {INDEX_FILE} nor {SINGLE_FILE}"))),
        };
    }
    if path.to_string_lossy().ends_with(".index.json") { open_sharded(path, wanted) } else { Weights::open(path) }
}

fn open_sharded(index: &Path, wanted: impl Fn(&str) -> bool) -> Result<Weights> {
    let text = std::fs::read(index).map_err(|e| Error::io(index, e))?;
    let json: Value =
        serde_json::from_slice(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(index, "no 'weight_map' object (key → shard file)"))?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, file) in map.iter().filter(|(key, _)| wanted(key)) {
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
