//! The misuse matrix of both binaries: rows over every flag that takes a value, each a command
//! line a user could get wrong (a missing, unreadable or wrong-kind file, mismatched models, an
//! impossible size, an out-of-range or malformed number, an output folder that does not
//! exist). Each must end with exactly one line `error: …` naming the culprit, exit code 2, no
//! panic and no output file.
//! Then the faults met while writing (a read-only folder, a full disk): the same one line, no
//! partial file, and a run folder whose checkpoints are intact and resume as if nothing happened.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;

struct Row {
    bin: &'static str,
    args: Vec<String>,
    /// What the one error line must name.
    culprit: &'static str,
}

fn rows(dir: &Path) -> Vec<Row> {
    let f = |rel: &str| fixture(rel).display().to_string();
    let out = dir.join("never.png").display().to_string();
    let missing = dir.join("missing.safetensors").display().to_string();
    let text_file = dir.join("not-weights.safetensors");
    std::fs::write(&text_file, "hello").unwrap();
    let text_file = text_file.display().to_string();
    let folder = dir.display().to_string();
    let nowhere = dir.join("no-such-folder").join("out.png").display().to_string();
    let run_folder = dir.join("run");
    std::fs::create_dir_all(&run_folder).unwrap();
    std::fs::write(run_folder.join("metrics.csv"), "step,loss,lr,grad_norm\n1,0.69,1e-3,1.0\n2,0.68,1e-3,1.0\n")
        .unwrap();
    let run_folder = run_folder.display().to_string();
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "hello").unwrap();
    let bad_json = bad_json.display().to_string();
    let data = dir.join("data");
    captioned_image(&data);
    let data = data.display().to_string();
    let train_out = dir.join("train-out").display().to_string();
    let model = f("devA");
    let run = |args: &[&str], culprit: &'static str| Row {
        bin: env!("CARGO_BIN_EXE_infinity-run"),
        args: args.iter().map(|s| s.to_string()).collect(),
        culprit,
    };
    let train = |args: &[&str], culprit: &'static str| Row {
        bin: env!("CARGO_BIN_EXE_infinity-train"),
        args: args.iter().map(|s| s.to_string()).collect(),
        culprit,
    };
    let gen_ = |extra: &[&str], culprit: &'static str| {
        let mut args = vec!["-p", "a red cat", "--model-dir", &model, "-o", &out];
        args.extend(extra);
        run(&args, culprit)
    };
    // devA's models given file by file, each replaceable.
    let (vae, t5, t5_config, tokenizer) = (
        f("devA/vae.safetensors"),
        f("devA/t5_encoder.safetensors"),
        f("devA/t5_config.json"),
        f("tokenizer/tokenizer.json"),
    );
    let files = |replace: &[(&str, &str)]| {
        let mut files = vec![
            ("--transformer", f("devA/transformer.safetensors")),
            ("--vae", vae.clone()),
            ("--t5", t5.clone()),
            ("--t5-config", t5_config.clone()),
            ("--tokenizer", tokenizer.clone()),
        ];
        for (flag, value) in replace {
            files.iter_mut().filter(|(f, _)| f == flag).for_each(|(_, v)| *v = value.to_string());
        }
        files.retain(|(_, v)| !v.is_empty());
        files.into_iter().flat_map(|(f, v)| [f.to_string(), v]).collect::<Vec<_>>()
    };
    let gen_files = |replace: &[(&str, &str)], culprit: &'static str| {
        let mut args: Vec<String> = ["-p", "x", "-o", &out].map(String::from).to_vec();
        args.extend(files(replace));
        Row { bin: env!("CARGO_BIN_EXE_infinity-run"), args, culprit }
    };
    let tune = |extra: &[&str], culprit: &'static str| {
        let mut args = vec!["transformer", "--data", &data, "--model-dir", &model, "--out", &train_out];
        args.extend(extra);
        train(&args, culprit)
    };
    // From scratch with a preset unless `extra` says otherwise.
    let scratch = |extra: &[&str], replace: &[(&str, &str)], culprit: &'static str| {
        let mut args: Vec<String> = ["transformer", "--data", &data, "--out", &train_out].map(String::from).to_vec();
        if !extra.iter().any(|a| ["--preset", "--config", "--init"].contains(a)) {
            args.extend(["--preset", "layer12"].map(String::from));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(files(&[&[("--transformer", "")], replace].concat()));
        Row { bin: env!("CARGO_BIN_EXE_infinity-train"), args, culprit }
    };
    let vae_run = |extra: &[&str], culprit: &'static str| {
        let mut args = vec!["vae", "--data", &data, "--preset", "d16", "--out", &train_out];
        args.extend(extra);
        train(&args, culprit)
    };
    let export = |replace: &[(&str, &str)], culprit: &'static str| {
        let params = f("devA/transformer.safetensors");
        let mut args: Vec<String> = ["export", "--run", &params, "--out", &train_out].map(String::from).to_vec();
        args.extend(files(&[&[("--transformer", "")], replace].concat()));
        Row { bin: env!("CARGO_BIN_EXE_infinity-train"), args, culprit }
    };
    vec![
        gen_(&["--tau", "-1"], "--tau"),
        gen_(&["--tau", "0.5,1"], "--tau"),
        gen_(&["--cfg", "nan"], "--cfg"),
        gen_(&["--top-k", "-1"], "--top-k"),
        gen_(&["--grid", "0"], "--grid"),
        gen_files(&[("--vae", &f("devB/vae.safetensors"))], "devB/vae.safetensors"),
        // The 8B's kind (devC) paired with a plain model, both ways.
        gen_files(&[("--vae", &f("devC/vae.safetensors"))], "fits only a spatially patchified transformer"),
        gen_files(
            &[("--transformer", &f("devC/transformer.safetensors")), ("--t5", &f("devC/t5_encoder.safetensors"))],
            "devA/vae.safetensors",
        ),
        gen_files(&[("--t5-config", &bad_json)], "bad.json"),
        gen_files(&[("--tokenizer", &bad_json)], "bad.json"),
        gen_files(&[("--tokenizer", &f("devA/t5_config.json"))], "t5_config.json"),
        gen_files(&[("--t5", &missing)], "missing.safetensors"),
        gen_files(&[("--t5", &text_file)], "not-weights.safetensors"),
        gen_files(&[("--vae", "")], "--vae"),
        run(&["reconstruct", "--vae", &vae, "--image-list", &missing, "-o", &out], "missing.safetensors"),
        run(&["reconstruct", "--vae", &vae, "--image", &f("emoji/1f600.png"), "--pn", "3M", "-o", &out], "--pn"),
        run(&["reconstruct", "--vae", &vae, "--image", &f("emoji/1f600.png"), "--grid", "0", "-o", &out], "--grid"),
        run(
            &["reconstruct", "--vae", &vae, "--image", &f("emoji/1f600.png"), "--device", "tpu", "-o", &out],
            "--device",
        ),
        run(&["reconstruct", "--vae", &vae, "-o", &out], "--image"),
        run(&["reconstruct", "--vae", &vae, "--image", &f("emoji/1f600.png"), "-o", &nowhere], "no-such-folder"),
        run(
            &["reconstruct", "--vae", &f("devA/transformer.safetensors"), "--image", &f("emoji/1f600.png"), "-o", &out],
            "transformer.safetensors",
        ),
        tune(&["--steps", "0"], "--steps"),
        tune(&["--save-every", "0"], "--save-every"),
        tune(&["--keep", "0"], "--keep"),
        tune(&["--warmup-steps", "-1"], "--warmup-steps"),
        tune(&["--wd", "-1"], "--wd"),
        tune(&["--clip", "-1"], "--clip"),
        tune(&["--bsc-strength", "2"], "--bsc-strength"),
        tune(&["--cond-drop", "1.5"], "--cond-drop"),
        tune(&["--pn", "9M"], "--pn"),
        tune(&["--seed", "abc"], "--seed"),
        tune(&["--vae", &vae], "--vae"),
        tune(&["--device", "cuda:x"], "--device"),
        tune(&["--gpus", "2"], "--gpus"),
        tune(&["--gpus", "0"], "--gpus"),
        tune(&["--gpus", "2", "--device", "cuda"], "--gpus"),
        scratch(&["--preset", "layer99"], &[], "--preset"),
        scratch(&["--config", &bad_json], &[], "bad.json"),
        scratch(&["--init", &text_file, "--batch", "1"], &[], "not-weights.safetensors"),
        scratch(&[], &[("--vae", &missing)], "missing.safetensors"),
        scratch(&[], &[("--t5", "")], "--t5"),
        scratch(&[], &[("--tokenizer", "")], "--tokenizer"),
        scratch(&["--batch", "1"], &[("--t5-config", &bad_json)], "bad.json"),
        scratch(&[], &[], "--batch"),
        vae_run(&["--batch", "0"], "--batch"),
        vae_run(&["--lr", "0"], "--lr"),
        vae_run(&["--wd", "2"], "--wd"),
        vae_run(&["--commit-weight", "-1"], "--commit-weight"),
        vae_run(&["--entropy-weight", "-1"], "--entropy-weight"),
        vae_run(&["--inv-temperature", "0"], "--inv-temperature"),
        vae_run(&["--disc-channels", "0"], "--disc-channels"),
        vae_run(&["--warmup-steps", "-2"], "--warmup-steps"),
        train(&["vae", "--data", &data, "--config", &bad_json, "--out", &train_out], "bad.json"),
        export(&[("--vae", &missing)], "missing.safetensors"),
        export(&[("--t5-config", &bad_json)], "bad.json"),
        export(&[("--tokenizer", &bad_json)], "bad.json"),
        export(&[("--t5", &missing)], "missing.safetensors"),
        train(&["export", "--run", &f("devA/transformer.safetensors"), "--pn", "9M"], "--pn"),
        vae_run(&["--disc-start", "-1"], "--disc-start"),
        train(&["eval", "--model-dir", &missing, "--data", &data], "missing.safetensors"),
        gen_(&["--pn", "5M"], "--pn"),
        gen_(&["--ratio", "0:1"], "--ratio"),
        gen_(&["--ratio", "wide"], "--ratio"),
        gen_(&["--top-k", "abc"], "--top-k"),
        gen_(&["--top-p", "1.5"], "--top-p"),
        gen_(&["--cfg", "x"], "--cfg"),
        gen_(&["--batch", "0"], "--batch"),
        gen_(&["--seed", "-3"], "--seed"),
        gen_(&["--device", "tpu"], "--device"),
        gen_(&["--prompt-file", &missing], "missing.safetensors"),
        run(&["-p", "x", "--model-dir", &missing, "-o", &out], "missing.safetensors"),
        run(&["-p", "x", "--model-dir", &model, "-o", &nowhere], "no-such-folder"),
        train(&["plot", "--run", &run_folder, "--out", &nowhere], "no-such-folder"),
        run(&["-p", "x", "--model-dir", &text_file, "-o", &out], "not-weights.safetensors"),
        run(
            &[
                "-p",
                "x",
                "--transformer",
                &text_file,
                "--vae",
                &f("devA/vae.safetensors"),
                "--t5",
                &f("devA/t5_encoder.safetensors"),
                "--t5-config",
                &f("devA/t5_config.json"),
                "--tokenizer",
                &f("tokenizer/tokenizer.json"),
                "-o",
                &out,
            ],
            "not-weights.safetensors",
        ),
        run(&["inspect", &missing], "missing.safetensors"),
        run(&["inspect", &text_file], "not-weights.safetensors"),
        run(&["inspect", &folder], "misuse"),
        run(
            &["reconstruct", "--vae", &f("devA/vae.safetensors"), "--image", &missing, "-o", &out],
            "missing.safetensors",
        ),
        run(
            &["reconstruct", "--vae", &text_file, "--image", &f("emoji/1f600.png"), "-o", &out],
            "not-weights.safetensors",
        ),
        run(
            &["reconstruct", "--vae", &f("devA/vae.safetensors"), "--image", &text_file, "-o", &out],
            "not-weights.safetensors",
        ),
        run(&["unknown-command-or-prompt-flag", "--frobnicate"], "unexpected argument"),
        train(
            &["transformer", "--data", &folder, "--model-dir", &model, "--out", &folder, "--batch", "abc"],
            "--batch",
        ),
        train(&["transformer", "--data", &missing, "--model-dir", &model, "--out", &folder], "missing.safetensors"),
        train(&["transformer", "--data", &folder, "--model-dir", &model, "--out", &folder, "--lr", "-1"], "--lr"),
        train(
            &["transformer", "--data", &folder, "--model-dir", &model, "--out", &folder, "--betas", "0.9"],
            "--betas",
        ),
        train(
            &["transformer", "--data", &folder, "--model-dir", &model, "--out", &folder, "--accumulate", "0"],
            "--accumulate",
        ),
        train(
            &["transformer", "--data", &folder, "--model-dir", &model, "--out", &folder, "--device", "gpu7"],
            "--device",
        ),
        train(&["transformer", "--data", &folder], "--out"),
        train(&["vae", "--data", &folder, "--preset", "d99", "--out", &folder], "--preset"),
        train(&["vae", "--data", &folder, "--preset", "d16", "--stage", "3", "--out", &folder], "--stage"),
        train(&["vae", "--data", &folder, "--init", &missing, "--out", &folder], "missing.safetensors"),
        train(
            &["vae", "--data", &folder, "--preset", "d16", "--crop", "17", "--stage", "1", "--out", &folder],
            "--crop",
        ),
        train(&["vae", "--data", &folder, "--preset", "d16", "--disc-weight", "-1", "--out", &folder], "--disc-weight"),
        train(
            &[
                "export",
                "--run",
                &missing,
                "--vae",
                &f("devA/vae.safetensors"),
                "--t5-config",
                &f("devA/t5_config.json"),
                "--tokenizer",
                &f("tokenizer/tokenizer.json"),
                "--out",
                &folder,
            ],
            "missing.safetensors",
        ),
        train(&["eval", "--model-dir", &model, "--data", &missing], "missing.safetensors"),
        train(&["eval", "--model-dir", &model, "--data", &folder, "--batch", "0"], "--batch"),
        train(&["plot", "--run", &missing, "--out", &out], "missing.safetensors"),
    ]
}

