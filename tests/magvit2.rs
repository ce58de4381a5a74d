//! Open-MAGVIT2 parity with the official code on devM (a tiny random tokenizer, 128² → 8×8
//! tokens of 10 bits, and a tiny factorized GPT with sub-tokens of 4 and 6 bits): the
//! tokenizer's latent, bits, indices and decoded image; the GPT's teacher-forced logits of both
//! sub-vocabularies; greedy CFG generation; the released `.ckpt` layouts (a tokenizer's EMA
//! weights, an AR checkpoint's first stage) alike with safetensors; and the loaders' refusals.

mod common;

use common::{assert_golden, fixture, max_abs, open};
use infinity::models::magvit2::tokenizer::{codes_of, split};
use infinity::models::magvit2::{Tokenizer, TokenizerConfig};
use infinity::runtime::io::Weights;
use infinity::runtime::{Device, Tensor};

/// The tokenizer input from u8 images (B, H, W, 3): x = f32(u8/127.5 − 1) in f64, NCHW.
fn image_input(golden: &Weights) -> Tensor {
    let img = golden.get("image_u8").unwrap();
    let v: Vec<f32> = img.to_vec::<u8>().unwrap().into_iter().map(|p| (f64::from(p) / 127.5 - 1.0) as f32).collect();
    Tensor::from_vec(v, img.shape()).unwrap().permute(&[0, 3, 1, 2]).unwrap().contiguous().unwrap()
}

fn ints(golden: &Weights, key: &str) -> Vec<i64> {
    golden.get(key).unwrap().to_vec::<i64>().unwrap()
}

#[test]
fn tokenizer_matches_golden_in_every_layout() {
    let golden = open("devM/tokenizer_golden.safetensors");
    for file in ["devM/tokenizer.safetensors", "devM/tokenizer.ckpt", "devM/ar.ckpt"] {
        let tok = Tokenizer::open_on(fixture(file), &Device::Cpu).unwrap();
        assert_eq!(
            tok.config,
            TokenizerConfig { ch: 32, ch_mult: vec![2, 1, 1, 1, 1], num_res_blocks: 1, z_channels: 10 }
        );
        let z = tok.encode(&image_input(&golden)).unwrap();
        let want = golden.get("z").unwrap();
        assert_golden(&format!("{file} z"), &z, want, 1e-4 * max_abs(want));
        let q = tok.tokenize(&image_input(&golden)).unwrap();
        assert_eq!(q.indices.reshape(&[128]).unwrap().to_vec::<i64>().unwrap(), ints(&golden, "indices"), "{file}");
        assert!(q.codes.same_values(golden.get("quantized").unwrap()));
        let (pre, post) = split(&q.indices, [4, 6]).unwrap();
        assert_eq!(pre.to_vec::<i64>().unwrap(), ints(&golden, "indices_pre"));
        assert_eq!(post.to_vec::<i64>().unwrap(), ints(&golden, "indices_post"));
        assert!(codes_of(&pre, &post, [4, 6], 8).unwrap().same_values(golden.get("quantized").unwrap()));
        let decoded = tok.decode(golden.get("quantized").unwrap()).unwrap();
        assert_golden(&format!("{file} decoded"), &decoded, golden.get("decoded").unwrap(), 1e-4);
    }
}

fn labels(golden: &Weights, key: &str) -> Vec<usize> {
    ints(golden, key).into_iter().map(|l| l as usize).collect()
}

#[test]
fn rope_tables_match_the_official_ones() {
    use infinity::models::magvit2::rope_table;
    for (grid, hd, file, key) in [
        (8, 16, "devM/ar_forward_golden.safetensors", "freqs_cis"),
        (16, 64, "manifests/om2/freqs_cis_head64_grid16.safetensors", "freqs_cis"),
    ] {
        let (cos, sin) = rope_table(grid, hd).unwrap();
        let want = open(file).get(key).unwrap().to_f32_vec().unwrap();
        let got: Vec<f32> =
            cos.to_f32_vec().unwrap().into_iter().zip(sin.to_f32_vec().unwrap()).flat_map(|(c, s)| [c, s]).collect();
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(got.len(), want.len());
        assert!(diff <= 2e-6, "grid {grid}, head {hd}: max |diff| {diff}");
    }
}

