//! Shared helpers of the loader tests: fixture paths, scratch directories, and builders for
//! hand-made `torch.save` archives (pickle bytes + Stored zip) and safetensors files.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use infinity::runtime::io::Weights;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// An empty directory of its own for one test.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loaders").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` to `dir/name` and opens it.
pub fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> infinity::runtime::Result<Weights> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Weights::open(&path)
}

/// Reads every element of every tensor: a loader that accepted a file must be able to serve all
/// of its data without reading out of bounds.
pub fn touch_all(weights: &Weights) -> usize {
    weights.iter().map(|(_, t)| t.to_f32_vec().unwrap().len()).sum()
}

/// Asserts that both containers hold the same names with bitwise-identical tensors.
pub fn assert_same_tensors(a: &Weights, b: &Weights) {
    assert_eq!(a.len(), b.len());
    for (name, ta) in a.iter() {
        let tb = b.get(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ta.dtype(), tb.dtype(), "{name}");
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        assert_eq!(ta.to_bytes().unwrap(), tb.to_bytes().unwrap(), "{name}");
    }
}

/// A Stored zip archive with the given entries, as `torch.save` writes it.
pub fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Every entry of a zip archive, in order.
pub fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            std::io::copy(&mut entry, &mut data).unwrap();
            (entry.name().unwrap().to_string(), data)
        })
        .collect()
}

/// The golden transformer checkpoint with its `data.pkl` replaced.
pub fn transformer_pth_with_pickle(pickle: &[u8]) -> Vec<u8> {
    let golden = std::fs::read(fixture("devB/transformer.pth")).unwrap();
    let entries: Vec<(String, Vec<u8>)> = zip_entries(&golden)
        .into_iter()
        .map(|(name, data)| if name.ends_with("/data.pkl") { (name, pickle.to_vec()) } else { (name, data) })
        .collect();
    stored_zip(&entries)
}

pub fn transformer_pickle() -> Vec<u8> {
    let golden = std::fs::read(fixture("devB/transformer.pth")).unwrap();
    zip_entries(&golden).into_iter().find(|(name, _)| name.ends_with("/data.pkl")).unwrap().1
}

/// A `torch.save` archive named `archive` with one pickle and raw storages `data/<key>`.
pub fn pth(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), pickle.to_vec())];
    entries.push(("archive/byteorder".to_string(), b"little".to_vec()));
    entries.extend(storages.iter().map(|(key, data)| (format!("archive/data/{key}"), data.clone())));
    stored_zip(&entries)
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A tensor as `_rebuild_tensor_v2` describes it.
pub struct TensorSpec<'a> {
    pub name: &'a str,
    pub storage_type: &'a str,
    pub key: &'a str,
    pub numel: i64,
    pub offset: i64,
    pub size: &'a [i64],
    pub stride: &'a [i64],
}

impl<'a> TensorSpec<'a> {
    /// A contiguous f32 tensor over all of storage `key`.
    pub fn f32(name: &'a str, key: &'a str, size: &'a [i64], stride: &'a [i64]) -> Self {
        TensorSpec {
            name,
            storage_type: "FloatStorage",
            key,
            numel: size.iter().fold(1, |n, &d| n.saturating_mul(d)),
            offset: 0,
            size,
            stride,
        }
    }
}

/// Emits pickle opcodes the way `torch.save` (protocol 2) does.
#[derive(Default)]
pub struct Pickler(pub Vec<u8>);

impl Pickler {
    pub fn proto2() -> Self {
        Pickler(vec![0x80, 2])
    }

    pub fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => {
                self.0.push(b'J');
                self.0.extend(small.to_le_bytes());
            }
            Err(_) => {
                self.0.extend([0x8a, 8]);
                self.0.extend(v.to_le_bytes());
            }
        }
        self
    }

    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }

    pub fn int_tuple(&mut self, values: &[i64]) -> &mut Self {
        self.op(b'(');
        for &v in values {
            self.int(v);
        }
        self.op(b't')
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(&mut self, t: &TensorSpec) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        self.op(b'(').str("storage").global("torch", t.storage_type).str(t.key).str("cpu").int(t.numel);
        self.op(b't').op(b'Q');
        self.int(t.offset).int_tuple(t.size).int_tuple(t.stride);
        self.op(0x89).global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }

    /// `{name: tensor, ...}` built with one SETITEMS, left on the stack.
    pub fn state_dict(&mut self, tensors: &[TensorSpec]) -> &mut Self {
        self.op(b'}').op(b'(');
        for t in tensors {
            self.str(t.name).tensor(t);
        }
        self.op(b'u')
    }

    pub fn stop(&mut self) -> Vec<u8> {
        self.op(b'.');
        std::mem::take(&mut self.0)
    }
}

/// A complete pickle of a flat state dict.
pub fn state_dict_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    Pickler::proto2().state_dict(tensors).stop()
}

/// A safetensors file with the given JSON header (unpadded) and data.
pub fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}
