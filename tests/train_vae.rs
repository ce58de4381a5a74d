//! BitVAE training: the straight-through multi-scale quantizer passes the gradient the
//! estimator defines, a tiny VAE learns to reconstruct through the library step, its PatchGAN
//! discriminator learns alongside, and
//! `infinity-train vae` end to end on 256² images with the devA tokenizer — the same command
//! gives the same metrics, a run stopped at a checkpoint and re-run continues bit-identically,
//! a from-scratch run leaves a checkpoint `BitVae::open` reads, a run with the discriminator
//! resumes bit-identically too, and bad input is one line on
//! stderr with exit code 2 before any work.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;
use infinity::autograd::elementwise::mul;
use infinity::autograd::optim::official_groups;
use infinity::autograd::reduce::sum;
use infinity::autograd::{AdamW, AdamWConfig, Tape, Var};
use infinity::cuda::testing::executors;
use infinity::models::bitvae::quantizer::{quantize, quantize_straight_through};
use infinity::models::bitvae::{BitVae, BitVaeConfig};
use infinity::models::image::save_png;
use infinity::models::train_vae::{
    Adversary, Discriminator, GanStats, VaeLossWeights, VaeStepSettings, VaeStepStats, vae_gan_train_step,
    vae_train_step,
};
use infinity::runtime::rng::Philox;
use infinity::runtime::{Device, Tensor};
use serde_json::json;

/// d(Σ w · summed)/d(latent) for `grids` on a (B, d, 2, 2) latent.
fn straight_through_grad(latent: &Tensor, w: &Tensor, grids: &[(usize, usize)]) -> (Vec<f32>, Tensor) {
    let tape = Tape::new();
    let z = tape.leaf(latent.clone()).unwrap();
    let q = quantize_straight_through(&z, grids).unwrap();
    let loss = sum(&mul(&q.summed, &Var::constant(w.clone())).unwrap(), &[], false).unwrap();
    let grads = tape.backward(&loss).unwrap();
    (grads.get(&z).unwrap().to_f32_vec().unwrap(), q.summed.into_value())
}

#[test]
fn the_straight_through_quantizer_passes_each_scales_gradient_to_the_latent() {
    let (b, d) = (2, 3);
    let mut rng = Philox::new(7);
    let latent = Tensor::from_vec(rng.normal(b * d * 4), &[b, d, 2, 2]).unwrap();
    let w = Tensor::from_vec(rng.normal(b * d * 4), &[b, d, 2, 2]).unwrap();
    let wv = w.to_f32_vec().unwrap();

    // Single scale: the codes' gradient is the latent's.
    let (grad, _) = straight_through_grad(&latent, &w, &[(2, 2)]);
    assert_eq!(grad, wv);

    // Scales 1×1 then 2×2: the 1×1 code reaches every position through the (constant)
    // bilinear upsampling and the area mean, so it adds Σw/4 of its plane; the 2×2 code adds w.
    let (grad, summed) = straight_through_grad(&latent, &w, &[(1, 1), (2, 2)]);
    for (plane, (g, w)) in grad.chunks(4).zip(wv.chunks(4)).enumerate() {
        let spread = w.iter().sum::<f32>() / 4.0;
        for (got, wi) in g.iter().zip(w) {
            assert!((got - (wi + spread)).abs() < 1e-6, "plane {plane}: {got} vs {}", wi + spread);
        }
    }
    // The forward is exactly the inference quantizer's.
    assert_eq!(
        summed.to_f32_vec().unwrap(),
        quantize(&latent, &[(1, 1), (2, 2)]).unwrap().summed.to_f32_vec().unwrap()
    );
}

/// The tiny VAE's configuration and two smooth 16×16 images (latent 8×8, four scales).
fn tiny_vae() -> (BitVaeConfig, Tensor) {
    let config = BitVaeConfig { base_ch: 32, ch_mult: vec![1, 1], num_res_blocks: 1, z_channels: 8, patch: 2 };
    let (h, w) = (16, 16);
    let pixels: Vec<f32> = (0..2 * 3 * h * w)
        .map(|i| {
            let (n, c, y, x) = (i / (3 * h * w), i / (h * w) % 3, i / w % h, i % w);
            (0.3 * (x as f32 * (0.3 + 0.2 * c as f32) + y as f32 * 0.25 * (n as f32 + 1.0)).sin()) + 0.1 * c as f32
        })
        .collect();
    (config, Tensor::from_vec(pixels, &[2, 3, h, w]).unwrap())
}

