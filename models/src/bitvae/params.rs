//! Gathers a BitVAE's tensors from a checkpoint: accepts the native (`x.conv.weight`) and
//! the flat (`x.weight`) key forms, checks every shape against the configuration, and fails
//! on missing or unexpected tensors (the official loader silently ignores both).

use std::collections::HashMap;
use std::path::PathBuf;

use infinity_runtime::io::Weights;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::config::{BitVaeConfig, flat_key};

pub(super) struct Params {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Params {
    pub(super) fn gather(weights: &Weights, config: &BitVaeConfig) -> Result<Self> {
        let path = weights.path().to_path_buf();
        let err = |key: &str, msg: String| Error::Tensor { path: path.clone(), key: key.to_string(), msg };
        let mut tensors = HashMap::new();
        let mut used = Vec::new();
        for entry in config.entries().into_iter().filter(|e| !e.buffer) {
            let flat = flat_key(&entry.key);
            let (stored_key, t) = match (weights.contains(&entry.key), weights.contains(&flat)) {
                (true, _) => (entry.key.clone(), weights.get(&entry.key)?),
                (false, true) => (flat.clone(), weights.get(&flat)?),
                (false, false) => return Err(err(&entry.key, format!("missing (expected shape {:?})", entry.shape))),
            };
            if t.shape() != entry.shape.as_slice() {
                return Err(err(&stored_key, format!("shape {:?} does not fit the detected configuration, which needs {:?}", t.shape(), entry.shape)));
            }
            if !t.dtype().is_float() {
                return Err(err(&stored_key, format!("dtype {} is not a floating-point type", t.dtype())));
            }
            used.push(stored_key);
            tensors.insert(entry.key, t.to_dtype(DType::F32));
        }
        // Anything else inside the networks means an architecture we do not build (e.g. attention).
        let known: std::collections::HashSet<&str> = used.iter().map(String::as_str).collect();
        if let Some((key, _)) = weights
            .iter()
            .find(|(k, _)| (k.starts_with("encoder.") || k.starts_with("decoder.")) && !known.contains(k))
        {
            return Err(err(key, "unexpected tensor: not part of the detected BitVAE configuration".into()));
        }
        Ok(Params { path, tensors })
    }

    /// Removes and returns a tensor by its native key (present after `gather`).
    pub(super) fn take(&mut self, key: &str) -> Result<Tensor> {
        self.tensors.remove(key).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            key: key.to_string(),
            msg: "requested twice or not part of the configuration".into(),
        })
    }
}
