//! The shipped default model (assets/models/default, trained by scripts/default-model.sh): it
//! stays within the budget the repository allows, and README command 1 runs it with no model
//! named.

use std::path::Path;
use std::process::Command;

use infinity::models::image::load_rgb;

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