const TINY_GRIDS: [(usize, usize); 4] = [(1, 1), (2, 2), (4, 4), (8, 8)];

#[test]
fn a_tiny_vae_learns_to_reconstruct() {
    let (config, images) = tiny_vae();
    let mut params = BitVae::parameters(&BitVae::random_weights(&config, 1).unwrap(), &config).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig::default(), official_groups(&params)).unwrap();
    let grids = TINY_GRIDS;
    let settings = VaeStepSettings { lr: 2e-3, weight_decay: 0.0, clip: 1.0, losses: VaeLossWeights::default() };
    let recon: Vec<f32> = (0..30)
        .map(|_| {
            let stats = vae_train_step(&mut params, &mut optimizer, &config, &images, &grids, settings).unwrap();
            assert!(stats.loss.is_finite() && stats.grad_norm.is_finite(), "{stats:?}");
            stats.reconstruction
        })
        .collect();
    let (first, last) = (recon[0], recon[25..].iter().sum::<f32>() / 5.0);
    assert!(last < 0.6 * first, "reconstruction {first} → {last}: {recon:?}");
}

#[test]
fn the_discriminator_learns_alongside_the_tiny_vae() {
    let (config, images) = tiny_vae();
    let mut params = BitVae::parameters(&BitVae::random_weights(&config, 1).unwrap(), &config).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig::default(), official_groups(&params)).unwrap();
    let mut discriminator = Discriminator::new(8, 3, AdamWConfig::default()).unwrap();
    let before: Vec<Vec<f32>> = discriminator.params.iter().map(|(_, t)| t.to_f32_vec().unwrap()).collect();
    let settings = VaeStepSettings { lr: 2e-3, weight_decay: 0.0, clip: 1.0, losses: VaeLossWeights::default() };
    for weight in [0.0, 0.1, 0.1] {
        let adversary = Adversary { discriminator: &mut discriminator, weight };
        let (stats, gan) =
            vae_gan_train_step(&mut params, &mut optimizer, &config, &images, &TINY_GRIDS, settings, adversary)
                .unwrap();
        assert!(stats.loss.is_finite() && gan.disc_loss.is_finite() && gan.gen_adv.is_finite(), "{stats:?} {gan:?}");
        // Hinge terms are non-negative; near init both sit close to 1.
        assert!(gan.disc_loss >= 0.0, "{gan:?}");
        let no_adversary = stats.reconstruction
            + VaeLossWeights::default().commitment * stats.commitment
            + VaeLossWeights::default().entropy / VaeLossWeights::default().inv_temperature * stats.entropy;
        let expected = no_adversary + weight * gan.gen_adv;
        assert!((stats.loss - expected).abs() < 1e-4, "loss {} vs {expected}", stats.loss);
    }
    for ((name, t), old) in discriminator.params.iter().zip(&before) {
        assert_eq!(discriminator.optimizer.step_count(name), 3, "{name}");
        // The last bias shifts both hinge terms alike: while every logit is inside the
        // margin, its gradients from the real and the fake half cancel exactly.
        if name != "disc.3.bias" {
            assert_ne!(&t.to_f32_vec().unwrap(), old, "{name} did not change");
        }
    }
}

/// Two steps of the tiny VAE with its discriminator on `device`: the stats, and the VAE's and
/// the discriminator's parameters after them, on the host.
fn two_gan_steps(device: &Device) -> (Vec<(VaeStepStats, GanStats)>, Vec<Vec<f32>>) {
    let (config, images) = tiny_vae();
    let params = BitVae::parameters(&BitVae::random_weights(&config, 1).unwrap(), &config).unwrap();
    let mut params = params.to_device(device).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig::default(), official_groups(&params)).unwrap();
    let mut discriminator = Discriminator::new(8, 3, AdamWConfig::default()).unwrap();
    discriminator.params = discriminator.params.to_device(device).unwrap();
    let settings = VaeStepSettings { lr: 2e-3, weight_decay: 0.01, clip: 1.0, losses: VaeLossWeights::default() };
    let stats = (0..2)
        .map(|_| {
            let adversary = Adversary { discriminator: &mut discriminator, weight: 0.1 };
            vae_gan_train_step(&mut params, &mut optimizer, &config, &images, &TINY_GRIDS, settings, adversary).unwrap()
        })
        .collect();
    let after = params.iter().chain(discriminator.params.iter()).map(|(_, t)| {
        assert_eq!(t.device(), *device, "the parameters stay on the device");
        t.to_f32_vec().unwrap()
    });
    (stats, after.collect())
}

