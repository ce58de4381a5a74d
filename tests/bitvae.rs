//! BitVAE parity with the official code on the dev goldens (devA: 256×256, d = 32; devB:
//! 176×352, d = 16, non-integer resize ratios; devC: the 8B's kind, patch 8, d = 14, its
//! scales twice the token grids): encoder latent, multi-scale bits, summed codes and decoded
//! image; plus the loader's handling of key forms and bad checkpoints.

mod common;

use common::{assert_golden, assert_quantized_like_golden, fixture, open, vae_image_input};
use infinity::models::bitvae::quantizer::{quantize, sum_codes};
use infinity::models::bitvae::{BitVae, BitVaeConfig};
use infinity::models::infinity::TokenLayout;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::io::save_safetensors;
use infinity::runtime::{Error, Tensor};

struct Set {
    name: &'static str,
    ratio: f64,
    layout: TokenLayout,
}

const SETS: [Set; 3] = [
    Set { name: "devA", ratio: 1.0, layout: TokenLayout::Plain },
    Set { name: "devB", ratio: 0.5, layout: TokenLayout::Plain },
    Set { name: "devC", ratio: 1.0, layout: TokenLayout::Patchify },
];

/// The VAE's scales: the template's token grids, doubled for a patch-8 VAE.
fn grids(set: &Set) -> Vec<(usize, usize)> {
    set.layout.vae_grids(&Template::exact(set.ratio).unwrap().schedule(PixelBudget::P006M).grids)
}

#[test]
fn detects_the_dev_configurations() {
    for (set, (d, levels, patch)) in SETS.iter().zip([(32, 5, 16), (16, 5, 16), (14, 4, 8)]) {
        let vae = BitVae::open(fixture(&format!("{}/vae.safetensors", set.name))).unwrap();
        let want = BitVaeConfig { base_ch: 32, ch_mult: vec![1; levels], num_res_blocks: 1, z_channels: d, patch };
        assert_eq!(vae.config, want, "{}", set.name);
        assert_eq!(TokenLayout::of_vae_patch(patch), Some(set.layout));
    }
}

#[test]
fn encoder_matches_golden() {
    for set in &SETS {
        let vae = BitVae::open(fixture(&format!("{}/vae.safetensors", set.name))).unwrap();
        let golden = open(&format!("{}/vae_golden.safetensors", set.name));
        let z = vae.encode(&vae_image_input(&golden)).unwrap();
        assert_golden(&format!("{} encoder latent", set.name), &z, golden.get("encoder_latent").unwrap(), 1e-4);
    }
}

#[test]
fn multiscale_bits_match_golden() {
    for set in &SETS {
        let golden = open(&format!("{}/vae_golden.safetensors", set.name));
        let q = quantize(golden.get("encoder_latent").unwrap(), &grids(set)).unwrap();
        assert_quantized_like_golden(set.name, &q, &golden, &grids(set));
    }
}

#[test]
fn decoder_matches_golden() {
    for set in &SETS {
        let vae = BitVae::open(fixture(&format!("{}/vae.safetensors", set.name))).unwrap();
        let golden = open(&format!("{}/vae_golden.safetensors", set.name));
        let img = vae.decode(golden.get("summed_quantized_latent").unwrap()).unwrap();
        assert_golden(&format!("{} decoded", set.name), &img, golden.get("decoded").unwrap(), 1e-4);
    }
}