#[test]
fn teacher_forced_logits_match_golden() {
    use infinity::models::magvit2::ArModel;
    let golden = open("devM/ar_forward_golden.safetensors");
    for file in ["devM/ar.safetensors", "devM/ar.ckpt"] {
        let ar = ArModel::open_on(fixture(file), 8, &Device::Cpu).unwrap();
        assert_eq!(
            (ar.config.dim, ar.config.n_head, ar.config.factorized_bits, ar.config.class_num),
            (48, 3, [4, 6], 10)
        );
        let (pre, post) = (golden.get("indices_pre").unwrap(), golden.get("indices_post").unwrap());
        let logits = ar.teacher_forced(&labels(&golden, "class_labels"), pre, post, None).unwrap();
        for (name, got) in [("logits_pre", &logits.pre), ("logits_post", &logits.post)] {
            let want = golden.get(name).unwrap();
            assert_golden(&format!("{file} {name}"), got.value(), want, 1e-4 * max_abs(want).max(1.0));
        }
    }
}

/// Greedy (top-k 1) CFG generation of class 2 (cfg [1.75, 1.85], temperature [1.1, 1.0]):
/// every step's raw and guided logits of both sub-tokens, every token, the codes, the decoded
/// image and the official PNG conversion.
#[test]
fn greedy_generation_matches_golden() {
    use infinity::models::magvit2::ArModel;
    use infinity::models::magvit2::generate::{Sampling, generate};
    let golden = open("devM/generate_golden.safetensors");
    let ar = ArModel::open_on(fixture("devM/ar.ckpt"), 8, &Device::Cpu).unwrap();
    let sampling = Sampling { cfg: [1.75, 1.85], temperature: [1.1, 1.0], top_k: [1, 1], top_p: [1.0, 1.0], seed: 0 };
    let step_rows = |key: &str, step: usize| {
        let t = golden.get(key).unwrap();
        t.narrow(0, step, 1).unwrap().squeeze(0).unwrap()
    };
    let mut worst = [0f32; 4];
    let out = generate(&ar, &[2], &sampling, |s| {
        for (i, (slot, (raw, guided))) in
            [("pre", (s.raw[0], s.guided[0])), ("post", (s.raw[1], s.guided[1]))].into_iter().enumerate()
        {
            let want_raw = step_rows(&format!("raw_logits_{slot}"), s.step);
            let want_guided = step_rows(&format!("cfg_logits_{slot}"), s.step).unsqueeze(0).unwrap();
            worst[2 * i] = worst[2 * i].max(common::max_abs_diff(raw, &want_raw));
            worst[2 * i + 1] = worst[2 * i + 1].max(common::max_abs_diff(guided, &want_guided));
        }
    })
    .unwrap();
    eprintln!(
        "max |diff| over the steps: raw pre {:.2e}, guided pre {:.2e}, raw post {:.2e}, guided post {:.2e}",
        worst[0], worst[1], worst[2], worst[3]
    );
    assert!(worst.iter().all(|&w| w <= 1e-4 * 10.2), "{worst:?}");
    assert_eq!(out.pre.to_vec::<i64>().unwrap(), ints(&golden, "tokens_pre"));
    assert_eq!(out.post.to_vec::<i64>().unwrap(), ints(&golden, "tokens_post"));
    assert!(out.codes.same_values(golden.get("quant").unwrap()));
    let tok = Tokenizer::open_on(fixture("devM/ar.ckpt"), &Device::Cpu).unwrap();
    let decoded = tok.decode(&out.codes).unwrap();
    assert_golden("generated image", &decoded, golden.get("decoded").unwrap(), 1e-4);
    let png = infinity::models::image::image_grid(&decoded).unwrap();
    let want = golden.get("image_u8").unwrap().to_vec::<u8>().unwrap();
    let differ = png.rgb.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(
        png.rgb.iter().zip(&want).all(|(&a, &b)| a.abs_diff(b) <= 1) && differ * 100 <= want.len(),
        "{differ} differ"
    );
}

