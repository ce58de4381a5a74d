//! `save_safetensors` round-trips every dtype (views included) and replaces files atomically.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use infinity::runtime::io::{Weights, save_safetensors};
use infinity::runtime::{DType, Element, Tensor, with_dtype};

use crate::support::scratch_dir;

/// A (3, 4) tensor of `dtype` holding 0..12 (shifted so that signed types see negatives).
fn ramp(dtype: DType) -> Tensor {
    with_dtype!(dtype, T => {
        let signed = dtype != DType::U8;
        let values: Vec<T> = (0..12).map(|i| T::from_f32(if signed { i as f32 - 5.0 } else { i as f32 })).collect();
        Tensor::from_vec(values, &[3, 4]).unwrap()
    })
}

/// One contiguous tensor, one transposed view and one narrowed (offset) view per dtype, plus a
/// scalar and an empty tensor.
fn sample_tensors() -> Vec<(String, Tensor)> {
    let mut tensors = vec![];
    for dtype in DType::ALL {
        let t = ramp(dtype);
        tensors.push((format!("{dtype}.plain"), t.clone()));
        tensors.push((format!("{dtype}.transposed"), t.transpose(0, 1).unwrap()));
        tensors.push((format!("{dtype}.narrowed"), t.narrow(1, 1, 2).unwrap()));
    }
    tensors.push(("scalar".into(), Tensor::scalar(2.5f32)));
    tensors.push(("empty".into(), Tensor::zeros(&[0, 3], DType::BF16)));
    tensors
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn round_trip_all_dtypes_and_views() {
    let dir = scratch_dir("round_trip");
    let path = dir.join("out.safetensors");
    let tensors = sample_tensors();
    assert!(!tensors[1].1.is_contiguous(), "the sample must include strided views");
    let metadata =
        BTreeMap::from([("format".to_string(), "pt".to_string()), ("note".to_string(), "ünïcode".to_string())]);
    save_safetensors(&path, tensors.iter().map(|(n, t)| (n, t)), &metadata).unwrap();

    let loaded = Weights::open(&path).unwrap();
    assert_eq!(loaded.metadata(), &metadata);
    let names: Vec<&str> = loaded.iter().map(|(n, _)| n).collect();
    let expected: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected, "file order is the order given to save");
    for ((name, want), (_, got)) in tensors.iter().zip(loaded.iter()) {
        assert!(got.storage().is_mapped());
        assert!(got.same_values(want), "{name}: {got:?} vs {want:?}");
        assert_eq!(got.to_bytes().unwrap(), want.to_bytes().unwrap(), "{name}");
    }

    // The reference reader accepts the file and sees the same bytes; data starts aligned.
    let bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % 8, 0);
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, want) in &tensors {
        let view = reference.tensor(name).unwrap();
        assert_eq!(format!("{:?}", view.dtype()), want.dtype().name());
        assert_eq!(view.shape(), want.shape());
        assert_eq!(view.data(), want.to_bytes().unwrap().as_slice(), "{name}");
    }
    assert_eq!(leftovers(&dir), ["out.safetensors"], "no temporary file left behind");
}

#[test]
fn overwriting_replaces_the_whole_file() {
    let dir = scratch_dir("overwrite");
    let path = dir.join("w.safetensors");
    let big = Tensor::zeros(&[1000], DType::F32);
    save_safetensors(&path, [("big", &big)], &BTreeMap::new()).unwrap();
    let small = Tensor::scalar(7i64);
    save_safetensors(&path, [("small", &small)], &BTreeMap::new()).unwrap();
    let loaded = Weights::open(&path).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.get("small").unwrap().to_vec::<i64>().unwrap(), [7]);
    assert_eq!(leftovers(&dir), ["w.safetensors"]);
}

#[test]
fn failed_saves_leave_no_target_and_no_temporary_file() {
    let dir = scratch_dir("atomic");
    let t = Tensor::scalar(1.0f32);

    // The parent directory does not exist: nothing can be created.
    let orphan = dir.join("missing").join("x.safetensors");
    let err = save_safetensors(&orphan, [("t", &t)], &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("x.safetensors"), "{err}");
    assert!(!orphan.exists());

    // The target is a directory: the temporary file is fully written, then the rename fails
    // and the temporary file must be removed.
    let occupied = dir.join("occupied");
    fs::create_dir(&occupied).unwrap();
    assert!(save_safetensors(&occupied, [("t", &t)], &BTreeMap::new()).is_err());
    assert!(occupied.is_dir());
    assert_eq!(leftovers(&dir), ["occupied"]);

    // A rejected tensor list leaves an existing file untouched.
    let existing = dir.join("existing.safetensors");
    save_safetensors(&existing, [("t", &t)], &BTreeMap::new()).unwrap();
    let before = fs::read(&existing).unwrap();
    let err = save_safetensors(&existing, [("dup", &t), ("dup", &t)], &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("dup"), "{err}");
    let err = save_safetensors(&existing, [("__metadata__", &t)], &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("__metadata__"), "{err}");
    assert_eq!(fs::read(&existing).unwrap(), before);
    let mut names = leftovers(&dir);
    names.sort();
    assert_eq!(names, ["existing.safetensors", "occupied"]);
}
