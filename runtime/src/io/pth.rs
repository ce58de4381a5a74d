//! PyTorch `torch.save` checkpoints: a zip archive holding `<prefix>/data.pkl` (the object
//! tree, read by the restricted unpickler) and one raw little-endian file per storage,
//! `<prefix>/data/<key>`, mapped in place. The prefix is whatever name the archive had when
//! it was saved, so it is found from the one `data.pkl`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

use super::Weights;
use super::pickle::{self, ObjId, Object, Pickle, StorageRef, TensorRef, Value};
use crate::{CpuStorage, DType, Error, Layout, Result, Storage, Tensor};

/// Far deeper than any real checkpoint (a training checkpoint nests three levels); bounds the
/// recursion over a hostile pickle.
const MAX_NESTING: usize = 64;

type Archive<'a> = ZipArchive<Cursor<&'a [u8]>>;

pub(super) fn read(path: &Path, map: Arc<Mmap>) -> Result<Weights> {
    let mut archive = ZipArchive::new(Cursor::new(&map[..]))
        .map_err(|e| Error::format(path, format!("unreadable zip archive: {e}")))?;
    let prefix = pickle_prefix(path, &archive)?;
    if let Some(range) = stored_range(path, &mut archive, map.len(), &format!("{prefix}byteorder"))?
        && &map[range] != b"little"
    {
        return Err(Error::format(path, "storages were saved big-endian"));
    }
    let pickle_range = stored_range(path, &mut archive, map.len(), &format!("{prefix}data.pkl"))?
        .ok_or_else(|| Error::format(path, "data.pkl is listed but cannot be opened"))?;
    let pickle = pickle::load(path, &map[pickle_range])?;

    let root_is_dict = matches!(pickle.root, Value::Obj(id) if matches!(pickle.object(id), Object::Dict(_)));
    if !root_is_dict {
        return Err(Error::format(path, format!("the checkpoint holds {}, not a dict of tensors", pickle.root)));
    }
    let mut walk = Walk {
        path,
        pickle: &pickle,
        storages: Storages { path, map: &map, archive, prefix, mapped: HashMap::new() },
        visited: HashSet::new(),
        entries: vec![],
    };
    walk.visit(&pickle.root, "", 0)?;
    Weights::new(path, walk.entries, BTreeMap::new())
}

/// The directory part of the archive's only `data.pkl` (`"archive/"` for `archive/data.pkl`).
fn pickle_prefix(path: &Path, archive: &Archive) -> Result<String> {
    let mut found = archive
        .file_names_raw()
        .filter_map(|name| name.strip_suffix(b"data.pkl"))
        .filter(|prefix| prefix.is_empty() || (prefix.ends_with(b"/") && !prefix[..prefix.len() - 1].contains(&b'/')));
    let (Some(prefix), None) = (found.next(), found.next()) else {
        return Err(Error::format(path, "a torch.save archive has exactly one <name>/data.pkl; this one does not"));
    };
    String::from_utf8(prefix.to_vec()).map_err(|_| Error::format(path, "the archive's directory name is not UTF-8"))
}

/// Where the bytes of entry `name` lie in the file, or None when there is no such entry.
/// `torch.save` stores entries uncompressed, which is what lets storages be mapped in place.
fn stored_range(path: &Path, archive: &mut Archive, file_len: usize, name: &str) -> Result<Option<Range<usize>>> {
    let Some(index) = archive.index_for_name(name) else {
        return Ok(None);
    };
    let bad = |msg: String| Error::format(path, format!("archive entry {name}: {msg}"));
    let entry = archive.by_index_raw(index).map_err(|e| bad(e.to_string()))?;
    if entry.encrypted() {
        return Err(bad("encrypted entries are not supported".into()));
    }
    if entry.compression() != CompressionMethod::Stored {
        return Err(bad(format!(
            "{} entries are not supported; torch.save stores them uncompressed",
            entry.compression()
        )));
    }
    if entry.compressed_size() != entry.size() {
        return Err(bad(format!("stored size {} differs from size {}", entry.compressed_size(), entry.size())));
    }
    let (start, size) = (entry.data_start(), entry.size());
    let range = start
        .and_then(|start| Some((usize::try_from(start).ok()?, usize::try_from(size).ok()?)))
        .and_then(|(start, size)| Some(start..start.checked_add(size)?))
        .filter(|range| range.end <= file_len)
        .ok_or_else(|| bad(format!("{size} bytes from offset {start:?} lie outside the file")))?;
    Ok(Some(range))
}