/// The training loss of the teacher-forced golden batch (no dropout) equals the golden's
/// loss_pre + loss_post, and a train step (its dropouts on) reports a finite loss and moves the
/// weights.
#[test]
fn training_loss_matches_golden() {
    use infinity::autograd::optim::official_groups;
    use infinity::autograd::{AdamW, AdamWConfig};
    use infinity::models::magvit2::ArModel;
    use infinity::models::magvit2::train::{ArBatch, loss, train_step};
    use infinity::runtime::collective::Single;
    use infinity::runtime::rng::Philox;
    let golden = open("devM/ar_forward_golden.safetensors");
    let batch = ArBatch {
        labels: labels(&golden, "class_labels"),
        pre: golden.get("indices_pre").unwrap().clone(),
        post: golden.get("indices_post").unwrap().clone(),
    };
    let ar = ArModel::open_on(fixture("devM/ar.safetensors"), 8, &Device::Cpu).unwrap();
    let logits = ar.teacher_forced(&batch.labels, &batch.pre, &batch.post, None).unwrap();
    let (total, [pre, post]) = loss(&logits, &batch).unwrap();
    let want = [
        golden.get("loss_pre").unwrap().to_f32_vec().unwrap()[0],
        golden.get("loss_post").unwrap().to_f32_vec().unwrap()[0],
    ];
    eprintln!("losses {pre} + {post} vs golden {} + {}", want[0], want[1]);
    assert!((pre - want[0]).abs() <= 1e-5 * want[0] && (post - want[1]).abs() <= 1e-5 * want[1]);
    assert!((total.value().to_f32_vec().unwrap()[0] - want[0] - want[1]).abs() <= 1e-5 * (want[0] + want[1]));
    let weights = Weights::open(fixture("devM/ar.safetensors")).unwrap();
    let mut params = ArModel::parameters(&weights, &ar.config).unwrap();
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8 }, official_groups(&params)).unwrap();
    let stats =
        train_step(&mut params, &mut opt, &ar.config, &[batch], (3e-4, 0.05, 1.0), &Single, &mut Philox::new(1))
            .unwrap();
    assert!(stats.loss.is_finite() && stats.scale_loss.len() == 2 && stats.scale_accuracy.len() == 2);
    let moved = common::max_abs_diff(params.get("head.0.weight").unwrap(), weights.get("head.0.weight").unwrap());
    assert!(moved > 0.0);
}

/// The loss's gradient with respect to every GPT parameter passes the finite-difference check.
#[test]
fn training_gradients_match_finite_differences() {
    use infinity::autograd::Tracked;
    use infinity::autograd::gradcheck::GradCheck;
    use infinity::models::magvit2::train::{ArBatch, loss};
    use infinity::models::magvit2::{ArConfig, ArModel};
    let config = ArConfig {
        dim: 16,
        n_head: 2,
        spatial_layers: 2,
        factorized_layers: 1,
        ffn_hidden: 24,
        factorized_bits: [2, 3],
        class_num: 3,
        grid: 2,
    };
    let mut weights = ArModel::initial_weights(&config, 3).unwrap();
    // Heads and embeddings of a trained model's size, so every path's gradient is well above rounding.
    let scaled: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(k, t)| {
            let t = if k.starts_with("head.") {
                Tensor::from_vec(infinity::runtime::rng::Philox::new(9).normal(t.numel()), t.shape()).unwrap()
            } else if k.ends_with("norm.weight") {
                t.clone()
            } else {
                infinity::ops::elementwise::mul_scalar(t, 25.0).unwrap()
            };
            (k.to_string(), t)
        })
        .collect();
    weights = Weights::new("<scaled>", scaled, Default::default()).unwrap();
    let params = ArModel::parameters(&weights, &config).unwrap();
    let names: Vec<String> = params.iter().map(|(n, _)| n.to_string()).collect();
    let inputs: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let batch = ArBatch {
        labels: vec![1, 3],
        pre: Tensor::from_vec(vec![0i64, 3, 1, 2, 2, 1, 0, 3], &[2, 4]).unwrap(),
        post: Tensor::from_vec(vec![7i64, 0, 4, 2, 1, 5, 6, 3], &[2, 4]).unwrap(),
    };
    let report = GradCheck::default()
        .check(
            |vars| {
                let tracked = Tracked::from_vars(names.iter().cloned().zip(vars.iter().cloned()).collect());
                let model = ArModel::on_tape(config.clone(), &tracked)?;
                Ok(loss(&model.teacher_forced(&batch.labels, &batch.pre, &batch.post, None)?, &batch)?.0)
            },
            &inputs,
        )
        .unwrap();
    assert!(report.passed(), "{report}");
}

