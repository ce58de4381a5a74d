//! One training step of the Infinity transformer against the official trainer (devA weights,
//! Bitwise Self-Correction off; shared/golden/train): the teacher-forced forward on a tape,
//! the bitwise loss with the 1/L token weighting, the gradients of all 59 parameters, the
//! gradient norm and the AdamW step with the official parameter groups — all through
//! `models::train::train_step`, the step `infinity-train` runs; and that whole step from one
//! test body on the CPU and on every executor.

mod common;

use common::{assert_golden, fixture, max_abs, max_abs_diff, open};
use infinity::autograd::optim::official_groups;
use infinity::autograd::{AdamW, AdamWConfig, Params, Tape};
use infinity::cuda::Executor;
use infinity::cuda::testing::executors;
use infinity::models::infinity::teacher::{Flips, TeacherForcing, teacher_forcing};
use infinity::models::infinity::{Infinity, InfinityConfig, TokenLayout};
use infinity::models::schedule::{PixelBudget, Schedule, Template};
use infinity::models::t5::{T5Config, T5Encoder};
use infinity::models::train::{
    StepBatch, StepSettings, StepText, TEXT_ENCODER_PREFIX, TokenWeighting, evaluate, token_weights, train_step,
};
use infinity::runtime::collective::Single;
use infinity::runtime::io::Weights;
use infinity::runtime::{DType, Device, Tensor};

/// train_settings.json: lr, betas, eps, weight decay of the decay group, clipping threshold.
const LR: f64 = 9.375e-5;
const WEIGHT_DECAY: f64 = 0.005;
const ADAMW: AdamWConfig = AdamWConfig { beta1: 0.9, beta2: 0.97, eps: 1e-8 };
const CLIP: f32 = 5.0;
/// The golden step's settings: its optimiser, 1/L token weights, no recomputation.
const SETTINGS: StepSettings = StepSettings {
    lr: LR,
    weight_decay: WEIGHT_DECAY,
    clip: CLIP,
    weighting: TokenWeighting::Uniform,
    recompute_blocks: false,
};

fn schedule() -> Schedule {
    Template::exact(1.0).unwrap().schedule(PixelBudget::P006M)
}

/// The mask-1 rows of each prompt's T5 features, as the trainer packs them.
fn features(t5: &Weights) -> Vec<Tensor> {
    let (feats, mask) = (t5.get("last_hidden_state").unwrap(), t5.get("attention_mask").unwrap());
    (0..feats.dim(0).unwrap())
        .map(|b| {
            let len = mask.narrow(0, b, 1).unwrap().to_vec::<i64>().unwrap().iter().sum::<i64>() as usize;
            feats.narrow(0, b, 1).unwrap().squeeze(0).unwrap().narrow(0, 0, len).unwrap()
        })
        .collect()
}

/// Labels and inputs of plain teacher forcing from the VAE features the official trainer encoded.
fn plain_targets(s: &Schedule) -> TeacherForcing {
    teacher_forcing(
        open("train/teacher_forcing.safetensors").get("raw_features").unwrap(),
        &s.grids,
        TokenLayout::Plain,
        Flips::None,
    )
    .unwrap()
}

fn prompts(t5: &Weights) -> Vec<StepText> {
    features(t5).into_iter().map(StepText::Features).collect()
}

/// max |a − b| relative to max |b| (an all-zero golden asks for exact zeros).
fn relative_diff(got: &Tensor, golden: &Tensor) -> f32 {
    let golden = golden.reshape(got.shape()).unwrap();
    let diff = max_abs_diff(got, &golden);
    if diff == 0.0 { 0.0 } else { diff / max_abs(&golden) }
}

fn scalar(t: &Tensor) -> f32 {
    t.to_f32_vec().unwrap()[0]
}

