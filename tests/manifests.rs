//! The state dicts our model configurations imply, name for name and shape for shape, against
//! the manifests of the real released checkpoints (built by the official code on the meta
//! device; `fixtures/manifests`), VAR's included.

use std::collections::BTreeMap;

use infinity::models::bitvae::BitVaeConfig;
use serde_json::Value;

/// key → (shape, is_buffer) from a manifest.
fn manifest(json: &str) -> (Value, BTreeMap<String, (Vec<usize>, bool)>) {
    let v: Value = serde_json::from_str(json).unwrap();
    let entries = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (t["key"].as_str().unwrap().to_string(), (shape, t["kind"] == "buffer"))
        })
        .collect();
    (v, entries)
}

#[track_caller]
fn assert_same_entries(
    name: &str,
    ours: BTreeMap<String, (Vec<usize>, bool)>,
    theirs: &BTreeMap<String, (Vec<usize>, bool)>,
) {
    for (k, v) in theirs {
        assert_eq!(ours.get(k), Some(v), "{name}: manifest entry '{k}'");
    }
    for k in ours.keys() {
        assert!(theirs.contains_key(k), "{name}: we create '{k}', the release has no such entry");
    }
}

#[test]
fn bitvae_presets_match_the_release_manifests() {
    let cases = [
        ("d16", include_str!("fixtures/manifests/vae_d16.json")),
        ("d24", include_str!("fixtures/manifests/vae_d24.json")),
        ("d32", include_str!("fixtures/manifests/vae_d32.json")),
        ("d64", include_str!("fixtures/manifests/vae_d64.json")),
        ("d14_patchify", include_str!("fixtures/manifests/vae_d14_patchify.json")),
    ];
    for (preset, json) in cases {
        let (header, theirs) = manifest(json);
        let config = BitVaeConfig::preset(preset).unwrap();
        let entries = config.entries();
        let ours: BTreeMap<_, _> = entries.iter().map(|e| (e.key.clone(), (e.shape.clone(), e.buffer))).collect();
        assert_eq!(ours.len(), entries.len(), "{preset}: duplicate keys");
        assert_same_entries(preset, ours, &theirs);
        let params: u64 = entries.iter().filter(|e| !e.buffer).map(|e| e.shape.iter().product::<usize>() as u64).sum();
        assert_eq!(params, header["num_params"].as_u64().unwrap(), "{preset}: parameter count");
    }
}

#[test]
fn infinity_presets_match_the_release_manifests() {
    use infinity::models::infinity::InfinityConfig;
    let cases = [
        ("layer12", include_str!("fixtures/manifests/infinity_layer12.json")),
        ("layer16", include_str!("fixtures/manifests/infinity_layer16.json")),
        ("layer24", include_str!("fixtures/manifests/infinity_layer24.json")),
        ("layer32", include_str!("fixtures/manifests/infinity_layer32.json")),
        ("layer40", include_str!("fixtures/manifests/infinity_layer40.json")),
        ("layer48", include_str!("fixtures/manifests/infinity_layer48.json")),
        ("2b", include_str!("fixtures/manifests/infinity_2b.json")),
        ("8b", include_str!("fixtures/manifests/infinity_8b.json")),
    ];
    for (preset, json) in cases {
        let (header, theirs) = manifest(json);
        let entries = InfinityConfig::preset(preset).unwrap().entries();
        let ours: BTreeMap<_, _> = entries.iter().map(|e| (e.key.clone(), (e.shape.clone(), e.buffer))).collect();
        assert_eq!(ours.len(), entries.len(), "{preset}: duplicate keys");
        assert_same_entries(preset, ours, &theirs);
        let params: u64 = entries.iter().filter(|e| !e.buffer).map(|e| e.shape.iter().product::<usize>() as u64).sum();
        assert_eq!(params, header["num_params"].as_u64().unwrap(), "{preset}: parameter count");
    }
}