/// A data folder of one 256×256 image and its caption.
fn captioned_image(data: &Path) {
    if !data.exists() {
        fs::create_dir_all(data).unwrap();
        let rgb: Vec<u8> = (0..256 * 256 * 3).map(|p| (p * 7 % 251) as u8).collect();
        infinity::models::image::save_png(&data.join("a.png"), 256, 256, &rgb, &[]).unwrap();
        fs::write(data.join("a.txt"), "stripes").unwrap();
    }
}

#[test]
fn every_misuse_is_one_line_naming_its_culprit_with_exit_code_2() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("misuse");
    std::fs::create_dir_all(&dir).unwrap();
    let rows = rows(&dir);
    let mut failures = Vec::new();
    for row in &rows {
        let o = Command::new(row.bin).args(&row.args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
        let ok = o.status.code() == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains(row.culprit)
            && !err.contains("panicked")
            && !dir.join("never.png").exists()
            && !dir.join("never_0000.png").exists();
        if !ok {
            failures.push(format!("{:?} → exit {:?}: {err}", row.args, o.status.code()));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows:\n{}", failures.len(), rows.len(), failures.join("\n"));
    eprintln!("{} misuse rows checked", rows.len());
}

/// How a child process meets the file system.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Folders with mode 0555 are read-only to it (as root, it runs as `nobody`: root ignores
    /// mode bits).
    ReadOnly,
    /// Every file it writes ends at this many bytes: the next write fails part-way with
    /// `EFBIG`, as one on a full disk fails with `ENOSPC` (RLIMIT_FSIZE, its signal ignored).
    FullAfter(u64),
}

fn run_with(bin: &str, args: &[String], fault: Fault) -> Output {
    let mut command = Command::new(bin);
    command.args(args);
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            match fault {
                Fault::None => {}
                Fault::ReadOnly => {
                    if libc::geteuid() == 0 {
                        check(libc::setgroups(0, std::ptr::null()))?;
                        check(libc::setgid(NOBODY))?;
                        check(libc::setuid(NOBODY))?;
                    }
                }
                Fault::FullAfter(bytes) => {
                    if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                    check(libc::setrlimit(libc::RLIMIT_FSIZE, &limit))?;
                }
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

const NOBODY: libc::uid_t = 65534;

/// The run's stderr must be one line `error: …` naming `culprit`, exit code 2, no panic.
fn assert_one_line_error(o: &Output, culprit: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert!(
        o.status.code() == Some(2) && lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains(culprit),
        "{what}: exit {:?}, stderr: {err}",
        o.status.code()
    );
}

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), fs::read(&path).unwrap());
        }
    }
    files
}

