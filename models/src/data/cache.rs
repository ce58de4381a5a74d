//! On-disk cache of text-encoder features: each caption is encoded once per encoder and kept
//! as `<hash>.safetensors` under the cache folder. The hash is FNV-1a 64 (stable across runs
//! and Rust versions, unlike `DefaultHasher`) of the encoder identity and the caption; the file
//! also stores both strings, so a hash collision or a foreign file reads as a miss.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use infinity_runtime::io::{Weights, save_safetensors};
use infinity_runtime::{Error, Result, Tensor};

/// Name of the features tensor inside a cache file.
const FEATURES: &str = "features";
const META_ENCODER: &str = "encoder";
const META_CAPTION: &str = "caption";

/// FNV-1a, 64-bit (offset basis and prime from the reference description).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Features of captions for one encoder, cached under one folder.
pub struct FeatureCache {
    dir: PathBuf,
    encoder: String,
}

impl FeatureCache {
    /// `encoder` names the encoder and its weights (e.g. the checkpoint path and dtype): features
    /// of another encoder are never returned.
    pub fn new(dir: impl Into<PathBuf>, encoder: impl Into<String>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(FeatureCache { dir, encoder: encoder.into() })
    }

    /// The cache file of `caption`.
    pub fn path(&self, caption: &str) -> PathBuf {
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        let mut key = (self.encoder.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(self.encoder.as_bytes());
        key.extend_from_slice(caption.as_bytes());
        self.dir.join(format!("{:016x}.safetensors", fnv1a64(&key)))
    }

    /// Features (L, C) of each caption, in order. The captions without a valid cache file are
    /// passed to `encode` in one call (which must return one tensor per caption given) and
    /// written to the cache before returning. With the inference pipeline, `encode` is
    /// `|c| Ok(pipeline.encode_prompts(c)?.into_iter().map(|p| p.features).collect())`.
    pub fn features(
        &self,
        captions: &[&str],
        encode: impl FnOnce(&[&str]) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let mut out: Vec<Option<Tensor>> = captions.iter().map(|c| self.read(c)).collect();
        let missing: Vec<usize> = (0..captions.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let todo: Vec<&str> = missing.iter().map(|&i| captions[i]).collect();
        let encoded = encode(&todo)?;
        if encoded.len() != todo.len() {
            return Err(Error::invalid(
                "data.FeatureCache.features",
                &[todo.len()],
                format!("the encoder returned {} feature tensors for {} captions", encoded.len(), todo.len()),
            ));
        }
        for (&i, features) in missing.iter().zip(encoded) {
            self.write(captions[i], &features)?;
            out[i] = Some(features);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The cached features, or `None` when absent or unusable (then they are recomputed and the
    /// file replaced; a half-written file cannot occur, but a damaged disk or a foreign file can).
    fn read(&self, caption: &str) -> Option<Tensor> {
        let path = self.path(caption);
        if !path.exists() {
            return None;
        }
        match self.check(&path, caption) {
            Ok(features) => Some(features),
            Err(e) => {
                eprintln!("feature cache: recomputing {}: {e}", path.display());
                None
            }
        }
    }

    fn check(&self, path: &Path, caption: &str) -> Result<Tensor> {
        let weights = Weights::open(path)?;
        let meta = weights.metadata();
        if meta.get(META_ENCODER) != Some(&self.encoder) || meta.get(META_CAPTION).map(String::as_str) != Some(caption)
        {
            return Err(Error::format(path, "written for another encoder or caption"));
        }
        let features = weights.get(FEATURES)?;
        if features.rank() != 2 {
            return Err(Error::tensor(
                path,
                FEATURES,
                format!("expected (L, C) features, got shape {:?}", features.shape()),
            ));
        }
        Ok(features.clone())
    }

    fn write(&self, caption: &str, features: &Tensor) -> Result<()> {
        let meta = BTreeMap::from([
            (META_ENCODER.to_string(), self.encoder.clone()),
            (META_CAPTION.to_string(), caption.to_string()),
        ]);
        save_safetensors(self.path(caption), [(FEATURES, features)], &meta)
    }
}