/// Rewrites a checkpoint with `edit` applied to its (key, tensor) list and loads it.
fn load_edited(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> Result<BitVae, Error> {
    let w = open("devB/vae.safetensors");
    let mut tensors: Vec<(String, Tensor)> = w.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
    edit(&mut tensors);
    let dir =
        std::env::temp_dir().join(format!("infinity-bitvae-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vae.safetensors");
    save_safetensors(&path, tensors.iter().map(|(k, t)| (k.as_str(), t)), &Default::default()).unwrap();
    let out = BitVae::open(&path);
    std::fs::remove_dir_all(&dir).ok();
    out
}

#[test]
fn flat_key_form_loads_identically() {
    let flat = load_edited(|ts| {
        for (k, _) in ts.iter_mut() {
            *k = infinity::models::bitvae::config::flat_key(k);
        }
    })
    .unwrap();
    let native = BitVae::open(fixture("devB/vae.safetensors")).unwrap();
    let golden = open("devB/vae_golden.safetensors");
    let z = golden.get("encoder_latent").unwrap();
    assert!(flat.decode(z).unwrap().same_values(&native.decode(z).unwrap()));
}

#[test]
fn bad_checkpoints_are_refused_naming_the_key() {
    let missing = load_edited(|ts| ts.retain(|(k, _)| k != "decoder.up.2.block.1.conv2.conv.bias")).err().unwrap();
    assert!(missing.to_string().contains("decoder.up.2.block.1.conv2.conv.bias"), "{missing}");

    let reshaped = load_edited(|ts| {
        let e = ts.iter_mut().find(|(k, _)| k == "decoder.mid.block_1.norm1.norm.weight").unwrap();
        e.1 = Tensor::zeros(&[64], infinity::runtime::DType::F32);
    })
    .err()
    .unwrap();
    assert!(reshaped.to_string().contains("decoder.mid.block_1.norm1.norm.weight"), "{reshaped}");

    let extra = load_edited(|ts| {
        ts.push((
            "decoder.mid.attn_1.q.conv.weight".into(),
            Tensor::zeros(&[32, 32, 1, 1], infinity::runtime::DType::F32),
        ))
    })
    .err()
    .unwrap();
    assert!(extra.to_string().contains("decoder.mid.attn_1.q.conv.weight"), "{extra}");

    let not_a_vae = BitVae::open(fixture("scale_schedules.json")).err().unwrap();
    assert!(not_a_vae.to_string().contains("scale_schedules.json"), "{not_a_vae}");
}

/// Every official schedule (15 templates × 0.06M / 0.25M / 1M): bits per scale have the grid's
/// shape, and codes rebuilt from the bits sum to the quantizer's own accumulation.
#[test]
fn quantizer_handles_every_official_schedule() {
    use infinity::models::schedule::TEMPLATES;
    use infinity::runtime::rng::Philox;
    let d = 4;
    for &t in &TEMPLATES {
        for pn in [PixelBudget::P006M, PixelBudget::P025M, PixelBudget::P1M] {
            let grids = Template::exact(t).unwrap().schedule(pn).grids;
            let (h, w) = *grids.last().unwrap();
            let z = Tensor::from_vec(Philox::new(3).normal(d * h * w), &[1, d, h, w]).unwrap();
            let q = quantize(&z, &grids).unwrap();
            for (s, &(gh, gw)) in q.scales.iter().zip(&grids) {
                assert_eq!(s.bits.shape(), &[1, gh, gw, d], "template {t} {pn}");
            }
            let bits: Vec<Tensor> = q.scales.into_iter().map(|s| s.bits).collect();
            let rebuilt = sum_codes(&bits, (h, w)).unwrap();
            assert!(common::max_abs_diff(&rebuilt, &q.summed) <= 1e-6, "template {t} {pn}");
        }
    }
}

#[test]
fn config_json_must_fit_the_checkpoint() {
    let path = fixture("devB/vae.safetensors");
    let detected = BitVae::open(&path).unwrap().config;
    assert_eq!(BitVae::open_with_config(&path, detected.clone()).unwrap().config, detected);
    let wrong = BitVaeConfig { z_channels: 32, ..detected };
    let err = BitVae::open_with_config(&path, wrong).err().unwrap().to_string();
    assert!(err.contains("encoder.conv_out.conv.weight") && err.contains("[16, 32, 3, 3]"), "{err}");
}

#[test]
fn pth_and_safetensors_give_the_same_model() {
    let golden = open("devA/vae_golden.safetensors");
    let z = golden.get("summed_quantized_latent").unwrap();
    let a = BitVae::open(fixture("devA/vae.safetensors")).unwrap().decode(z).unwrap();
    let b = BitVae::open(fixture("devA/vae.pth")).unwrap().decode(z).unwrap();
    assert!(a.same_values(&b));
}
