//! Training throughput of the Infinity transformer (a plain bench binary): one `train_step`
//! (teacher-forced forward, bitwise loss, backward, clipping, AdamW) on random weights,
//! latents and 64-token text features, on the device `INFINITY_BENCH_DEVICE` names (cpu, shim,
//! cuda or cuda:N; default cpu). It prints seconds per step, samples/s, tokens/s, the model's
//! FLOP rate and, on an H100 or H200, its utilisation of the 989 TFLOP/s bf16 peak (model
//! FLOPs only: 3 × the forward's matmul and attention FLOPs, nothing for recomputation), and
//! the executor's peak memory.
//!
//! Sizes: the bundled default model's configuration at 256² (batch 4); with a GPU also the 2B
//! at 256² (batch 4) and at 1024² with activation checkpointing (`recompute_blocks`, batch 2:
//! the goal of fine-tuning the 2B at 1024² on one 80 GB GPU), and, when
//! `INFINITY_BENCH_2B_1M=1`, at 1024² without it (batch 1, about 80 GB of activations).
//!
//! Under `cargo test` (no `--bench` argument) it runs a tiny configuration once on the CPU
//! and on the shim as a smoke test.

use std::time::Instant;

use infinity::autograd::optim::official_groups;
use infinity::autograd::{AdamW, AdamWConfig};
use infinity::cuda::Executor;
use infinity::models::infinity::teacher::{Flips, teacher_forcing};
use infinity::models::infinity::{Infinity, InfinityConfig, TokenLayout};
use infinity::models::schedule::{PixelBudget, Schedule, Template};
use infinity::models::train::{StepBatch, StepSettings, StepText, TokenWeighting, train_step};
use infinity::runtime::collective::Single;
use infinity::runtime::io::Weights;
use infinity::runtime::rng::Philox;
use infinity::runtime::{Device, DeviceName, Tensor};

/// Tokens of each sample's caption.
const TEXT_TOKENS: usize = 64;
/// Dense bf16 tensor-core peak of an H100 SXM (and an H200), FLOP/s.
const HOPPER_PEAK: f64 = 989e12;

/// Model FLOPs of one training step: 3 × the forward (the backward costs two forwards), the
/// forward counted as 2 FLOPs per multiply-add of every matmul (projections, FFN, head, word
/// embedding, cross-attention keys and values of the text) and of attention's QKᵀ and PV over
/// the block-causal mask (each token sees its own scale and the ones before).
fn step_flops(config: &InfinityConfig, schedule: &Schedule, batch: usize) -> f64 {
    let (c, hidden, depth) = (config.embed_dim as f64, config.mlp_hidden as f64, config.depth as f64);
    let tokens = schedule.seq_len() as f64;
    let text = TEXT_TOKENS as f64;
    // Per token and block: qkv + proj (4C²), cross q + proj (2C²), FFN (2·C·hidden).
    let per_token_block = 2.0 * (6.0 * c * c + 2.0 * c * hidden);
    // Per text token and block: the cross-attention's keys and values.
    let per_text_block = 2.0 * 2.0 * c * c;
    let mut seen = 0.0;
    let mut self_attention = 0.0;
    for n in schedule.tokens() {
        seen += n as f64;
        self_attention += n as f64 * seen;
    }
    let attention = 2.0 * 2.0 * c * (self_attention + tokens * text);
    let per_token_io = 2.0 * c * (2.0 * config.bits as f64) + 2.0 * config.bits as f64 * c;
    let forward = depth * (tokens * per_token_block + text * per_text_block + attention) + tokens * per_token_io;
    3.0 * forward * batch as f64
}

struct Measured {
    seconds: f64,
    peak_bytes: Option<usize>,
}

