//! The flan-t5 text encoder: parity with Hugging Face's T5EncoderModel on the dev goldens
//! (each prompt encoded on its valid tokens only), the relative-position buckets, the
//! flan-t5-xl state dict against the release manifest, the checkpoint loader (tied embedding,
//! shards, bad files) and the tokenizer's framing (EOS, truncation to 512) on a tiny Unigram
//! tokenizer.json.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_golden, fixture, open, prompt_ids};
use infinity::models::t5::tokenizer::MAX_TOKENS;
use infinity::models::t5::{Encoded, T5Config, T5Encoder, T5Tokenizer, relative_position_bucket};
use infinity::runtime::io::{Weights, save_safetensors};
use infinity::runtime::{DType, Error, Tensor};
use serde_json::Value;

const SETS: [&str; 2] = ["devA", "devB"];

fn config(set: &str) -> T5Config {
    T5Config::open(fixture(&format!("{set}/t5_config.json"))).unwrap()
}

fn encoder(set: &str) -> T5Encoder {
    T5Encoder::open(fixture(&format!("{set}/t5_encoder.safetensors")), config(set)).unwrap()
}

/// Rows 0..len of prompt `b` of the golden (B, L, D) hidden states.
fn golden_rows(golden: &Weights, b: usize, len: usize) -> Tensor {
    golden.get("last_hidden_state").unwrap().narrow(0, b, 1).unwrap().squeeze(0).unwrap().narrow(0, 0, len).unwrap()
}

#[test]
fn encoder_matches_golden() {
    for set in SETS {
        let t5 = encoder(set);
        let golden = open(&format!("{set}/t5_golden.safetensors"));
        let prompts = prompt_ids(&golden);
        for (b, ids) in prompts.iter().enumerate() {
            let got = t5.encode(ids).unwrap();
            assert_golden(&format!("{set} prompt {b}"), &got, &golden_rows(&golden, b, ids.len()), 1e-4);
        }
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        for (b, got) in t5.encode_batch(&refs).unwrap().iter().enumerate() {
            assert_golden(&format!("{set} packed prompt {b}"), got, &golden_rows(&golden, b, refs[b].len()), 1e-4);
        }
    }
}

/// Hand-computed buckets for 32 buckets / max distance 128: 16 per direction (+16 when the key
/// follows the query), exact below 8, then 8 + ⌊ln(n/8) / ln 16 · 8⌋ capped at 15. The
/// distances 16, 32 and 64 sit exactly on bucket boundaries.
#[test]
fn relative_position_buckets() {
    let cases: [(i64, usize); 22] = [
        (0, 0),
        (1, 17),
        (-1, 1),
        (7, 23),
        (-7, 7),
        (8, 24),
        (-8, 8),
        (-11, 8),
        (-12, 9),
        (-15, 9),
        (-16, 10),
        (16, 26),
        (-31, 11),
        (-32, 12),
        (-63, 13),
        (-64, 14),
        (64, 30),
        (-127, 15),
        (-128, 15),
        (128, 31),
        (-100_000, 15),
        (100_000, 31),
    ];
    for (rel, bucket) in cases {
        assert_eq!(relative_position_bucket(rel, 32, 128), bucket, "relative position {rel}");
    }
}

#[test]
fn flan_t5_xl_entries_match_the_release_manifest() {
    let manifest: Value = serde_json::from_str(include_str!("fixtures/manifests/flan_t5_xl_encoder.json")).unwrap();
    let theirs: Vec<(String, Vec<usize>, Option<String>)> = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["kind"], "param", "{t}");
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (t["key"].as_str().unwrap().to_string(), shape, t["alias_of"].as_str().map(String::from))
        })
        .collect();
    let entries = T5Config::flan_t5_xl().entries();
    let ours: Vec<_> = entries.iter().map(|e| (e.key.clone(), e.shape.clone(), e.alias_of.clone())).collect();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len() as u64, manifest["num_tensors"].as_u64().unwrap());
    let params: u64 =
        entries.iter().filter(|e| e.alias_of.is_none()).map(|e| e.shape.iter().product::<usize>() as u64).sum();
    assert_eq!(params, manifest["num_params"].as_u64().unwrap());
    assert_eq!(params, 1_223_527_424);
}

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-t5-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The devB encoder's (key, tensor) list.
fn dev_tensors() -> Vec<(String, Tensor)> {
    open("devB/t5_encoder.safetensors").iter().map(|(k, t)| (k.to_string(), t.clone())).collect()
}