/// Turns the pickle's tree into named tensors, flattening nested containers with dotted names.
struct Walk<'a> {
    path: &'a Path,
    pickle: &'a Pickle,
    storages: Storages<'a>,
    /// Containers already walked: a shared or self-containing one would name tensors twice or
    /// never end.
    visited: HashSet<ObjId>,
    entries: Vec<(String, Tensor)>,
}

impl Walk<'_> {
    fn visit(&mut self, value: &Value, name: &str, depth: usize) -> Result<()> {
        match value {
            Value::Tensor(t) => {
                let tensor = self.tensor(name, t)?;
                self.entries.push((name.to_string(), tensor));
            }
            &Value::Obj(id) => {
                if depth >= MAX_NESTING {
                    return Err(Error::tensor(self.path, name, format!("nested deeper than {MAX_NESTING} levels")));
                }
                if !self.visited.insert(id) {
                    return Err(Error::tensor(self.path, name, "the container is shared or contains itself"));
                }
                let pickle = self.pickle;
                match pickle.object(id) {
                    Object::Dict(items) => {
                        for (key, value) in items {
                            let key = match key {
                                Value::Str(s) => s.to_string(),
                                Value::Int(i) => i.to_string(),
                                other => {
                                    return Err(Error::tensor(
                                        self.path,
                                        name,
                                        format!("dict key {other} is not a name"),
                                    ));
                                }
                            };
                            self.visit(value, &join(name, &key), depth + 1)?;
                        }
                    }
                    Object::List(items) | Object::Tuple(items) => {
                        for (i, value) in items.iter().enumerate() {
                            self.visit(value, &join(name, &i.to_string()), depth + 1)?;
                        }
                    }
                }
            }
            // Plain values (an epoch number, a config string) carry no weights.
            _ => {}
        }
        Ok(())
    }

    fn tensor(&mut self, name: &str, t: &TensorRef) -> Result<Tensor> {
        let storage = self.storages.get(name, &t.storage)?;
        let error = |msg: String| Error::tensor(self.path, name, msg);
        // `Layout` arithmetic is unchecked, so hostile sizes and strides are checked here first.
        let numel = t.size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let extent = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| acc.checked_add(d.saturating_sub(1).checked_mul(s)?));
        let Some(numel) = numel.filter(|_| extent.and_then(|e| e.checked_add(1)).is_some()) else {
            return Err(error(format!("size {:?} with stride {:?} overflows", t.size, t.stride)));
        };
        // More elements than the storage means repeated elements (stride 0): state dicts never
        // hold such views, and allowing them would let a tiny file claim terabytes of weights.
        if numel > storage.len() {
            return Err(error(format!(
                "shape {:?} has {numel} elements but storage '{}' holds only {}",
                t.size,
                t.storage.key,
                storage.len()
            )));
        }
        Tensor::from_storage(storage, Layout::new(t.size.clone(), t.stride.clone(), t.offset))
            .map_err(|e| error(format!("storage '{}': {e}", t.storage.key)))
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// The storages of the archive, mapped once each (tensors may share one).
struct Storages<'a> {
    path: &'a Path,
    map: &'a Arc<Mmap>,
    archive: Archive<'a>,
    prefix: String,
    mapped: HashMap<String, (DType, usize, Arc<Storage>)>,
}

impl Storages<'_> {
    /// The storage `s`, checked against its archive entry; `tensor` is named in errors.
    fn get(&mut self, tensor: &str, s: &StorageRef) -> Result<Arc<Storage>> {
        if let Some((dtype, numel, storage)) = self.mapped.get(&s.key) {
            if (*dtype, *numel) != (s.dtype, s.numel) {
                return Err(Error::tensor(
                    self.path,
                    tensor,
                    format!(
                        "storage '{}' is declared both as {} and as {}",
                        s.key,
                        describe(*dtype, *numel),
                        describe(s.dtype, s.numel)
                    ),
                ));
            }
            return Ok(storage.clone());
        }
        let entry = format!("{}data/{}", self.prefix, s.key);
        let Some(range) = stored_range(self.path, &mut self.archive, self.map.len(), &entry)? else {
            return Err(Error::tensor(self.path, tensor, format!("storage entry {entry} is missing from the archive")));
        };
        if s.numel.checked_mul(s.dtype.size_in_bytes()) != Some(range.len()) {
            return Err(Error::tensor(
                self.path,
                tensor,
                format!("storage '{}' holds {} bytes, not {}", s.key, range.len(), describe(s.dtype, s.numel)),
            ));
        }
        let storage = Arc::new(Storage::Cpu(CpuStorage::mapped(self.map.clone(), range, s.dtype)));
        self.mapped.insert(s.key.clone(), (s.dtype, s.numel, storage.clone()));
        Ok(storage)
    }
}

fn describe(dtype: DType, numel: usize) -> String {
    format!("{numel} elements of {dtype}")
}
