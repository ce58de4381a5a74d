//! VAR parity with the official code on devV (a tiny random VQVAE + VAR on the real 10-scale
//! 256² schedule): the VQVAE's features, per-scale tokens, f̂ and decoded image; the teacher-
//! forced logits; greedy CFG generation scale by scale and free-running; `.pth` and
//! safetensors alike; and the loader's refusals.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_golden, fixture, max_abs, max_abs_diff, open};
use infinity::models::image::{image_grid, load_rgb, save_png};
use infinity::models::var::config::{PATCH_NUMS_256, phi_table};
use infinity::models::var::{Edit, VarSampling, VarTransformer, VqVae, VqVaeConfig, generate};
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

/// Greedy (top-k 1) CFG generation: free-running, every scale's tokens, the final f̂ and the
/// demo's u8 grid; logits per scale on the way.
#[test]
fn greedy_generation_matches_golden() {
    let golden = open("devV/generate_golden.safetensors");
    let var = VarTransformer::open(fixture("devV/var.safetensors")).unwrap();
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let sampling = VarSampling { cfg: 4.0, top_k: 1, top_p: 0.0, seed: 0, more_smooth: false };
    let mut checked = 0;
    let out = generate(&var, &vae, &labels(&golden), &sampling, None, |step| {
        let k = step.scale;
        let raw = golden.get(&format!("raw_logits_scale{k:02}")).unwrap();
        assert_golden(&format!("raw logits {k}"), step.raw_logits, raw, 1e-4 * max_abs(raw).max(1.0));
        let cfg = golden.get(&format!("cfg_logits_scale{k:02}")).unwrap();
        assert_golden(&format!("cfg logits {k}"), step.cfg_logits, cfg, 1e-4 * max_abs(cfg).max(1.0));
        checked += 1;
    })
    .unwrap();
    assert_eq!(checked, 10);
    for (k, got) in out.indices.iter().enumerate() {
        assert_eq!(got.to_vec::<i64>().unwrap(), idx(&golden, &format!("idx_scale{k:02}")), "scale {k}");
    }
    assert_golden("f_hat", &out.f_hat, golden.get("f_hat").unwrap(), 1e-4 * 2.42);
    let image = vae.decode(&out.f_hat).unwrap();
    let grid = image_grid(&image).unwrap();
    let want = golden.get("image_u8").unwrap().to_vec::<u8>().unwrap();
    assert_eq!((grid.width, grid.height), (512, 256));
    let differ = grid.rgb.iter().zip(&want).filter(|(a, b)| a != b).count();
    let worst = grid.rgb.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap();
    eprintln!("u8 grid: {differ} of {} values differ, by at most {worst}", want.len());
    assert!(worst <= 1 && differ * 100 <= want.len(), "{differ} values differ, by up to {worst}");
}

/// Both halves of the edit contract: keeping nothing is the plain generation; keeping
/// everything returns the input's tokens at every scale.
#[test]
fn edits_keep_the_masked_tokens() {
    let var = VarTransformer::open(fixture("devV/var.safetensors")).unwrap();
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let vq = open("devV/vqvae_golden.safetensors");
    let tokens: Vec<Tensor> =
        (0..10).map(|si| vq.get(&format!("idx_scale{si:02}")).unwrap().narrow(0, 0, 1).unwrap()).collect();
    let sampling = VarSampling { seed: 7, ..VarSampling::default() };
    let plain = generate(&var, &vae, &[3, 5], &sampling, None, |_| {}).unwrap();
    let nothing = Edit { tokens: tokens.clone(), keep: Tensor::zeros(&[16, 16], infinity::runtime::DType::F32) };
    let same = generate(&var, &vae, &[3, 5], &sampling, Some(&nothing), |_| {}).unwrap();
    for (a, b) in plain.indices.iter().zip(&same.indices) {
        assert_eq!(a.to_vec::<i64>().unwrap(), b.to_vec::<i64>().unwrap());
    }
    let all = Edit { tokens: tokens.clone(), keep: Tensor::from_vec(vec![1f32; 256], &[16, 16]).unwrap() };
    let kept = generate(&var, &vae, &[3, 5], &sampling, Some(&all), |_| {}).unwrap();
    for (si, (got, want)) in kept.indices.iter().zip(&tokens).enumerate() {
        let want = want.to_vec::<i64>().unwrap();
        assert_eq!(got.to_vec::<i64>().unwrap(), [want.clone(), want].concat(), "scale {si}");
    }
    // Keeping the left half: those tokens of the last scale are the input's, and the right
    // half is generated (it differs somewhere).
    let left: Vec<f32> = (0..256).map(|i| if i % 16 < 8 { 1.0 } else { 0.0 }).collect();
    let half = Edit { tokens: tokens.clone(), keep: Tensor::from_vec(left, &[16, 16]).unwrap() };
    let out = generate(&var, &vae, &[3], &sampling, Some(&half), |_| {}).unwrap();
    let (got, want) = (out.indices[9].to_vec::<i64>().unwrap(), tokens[9].to_vec::<i64>().unwrap());
    assert!((0..256).filter(|i| i % 16 < 8).all(|i| got[i] == want[i]));
    assert!((0..256).filter(|i| i % 16 >= 8).any(|i| got[i] != want[i]));
}