/// The median seconds of `steps` training steps (after one warm-up step) on `device`.
fn time_steps(config: &InfinityConfig, run: Run, device: &Device, steps: usize) -> Measured {
    let Run { pn, batch, recompute_blocks } = run;
    let schedule = Template::exact(1.0).unwrap().schedule(pn);
    let mut rng = Philox::new(11);
    let (h, w) = schedule.last();
    let latents = Tensor::from_vec(rng.normal(batch * config.bits * h * w), &[batch, config.bits, h, w]).unwrap();
    let targets = teacher_forcing(&latents, &schedule.grids, TokenLayout::Plain, Flips::None).unwrap();
    let prompts: Vec<StepText> = (0..batch)
        .map(|_| {
            let features = rng.normal(TEXT_TOKENS * config.text_channels);
            StepText::Features(Tensor::from_vec(features, &[TEXT_TOKENS, config.text_channels]).unwrap())
        })
        .collect();
    let weights = Infinity::random_weights(config, 0).unwrap();
    let mut params = Infinity::parameters(&weights, config).unwrap().to_device(device).unwrap();
    drop(weights);
    let mut optimizer = AdamW::new(AdamWConfig::default(), official_groups(&params)).unwrap();
    let micro = [StepBatch { prompts: &prompts, text_encoder: None, targets: &targets, schedule: &schedule }];
    let settings =
        StepSettings { lr: 1e-4, weight_decay: 0.0, clip: 1.0, weighting: TokenWeighting::ByScale, recompute_blocks };
    let exec = Executor::on(device);
    let mut times: Vec<f64> = (0..=steps)
        .map(|_| {
            let t = Instant::now();
            // The loss is read back, so the step's work on the device is done when it returns.
            train_step(&mut params, &mut optimizer, config, &micro, settings, &Single).unwrap();
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    Measured { seconds: times[times.len() / 2], peak_bytes: exec.map(|e| e.memory().peak) }
}

/// What one bench line trains: the pixel budget (1:1), the batch and whether blocks are
/// recomputed (activation checkpointing).
#[derive(Clone, Copy)]
struct Run {
    pn: PixelBudget,
    batch: usize,
    recompute_blocks: bool,
}

fn report(name: &str, config: &InfinityConfig, run: Run, device: &Device, steps: usize) {
    let Run { pn, batch, recompute_blocks } = run;
    let schedule = Template::exact(1.0).unwrap().schedule(pn);
    let flops = step_flops(config, &schedule, batch);
    let m = time_steps(config, run, device, steps);
    let tokens = (batch * schedule.seq_len()) as f64;
    let rate = flops / m.seconds;
    let utilisation = match Executor::on(device).map(|e| e.name()) {
        Some(gpu) if gpu.contains("H100") || gpu.contains("H200") => {
            format!(", {:.1} % of the {:.0} TFLOP/s bf16 peak", 100.0 * rate / HOPPER_PEAK, HOPPER_PEAK / 1e12)
        }
        _ => String::new(),
    };
    let memory = m.peak_bytes.map_or(String::new(), |peak| memory(config, &schedule, batch, peak));
    let recompute = if recompute_blocks { " recomputing blocks" } else { "" };
    println!(
        "{name} {pn} batch {batch}{recompute} on {device}: {:.3} s/step, {:.2} samples/s, {:.0} tokens/s, {:.2} GFLOP/step model, \
         {:.1} GFLOP/s{utilisation}{memory}; median of {steps}",
        m.seconds,
        batch as f64 / m.seconds,
        tokens / m.seconds,
        flops / 1e9,
        rate / 1e9
    );
}

/// The executor's peak beside the budget's parts: 16 bytes per parameter held for the whole
/// run (f32 master weights, gradients and AdamW's two moments) and the rest, the activations
/// (and transient buffers) of the step, per sample, block and token in units of C f32 values:
/// the figure the README's memory budget scales to other sizes.
fn memory(config: &InfinityConfig, schedule: &Schedule, batch: usize, peak: usize) -> String {
    let params: usize = config.entries().iter().filter(|e| !e.buffer).map(|e| e.shape.iter().product::<usize>()).sum();
    let state = 16.0 * params as f64;
    let activations = peak as f64 - state;
    let per_token = activations / (batch * config.depth * schedule.seq_len() * config.embed_dim * 4) as f64;
    format!(
        ", peak device memory {:.3} GB = {:.3} GB for {params} parameters × 16 B + {:.3} GB of activations \
         ({per_token:.1}·C f32 per token and block)",
        peak as f64 / 1e9,
        state / 1e9,
        activations / 1e9
    )
}

/// What 40 % of an H100's peak would give: the goal, as arithmetic.
fn goal(name: &str, config: &InfinityConfig, pn: PixelBudget) {
    let schedule = Template::exact(1.0).unwrap().schedule(pn);
    let per_sample = step_flops(config, &schedule, 1);
    let samples = 0.4 * HOPPER_PEAK / per_sample;
    println!(
        "{name} {pn}: {:.2} TFLOP per sample; at 40 % of an H100: {samples:.2} samples/s, {:.0} tokens/s",
        per_sample / 1e12,
        samples * schedule.seq_len() as f64
    );
}

/// The bundled default model's configuration, when its weights are at hand (scripts/gpu.sh
/// moves them aside to fit the transfer to a GPU machine).
fn default_config() -> Option<InfinityConfig> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/default/transformer.safetensors");
    Weights::open(path).ok().map(|w| Infinity::detect_config(&w).unwrap())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        // Smoke test under `cargo test`: a tiny configuration, one timed step per device.
        let config = InfinityConfig {
            depth: 1,
            embed_dim: 128,
            num_heads: 2,
            mlp_hidden: 256,
            text_channels: 128,
            bits: 8,
            block_chunks: 1,
            text_maxlen: TEXT_TOKENS,
            spatial_patchify: false,
        };
        for device in [Device::Cpu, Executor::shim().device()] {
            for recompute_blocks in [false, true] {
                let run = Run { pn: PixelBudget::P006M, batch: 1, recompute_blocks };
                report("smoke run, tiny", &config, run, &device, 1);
            }
        }
        return;
    }
    let name: DeviceName = std::env::var("INFINITY_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().unwrap();
    let device = Executor::named(name).unwrap().map_or(Device::Cpu, |e| e.device());
    let two_b = InfinityConfig::preset("2b").unwrap();
    goal("2B", &two_b, PixelBudget::P006M);
    goal("2B", &two_b, PixelBudget::P1M);
    match default_config() {
        Some(default) => {
            let run = Run { pn: PixelBudget::P006M, batch: 4, recompute_blocks: false };
            report("default model", &default, run, &device, 5)
        }
        None => println!("SKIP: the default model's size: assets/models/default/transformer.safetensors is not here"),
    }
    if device.is_cpu() || matches!(name, DeviceName::Shim) {
        println!("SKIP: the 2B's training steps (minutes each here): run with INFINITY_BENCH_DEVICE=cuda on a GPU");
        return;
    }
    report("2B", &two_b, Run { pn: PixelBudget::P006M, batch: 4, recompute_blocks: false }, &device, 3);
    report("2B", &two_b, Run { pn: PixelBudget::P1M, batch: 2, recompute_blocks: true }, &device, 3);
    if std::env::var_os("INFINITY_BENCH_2B_1M").is_some() {
        report("2B", &two_b, Run { pn: PixelBudget::P1M, batch: 1, recompute_blocks: false }, &device, 3);
    } else {
        println!(
            "SKIP: the 2B at 1024² without recomputation (about 80 GB of activations per sample): set INFINITY_BENCH_2B_1M=1"
        );
    }
}
