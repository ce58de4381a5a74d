//! `infinity-train transformer` end to end on a tiny captioned-image dataset with the devA
//! fixture models (256² images, 16×16 latents at 0.06M): the same command gives the same
//! metrics, a run stopped at a checkpoint or killed at any moment and re-run continues
//! bit-identically to an unbroken one (on the CPU and on the shim device), and bad input is one line on stderr with exit code 2 before any work.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, tiny_transformer_run};

use infinity::models::image::save_png;
use serde_json::json;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-train-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four 256×256 images with distinct pixels and `.txt` captions, and a model folder over the
/// devA fixtures (its transformer is the starting point).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..4usize {
        let rgb: Vec<u8> = (0..256 * 256 * 3).map(|p| ((p * (7 + i) + i * 31) % 251) as u8).collect();
        save_png(&data.join(format!("img{i}.png")), 256, 256, &rgb, &[]).unwrap();
        fs::write(data.join(format!("img{i}.txt")), format!("a small picture number {i}. it has stripes.")).unwrap();
    }
    let model = dir.join("model");
    fs::create_dir_all(&model).unwrap();
    let f = |rel: &str| fixture(rel).display().to_string();
    let config = json!({
        "transformer": f("devA/transformer.safetensors"),
        "vae": f("devA/vae.safetensors"),
        "t5": f("devA/t5_encoder.safetensors"),
        "t5_config": f("devA/t5_config.json"),
        "tokenizer": f("tokenizer/tokenizer.json"),
        "pn": "0.06M",
    });
    fs::write(model.join("config.json"), config.to_string()).unwrap();
    (data, model)
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinity-train")).arg("transformer").args(args).output().unwrap()
}

/// The arguments that fine-tune devA for `steps` steps into `out` (BSC and caption dropout on,
/// so their random streams are part of what must repeat).
fn fine_tune_args(data: &Path, model: &Path, out: &Path, steps: u64) -> Vec<String> {
    let mut args: Vec<String> = ["--data", data.to_str().unwrap(), "--model-dir", model.to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--out".into(), out.to_str().unwrap().into(), "--steps".into(), steps.to_string()]);
    let rest = ["--batch", "2", "--save-every", "2", "--lr", "1e-3", "--cond-drop", "0.5", "--seed", "3"];
    args.extend(rest.into_iter().map(String::from));
    args
}

fn fine_tune(data: &Path, model: &Path, out: &Path, steps: u64) -> Output {
    let args = fine_tune_args(data, model, out, steps);
    let out = train(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// metrics.csv without its last two columns, samples/s and tokens/s (checked to be positive),
/// which depend on the machine's speed: the rest is a function of the command.
fn metrics(out: &Path) -> String {
    let text = fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().ends_with(",samples_per_s,tokens_per_s"), "{text}");
    for row in lines {
        let fields: Vec<&str> = row.rsplitn(3, ',').collect();
        assert!(fields[..2].iter().all(|f| f.parse::<f64>().unwrap() > 0.0), "throughput in {row}");
    }
    text.lines().map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string() + "\n").collect()
}

/// The loss column of metrics.csv, as written (shortest round-trip f32 text).
fn losses(metrics: &str) -> Vec<String> {
    metrics.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().to_string()).collect()
}