/// The VAE trainer's step (with the discriminator's) on every executor against the CPU's.
/// The device's convolutions take bf16 operands (relative error 2⁻⁸ per product), so the
/// first step's losses agree to 2⁻⁶ relative; the quantizer's bits, and with them the
/// commitment and entropy terms, can differ where a latent sits within that error of zero,
/// which the entropy's sharp soft assignment (τ = 100) magnifies, so those are held to 1e-1
/// absolute. AdamW's first step moves every parameter by about ±lr whatever its gradient's
/// size, so where a gradient is within the rounding of zero the two devices step apart by
/// 2·lr: the second step's losses (measured: 4 % apart on the shim) are held to 10 %. A step
/// moves a parameter by at most lr at t = 1 and 1.0014·lr at t = 2 (|m̂|/√v̂ for β = (0.9,
/// 0.999), by Cauchy–Schwarz), so after two steps the devices' parameters differ by at most
/// 2·2.0014·lr, which opposite steps reach (measured: 4.0025·lr).
#[test]
fn the_vae_step_on_every_executor_matches_the_cpu() {
    let (want, want_params) = two_gan_steps(&Device::Cpu);
    for exec in executors() {
        let device = exec.device();
        let (got, got_params) = two_gan_steps(&device);
        for (step, ((g, gg), (w, wg))) in got.iter().zip(&want).enumerate() {
            eprintln!("{device} step {step}: {g:?} {gg:?} vs {w:?} {wg:?}");
            // Relative to the value, or to 1e-2 for one near zero (the adversarial term starts there).
            let close = |a: f32, b: f32, rel: f32| (a - b).abs() <= rel * b.abs().max(1e-2);
            let rel = if step == 0 { 1.0 / 64.0 } else { 0.1 };
            assert!(close(g.reconstruction, w.reconstruction, rel), "{device} step {step}: reconstruction");
            assert!(close(gg.disc_loss, wg.disc_loss, rel), "{device} step {step}: discriminator loss");
            assert!(close(gg.gen_adv, wg.gen_adv, rel), "{device} step {step}: adversarial term");
            assert!((g.commitment - w.commitment).abs() <= 0.1, "{device} step {step}: commitment");
            assert!((g.entropy - w.entropy).abs() <= 0.1, "{device} step {step}: entropy");
        }
        let worst = got_params
            .iter()
            .zip(&want_params)
            .flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs()))
            .fold(0.0f32, f32::max);
        eprintln!("{device}: worst parameter difference after two steps {worst:e} (lr 2e-3)");
        assert!(worst <= 2.0 * 2.0015 * 2e-3, "{device}: parameters differ by {worst}");
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-train-vae-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four 256×256 images with distinct pixels (and the `.txt` captions the folder form needs).
fn setup(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..4usize {
        let rgb: Vec<u8> = (0..256 * 256 * 3).map(|p| ((p * (7 + i) + i * 31) % 251) as u8).collect();
        save_png(&data.join(format!("img{i}.png")), 256, 256, &rgb, &[]).unwrap();
        fs::write(data.join(format!("img{i}.txt")), format!("picture {i}")).unwrap();
    }
    data
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity-train")).arg("vae").args(args).output().unwrap()
}

