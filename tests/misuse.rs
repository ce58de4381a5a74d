//! The misuse matrix of both binaries: every row a command line a user could get wrong (a
//! missing, unreadable or wrong-kind file, mismatched models, an impossible size, an
//! out-of-range or malformed number, an output folder that does not exist). Each must end with
//! exactly one line `error: …` naming the culprit, exit code 2, no panic and no output file.

mod common;

use std::path::Path;
use std::process::Command;

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
    vec![
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
