//! Helpers for the golden-parity tests: fixture paths and max-abs comparison (the issues ask
//! for max |ours − golden| ≤ 1e-4 in f32; the golden README allows 1e-4 · max(1, max|golden|),
//! which is never tighter).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use infinity::runtime::Tensor;
use infinity::runtime::io::Weights;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn open(rel: &str) -> Weights {
    Weights::open(fixture(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// The text features of each golden prompt: the rows of `text_features` (B, L, C) that
/// `text_mask` marks valid.
pub fn text_prompts(golden: &Weights) -> Vec<Tensor> {
    let feats = golden.get("text_features").unwrap();
    let mask = golden.get("text_mask").unwrap();
    (0..feats.dim(0).unwrap())
        .map(|b| {
            let len = mask.narrow(0, b, 1).unwrap().to_vec::<i64>().unwrap().iter().sum::<i64>() as usize;
            feats.narrow(0, b, 1).unwrap().squeeze(0).unwrap().narrow(0, 0, len).unwrap()
        })
        .collect()
}

/// Each golden prompt's valid token ids (attention mask 1, a prefix of the row: right padding).
pub fn prompt_ids(golden: &Weights) -> Vec<Vec<u32>> {
    let ids = golden.get("input_ids").unwrap();
    let mask = golden.get("attention_mask").unwrap();
    (0..ids.dim(0).unwrap())
        .map(|b| {
            let row = |t: &Tensor| t.narrow(0, b, 1).unwrap().to_vec::<i64>().unwrap();
            let len = row(mask).iter().sum::<i64>() as usize;
            assert!(row(mask)[..len].iter().all(|&m| m == 1), "mask row {b} is not a prefix");
            row(ids)[..len].iter().map(|&i| i as u32).collect()
        })
        .collect()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.to_f32_vec().unwrap().iter().fold(0.0, |m, v| m.max(v.abs()))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_f32_vec().unwrap().iter().zip(b.to_f32_vec().unwrap()).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Asserts max |got − golden| ≤ `tol` (the golden may have extra unit dimensions).
#[track_caller]
pub fn assert_golden(what: &str, got: &Tensor, golden: &Tensor, tol: f32) {
    let golden = golden
        .reshape(got.shape())
        .unwrap_or_else(|_| panic!("{what}: shape {:?} vs golden {:?}", got.shape(), golden.shape()));
    let diff = max_abs_diff(got, &golden);
    assert!(diff <= tol, "{what}: max |diff| {diff:e} > {tol:e}");
    eprintln!("{what}: max |diff| {diff:.2e} (tolerance {tol:.1e})");
}

/// A command refused as the CLIs promise: exit code 2 and one line `error: …` on stderr that
/// contains `named`.
#[track_caller]
pub fn assert_refused(run: &std::process::Output, named: &str) {
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(named), "{err}");
}