#[test]
fn the_same_command_gives_the_same_metrics() {
    let dir = temp_dir("determinism");
    let (data, model) = setup(&dir);
    fine_tune(&data, &model, &dir.join("a"), 2);
    fine_tune(&data, &model, &dir.join("b"), 2);
    let (a, b) = (metrics(&dir.join("a")), metrics(&dir.join("b")));
    assert_eq!(losses(&a).len(), 2, "{a}");
    assert_eq!(a, b);
    assert!(losses(&a).iter().all(|l| l.parse::<f32>().unwrap().is_finite()));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_continues_exactly_like_an_unbroken_one() {
    let dir = temp_dir("resume");
    let (data, model) = setup(&dir);
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    fine_tune(&data, &model, &whole, 4);
    fine_tune(&data, &model, &parts, 2);
    let resumed = fine_tune(&data, &model, &parts, 4);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resuming"));

    let (a, b) = (metrics(&whole), metrics(&parts));
    assert_eq!(losses(&a).len(), 4, "{a}");
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(a, b, "the whole CSV, header once");
    assert!(parts.join("step-000000004/params.safetensors").exists());
    assert!(fs::read_to_string(parts.join("train.log")).unwrap().contains("step 4 loss"));

    // Nothing left to do: the same command again returns at once, changing nothing.
    fine_tune(&data, &model, &parts, 4);
    assert_eq!(metrics(&parts), b);
    fs::remove_dir_all(&dir).unwrap();
}

/// The 8B's kind trains too (devC: 56-bit tokens over a patch-8 VAE, the pair telling the
/// layout): Bitwise Self-Correction flips in the VAE's layout, labels and inputs in tokens;
/// the checkpoint it saves generates with that VAE.
#[test]
fn a_patchified_model_fine_tunes() {
    let dir = temp_dir("patchify");
    let (data, _) = setup(&dir);
    let out = dir.join("out");
    let model = fixture("devC");
    let mut args: Vec<String> = ["--data", data.to_str().unwrap(), "--model-dir", model.to_str().unwrap()]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--out", out.to_str().unwrap(), "--steps", "2", "--batch", "2", "--lr", "1e-3"].map(String::from));
    let run = train(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m = metrics(&out);
    assert_eq!(losses(&m).len(), 2, "{m}");
    assert!(losses(&m).iter().all(|l| l.parse::<f32>().unwrap().is_finite()), "{m}");

    let png = dir.join("after.png");
    let f = |rel: &str| fixture(rel).display().to_string();
    let params = out.join("step-000000002/params.safetensors").display().to_string();
    let generated = Command::new(env!("CARGO_BIN_EXE_infinity-run"))
        .args(["-p", "a cat", "--transformer", &params, "--vae", &f("devC/vae.safetensors"), "--pn", "0.06M"])
        .args(["--t5", &f("devC/t5_encoder.safetensors"), "--t5-config", &f("devC/t5_config.json")])
        .args(["--tokenizer", &f("tokenizer/tokenizer.json"), "-o", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    fs::remove_dir_all(&dir).unwrap();
}

/// Starts `infinity-train transformer args` and kills it without warning (SIGKILL) at
/// whatever point it has reached once its first checkpoint is complete (`out/latest.json`).
fn kill_after_first_checkpoint(args: &[String], out: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infinity-train"))
        .arg("transformer")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !out.join("latest.json").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A run killed without warning (SIGKILL) at whatever point it has reached after its first
/// checkpoint, then started again with the same command, ends with the losses of an unbroken run.
#[test]
fn a_killed_run_resumes_to_the_losses_of_an_unbroken_one() {
    let dir = temp_dir("kill");
    let (data, model) = setup(&dir);
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    fine_tune(&data, &model, &whole, 6);
    kill_after_first_checkpoint(&fine_tune_args(&data, &model, &killed, 6), &killed);
    let resumed = fine_tune(&data, &model, &killed, 6);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resuming"));
    assert_eq!(losses(&metrics(&whole)), losses(&metrics(&killed)));
    fs::remove_dir_all(&dir).unwrap();
}

/// A from-scratch run with a tiny configuration file and the models given file by file, on
/// the official jsonl layout (a folder with a `.jsonl` file is read as one, whatever else it
/// holds: here two of its four images are listed).
#[test]
fn a_tiny_model_trains_from_scratch() {
    let dir = temp_dir("scratch");
    let (data, _) = setup(&dir);
    let lines: String = (0..2)
        .map(|i| {
            format!("{}\n", json!({ "image_path": format!("img{i}.png"), "h_div_w": 1.0, "long_caption": "stripes." }))
        })
        .collect();
    fs::write(data.join("1.000_000002.jsonl"), lines).unwrap();
    let out = dir.join("out");
    let run = train_tiny(&dir, &data, &out, &["--batch", "1", "--steps", "1"]);
    assert!(String::from_utf8_lossy(&run.stdout).contains(" 2 items "));
    assert_eq!(losses(&metrics(&out)).len(), 1);
    // Saved after the last step even though --save-every is larger.
    assert!(out.join("latest.json").exists());
    fs::remove_dir_all(&dir).unwrap();
}

/// The arguments of a tiny transformer from scratch (head dim 64, which the device kernels
/// take) on `data`, with the devA VAE and T5 given file by file, into `out`, with `extra` flags.
fn tiny_args(dir: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let config = dir.join("tiny.json");
    let tiny = json!({
        "depth": 1, "embed_dim": 128, "num_heads": 2, "mlp_hidden": 256, "text_channels": 128,
        "bits": 32, "block_chunks": 1, "text_maxlen": 64,
    });
    fs::write(&config, tiny.to_string()).unwrap();
    let f = |rel: &str| fixture(rel).display().to_string();
    let (vae, t5, t5_config, tokenizer) = (
        f("devA/vae.safetensors"),
        f("devA/t5_encoder.safetensors"),
        f("devA/t5_config.json"),
        f("tokenizer/tokenizer.json"),
    );
    let mut args = vec!["--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--vae", &vae];
    args.extend(["--t5", &t5, "--t5-config", &t5_config, "--tokenizer", &tokenizer, "--pn", "0.06M"]);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    args.into_iter().map(String::from).collect()
}

/// Trains [`tiny_args`]' model.
fn train_tiny(dir: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = tiny_args(dir, data, out, extra);
    let run = train(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&run.stderr));
    run
}

/// The flags of a [`tiny_args`] run on `device` up to `steps`, two images a step, saving
/// after each.
fn tiny_flags(steps: u64, device: &str) -> Vec<String> {
    let flags = ["--batch", "2", "--steps", &steps.to_string(), "--save-every", "1", "--lr", "1e-3", "--seed", "5"]
        .map(String::from);
    [&flags[..], &["--device".to_string(), device.to_string()]].concat()
}

/// [`train_tiny`] with [`tiny_flags`].
fn tiny_on(dir: &Path, data: &Path, out: &Path, steps: u64, device: &str) -> Output {
    let flags = tiny_flags(steps, device);
    train_tiny(dir, data, out, &flags.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `--device shim` (the GPU's kernels on the CPU): every step on the device. Killed without
/// warning (SIGKILL) during its second step and started again, a run gives the unbroken run's
/// losses bit for bit; a run started on the CPU resumes on the device, following the CPU's
/// losses to the precision of the device's bf16 GEMM operands. (The shim runs a step of this
/// tiny model in ~50 s, so the runs are short.)
#[test]
fn a_run_on_the_shim_device_resumes_exactly_and_changes_devices() {
    let dir = temp_dir("device");
    let (data, _) = setup(&dir);
    let whole = dir.join("whole");
    let run = tiny_on(&dir, &data, &whole, 2, "shim");
    assert!(String::from_utf8_lossy(&run.stdout).contains("on CPU shim"), "{}", String::from_utf8_lossy(&run.stdout));
    let killed = dir.join("killed");
    let flags = tiny_flags(2, "shim");
    kill_after_first_checkpoint(
        &tiny_args(&dir, &data, &killed, &flags.iter().map(String::as_str).collect::<Vec<_>>()),
        &killed,
    );
    let resumed = tiny_on(&dir, &data, &killed, 2, "shim");
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resuming"));
    assert_eq!(losses(&metrics(&whole)), losses(&metrics(&killed)));

    let (cpu, moved) = (dir.join("cpu"), dir.join("moved"));
    tiny_on(&dir, &data, &cpu, 2, "cpu");
    tiny_on(&dir, &data, &moved, 1, "cpu");
    tiny_on(&dir, &data, &moved, 2, "shim");
    let on_cpu = losses(&metrics(&cpu));
    assert_eq!(losses(&metrics(&moved))[0], on_cpu[0], "the CPU's first step");
    let value = |l: &String| l.parse::<f32>().unwrap();
    for run in [&moved, &whole] {
        for (step, (got, want)) in losses(&metrics(run)).iter().zip(&on_cpu).enumerate() {
            let rel = ((value(got) - value(want)) / value(want)).abs();
            assert!(rel <= 1.0 / 64.0, "{}: step {} loss {got} vs the CPU's {want}", run.display(), step + 1);
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// Arguments training a tiny transformer and, from random weights, a T5 of devA's shape with
/// it on the fixture data (`extra` appended).
fn joint_args(data: &Path, config: &Path, out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let f = |rel: &str| fixture(rel).display().to_string();
    let mut args: Vec<String> = vec![
        "--data".into(),
        data.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--vae".into(),
        f("devA/vae.safetensors"),
        "--t5-config".into(),
        f("devA/t5_config.json"),
        "--tokenizer".into(),
        f("tokenizer/tokenizer.json"),
        "--train-text-encoder".into(),
        "--batch".into(),
        "2".into(),
        "--save-every".into(),
        "2".into(),
        "--lr".into(),
        "1e-3".into(),
        "--out".into(),
        out.display().to_string(),
        "--steps".into(),
        steps.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(args: &[String]) -> Output {
    let out = train(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The text encoder trains from scratch with the transformer: its parameters are saved in the
/// run's checkpoints and move, a resumed run continues exactly, and caching the frozen VAE's
/// latents changes no number.
#[test]
fn a_text_encoder_trains_with_the_transformer() {
    use infinity::runtime::DType;
    use infinity::runtime::io::Weights;

    let dir = temp_dir("joint");
    let (data, _) = setup(&dir);
    let config = dir.join("tiny.json");
    let tiny = json!({
        "depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_hidden": 128, "text_channels": 128,
        "bits": 32, "block_chunks": 1, "text_maxlen": 64,
    });
    fs::write(&config, tiny.to_string()).unwrap();
    let (whole, parts, cached) = (dir.join("whole"), dir.join("parts"), dir.join("cached"));
    run_ok(&joint_args(&data, &config, &whole, 4, &[]));
    run_ok(&joint_args(&data, &config, &parts, 2, &[]));
    run_ok(&joint_args(&data, &config, &parts, 4, &[]));
    run_ok(&joint_args(&data, &config, &cached, 4, &["--cache-latents"]));
    assert_eq!(losses(&metrics(&whole)).len(), 4);
    assert_eq!(metrics(&whole), metrics(&parts));
    assert_eq!(metrics(&whole), metrics(&cached));

    let key = "text_encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    let at = |step: u64| {
        let w = Weights::open(whole.join(format!("step-{step:09}/params.safetensors"))).unwrap();
        w.get(key).unwrap().to_f32_vec().unwrap()
    };
    assert_ne!(at(2), at(4), "the text encoder's parameters are trained");

    // The run becomes a model folder that infinity-run generates from.
    let model = dir.join("model");
    let f = |rel: &str| fixture(rel).display().to_string();
    // Exports the run with the BitVAE and the T5 config of fixture sets `vae_set` and
    // `t5_set` into `to`.
    let export_with = |vae_set: &str, t5_set: &str, to: &Path| {
        let vae = f(&format!("{vae_set}/vae.safetensors"));
        let (t5_config, tokenizer) = (f(&format!("{t5_set}/t5_config.json")), f("tokenizer/tokenizer.json"));
        let mut args = vec!["export", "--run", whole.to_str().unwrap(), "--vae", vae.as_str()];
        args.extend(["--t5-config", &t5_config, "--tokenizer", &tokenizer, "--out", to.to_str().unwrap()]);
        Command::new(env!("CARGO_BIN_EXE_infinity-train")).args(&args).output().unwrap()
    };
    let export = |vae_set: &str, to: &Path| export_with(vae_set, "devA", to);
    let out = export("devA", &model);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t5 = Weights::open(model.join("t5.safetensors")).unwrap();
    assert!(t5.iter().all(|(k, _)| !k.starts_with("text_encoder.")));
    let trained = Weights::open(whole.join("step-000000004/params.safetensors")).unwrap();
    assert!(t5.get(key.trim_start_matches("text_encoder.")).unwrap().same_values(trained.get(key).unwrap()));
    let png = dir.join("out.png");
    let generated = Command::new(env!("CARGO_BIN_EXE_infinity-run"))
        .args(["-p", "a cat", "--model-dir", model.to_str().unwrap(), "-o", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    assert!(png.exists());

    // --weights bf16: linear weights, tables and kernels halved, the rest kept (the transformer's
    // level embedding and attention scales, T5's position bias), and the folder generates.
    let half = dir.join("model-bf16");
    let (vae, t5_config, tokenizer) =
        (f("devA/vae.safetensors"), f("devA/t5_config.json"), f("tokenizer/tokenizer.json"));
    let args = ["export", "--run", whole.to_str().unwrap(), "--vae", &vae, "--t5-config", &t5_config];
    let out = Command::new(env!("CARGO_BIN_EXE_infinity-train"))
        .args(args)
        .args(["--tokenizer", &tokenizer, "--weights", "bf16", "--out", half.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["transformer.safetensors", "t5.safetensors", "vae.safetensors"] {
        let (full, narrow) = (Weights::open(model.join(file)).unwrap(), Weights::open(half.join(file)).unwrap());
        assert_eq!(full.iter().len(), narrow.iter().len(), "{file}");
        for (key, t) in full.iter() {
            let n = narrow.get(key).unwrap();
            let computed_in_half = match file {
                "transformer.safetensors" => t.rank() == 2 && key.ends_with(".weight") && key != "lvl_embed.weight",
                "t5.safetensors" => t.rank() == 2 && !key.contains("relative_attention_bias"),
                _ => t.rank() == 4,
            };
            let half = t.dtype() == DType::F32 && computed_in_half;
            assert_eq!((n.shape(), n.dtype()), (t.shape(), if half { DType::BF16 } else { t.dtype() }), "{key}");
            if t.dtype() != DType::F32 {
                continue;
            }
            let (a, b) = (t.to_f32_vec().unwrap(), n.to_f32_vec().unwrap());
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= x.abs() / 256.0), "{file}: {key} rounded");
        }
        let size = |dir: &Path| fs::metadata(dir.join(file)).unwrap().len();
        assert!(size(&half) * 10 < size(&model) * 6, "{file}: {} against {} bytes", size(&half), size(&model));
    }
    let generated = Command::new(env!("CARGO_BIN_EXE_infinity-run"))
        .args(["-p", "a cat", "--model-dir", half.to_str().unwrap(), "-o", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));

    // A folder is only a model folder once it loads: a transformer that does not fit the VAE
    // leaves no config.json.
    let wrong = dir.join("wrong");
    let out = export("devB", &wrong);
    assert_eq!(out.status.code(), Some(2));
    assert!(!wrong.join("config.json").exists());

    // Exported again over it with a T5 config its text encoder does not fit (found only by
    // loading what was written): the model folder stays as it was, and no staging is left.
    let files = |dir: &Path| {
        let mut all: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        all.sort();
        all.into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect::<Vec<_>>()
    };
    let before = files(&model);
    let out = export_with("devA", "devB", &model);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(files(&model) == before, "a failed export changed the model folder");
    fs::remove_dir_all(&dir).unwrap();
}

/// `eval` scores every item of a folder once with the model folder's own parts, and refuses
/// what it cannot score in one line with exit code 2.
#[test]
fn eval_scores_a_model_folder_on_a_dataset() {
    let dir = temp_dir("eval");
    let (data, model) = setup(&dir);
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model-dir", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_infinity-train")).args(&args).output().unwrap()
    };
    let out = eval(&["--batch", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.starts_with("4 items (0 of 4 images skipped)"), "{report}");
    let accuracy = report.split("bit accuracy [").nth(1).and_then(|r| r.split(']').next()).unwrap();
    let values: Vec<f32> = accuracy.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(values.len(), 7, "{report}");
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "{report}");
    // Batching changes nothing but the grouping.
    let again = String::from_utf8(eval(&["--batch", "4"]).stdout).unwrap();
    assert_eq!(again.split(": loss").nth(1), report.split(": loss").nth(1));

    let refused = eval(&["--batch", "0"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--batch"));
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = temp_dir("errors");
    let (data, model) = setup(&dir);
    let out = dir.join("out");
    let f = |rel: &str| fixture(rel).display().to_string();
    let missing = dir.join("no-such-folder");
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--preset".into(),
                "layer12".into(),
                "--vae".into(),
                f("devA/vae.safetensors"),
                "--t5-config".into(),
                f("devA/t5_config.json"),
                "--tokenizer".into(),
                f("tokenizer/tokenizer.json"),
            ],
            "--t5 is required without --model-dir, unless --train-text-encoder",
        ),
        (
            vec!["--data".into(), missing.display().to_string(), "--model-dir".into(), model.display().to_string()],
            "data folder",
        ),
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--preset".into(),
                "layer13".into(),
                "--vae".into(),
                f("devA/vae.safetensors"),
                "--t5".into(),
                f("devA/t5_encoder.safetensors"),
                "--t5-config".into(),
                f("devA/t5_config.json"),
                "--tokenizer".into(),
                f("tokenizer/tokenizer.json"),
            ],
            "unknown --preset 'layer13'",
        ),
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--model-dir".into(),
                model.display().to_string(),
                "--batch".into(),
                "0".into(),
            ],
            "--batch",
        ),
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--model-dir".into(),
                model.display().to_string(),
                "--cond-drop".into(),
                "1.5".into(),
            ],
            "--cond-drop",
        ),
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--model-dir".into(),
                model.display().to_string(),
                "--accumulate".into(),
                "0".into(),
            ],
            "--accumulate must be at least 1",
        ),
        (
            vec![
                "--data".into(),
                data.display().to_string(),
                "--model-dir".into(),
                model.display().to_string(),
                "--zero".into(),
                "2".into(),
            ],
            "--zero 2: the stages are 0",
        ),
    ];
    // Without a GPU, `--device cuda` is refused before anything is written.
    if !matches!(infinity::cuda::probe(), infinity::cuda::Availability::Available { .. }) {
        let args = ["--data", data.to_str().unwrap(), "--model-dir", model.to_str().unwrap(), "--device", "cuda"];
        cases.push((args.map(String::from).to_vec(), "--device cuda:0: "));
    }
    for (args, want) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--out", out.to_str().unwrap()]);
        common::assert_refused(&train(&args), want);
        assert!(!out.exists(), "nothing is written before the arguments are checked");
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// The run behind the command, in the library: a Progress sees the opening line, each step
/// and each checkpoint; the outcome says which steps were taken; run again, it has nothing
/// left to do and says so.
#[test]
fn the_library_run_reports_its_progress_and_outcome() {
    use infinity::models::run::{Outcome, Progress};
    use infinity::runtime::collective::Single;

    #[derive(Default)]
    struct Seen(Vec<String>);
    impl Progress for Seen {
        fn start(&mut self, intro: &str, from: u64, to: u64) {
            self.0.push(format!("start {from} {to} {}", intro.starts_with("starting from")));
        }
        fn step(&mut self, step: u64, status: &str) {
            self.0.push(format!("step {step} {}", status.starts_with("loss ")));
        }
        fn note(&mut self, line: &str) {
            self.0.push(line.split(' ').next().unwrap().to_string());
        }
    }

    let dir = temp_dir("library");
    let (data, _) = setup(&dir);
    let out = dir.join("out");
    let mut run = tiny_transformer_run(&data, &out, 2, 2);
    run.run.keep = 1;
    run.weight_decay = 0.0;
    (run.bsc_strength, run.cond_drop) = (0.3, 0.1);
    (run.cache_latents, run.recompute_blocks) = (true, true);
    let mut seen = Seen::default();
    let outcome = run.train(&Single, &mut seen).unwrap();
    assert!(matches!(outcome, Outcome::Trained { from: 0, to: 2, .. }), "{outcome:?}");
    assert_eq!(seen.0, ["start 0 2 true", "step 1 true", "saved", "step 2 true", "saved"]);
    let log = fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.starts_with("$ the test\nstarting from the official initialisation"), "{log}");
    assert!(log.ends_with(&format!("{outcome}\n")), "{log}");
    assert_eq!(run.train(&Single, &mut Seen::default()).unwrap(), Outcome::AlreadyDone { step: 2 });
    // One checkpoint kept.
    let kept =
        fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("step-"));
    assert_eq!(kept.count(), 1);
    fs::remove_dir_all(&dir).unwrap();
}
