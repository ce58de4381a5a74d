//! VAR parity with the official code on devV (a tiny random VQVAE + VAR on the real 10-scale
//! 256² schedule): the VQVAE's features, per-scale tokens, f̂ and decoded image; the teacher-
//! forced logits; greedy CFG generation scale by scale and free-running; `.pth` and
//! safetensors alike; and the loader's refusals.

mod common;

use common::{assert_golden, fixture, open};
use infinity::models::var::config::{PATCH_NUMS_256, phi_table};
use infinity::models::var::{VarTransformer, VqVae, VqVaeConfig};
use infinity::runtime::Tensor;
use infinity::runtime::io::Weights;

/// The VQVAE input from a golden's u8 images (B, H, W, 3): t = u8/255, x = t + t − 1, NCHW.
fn image_input(golden: &Weights) -> Tensor {
    let img = golden.get("image_u8").unwrap();
    let v: Vec<f32> = img.to_vec::<u8>().unwrap().into_iter().map(|p| p as f32 / 255.0).map(|t| t + t - 1.0).collect();
    let s = img.shape();
    Tensor::from_vec(v, s).unwrap().permute(&[0, 3, 1, 2]).unwrap().contiguous().unwrap()
}

fn idx(golden: &Weights, key: &str) -> Vec<i64> {
    golden.get(key).unwrap().to_vec::<i64>().unwrap()
}

#[test]
fn vqvae_detects_the_dev_configuration_and_the_phi_table() {
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let c = &vae.config;
    assert_eq!((c.net.base_ch, c.net.ch_mult.clone(), c.net.num_res_blocks), (32, vec![1; 5], 1));
    assert_eq!((c.vocab, c.cvae(), c.phis, c.net.attention), (64, 16, 4, true));
    let golden = open("devV/vqvae_golden.safetensors");
    let want: Vec<usize> = idx(&golden, "phi_index").into_iter().map(|i| i as usize).collect();
    assert_eq!(phi_table(c.phis, 10), want);
    assert_eq!(VqVaeConfig::release().entries().len(), 324);
}

#[test]
fn vqvae_matches_golden_stage_by_stage() {
    let golden = open("devV/vqvae_golden.safetensors");
    for file in ["devV/vae.safetensors", "devV/vae.pth"] {
        let vae = VqVae::open(fixture(file)).unwrap();
        let f = vae.features(&image_input(&golden)).unwrap();
        assert_golden(&format!("{file} f"), &f, golden.get("f").unwrap(), 1e-4);
        // Per scale from the golden f: the tokens equal (no VQ gap below 1e-4 in this set).
        let (indices, f_hat) = vae.quantize(golden.get("f").unwrap(), &PATCH_NUMS_256).unwrap();
        for (si, got) in indices.iter().enumerate() {
            assert_eq!(got.to_vec::<i64>().unwrap(), idx(&golden, &format!("idx_scale{si:02}")), "{file} scale {si}");
        }
        assert_golden(&format!("{file} f_hat"), &f_hat, golden.get("f_hat").unwrap(), 1e-4);
        // Each scale's contribution: bicubic up, then φ.
        for si in [0, 4, 8, 9] {
            let pn = PATCH_NUMS_256[si];
            let h = vae.scale_contribution(&indices[si], pn, si, 10, 16).unwrap();
            assert_golden(&format!("{file} h scale {si}"), &h, golden.get(&format!("h_scale{si:02}")).unwrap(), 1e-4);
        }
        let decoded = vae.decode(golden.get("f_hat").unwrap()).unwrap();
        let row0 = decoded.narrow(0, 0, 1).unwrap();
        assert_golden(&format!("{file} decoded"), &row0, golden.get("decoded_b0").unwrap(), 2e-4);
    }
}

#[test]
fn vqvae_encodes_images_end_to_end() {
    let golden = open("devV/vqvae_golden.safetensors");
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let (indices, _) = vae.encode(&image_input(&golden), &PATCH_NUMS_256).unwrap();
    for (si, got) in indices.iter().enumerate() {
        assert_eq!(got.to_vec::<i64>().unwrap(), idx(&golden, &format!("idx_scale{si:02}")), "scale {si}");
    }
    let image = vae.decode_indices(&indices, &PATCH_NUMS_256).unwrap();
    assert_golden("decoded from tokens", &image.narrow(0, 0, 1).unwrap(), golden.get("decoded_b0").unwrap(), 2e-4);
}

fn labels(golden: &Weights) -> Vec<usize> {
    idx(golden, "label_B").into_iter().map(|l| l as usize).collect()
}

#[test]
fn teacher_forced_logits_match_golden() {
    let golden = open("devV/var_forward_golden.safetensors");
    for file in ["devV/var.safetensors", "devV/var.pth"] {
        let var = VarTransformer::open(fixture(file)).unwrap();
        assert_eq!((var.config.depth, var.config.embed_dim, var.config.num_heads, var.config.vocab), (2, 64, 2, 64));
        let logits = var.teacher_forced(&labels(&golden), golden.get("x_BLCv_wo_first_l").unwrap()).unwrap();
        assert_golden(&format!("{file} logits"), logits.value(), golden.get("logits").unwrap(), 1e-4 * 10.3);
    }
}

#[test]
fn teacher_input_matches_golden() {
    let (vq, golden) = (open("devV/vqvae_golden.safetensors"), open("devV/var_forward_golden.safetensors"));
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let indices: Vec<Tensor> = (0..10).map(|si| vq.get(&format!("idx_scale{si:02}")).unwrap().clone()).collect();
    let input = vae.teacher_input(&indices, &PATCH_NUMS_256).unwrap();
    assert_golden("teacher input", &input, golden.get("x_BLCv_wo_first_l").unwrap(), 1e-4);
}
