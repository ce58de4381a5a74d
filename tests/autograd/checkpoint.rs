//! Training checkpoints: a restored run continues bit for bit; a save cut short leaves the
//! previous checkpoint as the latest; old saves are pruned; a damaged pointer is named.

use infinity::autograd::checkpoint::{latest, save};
use infinity::autograd::optim::official_groups;
use infinity::autograd::{AdamW, AdamWConfig, GradStore, Params};
use infinity::runtime::Tensor;
use serde_json::json;

fn fresh() -> (Params, AdamW) {
    let params = Params::new(vec![
        ("w".into(), Tensor::from_vec(vec![0.3f32, -0.7, 1.1, 0.05, -2.0, 0.9], &[2, 3]).unwrap()),
        ("b".into(), Tensor::from_vec(vec![0.1f32, 0.2], &[2]).unwrap()),
    ])
    .unwrap();
    let opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.97, eps: 1e-8 }, official_groups(&params)).unwrap();
    (params, opt)
}

fn grads(k: f32) -> GradStore {
    let mut s = GradStore::default();
    s.insert("w".into(), Tensor::from_vec(vec![0.1 * k, -0.2, 0.3, k, -0.05 * k, 0.7], &[2, 3]).unwrap());
    s.insert("b".into(), Tensor::from_vec(vec![k, -k], &[2]).unwrap());
    s
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-ckpt-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn resumed_training_continues_bit_for_bit() {
    let root = temp_dir("resume");
    let (mut params, mut opt) = fresh();
    for (step, k) in [1.0f32, -0.5].into_iter().enumerate() {
        opt.step(&mut params, &grads(k), 1e-3, 0.01).unwrap();
        save(&root, step as u64 + 1, &params, &opt, &json!({ "data_position": step + 1 }), 3).unwrap();
    }
    opt.step(&mut params, &grads(2.0), 1e-3, 0.01).unwrap();

    let ckpt = latest(&root).unwrap().expect("a checkpoint");
    assert_eq!((ckpt.step, ckpt.state["data_position"].as_u64()), (2, Some(2)));
    let (mut p2, mut o2) = fresh();
    ckpt.restore(&mut p2, &mut o2).unwrap();
    o2.step(&mut p2, &grads(2.0), 1e-3, 0.01).unwrap();
    for (name, t) in params.iter() {
        assert!(t.same_values(p2.get(name).unwrap()), "{name}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint() {
    let root = temp_dir("interrupted");
    let (params, opt) = fresh();
    save(&root, 1, &params, &opt, &json!({}), 3).unwrap();
    // A save killed after its folder got the parameters but before `latest.json` moved on.
    let partial = root.join("step-000000002");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("params.safetensors"), b"half-written").unwrap();
    assert_eq!(latest(&root).unwrap().unwrap().step, 1);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn old_saves_are_pruned_and_a_damaged_pointer_is_named() {
    let root = temp_dir("prune");
    let (params, opt) = fresh();
    assert!(latest(&root).unwrap().is_none(), "a fresh run has no checkpoint");
    for step in 1..=4 {
        save(&root, step, &params, &opt, &json!({}), 2).unwrap();
    }
    let mut kept: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-000000003", "step-000000004"]);
    std::fs::write(root.join("latest.json"), b"{oops").unwrap();
    let err = latest(&root).err().unwrap().to_string();
    assert!(err.contains("latest.json"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}