#[test]
fn one_training_step_matches_the_official_trainer() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let golden = open("train/train_step.safetensors");
    let mut params = Infinity::parameters(&weights, &config).unwrap();
    assert_eq!(params.len(), 59);

    let s = schedule();
    let tf = plain_targets(&s);
    let prompts = prompts(&open("devA/t5_golden.safetensors"));
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
    let stats = train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), SETTINGS, &Single).unwrap();

    let want = scalar(golden.get("loss").unwrap());
    let got = stats.loss;
    eprintln!("loss {got} vs {want} (relative {:.1e})", ((got - want) / want).abs());
    assert!(((got - want) / want).abs() <= 1e-5);

    // Per-scale losses: the mean CE over the batch and the tokens of each scale.
    let scale_loss = golden.get("scale_loss").unwrap().to_vec::<f32>().unwrap();
    assert_eq!(stats.scale_loss.len(), scale_loss.len());
    for (k, (&got, &want)) in stats.scale_loss.iter().zip(&scale_loss).enumerate() {
        assert!(((got - want) / want).abs() <= 1e-5, "scale {k}: loss {got} vs {want}");
    }
    assert!(stats.scale_accuracy.iter().all(|a| (0.0..=1.0).contains(a)));

    // Clipping does not act (the norm is below 5): the applied gradients are the raw ones.
    let norm = stats.grad_norm;
    let want = scalar(golden.get("grad_norm").unwrap());
    assert!(((norm - want) / want).abs() <= 1e-5, "gradient norm {norm} vs {want}");
    let mut worst = (0.0f32, String::new());
    for (name, p) in params.iter() {
        let want = golden.get(&format!("grad.{name}")).unwrap();
        // A parameter the loss does not reach gets no gradient (the golden's is all zero).
        let got = stats.grads.get(name).cloned().unwrap_or_else(|| Tensor::zeros(p.shape(), DType::F32));
        let rel = relative_diff(&got, want);
        assert!(rel <= 1e-4, "grad.{name}: max |diff| / max |golden| = {rel:e}");
        if rel >= worst.0 {
            worst = (rel, name.to_string());
        }
    }
    eprintln!("worst gradient: {} (max |diff| / max |golden| = {:.1e})", worst.1, worst.0);

    // The AdamW step. The first step moves each
    // element by about lr·g/(|g| + eps): where |g| ≫ eps that is lr·sign(g), insensitive to
    // f32 noise in g, and must match to 1e-6 of the tensor's scale; where |g| < 1e-6 the step
    // depends on g's exact value (the golden README allows up to 2·lr there).
    let (mut worst, mut worst_small) = ((0.0f32, String::new()), 0.0f32);
    for (name, p) in params.iter() {
        let want = golden.get(&format!("param_after.{name}")).unwrap();
        let scale = max_abs(want);
        let g = golden.get(&format!("grad.{name}")).unwrap().to_f32_vec().unwrap();
        for ((&ours, theirs), g) in p.to_f32_vec().unwrap().iter().zip(want.to_f32_vec().unwrap()).zip(g) {
            let diff = (ours - theirs).abs();
            if g.abs() < 1e-6 {
                assert!(diff <= 2.0 * LR as f32, "param_after.{name}: {ours} vs {theirs} (|g| = {g:e})");
                worst_small = worst_small.max(diff / LR as f32);
            } else {
                assert!(diff <= 1e-6 * scale, "param_after.{name}: {ours} vs {theirs} (|g| = {g:e})");
                if diff / scale >= worst.0 {
                    worst = (diff / scale, name.to_string());
                }
            }
        }
    }
    eprintln!(
        "worst parameter after the step: {} (max |diff| / max |golden| = {:.1e}); |g| < 1e-6: max |diff| = {worst_small:.1e}·lr",
        worst.1, worst.0
    );
}

