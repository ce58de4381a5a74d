//! The entry points of the fuzz targets: each takes arbitrary bytes to one parser of outside
//! input through the API the binaries use, and must return (an error is a fine answer) without
//! panicking, hanging or allocating far beyond the input's size. `fuzz_targets/` wraps each in
//! libFuzzer; `tests/fuzz_replay.rs` replays the committed corpora and regression inputs
//! through the same functions on the stable toolchain.

mod pickle;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use infinity::models::bitvae::BitVaeConfig;
use infinity::models::data::{CaptionRule, DEFAULT_SHORT_CAP_PROB, Dataset};
use infinity::models::image::{load_rgb, save_png};
use infinity::models::infinity::InfinityConfig;
use infinity::models::model_folder::ModelFiles;
use infinity::models::pipeline::read_prompt_file;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::models::t5::{T5Config, T5Tokenizer, open_checkpoint};
use infinity::models::text_to_image::ImageSize;
use infinity::models::var::VarConfig;
use infinity::runtime::io::Weights;
use infinity::runtime::rng::Philox;
use infinity::server::SizeRule;
use infinity::server::api::parse_generation;

/// A target's entry point.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: &[(&str, Entry)] = &[
    ("weights", weights),
    ("pth", pth),
    ("configs", configs),
    ("model_folder", model_folder),
    ("shard_index", shard_index),
    ("tokenizer", tokenizer),
    ("image", image),
    ("dataset", dataset),
    ("captions", captions),
    ("prompts", prompts),
    ("server_request", server_request),
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

/// A `.pth` checkpoint built from a stream of well-formed pickle opcodes and storages
/// ([`pickle::Archive`]): past the zip and the opcode parser to the allow-list, the objects
/// and the storage views. Every tensor it yields is read whole.
pub fn pth(data: &[u8]) {
    if let Some(archive) = pickle::Archive::from_fuzz(data) {
        weights(&archive.to_pth());
    }
}

/// The JSON configurations of the four models (the transformer's, the BitVAE's and VAR's
/// `--config`, T5's `config.json`).
pub fn configs(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = InfinityConfig::from_json(&v).map(|c| c.validate());
    let _ = BitVaeConfig::from_json(&v);
    let _ = T5Config::from_json(&v);
    let _ = VarConfig::from_json(&v).map(|c| c.generation_flops());
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
/// item's caption chosen and tokenized as training does (image paths point nowhere, so loading
/// them is skipped, as a missing image is).
pub fn dataset(data: &[u8]) {
    let dir = scratch("dataset");
    write(&dir.join("1.000_000001.jsonl"), data);
    if let Ok(d) = Dataset::from_jsonl_dir(&dir, PixelBudget::P006M) {
        train_on_captions(&d);
    }
}

/// A folder of captioned images: the bytes as the `.txt` caption of one small PNG, chosen and
/// tokenized as training does.
pub fn captions(data: &[u8]) {
    let dir = scratch("captions");
    write(&dir.join("a.png"), tiny_png());
    write(&dir.join("a.txt"), data);
    if let Ok(d) = Dataset::open(&dir, PixelBudget::P006M) {
        train_on_captions(&d);
    }
}

/// A prompt file (`infinity-run --prompt-file`): each prompt tokenized and cut as generation
/// does.
pub fn prompts(data: &[u8]) {
    let dir = scratch("prompts");
    let path = dir.join("prompts.txt");
    write(&path, data);
    if let Ok(prompts) = read_prompt_file(&path) {
        for p in &prompts {
            let _ = bundled_tokenizer().encode(p);
        }
    }
}

/// Each item's caption as training chooses it, whole and by the official rule's draws (the
/// short caption, or a prefix of sentences), tokenized.
fn train_on_captions(d: &Dataset) {
    let mut rng = Philox::new(0);
    let dynamic = CaptionRule::Dynamic { short_cap_prob: DEFAULT_SHORT_CAP_PROB };
    for item in d.items() {
        for rule in [CaptionRule::Plain, dynamic, dynamic] {
            let _ = bundled_tokenizer().encode(&rule.choose(&item.caption, &mut rng));
        }
    }
}

/// The bundled model's tokenizer (a SentencePiece Unigram vocabulary of its captions), cut to
/// the 128 tokens the bundled transformer reads.
fn bundled_tokenizer() -> &'static T5Tokenizer {
    static TOKENIZER: OnceLock<T5Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = scratch("bundled-tokenizer").join("tokenizer.json");
        write(&path, include_bytes!("../../assets/models/default/tokenizer.json"));
        T5Tokenizer::open(&path).expect("the bundled tokenizer reads").with_max_tokens(128)
    })
}

/// A 16×16 PNG.
fn tiny_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let path = scratch("tiny-png").join("tiny.png");
        let rgb: Vec<u8> = (0..16 * 16 * 3).map(|i| (i * 37 % 256) as u8).collect();
        save_png(&path, 16, 16, &rgb, &[]).expect("the temporary folder is writable");
        std::fs::read(&path).expect("the PNG just written reads")
    })
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

/// A request body of the server's image endpoints (`POST /v1/images/generations`,
/// `POST /v1/jobs`): checked field by field, accepted or refused with a 4xx naming the field.
pub fn server_request(data: &[u8]) {
    let square = Template::nearest(1.0).expect("the square template");
    let sizes = SizeRule { default: ImageSize { template: square, pn: PixelBudget::P006M }, max_pn: PixelBudget::P1M };
    match parse_generation(data, sizes) {
        Ok(params) => {
            assert!((1..=10).contains(&params.request.images), "n out of range was accepted");
            let scales = params.size.schedule().num_scales();
            params.request.sampling.validate(scales).expect("accepted knobs a generation refuses");
        }
        Err(e) => assert!(e.status.is_client_error(), "a bad body is a client error"),
    }
}