/// The same seed gives the same image; another seed another.
#[test]
fn sampling_is_seeded() {
    let var = VarTransformer::open(fixture("devV/var.safetensors")).unwrap();
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let run = |seed, more_smooth| {
        let s = VarSampling { seed, more_smooth, ..VarSampling::default() };
        generate(&var, &vae, &[1], &s, None, |_| {}).unwrap()
    };
    let (a, b, c) = (run(1, false), run(1, false), run(2, false));
    let last = |g: &infinity::models::var::Generated| g.indices[9].to_vec::<i64>().unwrap();
    assert_eq!(last(&a), last(&b));
    assert_ne!(last(&a), last(&c));
    // The Gumbel blend changes the latent, not the tokens drawn with the same stream position.
    let smooth = run(1, true);
    assert_eq!(smooth.indices[0].to_vec::<i64>().unwrap(), a.indices[0].to_vec::<i64>().unwrap());
    assert!(max_abs_diff(&smooth.f_hat, &a.f_hat) > 1e-3);
}

fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_infinity-run")).args(args).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `infinity-run var` on devV's pair with `extra` arguments, writing `out`.
fn var_cli(out: &Path, extra: &[&str]) -> std::process::Output {
    let (var, vae) = (fixture("devV/var.pth"), fixture("devV/vae.pth"));
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "var".as_ref(),
        "--var".as_ref(),
        var.as_os_str(),
        "--vae".as_ref(),
        vae.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run(&args)
}

fn png_size_and_text(path: &Path) -> ((u32, u32), Vec<(String, String)>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (
        (info.width, info.height),
        info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect(),
    )
}