/// The largest golden gradient of parameter `name` in any block: the scale its gradients'
/// rounding errors have. Per block they can be much smaller through cancellation: block 1's
/// per-head attention scale gets a gradient 30× smaller than block 0's, summed from terms as
/// large (the CPU's own f32 error on it is 5e-5 relative, a hundred times its typical one).
fn same_parameter_scale(golden: &Weights, name: &str) -> f32 {
    let strip = |n: &str| n.split('.').filter(|p| p.parse::<usize>().is_err()).collect::<Vec<_>>().join(".");
    let kind = strip(name);
    golden
        .iter()
        .filter(|(key, _)| key.strip_prefix("grad.").is_some_and(|n| strip(n) == kind))
        .map(|(_, t)| max_abs(t))
        .fold(0.0, f32::max)
        .max(f32::MIN_POSITIVE)
}

/// A device gradient `got` against the golden `want`: its relative L2 error ‖got − want‖/‖want‖
/// and its error of scale, α − 1 for the α that fits got ≈ α·want (0 for a zero golden).
fn l2_and_scale_error(got: &Tensor, want: &Tensor) -> (f64, f64) {
    let (g, w) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    let diff: Vec<f32> = g.iter().zip(&w).map(|(a, b)| a - b).collect();
    let norm2 = dot(&w, &w);
    if norm2 == 0.0 {
        return (dot(&diff, &diff).sqrt(), 0.0);
    }
    ((dot(&diff, &diff) / norm2).sqrt(), dot(&g, &w) / norm2 - 1.0)
}

/// The whole step — `train_step`, as `infinity-train --device` runs it: the teacher-forced
/// forward on a tape, the bitwise loss, every gradient, the global norm and the fused AdamW —
/// from one test body on the CPU and on every executor, with the parameters, activations,
/// gradients and optimiser state on the device. Bounds: the CPU as above; a device, whose
/// GEMMs and flash attention (forward and backward kernels) take bf16 operands (unit
/// roundoff u = 2⁻⁹), 2⁻⁸ on the loss; on each gradient, max |error| ≤ 2⁻⁵ of the largest
/// golden gradient of the same parameter in any block ([`same_parameter_scale`]) and, for
/// gradients of 64 elements or more, a relative L2 error ≤ 8u = 2⁻⁶ and an error of scale
/// ≤ 4u = 2⁻⁷ ([`l2_and_scale_error`]): the error the rounding of GEMM operands leaves in a
/// gradient is random in sign from element to element and averages out of its scale, where a
/// wrong rule's does not. (Measured on the shim: loss 8.8e-5, max 1.8e-2, L2 at most 9.3e-3,
/// scale at most 5.2e-3; a gradient planted 1 % too large fails the scale bound.) The first AdamW step moves an element by lr·g/(|g| + eps): where
/// |g| exceeds four times the gradient's error bound e, its sign is right and the step differs
/// by at most lr·eps·e/(¾g²); elsewhere by at most 2·lr.
#[test]
fn a_training_step_matches_on_every_device() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let golden = open("train/train_step.safetensors");
    let s = schedule();
    let tf = plain_targets(&s);
    let prompts = prompts(&open("devA/t5_golden.safetensors"));
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let settings = SETTINGS;
    let devices = std::iter::once(Device::Cpu).chain(executors().iter().map(|e| e.device()));
    for device in devices {
        let (loss_bound, grad_bound) = if device.is_cpu() { (1e-5, 1e-4) } else { (1.0 / 256.0, 1.0 / 32.0) };
        let mut params = Infinity::parameters(&weights, &config).unwrap().to_device(&device).unwrap();
        let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
        let stats =
            train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap();
        let (got, want) = (stats.loss, scalar(golden.get("loss").unwrap()));
        assert!(((got - want) / want).abs() <= loss_bound, "{device}: loss {got} vs {want}");
        let mut worst = (0.0f32, String::new());
        for (name, p) in params.iter() {
            assert_eq!(p.device(), device, "{name} stays on the device");
            let got = match stats.grads.get(name) {
                Some(g) => {
                    assert_eq!(g.device(), device, "grad.{name} stays on the device");
                    g.to_cpu().unwrap()
                }
                None => Tensor::zeros(p.shape(), DType::F32),
            };
            let want = golden.get(&format!("grad.{name}")).unwrap();
            let rel = max_abs_diff(&got, &want.reshape(got.shape()).unwrap()) / same_parameter_scale(&golden, name);
            if !device.is_cpu() && got.numel() >= 64 {
                let (l2, scale) = l2_and_scale_error(&got, want);
                assert!(l2 <= 1.0 / 64.0, "{device}: grad.{name}: relative L2 error {l2:e}");
                assert!(scale.abs() <= 1.0 / 128.0, "{device}: grad.{name}: off in scale by {scale:e}");
            }
            if rel >= worst.0 {
                worst = (rel, name.to_string());
            }
            // The step, element by element.
            let error = grad_bound * same_parameter_scale(&golden, name);
            let after = golden.get(&format!("param_after.{name}")).unwrap();
            let scale = max_abs(after);
            let golden_grad = want.to_f32_vec().unwrap();
            let (lr, eps) = (LR as f32, ADAMW.eps as f32);
            for ((ours, theirs), g) in p.to_f32_vec().unwrap().iter().zip(after.to_f32_vec().unwrap()).zip(golden_grad)
            {
                let bound =
                    1e-6 * scale + if g.abs() > 4.0 * error { lr * eps * error / (0.75 * g * g) } else { 2.0 * lr };
                assert!((ours - theirs).abs() <= bound, "{device}: param_after.{name}: {ours} vs {theirs} (g = {g:e})");
            }
        }
        eprintln!("{device}: loss {got} vs {want}; worst gradient {} ({:.1e} of the golden scale)", worst.1, worst.0);
    }
}

