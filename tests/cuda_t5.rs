//! The T5 encoder loaded onto every executor (the CPU shim here, a GPU as well when present),
//! its one forward (models/src/t5/model.rs) running the ops' kernels there: the devA and devB golden features, the CPU encoder on a
//! batch of prompts of different lengths, and ids outside the vocabulary.
//!
//! The device rounds every GEMM operand to bf16 (the ops' dtype policy on an executor),
//! so it is held to a bf16 bound, not the f32 path's 1e-4: per prompt, max |ours − reference|
//! ≤ 2⁻⁶ · max |reference|. Derivation: the features are the final RMS norm of the f32 residual
//! stream, so their error relative to the largest feature is the stream's relative error, and
//! that enters only through bf16 roundings, each about 2⁻⁹ relative (2⁻⁸ at most). A block
//! has ten on the way to the stream: attention's normed input, q/k/v weights, q/k/v,
//! probabilities, head outputs and o weight; the FFN's normed input, wi weight, gated
//! activation and wo weight. Two blocks make twenty independent roundings, about
//! √20 · 2⁻⁹ ≈ 8.7e-3 together (twenty in a row, 3.9e-2, would need them all to line up). The
//! bound is 2⁻⁶ ≈ 1.56e-2, about twice that.
//!
//! Measured on the CPU shim: at most 7.5e-3 (golden devA 5.1e-3, devB 7.5e-3; against the CPU
//! encoder devA 6.7e-3, devB 5.5e-3). Breaking the forward on purpose fails every devA prompt
//! longer than one token: without the position bias 2.7e-2 to 5.0e-2, with it transposed
//! (buckets of i − j) 3.5e-2 to 6.7e-2, with the FFN's GELU on the gate instead of wi_0 or left
//! out 0.39 to 0.74.

mod common;

use common::{fixture, max_abs, max_abs_diff, open, prompt_ids};
use infinity::models::t5::{T5Config, T5Encoder};
use infinity::runtime::{Device, Error, Tensor};
use infinity_cuda::testing::executors;

/// Relative bound on the features (see the module header).
const FEATURE_BOUND: f32 = 1.0 / 64.0;

const SETS: [&str; 2] = ["devA", "devB"];

fn encoder(set: &str, device: &Device) -> T5Encoder {
    let config = T5Config::open(fixture(&format!("{set}/t5_config.json"))).unwrap();
    T5Encoder::open_on(fixture(&format!("{set}/t5_encoder.safetensors")), config, device)
        .unwrap_or_else(|e| panic!("{set} on {device}: {e}"))
}

/// Asserts, for every prompt, max |got − want| ≤ FEATURE_BOUND · max |want| (shapes equal);
/// every prompt's ratio is printed first, so that a failure shows how far off each one is.
#[track_caller]
fn assert_close(what: &str, got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "{what}: prompts");
    let ratios: Vec<f32> = got.iter().zip(want).map(|(got, want)| max_abs_diff(got, want) / max_abs(want)).collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2e}")).collect();
    eprintln!("{what}: max |diff| / max |feature| per prompt: {}", shown.join(", "));
    assert!(ratios.iter().all(|&r| r <= FEATURE_BOUND), "{what}: beyond {FEATURE_BOUND:e}");
}

#[test]
fn features_match_the_goldens_in_bf16() {
    for set in SETS {
        let golden = open(&format!("{set}/t5_golden.safetensors"));
        let hidden = golden.get("last_hidden_state").unwrap();
        let prompts = prompt_ids(&golden);
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let want: Vec<Tensor> = refs
            .iter()
            .enumerate()
            .map(|(b, ids)| hidden.narrow(0, b, 1).unwrap().squeeze(0).unwrap().narrow(0, 0, ids.len()).unwrap())
            .collect();
        for exec in executors() {
            let got =
                encoder(set, &exec.device()).encode_batch(&refs).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            assert_close(&format!("{}: {set} golden", exec.name()), &got, &want);
        }
    }
}

/// Prompts of lengths 1, 6, 6, 40 (distances in
/// the log-spaced buckets) and 3, packed in one batch.
fn mixed_prompts(vocab: u32) -> Vec<Vec<u32>> {
    let long: Vec<u32> = (0..39).map(|i| (i * 7 + 3) % vocab).chain([1]).collect();
    vec![vec![1], vec![5, 17, 42, 3, 64 % vocab, 1], vec![9, 2, 2, 30, 11, 1], long, vec![vocab - 1, 0, 1]]
}

#[test]
fn mixed_lengths_match_the_cpu_encoder() {
    for set in SETS {
        let t5 = encoder(set, &Device::Cpu);
        let prompts = mixed_prompts(t5.config.vocab_size as u32);
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let want = t5.encode_batch(&refs).unwrap();
        for exec in executors() {
            let got =
                encoder(set, &exec.device()).encode_batch(&refs).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            assert_close(&format!("{}: {set} against the CPU encoder", exec.name()), &got, &want);
        }
    }
}

#[test]
fn bad_prompts_are_refused() {
    for exec in executors() {
        let engine = encoder("devB", &exec.device());
        let vocab = engine.config.vocab_size as u32;
        let err = engine.encode_batch(&[&[5, 1], &[3, vocab, 1]]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{}: {err}", exec.name());
        let msg = err.to_string();
        // Position 3 of the prompts laid end to end.
        let named = [format!("index {vocab}"), "position 3".into(), format!("0..{vocab}")];
        assert!(named.iter().all(|n| msg.contains(n.as_str())), "{msg}");
        eprintln!("{}: {msg}", exec.name());
        assert!(matches!(engine.encode_batch(&[&[5, 1], &[]]), Err(Error::InvalidArgument { .. })));
        assert!(engine.encode_batch(&[]).unwrap().is_empty());
    }
}