fn save(path: &Path, tensors: &[(String, Tensor)]) {
    save_safetensors(path, tensors.iter().map(|(k, t)| (k.as_str(), t)), &Default::default()).unwrap();
}

/// Writes the devB encoder with `edit` applied and loads it.
fn load_edited(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> Result<T5Encoder, Error> {
    let mut tensors = dev_tensors();
    edit(&mut tensors);
    let dir = temp_dir(name);
    let path = dir.join("t5.safetensors");
    save(&path, &tensors);
    let out = T5Encoder::open(&path, config("devB"));
    std::fs::remove_dir_all(&dir).ok();
    out
}

const PROMPT: [u32; 6] = [5, 17, 42, 3, 64, 1];

#[test]
fn either_name_of_the_tied_embedding_loads() {
    let want = encoder("devB").encode(&PROMPT).unwrap();
    let names = ["shared.weight", "encoder.embed_tokens.weight"];
    for (i, name) in names.into_iter().enumerate() {
        let t5 = load_edited(&format!("tied-{i}"), |ts| ts.retain(|(k, _)| k != name)).unwrap();
        assert!(t5.encode(&PROMPT).unwrap().same_values(&want), "without {name}");
    }
    let neither = load_edited("tied-none", |ts| ts.retain(|(k, _)| !names.contains(&k.as_str())));
    let msg = neither.err().unwrap().to_string();
    assert!(msg.contains("'shared.weight'") && msg.contains("encoder.embed_tokens.weight"), "{msg}");
}

#[test]
fn bad_checkpoints_are_refused_naming_the_key() {
    let key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight";
    let missing = load_edited("missing", |ts| ts.retain(|(k, _)| k != key)).err().unwrap().to_string();
    assert!(missing.contains(key) && missing.contains("missing"), "{missing}");

    let key = "encoder.block.0.layer.0.SelfAttention.q.weight";
    let reshaped = load_edited("reshaped", |ts| {
        ts.iter_mut().find(|(k, _)| k == key).unwrap().1 = Tensor::zeros(&[128, 128], DType::F32);
    })
    .err()
    .unwrap()
    .to_string();
    assert!(reshaped.contains(key) && reshaped.contains("[32, 128]"), "{reshaped}");

    let key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    let extra = load_edited("extra", |ts| ts.push((key.into(), Tensor::zeros(&[32, 4], DType::F32))))
        .err()
        .unwrap()
        .to_string();
    assert!(extra.contains(key) && extra.contains("unexpected"), "{extra}");

    // A config that does not fit the checkpoint fails on the first entry it shapes differently.
    let path = fixture("devA/t5_encoder.safetensors");
    let wrong = T5Encoder::open(&path, config("devB")).err().unwrap().to_string();
    assert!(wrong.contains("t5_encoder.safetensors") && wrong.contains("shared.weight"), "{wrong}");
}

/// A full encoder-decoder checkpoint, sharded: the decoder and LM head are skipped, the index
/// and its folder load the same model as the single file.
#[test]
fn sharded_checkpoints_load_through_their_index() {
    let dir = temp_dir("sharded");
    let mut tensors = dev_tensors();
    tensors.push(("decoder.block.0.layer.0.SelfAttention.q.weight".into(), Tensor::zeros(&[32, 128], DType::F32)));
    tensors.push(("lm_head.weight".into(), Tensor::zeros(&[80, 128], DType::F32)));
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        save(&dir.join(file), part);
        weight_map.extend(part.iter().map(|(k, _)| (k.clone(), Value::from(file))));
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let want = encoder("devB").encode(&PROMPT).unwrap();
    for path in [dir.join("model.safetensors.index.json"), dir.clone()] {
        let got = T5Encoder::open(&path, config("devB")).unwrap().encode(&PROMPT).unwrap();
        assert!(got.same_values(&want), "{}", path.display());
    }
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = T5Encoder::open(&dir, config("devB")).err().unwrap().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_config_files_are_named() {
    let err = T5Config::open(fixture("devA/no_such_config.json")).unwrap_err().to_string();
    assert!(err.contains("no_such_config.json"), "{err}");
    let err = T5Config::open(fixture("devA/t5_golden.safetensors")).unwrap_err().to_string();
    assert!(err.contains("t5_golden.safetensors"), "{err}");
}

#[test]
fn random_model_encodes_packed_prompts() {
    let t5 = T5Encoder::random(config("devB"), 7).unwrap();
    let out = t5.encode_batch(&[&PROMPT, &PROMPT[2..]]).unwrap();
    assert_eq!(out.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>(), [vec![6, 128], vec![4, 128]]);
    assert!(out.iter().all(|t| t.to_f32_vec().unwrap().iter().all(|v| v.is_finite())));
    assert!(t5.encode(&[]).is_err());
    assert!(t5.encode_batch(&[]).unwrap().is_empty());
}

/// A prompt's features are the same bits alone and packed with a long prompt that takes the
/// batch past the few-rows path of `linear` (64 rows): a server's batch never changes them.
#[test]
fn a_prompt_gets_the_same_bits_alone_and_packed() {
    let t5 = T5Encoder::random(config("devB"), 7).unwrap();
    let long: Vec<u32> = (0..120).map(|i| 2 + i % 70).collect();
    let alone = t5.encode(&PROMPT).unwrap();
    let packed = t5.encode_batch(&[&PROMPT, &long]).unwrap();
    assert_eq!(alone.to_f32_vec().unwrap(), packed[0].to_f32_vec().unwrap());
}

fn tokenizer() -> T5Tokenizer {
    T5Tokenizer::open(fixture("tokenizer/tokenizer.json")).unwrap()
}

/// The fixture's vocabulary: 0 <pad>, 1 </s>, 2 <unk>, 3 ▁, 4 ▁a, 5 ▁the, 6 ▁cat, 7 ▁dog,
/// 8 ▁sit, 9 ▁on, 10 ▁mat, 11 s, then single letters c a t d o g m i n e (12..=21).
fn expected_ids() -> [(&'static str, Vec<u32>); 6] {
    [
        ("a cat sits on the mat", vec![4, 6, 8, 11, 9, 5, 10, 1]),
        ("the   dog", vec![5, 7, 1]),
        ("cats", vec![6, 11, 1]),
        ("zoo", vec![3, 2, 16, 16, 1]),
        ("", vec![1]),
        ("</s>", vec![1, 1]),
    ]
}

#[test]
fn tokenizer_appends_eos() {
    let tok = tokenizer();
    assert_eq!(tok.eos_id(), 1);
    for (text, ids) in expected_ids() {
        assert_eq!(tok.encode(text).unwrap(), Encoded { ids, truncated: false }, "{text:?}");
    }
    // The same without the file's post-processor: the framing is ours.
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/tokenizer.json")).unwrap()).unwrap();
    json["post_processor"] = Value::Null;
    let dir = temp_dir("tokenizer");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let bare = T5Tokenizer::open(&path).unwrap();
    for (text, ids) in expected_ids() {
        assert_eq!(bare.encode(text).unwrap().ids, ids, "{text:?} without a post-processor");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_truncates_to_512_tokens_or_the_models_limit() {
    let tok = tokenizer();
    let fits = tok.encode(&"a ".repeat(MAX_TOKENS - 1)).unwrap();
    assert_eq!((fits.ids.len(), fits.truncated), (MAX_TOKENS, false));
    let long = tok.encode(&"a ".repeat(600)).unwrap();
    assert!(long.truncated);
    assert_eq!(long.ids.len(), MAX_TOKENS);
    assert!(long.ids[..MAX_TOKENS - 1].iter().all(|&i| i == 4));
    assert_eq!(long.ids[MAX_TOKENS - 1], 1);
    // A model that reads fewer (its null text's rows): cut there, EOS still last; never more.
    let short = tokenizer().with_max_tokens(8);
    assert_eq!(short.encode(&"a ".repeat(7)).unwrap(), Encoded { ids: vec![4, 4, 4, 4, 4, 4, 4, 1], truncated: false });
    assert_eq!(short.encode(&"a ".repeat(9)).unwrap(), Encoded { ids: vec![4, 4, 4, 4, 4, 4, 4, 1], truncated: true });
    assert_eq!(tokenizer().with_max_tokens(4096).max_tokens(), MAX_TOKENS);
}

#[test]
fn bad_tokenizer_files_are_named() {
    let err = T5Tokenizer::open(fixture("tokenizer/missing.json")).err().unwrap().to_string();
    assert!(err.contains("missing.json"), "{err}");
    let err = T5Tokenizer::open(fixture("devA/t5_config.json")).err().unwrap().to_string();
    assert!(err.contains("t5_config.json") && err.contains("tokenizer.json"), "{err}");
    // Files the tokenizers crate panics on (fuzzing found them): a cut file, and a decoder of the
    // wrong shape (the decoder is never used: prompts are only encoded).
    let dir = std::env::temp_dir().join(format!("infinity-t5-bad-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(fixture("tokenizer/tokenizer.json")).unwrap();
    let cut = dir.join("cut.json");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let err = T5Tokenizer::open(&cut).err().unwrap().to_string();
    assert!(err.contains("cut.json") && err.contains("not a valid tokenizer.json"), "{err}");
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["decoder"] = serde_json::json!(5);
    let odd = dir.join("odd-decoder.json");
    std::fs::write(&odd, json.to_string()).unwrap();
    assert_eq!(T5Tokenizer::open(&odd).unwrap().encode("a").unwrap(), tokenizer().encode("a").unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

/// A T5 small enough for a finite-difference check of every parameter element.
fn tiny_config() -> T5Config {
    T5Config {
        vocab_size: 12,
        d_model: 8,
        d_kv: 3,
        num_heads: 2,
        d_ff: 10,
        num_layers: 2,
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 12,
        layer_norm_epsilon: 1e-6,
    }
}

/// The encoder trains with the transformer: the gradients of every parameter (the shared
/// relative position bias included) against finite differences of packed prompts' features.
#[test]
fn encoder_gradients_match_finite_differences() {
    use infinity::autograd::gradcheck::GradCheck;
    use infinity::autograd::index::concat;
    use infinity::autograd::{Tracked, Var};

    let config = tiny_config();
    let params = T5Encoder::parameters(&T5Encoder::random_weights(&config, 3).unwrap(), &config, "te.").unwrap();
    let names: Vec<String> = params.iter().map(|(n, _)| n.to_string()).collect();
    let inputs: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    assert!(names.iter().all(|n| n.starts_with("te.")) && names.len() == 2 + 9 * 2 + 1);
    let prompts: [&[u32]; 2] = [&[4, 7, 7, 1], &[9, 1, 3, 5, 11, 2, 1]];
    let report = GradCheck::default()
        .check(
            |vars| {
                let tracked = Tracked::from_vars(names.iter().cloned().zip(vars.iter().cloned()).collect());
                let out = T5Encoder::on_tape(config.clone(), &tracked, "te.")?.encode_vars(&prompts)?;
                concat(&out.iter().collect::<Vec<&Var>>(), 0)
            },
            &inputs,
        )
        .unwrap();
    assert!(report.passed(), "{report}");
}

/// The trained parameters read back as an encoder that gives the same features.
#[test]
fn trained_parameters_load_as_an_encoder() {
    let config = tiny_config();
    let weights = T5Encoder::random_weights(&config, 5).unwrap();
    let params = T5Encoder::parameters(&weights, &config, "text_encoder.").unwrap();
    let stripped: Vec<(String, Tensor)> =
        params.iter().map(|(n, t)| (n.strip_prefix("text_encoder.").unwrap().to_string(), t.clone())).collect();
    let back =
        T5Encoder::with_weights(&Weights::new("<trained>", stripped, Default::default()).unwrap(), config.clone());
    let ids = [3u32, 8, 1];
    let want = T5Encoder::with_weights(&weights, config).unwrap().encode(&ids).unwrap();
    assert!(back.unwrap().encode(&ids).unwrap().same_values(&want));
}

/// A Unigram tokenizer trained on captions frames prompts as flan-t5's does (specials at T5's
/// ids, EOS appended), lower-cases, and still tokenises words it never saw.
#[test]
fn trained_tokenizer_frames_prompts_like_t5() {
    use infinity::models::t5::train_tokenizer;

    let captions: Vec<String> = ["red apple", "green apple emoji", "a red fox", "Fox face", "grinning face"]
        .iter()
        .cycle()
        .take(50)
        .map(|s| s.to_string())
        .collect();
    let json = train_tokenizer(&captions, 40).unwrap();
    let path = temp_dir("trained-tokenizer").join("tokenizer.json");
    std::fs::write(&path, &json).unwrap();
    let tok = T5Tokenizer::open(&path).unwrap();
    assert_eq!(tok.eos_id(), 1);
    let v: Value = serde_json::from_str(&json).unwrap();
    let vocab = v["model"]["vocab"].as_array().unwrap();
    // A corpus this small has fewer pieces than asked for; never more.
    assert!((4..=40).contains(&vocab.len()), "{} pieces", vocab.len());
    let specials: Vec<&str> = vocab[..3].iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(specials, ["<pad>", "</s>", "<unk>"]);
    let red = tok.encode("RED Fox").unwrap();
    assert_eq!(red, tok.encode("red fox").unwrap(), "lower-cased");
    assert_eq!(*red.ids.last().unwrap(), 1);
    assert!(tok.encode("zebra").unwrap().ids.len() >= 2, "unseen words still tokenise");
    assert!(train_tokenizer(&captions, 3).is_err(), "no room beyond the special tokens");
}