/// The text encoder training with the transformer (`--train-text-encoder`) on every device:
/// token prompts through the devA T5 on the step's tape, so its embedding's gradient (an
/// `index_add` of the token rows) and every T5 gradient are taken on the device. Bounds as in
/// the device step above: the loss to 2⁻⁸, each T5 gradient to 2⁻⁴ of its largest CPU value
/// (two bf16 GEMM chains, the transformer's and then T5's, between the loss and it).
#[test]
fn a_step_with_the_text_encoder_matches_on_every_device() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let t5_config = T5Config::open(fixture("devA/t5_config.json")).unwrap();
    let t5 = T5Encoder::parameters(&open("devA/t5_encoder.safetensors"), &t5_config, TEXT_ENCODER_PREFIX).unwrap();
    let s = schedule();
    let tf = plain_targets(&s);
    // Two prompts of token ids, EOS (1) last; a repeated id makes its embedding row sum two.
    let prompts = [StepText::Tokens(vec![37, 42, 37, 1]), StepText::Tokens(vec![17, 9, 5, 6, 1])];
    let batch = StepBatch { prompts: &prompts, text_encoder: Some(&t5_config), targets: &tf, schedule: &s };
    let settings = SETTINGS;
    let step = |device: &Device| {
        let transformer = Infinity::parameters(&weights, &config).unwrap();
        let all = transformer.iter().chain(t5.iter()).map(|(n, t)| (n.to_string(), t.to_device(device).unwrap()));
        let mut params = Params::new(all.collect()).unwrap();
        let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
        train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap()
    };
    let want = step(&Device::Cpu);
    let text_grads: Vec<(&str, &Tensor)> =
        want.grads.iter().filter(|(n, _)| n.starts_with(TEXT_ENCODER_PREFIX)).collect();
    assert!(text_grads.iter().any(|(n, _)| n.ends_with("shared.weight")), "the embedding trains");
    for exec in executors() {
        let device = exec.device();
        let got = step(&device);
        assert!(
            ((got.loss - want.loss) / want.loss).abs() <= 1.0 / 256.0,
            "{device}: loss {} vs {}",
            got.loss,
            want.loss
        );
        for (name, w) in &text_grads {
            let g = got.grads.get(name).unwrap();
            assert_eq!(g.device(), device, "{name}'s gradient stays on the device");
            let rel = max_abs_diff(&g.to_cpu().unwrap(), w) / max_abs(w).max(f32::MIN_POSITIVE);
            assert!(rel <= 1.0 / 16.0, "{device}: grad.{name}: {rel:e} of its largest");
        }
    }
}

