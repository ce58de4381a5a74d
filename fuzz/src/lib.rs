//! The entry points of the fuzz targets: each takes arbitrary bytes to one parser of outside
//! input through the API the binaries use, and must return (an error is a fine answer) without
//! panicking, hanging or allocating far beyond the input's size. `fuzz_targets/` wraps each in
//! libFuzzer; `tests/fuzz_replay.rs` replays the committed corpora and regression inputs
//! through the same functions on the stable toolchain.

use std::path::{Path, PathBuf};

use infinity::models::bitvae::BitVaeConfig;
use infinity::models::data::Dataset;
use infinity::models::image::load_rgb;
use infinity::models::infinity::InfinityConfig;
use infinity::models::model_folder::ModelFiles;
use infinity::models::schedule::PixelBudget;
use infinity::models::t5::{T5Config, T5Tokenizer, open_checkpoint};
use infinity::runtime::io::Weights;

/// A target's entry point.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Entry)] = &[
    ("weights", weights),
    ("configs", configs),
    ("model_folder", model_folder),
    ("shard_index", shard_index),
    ("tokenizer", tokenizer),
    ("image", image),
    ("dataset", dataset),
];

/// A checkpoint, safetensors or `.pth` (zip, pickle, allow-list, storages and views): every
/// tensor it yields is read whole.
pub fn weights(data: &[u8]) {
    if let Ok(w) = Weights::from_bytes("fuzz.bin", data) {
        for (_, t) in w.iter() {
            let _ = t.to_f32_vec();
        }
    }
}

/// The JSON configurations of the three models (the transformer's and the BitVAE's
/// `--config`, T5's `config.json`).
pub fn configs(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = InfinityConfig::from_json(&v).map(|c| c.validate());
    let _ = BitVaeConfig::from_json(&v);
    let _ = T5Config::from_json(&v);
}

/// A model folder's `config.json`.
pub fn model_folder(data: &[u8]) {
    let dir = scratch("model_folder");
    write(&dir.join("config.json"), data);
    let _ = ModelFiles::from_dir(&dir).map(|files| files.check_exist());
}

/// A sharded checkpoint's `model.safetensors.index.json`, beside one real shard
/// (`model-00001-of-00001.safetensors`, two tensors) that its `weight_map` may name.
pub fn shard_index(data: &[u8]) {
    let dir = scratch("shard_index");
    write(&dir.join("model-00001-of-00001.safetensors"), SHARD);
    write(&dir.join("model.safetensors.index.json"), data);
    if let Ok(w) = open_checkpoint(&dir) {
        for (_, t) in w.iter() {
            let _ = t.to_f32_vec();
        }
    }
}

/// A safetensors file of tensors `encoder.a` (F32, 2) and `shared.weight` (F32, 2×2).
const SHARD: &[u8] = include_bytes!("../seeds/weights/shard.safetensors");

/// A `tokenizer.json`, then a prompt through it.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch("tokenizer");
    let path = dir.join("tokenizer.json");
    write(&path, data);
    if let Ok(t) = T5Tokenizer::open(&path) {
        let _ = t.encode("a red apple on a table");
    }
}

/// An image as `reconstruct` and training read one (PNG, JPEG; any declared size).
pub fn image(data: &[u8]) {
    let dir = scratch("image");
    let path = dir.join("input.png");
    write(&path, data);
    let _ = load_rgb(&path);
}

/// The official data layout: the bytes as a `.jsonl` file of a data folder, every listed
/// item's caption read (image paths point nowhere, so loading them is skipped, as a missing
/// image is).
pub fn dataset(data: &[u8]) {
    let dir = scratch("dataset");
    write(&dir.join("1.000_000001.jsonl"), data);
    if let Ok(d) = Dataset::from_jsonl_dir(&dir, PixelBudget::P006M) {
        for item in d.items() {
            let _ = (item.caption.long.len(), item.caption.short.as_ref().map(String::len));
        }
    }
}

/// A folder of this process and thread for the targets that read files, emptied first.
fn scratch(target: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = std::env::temp_dir().join(format!("infinity-fuzz-{}-{thread}-{target}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the temporary folder is writable");
    dir
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("the temporary folder is writable");
}
