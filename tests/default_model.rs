//! The shipped default model (assets/models/default, trained by scripts/default-model.sh): it
//! stays within the budget the repository allows, README command 1 runs it with no model
//! named, and its pictures follow their prompts.

use std::path::Path;
use std::process::Command;

use infinity::models::image::{load_rgb, to_tensor};
use infinity::models::infinity::{SamplingConfig, generate};
use infinity::models::model_folder::ModelFiles;
use infinity::models::pipeline::Pipeline;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::{Device, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/default");

/// The model folder's files, weights and configuration alike.
#[test]
fn the_model_fits_in_50_megabytes() {
    let total: u64 = std::fs::read_dir(MODEL)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(total <= 50 * 1000 * 1000, "{total} bytes");
}

/// README command 1: no model named, the default one is used.
#[test]
fn infinity_run_uses_it_by_default() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("default-model");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("apple.png");
    let out = Command::new(env!("CARGO_BIN_EXE_infinity-run"))
        .args(["-p", "red apple", "--seed", "1", "-o", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(load_rgb(&png).unwrap().dimensions(), (256, 256));
}

/// A prompt longer than the model reads (the bundled model's null text has 128 rows; this
/// one is ~5,000 words) is cut to it with a warning, as a prompt over the encoder's 512 tokens
/// is, and the image is made.
#[test]
fn a_very_long_prompt_is_cut_to_what_the_model_reads() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("default-model-long");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("long.png");
    let prompt = "a red apple on a table in the morning light ".repeat(550);
    let out = Command::new(env!("CARGO_BIN_EXE_infinity-run"))
        .args(["-p", &prompt, "--seed", "1", "-o", png.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: prompt cut to the 128 tokens the model reads"), "{stderr}");
    assert_eq!(load_rgb(&png).unwrap().dimensions(), (256, 256));
}

/// What the model learned: a greedy generation for each of four held-in emoji names is nearer
/// (mean squared error over the image) to that emoji than to the other three.
#[test]
fn generations_are_nearest_their_own_emoji() {
    let cases = [("red apple", "1f34e"), ("blue heart", "1f499"), ("grinning face", "1f600"), ("frog", "1f438")];
    let files = ModelFiles::from_dir(Path::new(MODEL)).unwrap();
    let pipeline = Pipeline::load(&files, &Device::Cpu).unwrap();
    let schedule = Template::exact(1.0).unwrap().schedule(files.default_pn.unwrap_or(PixelBudget::P006M));
    let sampling = SamplingConfig { greedy: true, ..Default::default() };
    let fixture = |hex: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/emoji/{hex}.png"));
        to_tensor(&load_rgb(&path).unwrap()).unwrap()
    };
    let targets: Vec<Tensor> = cases.iter().map(|(_, hex)| fixture(hex)).collect();
    let mse = |a: &Tensor, b: &Tensor| {
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32
    };
    let mut report = String::new();
    let mut nearest_own = true;
    for (i, (prompt, _)) in cases.iter().enumerate() {
        let features = pipeline.encode_prompts(&[prompt]).unwrap().remove(0).features;
        let out = generate(&pipeline.transformer, &[features], None, &schedule, &sampling, &[], |_| {}).unwrap();
        let image = pipeline.vae.decode(&out.summed_codes).unwrap();
        let errors: Vec<f32> = targets.iter().map(|t| mse(&image, t)).collect();
        let best = errors.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j);
        nearest_own &= best == Some(i);
        report.push_str(&format!("{prompt}: MSE to each emoji {errors:.3?}\n"));
    }
    eprint!("{report}");
    assert!(nearest_own, "a generation is nearer another emoji than its own:\n{report}");
}