/// Gradient accumulation: the golden batch as two micro-batches of one sample each steps like
/// the whole batch (its loss is the mean over samples, so the halves' gradients weighted ½
/// each sum to the whole's), to f32 rounding: the losses to 1e-6, the gradients to 1e-5 of
/// their largest, the parameters after the step as in the golden test.
#[test]
fn two_micro_batches_step_like_their_whole_batch() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let s = schedule();
    let tf = plain_targets(&s);
    let prompts = prompts(&open("devA/t5_golden.safetensors"));
    assert_eq!(prompts.len(), 2);
    let settings = SETTINGS;
    let step = |batches: &[StepBatch]| {
        let mut params = Infinity::parameters(&weights, &config).unwrap();
        let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
        let stats = train_step(&mut params, &mut opt, &config, batches, settings, &Single).unwrap();
        (stats, params)
    };
    let (whole, whole_params) =
        step(&[StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s }]);
    let halves: Vec<TeacherForcing> = (0..2)
        .map(|i| TeacherForcing {
            labels: tf.labels.iter().map(|l| l.narrow(0, i, 1).unwrap()).collect(),
            inputs: tf.inputs.narrow(0, i, 1).unwrap(),
            flip_rates: tf.flip_rates.clone(),
        })
        .collect();
    let micro: Vec<StepBatch> = (0..2)
        .map(|i| StepBatch { prompts: &prompts[i..i + 1], text_encoder: None, targets: &halves[i], schedule: &s })
        .collect();
    let (accumulated, accumulated_params) = step(&micro);
    assert!(((accumulated.loss - whole.loss) / whole.loss).abs() <= 1e-6, "{} vs {}", accumulated.loss, whole.loss);
    for (name, g) in whole.grads.iter() {
        let got = accumulated.grads.get(name).unwrap();
        let rel = max_abs_diff(got, g) / max_abs(g).max(f32::MIN_POSITIVE);
        assert!(rel <= 1e-5, "grad.{name}: {rel:e}");
    }
    for ((name, want), (_, got)) in whole_params.iter().zip(accumulated_params.iter()) {
        // A parameter the loss does not reach is not stepped in either run.
        let Some(g) = whole.grads.get(name) else {
            assert!(got.same_values(want), "{name} moved without a gradient");
            continue;
        };
        let (scale, g) = (max_abs(want), g.to_f32_vec().unwrap());
        for ((a, b), g) in got.to_f32_vec().unwrap().iter().zip(want.to_f32_vec().unwrap()).zip(g) {
            let bound = if g.abs() < 1e-6 { 2.0 * LR as f32 } else { 1e-6 * scale };
            assert!((a - b).abs() <= bound, "{name}: {a} vs {b} (g = {g:e})");
        }
    }
}

/// A model on a tape refuses parameters whose shapes do not fit its configuration.
#[test]
fn on_tape_checks_parameter_shapes() {
    let mut config = InfinityConfig::preset("layer12").unwrap();
    (config.depth, config.embed_dim, config.num_heads, config.mlp_hidden, config.text_channels, config.block_chunks) =
        (1, 64, 2, 256, 128, 1);
    let params = Params::new(
        config.entries().into_iter().filter(|e| !e.buffer).map(|e| (e.key, Tensor::zeros(&[1], DType::F32))).collect(),
    )
    .unwrap();
    let tape = Tape::new();
    assert!(Infinity::on_tape(config, &params.track(&tape).unwrap()).is_err());
}

