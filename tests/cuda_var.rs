//! VAR on every executor (the CPU shim here, a GPU as well when present): the VQVAE and the
//! transformer loaded onto the device run their one forward there, against devV's official
//! goldens; and a whole training step runs there, beside the CPU's.
//!
//! Bounds: on a device every GEMM and convolution operand is rounded to bf16 (relative error
//! u = 2⁻⁹ per operand, f32 accumulation). The nearest-code search and the resizes are exact
//! f32 there (tests/cuda_kernels.rs), so what differs from the f32 CPU path is the rounding of
//! the φ convolutions, the decoder's convolutions and the transformer's linears:
//! - a scale's contribution φ(up(codes)) goes through one 3×3 convolution of 16 channels, a few
//!   u of its magnitude: held to 2⁻⁸·max|golden| (measured on the shim: 0.0007), as is f̂;
//! - the logits pass 2 blocks of 4 linears and the head, and CFG multiplies their error by up
//!   to 1 + 2·4: held to 2⁻⁵·max|golden| (measured: 0.008 teacher-forced, 0.011 guided);
//! - the decoded image chains ~50 convolutions and 5 attention blocks, so its error is a random
//!   walk as the BitVAE decoder's (tests/cuda_bitvae.rs): mean |error| ≤ 2⁻⁵ of the mean
//!   |golden| pixel (measured: 2.5%), worst pixel ≤ 2⁻¹ (measured: 0.25).
//!
//! They fail for real bugs (checked on the shim by breaking the code on purpose): φ applied
//! before the bicubic upsampling puts scale 0's contribution off by 0.09 (24 times its bound);
//! the CFG rows swapped, the guided logits by 1.4 of their scale.

mod common;

use common::{assert_decoded_close, assert_within, fixture, max_abs_diff, open};
use infinity::models::var::config::PATCH_NUMS_256;
use infinity::models::var::{Edit, VarSampling, VarTransformer, VqVae, generate};
use infinity::runtime::Tensor;
use infinity_cuda::testing::executors;

fn golden_tokens(golden: &infinity::runtime::io::Weights) -> Vec<Tensor> {
    (0..10).map(|si| golden.get(&format!("idx_scale{si:02}")).unwrap().clone()).collect()
}

#[test]
fn vqvae_follows_the_golden_on_every_executor() {
    let golden = open("devV/vqvae_golden.safetensors");
    let tokens = golden_tokens(&golden);
    for exec in executors() {
        let vae = VqVae::open_on(fixture("devV/vae.safetensors"), &exec.device()).unwrap();
        for si in [0, 5, 9] {
            let h = vae.scale_contribution(&tokens[si], PATCH_NUMS_256[si], si, 10, 16).unwrap();
            assert_within(
                &format!("h scale {si} on {}", exec.name()),
                &h,
                golden.get(&format!("h_scale{si:02}")).unwrap(),
                1.0 / 256.0,
            );
        }
        let image = vae.decode(golden.get("f_hat").unwrap()).unwrap().narrow(0, 0, 1).unwrap();
        assert_decoded_close(&format!("decoded on {}", exec.name()), &image, golden.get("decoded_b0").unwrap());
    }
}

#[test]
fn transformer_follows_the_golden_on_every_executor() {
    let golden = open("devV/var_forward_golden.safetensors");
    let labels: Vec<usize> =
        golden.get("label_B").unwrap().to_vec::<i64>().unwrap().into_iter().map(|l| l as usize).collect();
    for exec in executors() {
        let var = VarTransformer::open_on(fixture("devV/var.safetensors"), &exec.device()).unwrap();
        let logits = var.teacher_forced(&labels, golden.get("x_BLCv_wo_first_l").unwrap()).unwrap();
        assert_within(
            &format!("teacher-forced logits on {}", exec.name()),
            logits.value(),
            golden.get("logits").unwrap(),
            1.0 / 32.0,
        );
    }
}