fn set_mode(dir: &Path, mode: u32) {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            set_mode(&path, mode);
        }
    }
}

/// One 256×256 captioned image, and the arguments that fine-tune the devA model folder on it
/// for `steps` steps into `out`, saving after each.
fn fine_tune_args(dir: &Path, out: &Path, steps: u64) -> Vec<String> {
    let data = dir.join("data");
    captioned_image(&data);
    let model = fixture("devA");
    let args = [
        "transformer",
        "--data",
        data.to_str().unwrap(),
        "--model-dir",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--batch",
        "1",
        "--save-every",
        "1",
        "--seed",
        "1",
    ];
    args.map(String::from).to_vec()
}

fn losses(run: &Path) -> Vec<String> {
    let csv = fs::read_to_string(run.join("metrics.csv")).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').take(2).collect::<Vec<_>>().join(",")).collect()
}

/// A read-only output folder and a disk that fills during a write, for an image and for a
/// training run's checkpoint: one line naming what could not be written, exit code 2, no file
/// left behind (not even a temporary one), the run's saved checkpoints untouched, and the same
/// command run again afterwards ends as an unbroken run does.
#[test]
fn write_faults_leave_no_partial_file_and_no_damaged_checkpoint() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("write-faults");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    set_mode(&dir, 0o755);
    let (run_bin, train_bin) = (env!("CARGO_BIN_EXE_infinity-run"), env!("CARGO_BIN_EXE_infinity-train"));
    let model = fixture("devA");
    let generate = |out: &Path| {
        let args = ["-p", "a red cat", "--model-dir", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.map(String::from).to_vec()
    };

    // An image into a read-only folder: refused before the models load.
    let locked = dir.join("locked");
    fs::create_dir_all(&locked).unwrap();
    set_mode(&locked, 0o555);
    let o = run_with(run_bin, &generate(&locked.join("cat.png")), Fault::ReadOnly);
    assert_one_line_error(&o, "locked", "an image into a read-only folder");
    assert!(String::from_utf8_lossy(&o.stdout).lines().all(|l| !l.starts_with("loaded models")));
    assert!(snapshot(&locked).is_empty());

    // An image onto a full disk: the PNG's write fails part-way.
    let full = dir.join("full");
    fs::create_dir_all(&full).unwrap();
    let o = run_with(run_bin, &generate(&full.join("cat.png")), Fault::FullAfter(4096));
    assert_one_line_error(&o, "cat.png", "an image onto a full disk");
    assert!(snapshot(&full).is_empty(), "{:?}", snapshot(&full).keys());

    // A run saved at step 1, resumed to step 2 on a full disk (its step-2 checkpoint cannot be
    // written), then on a read-only run folder, then with room: it must end as an unbroken run.
    let unbroken = dir.join("unbroken");
    assert!(run_with(train_bin, &fine_tune_args(&dir, &unbroken, 2), Fault::None).status.success());
    let run = dir.join("run");
    let o = run_with(train_bin, &fine_tune_args(&dir, &run, 1), Fault::None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let is_checkpoint = |p: &PathBuf| !p.ends_with("train.log") && !p.ends_with("metrics.csv");
    let saved: Vec<_> = snapshot(&run).into_iter().filter(|(p, _)| is_checkpoint(p)).collect();
    let o = run_with(train_bin, &fine_tune_args(&dir, &run, 2), Fault::FullAfter(64 << 10));
    assert_one_line_error(&o, "run", "a checkpoint onto a full disk");
    let after: Vec<_> = snapshot(&run).into_iter().filter(|(p, _)| is_checkpoint(p)).collect();
    assert!(
        saved == after,
        "the full disk changed the run's files: {:?}",
        after.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    set_mode(&run, 0o555);
    let o = run_with(train_bin, &fine_tune_args(&dir, &run, 2), Fault::ReadOnly);
    set_mode(&run, 0o755);
    assert_one_line_error(&o, "run", "a run in a read-only folder");
    let after: Vec<_> = snapshot(&run).into_iter().filter(|(p, _)| is_checkpoint(p)).collect();
    assert!(saved == after, "the read-only run's files changed");

    let o = run_with(train_bin, &fine_tune_args(&dir, &run, 2), Fault::None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&run), losses(&unbroken));
    fs::remove_dir_all(&dir).unwrap();
}
