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

/// A concept gallery of the four emoji fixtures, as `infinity-prep emoji` lays one out: three
/// training concepts (each in two "styles": the image and its mirror) and one held out.
fn gallery(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["images", "train", "eval"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let concepts = [("1F34E", "red apple"), ("1F499", "blue heart"), ("1F600", "grinning face"), ("1F438", "frog")];
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, (hex, name)) in concepts.iter().enumerate() {
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/emoji/{}.png", hex.to_lowercase()));
        let image = load_rgb(&source).unwrap();
        image.save(dir.join(format!("images/{hex}.png"))).unwrap();
        image::imageops::flip_horizontal(&image).save(dir.join(format!("images/{hex}-mirror.png"))).unwrap();
        for file in [hex.to_string(), format!("{hex}-mirror")] {
            let line = serde_json::json!({
                "image_path": format!("../images/{file}.png"), "h_div_w": 1.0, "long_caption": name,
                "hexcode": hex, "name": name,
            });
            if i < 3 { &mut train } else { &mut eval }.push(line.to_string());
        }
    }
    std::fs::write(dir.join(format!("train/1.000_{}.jsonl", train.len())), train.join("\n")).unwrap();
    std::fs::write(dir.join(format!("eval/1.000_{}.jsonl", eval.len())), eval.join("\n")).unwrap();
}

/// `infinity-train score`: each training name's picture ranks first among the four concepts
/// (as greedy generations do above), the held-out frog is scored too, and the teacher-forced
/// loss is reported; a data set without concept names is refused, naming the file and field.
#[test]
fn the_score_command_ranks_each_picture_among_the_concepts() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("default-model-score");
    gallery(&dir);
    let score = |data: &Path| {
        Command::new(env!("CARGO_BIN_EXE_infinity-train"))
            .args(["score", "--model-dir", MODEL, "--data", data.to_str().unwrap(), "--batch", "2"])
            .output()
            .unwrap()
    };
    let out = score(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("training names (3 of 4 concepts, seed 1,")
            && stdout.contains("top-1 100.0 %, top-5 100.0 %, top-20 100.0 %, median rank 1\n"),
        "{stdout}"
    );
    assert!(stdout.contains("held-out names (1 of 4 concepts, seed 1,"), "{stdout}");
    assert!(stdout.contains("held-out teacher-forced loss ") && stdout.contains("(2 captions of "), "{stdout}");

    std::fs::remove_file(dir.join("eval/1.000_2.jsonl")).unwrap();
    let eval = dir.join("eval/1.000_1.jsonl");
    std::fs::write(
        &eval,
        r#"{"image_path":"../images/1F438.png","h_div_w":1.0,"long_caption":"frog","hexcode":"1F438"}"#,
    )
    .unwrap();
    let out = score(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1.000_1.jsonl") && stderr.contains("line 1") && stderr.contains("'name'"), "{stderr}");
}