/// Fine-tunes the devA BitVAE (multi-scale) for `steps` steps into `out`.
fn fine_tune(data: &Path, out: &Path, steps: u64) {
    let init = fixture("devA/vae.safetensors");
    let run = train(&[
        "--data",
        data.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "1",
        "--steps",
        &steps.to_string(),
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--seed",
        "5",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

fn metrics(out: &Path) -> String {
    fs::read_to_string(out.join("metrics.csv")).unwrap()
}

#[test]
fn the_same_command_gives_the_same_metrics_and_a_resumed_run_continues_exactly() {
    let dir = temp_dir("resume");
    let data = setup(&dir);
    let (unbroken, stopped) = (dir.join("unbroken"), dir.join("stopped"));
    fine_tune(&data, &unbroken, 4);
    fine_tune(&data, &stopped, 2);
    let (full, half) = (metrics(&unbroken), metrics(&stopped));
    assert_eq!(full.lines().count(), 5, "{full}");
    // Same seed, same first two steps.
    assert_eq!(full.lines().take(3).collect::<Vec<_>>(), half.lines().collect::<Vec<_>>());
    // Re-running the command resumes from step 2 and ends where the unbroken run ended.
    fine_tune(&data, &stopped, 4);
    assert_eq!(metrics(&stopped), full);
    let trained = |out: &Path| fs::read(out.join("step-000000004/params.safetensors")).unwrap();
    assert_eq!(trained(&stopped), trained(&unbroken), "the parameters are bit-identical");
    assert!(fs::read_to_string(stopped.join("train.log")).unwrap().contains("resuming"));
    fs::remove_dir_all(&dir).unwrap();
}

/// A from-scratch stage-1 run of a tiny architecture (written into `dir`) for `steps` steps
/// into `out`, saving after every step, with `extra` flags.
fn train_tiny(dir: &Path, data: &Path, out: &Path, steps: u64, extra: &[&str]) {
    let config = dir.join("vae.json");
    let arch = json!({ "base_ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "z_channels": 8, "patch": 4 });
    fs::write(&config, arch.to_string()).unwrap();
    let steps = steps.to_string();
    let mut args = vec!["--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--stage", "1"];
    args.extend(["--out", out.to_str().unwrap(), "--steps", &steps, "--save-every", "1"]);
    args.extend(extra);
    let run = train(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn a_single_scale_run_from_scratch_leaves_a_loadable_bitvae() {
    let dir = temp_dir("scratch");
    let data = setup(&dir);
    let out = dir.join("out");
    train_tiny(&dir, &data, &out, 1, &["--batch", "1"]);
    assert_eq!(metrics(&out).lines().count(), 2);
    let vae = BitVae::open(out.join("step-000000001/params.safetensors")).unwrap();
    assert_eq!(vae.config.patch, 4);
    fs::remove_dir_all(&dir).unwrap();
}

/// Stage 1 on random 64² crops for `steps` steps into `out`.
fn train_on_crops(dir: &Path, data: &Path, out: &Path, steps: u64) {
    train_tiny(dir, data, out, steps, &["--crop", "64", "--batch", "2"]);
}

/// Crops are drawn per image from the seed and the step: a resumed run crops, and so trains,
/// exactly as an unbroken one.
#[test]
fn a_run_on_crops_resumes_exactly() {
    let dir = temp_dir("crops");
    let data = setup(&dir);
    let (unbroken, stopped) = (dir.join("unbroken"), dir.join("stopped"));
    train_on_crops(&dir, &data, &unbroken, 3);
    train_on_crops(&dir, &data, &stopped, 1);
    train_on_crops(&dir, &data, &stopped, 3);
    assert_eq!(metrics(&unbroken).lines().count(), 4);
    assert_eq!(metrics(&stopped), metrics(&unbroken));
    fs::remove_dir_all(&dir).unwrap();
}

/// `--device shim`: the VAE trainer with its discriminator on the device, on 32² crops; a run
/// stopped after its first step and resumed ends with the unbroken run's metrics and files.
#[test]
fn a_run_on_the_shim_device_resumes_exactly() {
    let dir = temp_dir("device");
    let data = setup(&dir);
    let (unbroken, stopped) = (dir.join("unbroken"), dir.join("stopped"));
    let flags = ["--crop", "32", "--batch", "2", "--disc-weight", "0.1", "--disc-start", "1", "--disc-channels", "8"];
    let on_shim = [&flags[..], &["--device", "shim"]].concat();
    train_tiny(&dir, &data, &unbroken, 2, &on_shim);
    train_tiny(&dir, &data, &stopped, 1, &on_shim);
    train_tiny(&dir, &data, &stopped, 2, &on_shim);
    assert_eq!(metrics(&unbroken).lines().count(), 3);
    assert_eq!(metrics(&stopped), metrics(&unbroken));
    let log = fs::read_to_string(unbroken.join("train.log")).unwrap();
    assert!(log.contains("on CPU shim"), "{log}");
    let params = |out: &Path| fs::read(out.join("step-000000002/params.safetensors")).unwrap();
    assert_eq!(params(&stopped), params(&unbroken));
    fs::remove_dir_all(&dir).unwrap();
}

/// A from-scratch single-scale run with a narrow discriminator (narrow, to keep the test quick
/// on 256² images), its adversarial term from the second step, for `steps` steps into `out`.
fn train_with_discriminator(dir: &Path, data: &Path, out: &Path, steps: u64) {
    let flags = ["--batch", "1", "--lr", "1e-3", "--disc-weight", "0.1", "--disc-start", "1", "--disc-channels", "8"];
    train_tiny(dir, data, out, steps, &flags);
}

#[test]
fn a_run_with_the_discriminator_resumes_exactly() {
    let dir = temp_dir("disc");
    let data = setup(&dir);
    let (unbroken, stopped) = (dir.join("unbroken"), dir.join("stopped"));
    // 1 + 1 steps against 2 (a from-scratch step takes seconds here): the resumed step is
    // the first with the adversarial term, its discriminator restored from the checkpoint.
    train_with_discriminator(&dir, &data, &unbroken, 2);
    train_with_discriminator(&dir, &data, &stopped, 1);
    train_with_discriminator(&dir, &data, &stopped, 2);
    let full = metrics(&unbroken);
    assert!(full.starts_with("step,loss,lr,grad_norm,reconstruction,commitment,entropy,disc_loss,gen_adv\n"), "{full}");
    assert_eq!(full.lines().count(), 3, "{full}");
    for row in full.lines().skip(1) {
        let disc_loss: f32 = row.split(',').nth(7).unwrap().parse().unwrap();
        assert!(disc_loss.is_finite(), "{row}");
    }
    assert_eq!(metrics(&stopped), full);
    let last = |out: &Path, file: &str| fs::read(out.join("step-000000002").join(file)).unwrap();
    for file in [
        "params.safetensors",
        "discriminator/step-000000002/params.safetensors",
        "discriminator/step-000000002/optimizer.safetensors",
    ] {
        assert_eq!(last(&stopped, file), last(&unbroken, file), "{file} is bit-identical");
    }
    let disc = |step: &str| fs::read(unbroken.join(step).join("discriminator").join(step).join("params.safetensors"));
    assert_ne!(disc("step-000000001").unwrap(), disc("step-000000002").unwrap(), "the discriminator learns");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = temp_dir("errors");
    let data = setup(&dir);
    let out = dir.join("out");
    let patch8 = dir.join("patch8.json");
    let arch = json!({ "base_ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "z_channels": 8, "patch": 8 });
    fs::write(&patch8, arch.to_string()).unwrap();
    let (data, patch8) = (data.to_str().unwrap(), patch8.to_str().unwrap());
    let cases: [(&[&str], &str); 9] = [
        (&["--data", data, "--preset", "d16", "--stage", "1", "--crop", "100"], "--crop 100"),
        (&["--data", data, "--preset", "d16", "--crop", "128"], "--crop is for --stage 1"),
        (&["--data", "/no/such/folder", "--preset", "d16"], "data folder"),
        (&["--data", data, "--preset", "d17"], "unknown --preset 'd17'"),
        (&["--data", data, "--preset", "d16", "--stage", "3"], "--stage 3"),
        (&["--data", data, "--preset", "d16", "--lr", "0"], "--lr"),
        (&["--data", data, "--preset", "d16", "--disc-weight", "-0.1"], "--disc-weight -0.1"),
        (&["--data", data, "--config", patch8], "patch 16"),
        (&["--data", data], "give --preset, --config or --init"),
    ];
    for (args, want) in cases {
        let mut args = args.to_vec();
        args.extend(["--out", out.to_str().unwrap()]);
        common::assert_refused(&train(&args), want);
        assert!(!out.exists(), "nothing is written before the arguments are checked");
    }
    fs::remove_dir_all(&dir).unwrap();
}