/// Training end to end on a very small model: 250 AdamW steps on four random latents, each
/// with its own random prompt, until greedy generation from the prompts reproduces every bit
/// of every scale; on the CPU and on every executor (training and generation on the device;
/// head dim 64, which the device kernels take).
#[test]
fn a_tiny_model_overfits_four_latents_on_every_device() {
    use infinity::models::infinity::{SamplingConfig, generate};
    use infinity::runtime::rng::Philox;

    // Every bit is reproduced after 150 steps on the CPU, 180 on the shim.
    const STEPS: usize = 250;
    let config = InfinityConfig {
        depth: 1,
        embed_dim: 128,
        num_heads: 2,
        mlp_hidden: 128,
        text_channels: 128,
        bits: 8,
        block_chunks: 1,
        text_maxlen: 8,
        spatial_patchify: false,
    };
    let s = Schedule { grids: vec![(1, 1), (2, 2), (4, 4)], full_grid: (4, 4) };
    let mut rng = Philox::new(7);
    let latents = Tensor::from_vec(rng.normal(4 * 8 * 16), &[4, 8, 4, 4]).unwrap();
    let features: Vec<Tensor> = (0..4).map(|_| Tensor::from_vec(rng.normal(3 * 128), &[3, 128]).unwrap()).collect();
    let prompts: Vec<StepText> = features.iter().cloned().map(StepText::Features).collect();
    let tf = teacher_forcing(&latents, &s.grids, TokenLayout::Plain, Flips::None).unwrap();
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let settings = StepSettings {
        lr: 3e-3,
        weight_decay: 0.0,
        clip: f32::INFINITY,
        weighting: TokenWeighting::Uniform,
        recompute_blocks: false,
    };
    let initial = Infinity::parameters(&Infinity::random_weights(&config, 0).unwrap(), &config).unwrap();
    let devices = std::iter::once(Device::Cpu).chain(executors().iter().map(|e| e.device()));
    for device in devices {
        let started = std::time::Instant::now();
        let mut params = initial.to_device(&device).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), official_groups(&params)).unwrap();
        let losses: Vec<f32> = (0..STEPS)
            .map(|_| {
                train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single)
                    .unwrap()
                    .loss
            })
            .collect();
        eprintln!("{device}: loss {} → {} in {:.1} s", losses[0], losses[STEPS - 1], started.elapsed().as_secs_f64());

        let trained: Vec<(String, Tensor)> =
            params.iter().map(|(name, t)| (name.to_string(), t.to_cpu().unwrap())).collect();
        let weights = Weights::new("<trained>", trained, Default::default()).unwrap();
        let model = Infinity::with_config_on(&weights, config.clone(), &device).unwrap();
        let greedy = SamplingConfig { cfg: vec![1.0], top_k: 1, top_p: 0.0, ..Default::default() };
        for (i, prompt) in features.iter().enumerate() {
            let out = generate(&model, std::slice::from_ref(prompt), None, &s, &greedy, &[], |_| {}).unwrap();
            for (k, (bits, label)) in out.bits.iter().zip(&tf.labels).enumerate() {
                assert!(bits.same_values(&label.narrow(0, i, 1).unwrap()), "{device}: latent {i}, scale {k}");
            }
        }
    }
}

/// train.sh's per-scale token weights against the ones the official trainer computes (dumped
/// from its reweighting branch), and the loss they give from the golden per-token losses.
#[test]
fn scale_weights_match_the_official_formula() {
    let golden = open("train/reweight.safetensors");
    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P006M);
    let w = token_weights(&schedule, TokenWeighting::ByScale).unwrap();
    assert_golden("token weights", &w, golden.get("reweight_lw").unwrap(), 1e-9);
    let per_token = golden.get("loss_per_token").unwrap().to_vec::<f32>().unwrap();
    let (wv, l) = (w.to_vec::<f32>().unwrap(), schedule.seq_len());
    let loss: f64 =
        per_token.chunks(l).map(|row| row.iter().zip(&wv).map(|(&x, &w)| f64::from(x * w)).sum::<f64>()).sum::<f64>()
            / 2.0;
    let want = f64::from(golden.get("loss_reweighted").unwrap().to_vec::<f32>().unwrap()[0]);
    assert!((loss - want).abs() <= 1e-6 * want, "{loss} vs {want}");
    let uniform = token_weights(&schedule, TokenWeighting::Uniform).unwrap().to_vec::<f32>().unwrap();
    assert!(uniform.iter().all(|&u| u == 1.0 / l as f32));
}

