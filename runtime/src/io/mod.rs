//! Weight I/O: `Weights`, the name → tensor container of one checkpoint, filled from
//! safetensors (memory-mapped) or from PyTorch `torch.save` zip archives (through a
//! restricted unpickler), plus atomic safetensors writes.

mod atomic;
mod pickle;
mod pth;
mod safetensors;
mod sharded;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};

use crate::{Error, Result, Tensor};

pub use self::atomic::{check_writable, write_atomically};
pub use self::safetensors::save as save_safetensors;
pub use self::sharded::open_checkpoint;

/// Every zip archive (and so every `torch.save` file) starts with a local file header.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The tensors of one checkpoint in file order. Nested dicts of a `.pth` are flattened with
/// dotted names (`{"vae": {"encoder.x": t}}` → `vae.encoder.x`).
#[derive(Clone, Debug)]
pub struct Weights {
    path: PathBuf,
    /// Removed from every name by `strip_prefix`; kept so that errors name the full key.
    prefix: String,
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl Weights {
    /// Opens a `.safetensors` or PyTorch `.pth` file, told apart by its first bytes (not its
    /// name). Tensor data stays in the mapped file until it is used.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. Like every mmap-based loader we rely on the file not
        // being truncated or rewritten while tensors from it are alive.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    /// [`Weights::open`] on bytes in memory (copied into an anonymous map), through the same
    /// parsers; `name` stands for the file in errors. For fuzzing and in-memory checkpoints.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<Self> {
        let path = name.into();
        let mut map = MmapMut::map_anon(bytes.len()).map_err(|e| Error::io(&path, e))?;
        map.copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| Error::io(&path, e))?;
        Self::parse(&path, Arc::new(map))
    }

    /// A zip archive is a `.pth`, anything else must be a safetensors file.
    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        if map.starts_with(ZIP_MAGIC) { pth::read(path, map) } else { safetensors::read(path, map) }
    }

    /// A container over already-built tensors; names must be unique.
    pub fn new(
        path: impl Into<PathBuf>,
        entries: Vec<(String, Tensor)>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let path = path.into();
        let mut index = HashMap::with_capacity(entries.len());
        for (i, (name, _)) in entries.iter().enumerate() {
            if index.insert(name.clone(), i).is_some() {
                return Err(Error::tensor(path, name.clone(), "the name occurs twice"));
            }
        }
        Ok(Weights { path, prefix: String::new(), entries, index, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The tensor named `key`; the error names the file and the full key.
    pub fn get(&self, key: &str) -> Result<&Tensor> {
        match self.index.get(key) {
            Some(&i) => Ok(&self.entries[i].1),
            None => Err(Error::tensor(&self.path, format!("{}{key}", self.prefix), "not found in the checkpoint")),
        }
    }

    /// Names and tensors in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// Name → shape of every tensor: what configuration detection looks at.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.entries.iter().map(|(name, t)| (name.clone(), t.shape().to_vec())).collect()
    }

    pub fn total_params(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.numel()).sum()
    }

    /// The safetensors `__metadata__` strings (empty for `.pth` files).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensors whose names start with `prefix`, renamed without it (a nested sub-dict such
    /// as `vae.`). Tensors are shared, not copied. Errors when no name has the prefix, since an
    /// empty result would only fail later with a less helpful message.
    pub fn strip_prefix(&self, prefix: &str) -> Result<Weights> {
        let entries: Vec<(String, Tensor)> = self
            .entries
            .iter()
            .filter_map(|(name, t)| name.strip_prefix(prefix).map(|rest| (rest.to_string(), t.clone())))
            .collect();
        let full_prefix = format!("{}{prefix}", self.prefix);
        if entries.is_empty() {
            return Err(Error::tensor(&self.path, format!("{full_prefix}*"), "no tensor has this prefix"));
        }
        let mut sub = Weights::new(self.path.clone(), entries, self.metadata.clone())?;
        sub.prefix = full_prefix;
        Ok(sub)
    }
}