/// VAR: the VQVAE and d16–d36 (d36 with shared AdaLN, 512²): every key and shape in the
/// release's own order, buffers included, the parameter counts, and detection from the shapes.
#[test]
fn var_presets_match_the_release_manifests() {
    use infinity::models::var::{VarConfig, VqVaeConfig};
    let ordered = |json: &str| -> Vec<(String, Vec<usize>, bool)> {
        let v: Value = serde_json::from_str(json).unwrap();
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                (t["key"].as_str().unwrap().to_string(), shape, t["kind"] == "buffer")
            })
            .collect()
    };
    let check = |name: &str, json: &str, entries: Vec<infinity::models::autoencoder::Entry>| {
        let theirs = ordered(json);
        let ours: Vec<_> = entries.iter().map(|e| (e.key.clone(), e.shape.clone(), e.buffer)).collect();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "{name}: entry {i}");
        }
        assert_eq!(ours.len(), theirs.len(), "{name}: entry count");
        let (header, _) = manifest(json);
        let params: u64 = entries.iter().filter(|e| !e.buffer).map(|e| e.shape.iter().product::<usize>() as u64).sum();
        assert_eq!(params, header["num_params"].as_u64().unwrap(), "{name}: parameter count");
        theirs.into_iter().map(|(k, s, _)| (k, s)).collect::<BTreeMap<_, _>>()
    };
    let vae_json = include_str!("fixtures/manifests/var/vae_ch160v4096z32.json");
    let shapes = check("vae", vae_json, VqVaeConfig::release().entries());
    assert_eq!(VqVaeConfig::detect(&shapes).unwrap(), VqVaeConfig::release());
    let cases = [
        ("d16", include_str!("fixtures/manifests/var/var_d16.json")),
        ("d20", include_str!("fixtures/manifests/var/var_d20.json")),
        ("d24", include_str!("fixtures/manifests/var/var_d24.json")),
        ("d30", include_str!("fixtures/manifests/var/var_d30.json")),
        ("d36", include_str!("fixtures/manifests/var/var_d36.json")),
    ];
    for (preset, json) in cases {
        let config = VarConfig::preset(preset).unwrap();
        let shapes = check(preset, json, config.entries());
        assert_eq!(VarConfig::detect(&shapes).unwrap(), config, "{preset}");
    }
}

/// Open-MAGVIT2: the released tokenizers' encoder/decoder and the B/L/XL generators' GPT (and
/// their first stage) name for name and shape for shape, with the inference parameter counts.
#[test]
fn magvit2_presets_match_the_release_manifests() {
    use infinity::models::magvit2::{ArConfig, TokenizerConfig};
    let entries_of = |json: &str, group: &dyn Fn(&str) -> Option<String>| -> BTreeMap<String, Vec<usize>> {
        let v: Value = serde_json::from_str(json).unwrap();
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| {
                let key = group(t["group"].as_str().unwrap())?;
                let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                Some((
                    format!(
                        "{key}{}",
                        t["key"].as_str().unwrap().strip_prefix(&key).unwrap_or(t["key"].as_str().unwrap())
                    ),
                    shape,
                ))
            })
            .collect()
    };
    let ours = |entries: Vec<infinity::models::autoencoder::Entry>, prefix: &str| -> BTreeMap<String, Vec<usize>> {
        entries.into_iter().map(|e| (format!("{prefix}{}", e.key), e.shape)).collect()
    };
    let tokenizers = [
        ("imagenet_128_L", include_str!("fixtures/manifests/om2/imagenet_lfqgan_128_L.json")),
        ("imagenet_256_L", include_str!("fixtures/manifests/om2/imagenet_lfqgan_256_L.json")),
        ("pretrain_16384", include_str!("fixtures/manifests/om2/pretrain_lfqgan_256_16384.json")),
        ("pretrain_262144", include_str!("fixtures/manifests/om2/pretrain_lfqgan_256_262144.json")),
    ];
    for (preset, json) in tokenizers {
        let theirs = entries_of(json, &|g| matches!(g, "encoder" | "decoder").then(String::new));
        assert!(theirs.len() > 250, "{preset}: {} entries", theirs.len());
        let config = TokenizerConfig::preset(preset).unwrap();
        assert_eq!(ours(config.entries(), ""), theirs, "{preset}");
        let (header, _) = manifest(json);
        let n: usize = config.entries().iter().map(|e| e.shape.iter().product::<usize>()).sum();
        assert_eq!(n as u64, header["derived"]["inference_params"].as_u64().unwrap(), "{preset}");
    }
    let ars = [
        ("B", include_str!("fixtures/manifests/om2/imagenet_conditional_llama_B.json")),
        ("L", include_str!("fixtures/manifests/om2/imagenet_conditional_llama_L.json")),
        ("XL", include_str!("fixtures/manifests/om2/imagenet_conditional_llama_XL.json")),
    ];
    for (preset, json) in ars {
        let theirs = entries_of(json, &|g| (g == "transformer").then(String::new));
        let config = ArConfig::preset(preset).unwrap();
        assert_eq!(ours(config.entries(), "transformer."), theirs, "{preset}");
        let stage = entries_of(json, &|g| g.starts_with("first_stage_model").then(String::new));
        assert_eq!(
            ours(TokenizerConfig::preset("imagenet_256_L").unwrap().entries(), "first_stage_model."),
            stage,
            "{preset}"
        );
        let (header, _) = manifest(json);
        let n: usize = config.entries().iter().map(|e| e.shape.iter().product::<usize>()).sum();
        assert_eq!(n as u64, header["derived"]["transformer_params"].as_u64().unwrap(), "{preset}");
    }
}