fn run(bin: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(bin).args(args).output().unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `infinity-run magvit2` writes one PNG per image (numbered), deterministic per seed, with its
/// class and parameters; greedy generation through the CLI is the golden image; impossible
/// requests are refused in one line before loading.
#[test]
fn cli_generates_and_refuses() {
    let dir = scratch("magvit2-cli");
    let ar = fixture("devM/ar.ckpt");
    let bin = env!("CARGO_BIN_EXE_infinity-run");
    let generate = |out: &std::path::Path, extra: &[&str]| {
        let mut args =
            vec![os("magvit2"), os("--ar"), ar.as_os_str(), os("--size"), os("128"), os("-o"), out.as_os_str()];
        args.extend(extra.iter().map(|a| os(a)));
        run(bin, &args)
    };
    let o = generate(
        &dir.join("golden.png"),
        &["--class", "2", "--top-k", "1", "--cfg", "1.75,1.85", "--temperature", "1.1,1.0"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = infinity::models::image::load_rgb(&dir.join("golden.png")).unwrap().into_raw();
    let want = open("devM/generate_golden.safetensors").get("image_u8").unwrap().to_vec::<u8>().unwrap();
    assert!(png.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1));
    for (name, seed) in [("a.png", "5"), ("b.png", "5"), ("c.png", "6")] {
        let o = generate(&dir.join(name), &["--class", "1,4", "--batch", "2", "--seed", seed]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    assert_eq!(read("a_0003.png"), read("b_0003.png"));
    assert_ne!(read("a_0003.png"), read("c_0003.png"));
    assert_ne!(read("a_0000.png"), read("a_0001.png"), "batch entries differ");
    let text = {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("a_0002.png")).unwrap()));
        let reader = decoder.read_info().unwrap();
        reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect::<Vec<_>>()
    };
    assert!(text.contains(&("class".into(), "4".into())), "{text:?}");
    let never = dir.join("never.png");
    common::assert_refused(&generate(&never, &["--class", "10"]), "--class 10");
    common::assert_refused(&generate(&never, &["--class", "1", "--cfg", "1,2,3"]), "--cfg");
    common::assert_refused(&generate(&never, &["--class", "1", "--top-p", "0"]), "--top-p");
    let vqvae = fixture("devV/vae.pth");
    let mut args = vec![
        os("magvit2"),
        os("--ar"),
        ar.as_os_str(),
        os("--tokenizer"),
        vqvae.as_os_str(),
        os("--class"),
        os("1"),
        os("-o"),
        never.as_os_str(),
    ];
    common::assert_refused(&run(bin, &args), "not an Open-MAGVIT2 tokenizer");
    args[2] = vqvae.as_os_str();
    args.drain(3..5);
    common::assert_refused(&run(bin, &args), "vae.pth");
    assert!(!never.exists());
}

/// `infinity-run reconstruct` with the tokenizer `.ckpt` writes its decoded tokens; `infinity-train
/// magvit2` resumes exactly, and its checkpoint generates.
#[test]
fn reconstruct_and_training_cli() {
    let dir = scratch("magvit2-train");
    let image = fixture("emoji/1f438.png");
    let recon = dir.join("recon.png");
    let tok = fixture("devM/tokenizer.ckpt");
    let o = run(
        env!("CARGO_BIN_EXE_infinity-run"),
        &[
            os("reconstruct"),
            os("--vae"),
            tok.as_os_str(),
            os("--image"),
            image.as_os_str(),
            os("--pn"),
            os("0.06M"),
            os("-o"),
            recon.as_os_str(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("256 tokens of 10 bits"));
    let data = dir.join("data");
    for (class, emoji) in [("apple", "1f34e"), ("frog", "1f438")] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for copy in ["a", "b"] {
            std::fs::copy(fixture(&format!("emoji/{emoji}.png")), data.join(class).join(format!("{copy}.png")))
                .unwrap();
        }
    }
    let ar = fixture("devM/ar.ckpt");
    let train = |out: &std::path::Path, steps: &str| {
        run(
            env!("CARGO_BIN_EXE_infinity-train"),
            &[
                os("magvit2"),
                os("--data"),
                data.as_os_str(),
                os("--tokenizer"),
                ar.as_os_str(),
                os("--init"),
                ar.as_os_str(),
                os("--size"),
                os("128"),
                os("--out"),
                out.as_os_str(),
                os("--steps"),
                os(steps),
                os("--batch"),
                os("2"),
                os("--save-every"),
                os("1"),
                os("--end-lr"),
                os("1"),
                os("--seed"),
                os("3"),
            ],
        )
    };
    let (straight, resumed) = (dir.join("straight"), dir.join("resumed"));
    for out in [&straight, &resumed] {
        let _ = std::fs::remove_dir_all(out);
    }
    assert!(train(&straight, "3").status.success());
    assert!(train(&resumed, "2").status.success());
    let o = train(&resumed, "3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = |r: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(r.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(rows(&straight), rows(&resumed));
    assert_eq!(rows(&straight).len(), 4);
    let params = resumed.join("step-000000003/params.safetensors");
    let png = dir.join("trained.png");
    let o = run(
        env!("CARGO_BIN_EXE_infinity-run"),
        &[
            os("magvit2"),
            os("--ar"),
            params.as_os_str(),
            os("--tokenizer"),
            tok.as_os_str(),
            os("--class"),
            os("1"),
            os("--size"),
            os("128"),
            os("-o"),
            png.as_os_str(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
