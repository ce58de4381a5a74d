//! safetensors: reads that validate the header against the file and then map every tensor
//! in place, and writes through `write_atomically`.
//!
//! Layout: an 8-byte little-endian header length N, N bytes of JSON
//! (`name: {dtype, shape, data_offsets: [begin, end]}` plus optional `__metadata__`), then the
//! data, whose tensors tile it exactly (offsets relative to the end of the header).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Arc;

use ::safetensors::Dtype;
use ::safetensors::tensor::TensorInfo;
use memmap2::Mmap;
use serde_json::{Map, Value, json};

use super::{Weights, write_atomically};
use crate::{CpuStorage, DType, Error, Layout, Result, Storage, Tensor};

const LEN_BYTES: usize = 8;
const METADATA_KEY: &str = "__metadata__";
/// Data is padded to this alignment so that mapped f32/i64 tensors can be borrowed in place.
const ALIGN: usize = 8;

/// The header's entries in file order, duplicates kept (a `Map` would silently keep one).
struct HeaderEntries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(HeaderEntries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

pub(super) fn read(path: &Path, map: Arc<Mmap>) -> Result<Weights> {
    let Some(len_bytes) = map.first_chunk::<LEN_BYTES>() else {
        return Err(Error::format(
            path,
            format!("a file of {} bytes is neither a zip archive nor a safetensors file", map.len()),
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let data_start = usize::try_from(header_len)
        .ok()
        .and_then(|n| n.checked_add(LEN_BYTES))
        .filter(|&end| end <= map.len())
        .ok_or_else(|| {
            Error::format(path, format!("header length {header_len} exceeds the file size {}", map.len()))
        })?;
    let HeaderEntries(header) = serde_json::from_slice(&map[LEN_BYTES..data_start])
        .map_err(|e| Error::format(path, format!("the header is not a JSON object: {e}")))?;
    // A JSON reader that keeps the last of two same-named entries and one that keeps the first
    // would see different tensors in one file: refuse it.
    let mut seen = HashSet::new();
    if let Some((name, _)) = header.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(Error::tensor(path, name, "named twice in the header"));
    }

    let mut metadata = BTreeMap::new();
    let mut infos = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == METADATA_KEY {
            metadata = serde_json::from_value(value)
                .map_err(|e| Error::format(path, format!("{METADATA_KEY} is not a map of strings: {e}")))?;
        } else {
            match serde_json::from_value::<TensorInfo>(value) {
                Ok(info) => infos.push((name, info)),
                Err(e) => return Err(Error::tensor(path, &name, format!("invalid header entry: {e}"))),
            }
        }
    }
    // File order is data order; the JSON object itself carries no order.
    infos.sort_by_key(|(_, info)| info.data_offsets);

    let data_len = map.len() - data_start;
    let mut next = 0;
    let mut entries = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let dtype = runtime_dtype(info.dtype)
            .ok_or_else(|| Error::tensor(path, &name, format!("unsupported dtype {:?}", info.dtype)))?;
        let (begin, end) = info.data_offsets;
        if begin != next {
            return Err(Error::tensor(
                path,
                &name,
                format!("data_offsets start at {begin} but the previous tensor ends at {next}"),
            ));
        }
        let needed = info.shape.iter().try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d));
        if end.checked_sub(begin) != needed {
            return Err(Error::tensor(
                path,
                &name,
                format!("data_offsets [{begin}, {end}] do not hold a {dtype} tensor of shape {:?}", info.shape),
            ));
        }
        if end > data_len {
            return Err(Error::tensor(path, &name, format!("data ends at {end}, past the {data_len} data bytes")));
        }
        next = end;
        let storage = CpuStorage::mapped(map.clone(), data_start + begin..data_start + end, dtype);
        entries.push((name, Tensor::from_storage(Arc::new(Storage::Cpu(storage)), Layout::contiguous(&info.shape))?));
    }
    if next != data_len {
        return Err(Error::format(path, format!("{} bytes after the last tensor", data_len - next)));
    }
    Weights::new(path, entries, metadata)
}

/// Writes `tensors` (in the given order; views are made contiguous) and `metadata` to `path`
/// atomically.
pub fn save<'a, N: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (N, &'a Tensor)>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let tensors: Vec<(N, &Tensor)> = tensors.into_iter().collect();
    let header = encode_header(path, &tensors, metadata)?;
    write_atomically(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (_, t) in &tensors {
            // One tensor at a time in host memory, in its stored dtype.
            out.write_all(&t.to_bytes().map_err(io::Error::other)?)?;
        }
        Ok(())
    })
}

/// The JSON header, padded with spaces so that the data starts aligned.
fn encode_header<N: AsRef<str>>(
    path: &Path,
    tensors: &[(N, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert(METADATA_KEY.into(), json!(metadata));
    }
    let mut names = HashSet::with_capacity(tensors.len());
    let mut offset = 0;
    for (name, t) in tensors {
        let name = name.as_ref();
        if name == METADATA_KEY || !names.insert(name) {
            return Err(Error::tensor(path, name, "the name is reserved or occurs twice"));
        }
        let end = offset + t.numel() * t.dtype().size_in_bytes();
        header.insert(
            name.into(),
            json!({ "dtype": t.dtype().name(), "shape": t.shape(), "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&header).map_err(|e| Error::format(path, format!("header: {e}")))?;
    let padded = (LEN_BYTES + bytes.len()).next_multiple_of(ALIGN) - LEN_BYTES;
    bytes.resize(padded, b' ');
    Ok(bytes)
}

fn runtime_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        Dtype::I64 => Some(DType::I64),
        Dtype::I32 => Some(DType::I32),
        Dtype::U8 => Some(DType::U8),
        _ => None,
    }
}