/// The BSC step of the official trainer: replaying its recorded flip masks gives its inputs
/// and labels (tests/teacher_forcing.rs) and, through the model, its loss and per-scale losses.
#[test]
fn bsc_step_with_recorded_flips_gives_the_official_loss() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let mut params = Infinity::parameters(&weights, &config).unwrap();
    let g = open("train/teacher_forcing.safetensors");
    let masks: Vec<Tensor> = (0..7)
        .map(|k| {
            let m = g.get(&format!("bsc.flip_mask_scale{k:02}")).unwrap();
            let s = m.shape();
            m.reshape(&[s[0], s[2], s[3], s[4]]).unwrap()
        })
        .collect();
    let s = schedule();
    let tf =
        teacher_forcing(g.get("raw_features").unwrap(), &s.grids, TokenLayout::Plain, Flips::Masks(&masks)).unwrap();
    let prompts = prompts(&open("devA/t5_golden.safetensors"));
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
    let settings = SETTINGS;
    let stats = train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap();
    let want = scalar(g.get("bsc.loss").unwrap());
    assert!(((stats.loss - want) / want).abs() <= 1e-5, "loss {} vs {want}", stats.loss);
    for (k, (&got, want)) in
        stats.scale_loss.iter().zip(g.get("bsc.scale_loss").unwrap().to_f32_vec().unwrap()).enumerate()
    {
        assert!(((got - want) / want).abs() <= 1e-5, "scale {k}: {got} vs {want}");
    }
}

/// `evaluate` scores exactly what a training step optimises: the same loss and per-scale
/// statistics as the step reports for the parameters it starts from.
#[test]
fn evaluation_scores_what_a_step_trains_on() {
    let weights = open("devA/transformer.safetensors");
    let config = Infinity::detect_config(&weights).unwrap();
    let s = schedule();
    let tf = plain_targets(&s);
    let prompts = prompts(&open("devA/t5_golden.safetensors"));
    let features: Vec<Tensor> = prompts
        .iter()
        .filter_map(|p| match p {
            StepText::Features(t) => Some(t.clone()),
            StepText::Tokens(_) => None,
        })
        .collect();
    let model = Infinity::with_config(&weights, config.clone()).unwrap();
    let eval = evaluate(&model, &features, &tf, &s, TokenWeighting::ByScale).unwrap();

    let mut params = Infinity::parameters(&weights, &config).unwrap();
    let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let settings = StepSettings { weighting: TokenWeighting::ByScale, ..SETTINGS };
    let stats = train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap();
    assert_eq!(eval.loss, stats.loss);
    assert_eq!(eval.scale_loss, stats.scale_loss);
    assert_eq!(eval.scale_accuracy, stats.scale_accuracy);
}

