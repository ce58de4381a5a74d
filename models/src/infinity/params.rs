//! Gathers a transformer's tensors from a checkpoint: every entry of the configuration must
//! be present with its exact shape; legacy buffers of the official files are ignored.

use std::collections::HashMap;
use std::path::PathBuf;

use infinity_runtime::io::Weights;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::config::InfinityConfig;

/// Keys the official checkpoints may carry that no computation uses.
const IGNORED: [&str; 4] = ["lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"];

pub(super) struct Params {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Params {
    pub(super) fn gather(weights: &Weights, config: &InfinityConfig) -> Result<Self> {
        let path = weights.path().to_path_buf();
        let err = |key: &str, msg: String| Error::Tensor { path: path.clone(), key: key.to_string(), msg };
        let mut tensors = HashMap::new();
        for entry in config.entries() {
            if !weights.contains(&entry.key) {
                if entry.buffer {
                    continue; // the zero K biases are re-created, not read
                }
                return Err(err(&entry.key, format!("missing (expected shape {:?})", entry.shape)));
            }
            let t = weights.get(&entry.key)?;
            if t.shape() != entry.shape.as_slice() {
                return Err(err(&entry.key, format!("shape {:?} does not fit the configuration, which needs {:?}", t.shape(), entry.shape)));
            }
            if !t.dtype().is_float() {
                return Err(err(&entry.key, format!("dtype {} is not a floating-point type", t.dtype())));
            }
            if !entry.buffer {
                // Linear weights are used in their stored dtype (`linear` widens bf16/f16 a block
                // at a time), so a half-precision checkpoint stays mapped instead of doubling.
                let linear_weight = entry.shape.len() == 2 && entry.key.ends_with(".weight") && entry.key != "lvl_embed.weight";
                tensors.insert(entry.key, if linear_weight { t.clone() } else { t.to_dtype(DType::F32) });
            }
        }
        let known: std::collections::HashSet<String> = config.entries().into_iter().map(|e| e.key).collect();
        if let Some((key, _)) = weights.iter().find(|(k, _)| !known.contains(*k) && !IGNORED.contains(k)) {
            return Err(err(key, "unexpected tensor: not part of the detected transformer configuration".into()));
        }
        Ok(Params { path, tensors })
    }

    pub(super) fn take(&mut self, key: &str) -> Result<Tensor> {
        self.tensors.remove(key).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            key: key.to_string(),
            msg: "requested twice or not part of the configuration".into(),
        })
    }
}