/// Generation with the golden tokens kept at every scale (an edit that keeps everything): each
/// scale's raw and guided logits on the device follow the golden's.
#[test]
fn generation_follows_the_golden_on_every_executor() {
    let golden = open("devV/generate_golden.safetensors");
    let labels: Vec<usize> =
        golden.get("label_B").unwrap().to_vec::<i64>().unwrap().into_iter().map(|l| l as usize).collect();
    let keep = Edit { tokens: golden_tokens(&golden), keep: Tensor::from_vec(vec![1f32; 256], &[16, 16]).unwrap() };
    let sampling = VarSampling { cfg: 4.0, top_k: 1, top_p: 0.0, seed: 0, more_smooth: false };
    for exec in executors() {
        let var = VarTransformer::open_on(fixture("devV/var.safetensors"), &exec.device()).unwrap();
        let vae = VqVae::open_on(fixture("devV/vae.safetensors"), &exec.device()).unwrap();
        let out = generate(&var, &vae, &labels, &sampling, Some(&keep), |step| {
            let k = step.scale;
            let name = |what: &str| format!("{what} scale {k} on {}", exec.name());
            assert_within(
                &name("raw logits"),
                step.raw_logits,
                golden.get(&format!("raw_logits_scale{k:02}")).unwrap(),
                1.0 / 32.0,
            );
            assert_within(
                &name("cfg logits"),
                step.cfg_logits,
                golden.get(&format!("cfg_logits_scale{k:02}")).unwrap(),
                1.0 / 32.0,
            );
        })
        .unwrap();
        assert_within(&format!("f_hat on {}", exec.name()), &out.f_hat, golden.get("f_hat").unwrap(), 1.0 / 256.0);
    }
}

/// One training step of the golden batch on every executor (the whole step there: forward,
/// loss, backward, clipping, AdamW): the loss and gradient norm follow the CPU's within the
/// logits' bf16 bound, and the updated parameters stay on the device.
#[test]
fn training_step_runs_on_every_executor() {
    use infinity::autograd::optim::official_groups;
    use infinity::autograd::{AdamW, AdamWConfig};
    use infinity::models::var::train::{VarBatch, VarStepSettings, train_step};
    use infinity::runtime::collective::Single;
    let golden = open("devV/var_forward_golden.safetensors");
    let labels: Vec<usize> =
        golden.get("label_B").unwrap().to_vec::<i64>().unwrap().into_iter().map(|l| l as usize).collect();
    let weights = infinity::runtime::io::Weights::open(fixture("devV/var.safetensors")).unwrap();
    let config = VarTransformer::detect_config(&weights).unwrap();
    let step = |device: &infinity::runtime::Device| {
        let mut params = VarTransformer::parameters(&weights, &config).unwrap().to_device(device).unwrap();
        let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8 }, official_groups(&params)).unwrap();
        let batch = VarBatch {
            labels: labels.clone(),
            inputs: golden.get("x_BLCv_wo_first_l").unwrap().clone(),
            targets: golden.get("gt_idx_BL").unwrap().clone(),
        };
        let settings = VarStepSettings { lr: 1e-3, weight_decay: 0.05, clip: 2.0 };
        let stats = train_step(&mut params, &mut opt, &config, &[batch], settings, &Single).unwrap();
        (stats.loss, stats.grad_norm, params)
    };
    let (loss, norm, cpu_params) = step(&infinity::runtime::Device::Cpu);
    for exec in executors() {
        let (l, n, params) = step(&exec.device());
        eprintln!("training step on {}: loss {l} (CPU {loss}), gradient norm {n} (CPU {norm})", exec.name());
        assert!((l - loss).abs() <= loss / 32.0 && (n - norm).abs() <= norm / 32.0, "on {}", exec.name());
        let head = params.get("head.weight").unwrap();
        assert_eq!(head.device(), exec.device());
        let moved = max_abs_diff(&head.to_cpu().unwrap(), weights.get("head.weight").unwrap());
        let cpu_moved = max_abs_diff(cpu_params.get("head.weight").unwrap(), weights.get("head.weight").unwrap());
        assert!(moved > 0.5 * cpu_moved && moved < 2.0 * cpu_moved, "update {moved} vs the CPU's {cpu_moved}");
    }
}