#[test]
fn cli_writes_one_grid_per_run_deterministic_per_seed() {
    let dir = scratch("var-cli");
    for (name, seed) in [("a.png", "3"), ("b.png", "3"), ("c.png", "4")] {
        let o = var_cli(&dir.join(name), &["--class", "1,2,980", "--seed", seed]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert_eq!(read("a.png"), read("b.png"));
    assert_ne!(read("a.png"), read("c.png"));
    let (size, text) = png_size_and_text(&dir.join("a.png"));
    assert_eq!(size, (3 * 256, 256), "3 images side by side, no padding");
    assert!(text.contains(&("classes".into(), "1,2,980".into())), "{text:?}");
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(params.contains("seed=3") && params.contains("cfg=4") && params.contains("top_k=900"), "{params}");
    // Nine classes: 8 per row, the second row's empty cells white.
    let o = var_cli(&dir.join("nine.png"), &["--class", "0,1,2,3,4,5,6,7,8", "--top-k", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png_size_and_text(&dir.join("nine.png")).0, (8 * 256, 2 * 256));
}

#[test]
fn cli_refuses_impossible_requests_in_one_line_before_loading() {
    let dir = scratch("var-cli-refusals");
    let out = dir.join("never.png");
    let (var, vae) = (fixture("devV/var.pth"), fixture("devV/vae.pth"));
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec!["--class".as_ref(), "1000".as_ref()], "--class 1000"),
        (vec!["--class".as_ref(), "1".as_ref(), "--top-p".as_ref(), "1.5".as_ref()], "--top-p"),
        (vec!["--class".as_ref(), "1".as_ref(), "--cfg".as_ref(), "-1".as_ref()], "--cfg"),
        (vec!["--class".as_ref(), "1".as_ref(), "--edit".as_ref(), vae.as_os_str()], "--mask"),
    ];
    for (extra, named) in cases {
        let extra: Vec<&str> = extra.iter().map(|a| a.to_str().unwrap()).collect();
        let o = var_cli(&out, &extra);
        common::assert_refused(&o, named);
    }
    // The files swapped: each named with what it is not.
    let o = run(&[
        "var".as_ref(),
        "--class".as_ref(),
        "1".as_ref(),
        "--var".as_ref(),
        vae.as_os_str(),
        "--vae".as_ref(),
        var.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    common::assert_refused(&o, "not a VAR transformer");
    assert!(!out.exists());
}

/// An edit whose mask keeps everything writes exactly `reconstruct`'s image of the input (its
/// tokens at every scale, decoded); the same mask with a white half regenerates that half.
#[test]
fn cli_edit_keeps_the_input_where_the_mask_is_black() {
    let dir = scratch("var-cli-edit");
    let image = fixture("emoji/1f438.png");
    let black = dir.join("black.png");
    save_png(&black, 64, 64, &vec![0u8; 64 * 64 * 3], &[]).unwrap();
    let o = var_cli(
        &dir.join("kept.png"),
        &["--class", "7", "--edit", image.to_str().unwrap(), "--mask", black.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recon = dir.join("recon.png");
    let vae = fixture("devV/vae.pth");
    let o = run(&[
        "reconstruct".as_ref(),
        "--vae".as_ref(),
        vae.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--pn".as_ref(),
        "0.06M".as_ref(),
        "-o".as_ref(),
        recon.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pixels = |p: &Path| load_rgb(p).unwrap().into_raw();
    assert_eq!(pixels(&dir.join("kept.png")), pixels(&recon));
    let half: Vec<u8> = (0..64 * 64).flat_map(|i| if i % 64 >= 32 { [255u8; 3] } else { [0u8; 3] }).collect();
    let right = dir.join("right.png");
    save_png(&right, 64, 64, &half, &[]).unwrap();
    let o = var_cli(
        &dir.join("half.png"),
        &["--class", "7", "--edit", image.to_str().unwrap(), "--mask", right.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(pixels(&dir.join("half.png")), pixels(&recon));
}

/// The training loss of the teacher-forced golden batch equals the cross-entropy of the
/// golden logits (f64, weight 1/L, batch mean), and a train step reports it before updating.
#[test]
fn training_loss_matches_the_golden_logits() {
    use infinity::autograd::{AdamW, AdamWConfig, optim::official_groups};
    use infinity::models::var::train::{VarBatch, VarStepSettings, loss, train_step};
    use infinity::runtime::collective::Single;
    let golden = open("devV/var_forward_golden.safetensors");
    let (logits, targets) = (golden.get("logits").unwrap(), golden.get("gt_idx_BL").unwrap());
    let (x, y) = (logits.to_f32_vec().unwrap(), targets.to_vec::<i64>().unwrap());
    let (b, l, v) = (2, 680, 64);
    let mut want = 0.0f64;
    for t in 0..b * l {
        let row: Vec<f64> = x[t * v..][..v].iter().map(|&z| f64::from(z)).collect();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        want += (lse - row[y[t] as usize]) / l as f64 / b as f64;
    }
    let batch = VarBatch {
        labels: labels(&golden),
        inputs: golden.get("x_BLCv_wo_first_l").unwrap().clone(),
        targets: targets.clone(),
    };
    let var = VarTransformer::open(fixture("devV/var.safetensors")).unwrap();
    let got = loss(&var, &batch).unwrap();
    eprintln!("loss {got} vs golden logits' {want}");
    assert!((f64::from(got) - want).abs() <= 1e-5 * want, "{got} vs {want}");
    let weights = infinity::runtime::io::Weights::open(fixture("devV/var.safetensors")).unwrap();
    let mut params = VarTransformer::parameters(&weights, &var.config).unwrap();
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8 }, official_groups(&params)).unwrap();
    let settings = VarStepSettings { lr: 1e-4, weight_decay: 0.05, clip: 2.0 };
    let stats = train_step(&mut params, &mut opt, &var.config, &[batch], settings, &Single).unwrap();
    assert!((f64::from(stats.loss) - want).abs() <= 1e-5 * want, "{} vs {want}", stats.loss);
    assert_eq!(stats.scale_accuracy.len(), 10);
}

/// A tiny VAR (both AdaLN kinds) whose loss's gradient with respect to every parameter passes
/// the finite-difference check.
#[test]
fn training_gradients_match_finite_differences() {
    use infinity::autograd::Tracked;
    use infinity::autograd::gradcheck::GradCheck;
    use infinity::autograd::loss::cross_entropy;
    use infinity::models::var::VarConfig;
    for shared_aln in [false, true] {
        let config = VarConfig {
            depth: 2,
            embed_dim: 16,
            num_heads: 2,
            mlp_hidden: 32,
            num_classes: 5,
            shared_aln,
            patch_nums: vec![1, 2, 3],
            vocab: 8,
            cvae: 4,
        };
        // Gates of a realistic size, so every branch's gradient is well above rounding.
        let mut weights = VarTransformer::initial_weights(&config, 11).unwrap();
        let boosted: Vec<(String, Tensor)> = weights
            .iter()
            .map(|(k, t)| {
                let scaled = if k.contains("ada_lin") || k == "head.weight" {
                    infinity::ops::elementwise::mul_scalar(t, 300.0).unwrap()
                } else {
                    t.clone()
                };
                (k.to_string(), scaled)
            })
            .collect();
        weights = Weights::new("<boosted>", boosted, Default::default()).unwrap();
        let params = VarTransformer::parameters(&weights, &config).unwrap();
        let names: Vec<String> = params.iter().map(|(n, _)| n.to_string()).collect();
        let inputs: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
        let data = infinity::runtime::rng::Philox::new(5).normal(2 * 13 * 4);
        let rows = Tensor::from_vec(data, &[2, 13, 4]).unwrap();
        let targets = Tensor::from_vec((0..28).map(|i| (i * 5 % 8) as i64).collect(), &[2, 14]).unwrap();
        let w = Tensor::full(&[14], 1.0 / 14.0, infinity::runtime::DType::F32);
        let report = GradCheck::default()
            .check(
                |vars| {
                    let tracked = Tracked::from_vars(names.iter().cloned().zip(vars.iter().cloned()).collect());
                    let model = VarTransformer::on_tape(config.clone(), &tracked)?;
                    Ok(cross_entropy(&model.teacher_forced(&[1, 5], &rows)?, &targets, &w)?.loss)
                },
                &inputs,
            )
            .unwrap();
        assert!(report.passed(), "shared_aln {shared_aln}: {report}");
    }
}

fn train_cli(data: &Path, out: &Path, steps: &str) -> std::process::Output {
    let (vae, init) = (fixture("devV/vae.pth"), fixture("devV/var.safetensors"));
    std::process::Command::new(env!("CARGO_BIN_EXE_infinity-train"))
        .args(["var".as_ref(), "--data".as_ref(), data.as_os_str(), "--vae".as_ref(), vae.as_os_str()])
        .args(["--init".as_ref(), init.as_os_str(), "--out".as_ref(), out.as_os_str()])
        .args(["--steps", steps, "--batch", "2", "--save-every", "1", "--lr", "1e-3", "--end-lr", "1", "--seed", "4"])
        .output()
        .unwrap()
}

/// `infinity-train var` on class folders: a run stopped after 2 steps and resumed to 3 logs
/// the same losses as a run of 3 (its data position, label dropouts and optimizer restored;
/// a constant rate, since the decay's length follows --steps), and its checkpoint generates
/// with `infinity-run var`.
#[test]
fn train_cli_resumes_exactly_and_its_checkpoint_generates() {
    let dir = scratch("var-train");
    let data = dir.join("data");
    for (class, emoji) in [("apple", "1f34e"), ("frog", "1f438"), ("heart", "1f499")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for copy in ["a", "b"] {
            std::fs::copy(fixture(&format!("emoji/{emoji}.png")), data.join(class).join(format!("{copy}.png")))
                .unwrap();
        }
    }
    let (straight, resumed) = (dir.join("straight"), dir.join("resumed"));
    for out in [&straight, &resumed] {
        let _ = std::fs::remove_dir_all(out);
    }
    let o = train_cli(&data, &straight, "3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(train_cli(&data, &resumed, "2").status.success());
    let o = train_cli(&data, &resumed, "3");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("trained steps 3..3"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Everything but the throughput column.
    let rows = |run: &Path| -> Vec<String> {
        let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        csv.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
    };
    assert_eq!(rows(&straight), rows(&resumed));
    assert_eq!(rows(&straight).len(), 4);
    let params = resumed.join("step-000000003/params.safetensors");
    let png = dir.join("trained.png");
    let vae = fixture("devV/vae.pth");
    let o = run(&[
        "var".as_ref(),
        "--class".as_ref(),
        "0,2".as_ref(),
        "--var".as_ref(),
        params.as_os_str(),
        "--vae".as_ref(),
        vae.as_os_str(),
        "-o".as_ref(),
        png.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png_size_and_text(&png).0, (512, 256));
}

/// Training refuses in one line, before loading, what cannot work.
#[test]
fn train_cli_refuses_bad_setups() {
    let dir = scratch("var-train-refusals");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("only")).unwrap();
    std::fs::copy(fixture("emoji/1f34e.png"), data.join("only/a.png")).unwrap();
    let vae = fixture("devV/vae.pth");
    let train = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_infinity-train"))
            .args(["var".as_ref(), "--data".as_ref(), data.as_os_str(), "--vae".as_ref(), vae.as_os_str()])
            .args(["--out".as_ref(), dir.join("run").as_os_str()])
            .args(extra)
            .output()
            .unwrap()
    };
    common::assert_refused(&train(&["--preset", "d99"]), "--preset 'd99'");
    common::assert_refused(&train(&[]), "--preset, --config or --init");
    common::assert_refused(&train(&["--preset", "d16", "--label-dropout", "2"]), "--label-dropout");
    // d16 predicts the release's 4096 codes of 32 channels; devV's VQVAE has 64 of 16.
    common::assert_refused(&train(&["--preset", "d16"]), "not trained together");
}

/// Calls out of the library's contract are errors naming the op, never panics.
#[test]
fn misuse_is_an_error_not_a_panic() {
    let vae = VqVae::open(fixture("devV/vae.safetensors")).unwrap();
    let var = VarTransformer::open(fixture("devV/var.safetensors")).unwrap();
    let vq = open("devV/vqvae_golden.safetensors");
    let tokens: Vec<Tensor> = (0..10).map(|si| vq.get(&format!("idx_scale{si:02}")).unwrap().clone()).collect();
    let err = |r: infinity::runtime::Result<Tensor>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    };
    assert!(err(vae.teacher_input(&tokens[..1], &[1])).contains("vqvae.teacher_input"));
    assert!(err(vae.decode_indices(&tokens[..3], &PATCH_NUMS_256)).contains("vqvae.decode_indices"));
    assert!(err(vae.scale_contribution(&tokens[0], 1, 10, 10, 16)).contains("vqvae.phi"));
    let mut session = var.session(&[1]).unwrap();
    assert!(err(var.forward_scale(&mut session, None, 1)).contains("var.forward_scale"));
    assert!(var.condition(&[1001]).err().unwrap().to_string().contains("out of range"));
    let sampling = VarSampling::default();
    assert!(generate(&var, &vae, &[], &sampling, None, |_| {}).err().unwrap().to_string().contains("no labels"));
}