/// Activation checkpointing per block (`recompute_blocks`): the step it takes is the plain
/// steps bit for bit (loss, every gradient, the updated parameters of two steps), on the CPU and on every
/// executor; and on an executor its allocator's peak fits the budget formula of the README.
/// Activations of a step (the peak above what the step leaves held: parameters, gradients,
/// AdamW's moments) without it: `a`·C f32 per token and block (the bench measures a ≈ 30);
/// with it: each block's f32 input (1·C per token and block) plus one block's activations
/// being recomputed, a·C per token, plus what the head and loss keep either way.
#[test]
fn recomputing_blocks_takes_the_same_step_in_less_memory() {
    use infinity::runtime::rng::Philox;

    let config = InfinityConfig {
        depth: 4,
        embed_dim: 128,
        num_heads: 2,
        mlp_hidden: 512,
        text_channels: 128,
        bits: 8,
        block_chunks: 1,
        text_maxlen: 8,
        spatial_patchify: false,
    };
    let s = Schedule { grids: vec![(1, 1), (2, 2), (4, 4), (6, 6)], full_grid: (6, 6) };
    let mut rng = Philox::new(11);
    let latents = Tensor::from_vec(rng.normal(2 * 8 * 36), &[2, 8, 6, 6]).unwrap();
    let features: Vec<Tensor> = (0..2).map(|_| Tensor::from_vec(rng.normal(3 * 128), &[3, 128]).unwrap()).collect();
    let prompts: Vec<StepText> = features.into_iter().map(StepText::Features).collect();
    let tf = teacher_forcing(&latents, &s.grids, TokenLayout::Plain, Flips::None).unwrap();
    let batch = StepBatch { prompts: &prompts, text_encoder: None, targets: &tf, schedule: &s };
    let initial = Infinity::parameters(&Infinity::initial_weights(&config, 3).unwrap(), &config).unwrap();
    // Executors of this test's own, whose allocators no test running beside it touches.
    let private: Vec<_> = std::iter::once(Executor::shim()).chain(Executor::cuda(0).ok()).collect();
    let step = |device: &Device, recompute_blocks: bool| {
        let mut params = initial.to_device(device).unwrap();
        let mut opt = AdamW::new(ADAMW, official_groups(&params)).unwrap();
        let settings = StepSettings {
            lr: 1e-3,
            weight_decay: WEIGHT_DECAY,
            clip: CLIP,
            weighting: TokenWeighting::ByScale,
            recompute_blocks,
        };
        let exec = private.iter().find(|e| e.device() == *device);
        // A first step creates AdamW's moments; the second is measured from what is held
        // between steps (parameters and moments, 12 B per parameter). Its gradients (4 B per
        // parameter) are the rest of the state the budget counts apart from the activations.
        train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap();
        let held = exec.map(|e| {
            e.reset_peak();
            e.memory().in_use
        });
        let stats =
            train_step(&mut params, &mut opt, &config, std::slice::from_ref(&batch), settings, &Single).unwrap();
        let n_params: usize = params.iter().map(|(_, p)| p.numel()).sum();
        let activations = exec.zip(held).map(|(e, held)| e.memory().peak - held - 4 * n_params);
        let grads: Vec<Option<Vec<f32>>> =
            params.iter().map(|(n, _)| stats.grads.get(n).map(|g| g.to_f32_vec().unwrap())).collect();
        let after: Vec<Vec<f32>> = params.iter().map(|(_, p)| p.to_f32_vec().unwrap()).collect();
        (stats.loss, grads, after, activations)
    };
    let devices = std::iter::once(Device::Cpu).chain(private.iter().map(|e| e.device()));
    for device in devices {
        let (plain, recomputed) = (step(&device, false), step(&device, true));
        assert_eq!(plain.0, recomputed.0, "{device}: loss");
        assert!(plain.1 == recomputed.1, "{device}: the gradients differ");
        assert!(plain.2 == recomputed.2, "{device}: the updated parameters differ");
        let (Some(plain), Some(recomputed)) = (plain.3, recomputed.3) else { continue };
        let (d, per_block) = (config.depth as f64, (2 * s.seq_len() * config.embed_dim * 4) as f64);
        let a = plain as f64 / (d * per_block);
        let budget = (d + a) * per_block;
        eprintln!(
            "{device}: activations {plain} B without recomputation ({a:.1}·C f32 per token and block), \
             {recomputed} B with it (budget {budget:.0} B)"
        );
        assert!((recomputed as f64) <= budget, "{device}: {recomputed} B of activations over the budget {budget:.0} B");
        assert!(
            a > 4.0 * (d + 1.0) / (d - 1.0),
            "{device}: recomputation saves nothing at {a:.1}·C per token and block"
        );
    }
}
