//! Training checkpoints that survive being killed at any moment. Each save is a folder
//! `step-<n>/` holding the parameters (`params.safetensors`), the optimizer state
//! (`optimizer.safetensors`) and the run state (`state.json`: step plus whatever the trainer
//! needs to continue exactly — RNG positions, data position, metrics), each file written
//! atomically; `latest.json` names the newest complete folder and is replaced last, so a run
//! killed mid-save resumes from the previous complete checkpoint.

use std::path::{Path, PathBuf};

use infinity_runtime::io::{Weights, save_safetensors, write_atomically};
use infinity_runtime::{Error, Result};
use serde_json::{Value, json};

use crate::{AdamW, Params};

const LATEST: &str = "latest.json";
const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// A checkpoint found on disk.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub step: u64,
    /// The trainer's own state, as saved.
    pub state: Value,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    write_atomically(path, |w| w.write_all(v.to_string().as_bytes()))
}

/// Saves step `step` under `root` and makes it the latest; keeps the `keep` newest saves.
pub fn save(root: &Path, step: u64, params: &Params, optimizer: &AdamW, state: &Value, keep: usize) -> Result<PathBuf> {
    let dir = root.join(format!("step-{step:09}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    save_safetensors(dir.join(PARAMS), params.iter(), &Default::default())?;
    optimizer.save(dir.join(OPTIMIZER))?;
    write_json(&dir.join(STATE), &json!({ "step": step, "trainer": state }))?;
    // Only now is the folder complete: point at it.
    write_json(
        &root.join(LATEST),
        &json!({ "dir": dir.file_name().map(|n| n.to_string_lossy().into_owned()), "step": step }),
    )?;
    prune(root, keep.max(1))?;
    Ok(dir)
}

/// Removes all but the `keep` newest `step-*` folders.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut saves: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    saves.sort();
    for old in &saves[..saves.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// The newest complete checkpoint under `root`, or `None` for a fresh run.
pub fn latest(root: &Path) -> Result<Option<Checkpoint>> {
    let pointer = root.join(LATEST);
    if !pointer.exists() {
        return Ok(None);
    }
    let v = read_json(&pointer)?;
    let name = v.get("dir").and_then(Value::as_str).ok_or_else(|| Error::format(&pointer, "no 'dir' entry"))?;
    let dir = root.join(name);
    let state_path = dir.join(STATE);
    let state = read_json(&state_path)?;
    let step =
        state.get("step").and_then(Value::as_u64).ok_or_else(|| Error::format(&state_path, "no 'step' entry"))?;
    Ok(Some(Checkpoint { dir, step, state: state.get("trainer").cloned().unwrap_or(Value::Null) }))
}

impl Checkpoint {
    /// The checkpoint's parameters file.
    pub fn params_path(&self) -> PathBuf {
        self.dir.join(PARAMS)
    }

    /// Overwrites `params` and `optimizer` with the saved ones (every parameter must be saved,
    /// with its shape).
    pub fn restore(&self, params: &mut Params, optimizer: &mut AdamW) -> Result<()> {
        let saved = Weights::open(self.params_path())?;
        let names: Vec<String> = params.iter().map(|(n, _)| n.to_string()).collect();
        for name in names {
            // Onto the device the run trains on, whichever device wrote the checkpoint.
            let device = params.get(&name)?.device();
            params.set(&name, saved.get(&name)?.to_device(&device)?)?;
        }
        optimizer.load(self.dir.join(OPTIMIZER))
    }
}
