//! End-to-end generation timing (a plain bench binary: one 2B image takes minutes on a CPU,
//! beyond criterion's repetitions). Random weights; CFG on; 256² (0.06M, 7 scales).
//!
//! - layer12 (125M) with the d32 VAE, the work `../shared/tools/official-cpu-timing` times
//!   (30 text tokens, 7 scales, CFG 3): transformer and decode times and GFLOP/s, beside this
//!   machine's own anchor (a 1024³ f32 GEMM), so that `side_by_side.sh` can set them against the
//!   official PyTorch code run in the same session.
//! - 2B with bf16 weights written to a local safetensors file and mapped back (set
//!   `INFINITY_BENCH_2B=1`; needs ~5 GB of disk and minutes): time and peak RSS.
//! - 8B likewise, with its patch-8 d14 VAE (spatial patchify; set `INFINITY_BENCH_8B=1`; needs
//!   ~17 GB of disk, as much memory while the file is written, and many minutes).
//!
//! - VAR d16 (310M) with a random VQVAE of the release's size, 256² with CFG: transformer and
//!   decode times and the transformer's FLOP rate.
//! - Open-MAGVIT2 B (343M) with a random 256 tokenizer, 256² (256 tokens) with CFG: the same.
//!
//! Under `cargo test` (no `--bench` argument) it runs tiny configurations once as a smoke test.
//! Names after `--` pick sections: `cargo bench --bench generate -- layer12` (also `var`,
//! `magvit2`, `memory`).

use std::time::Instant;

use infinity::models::bitvae::{BitVae, BitVaeConfig};
use infinity::models::device_memory::GenerationMemory;
use infinity::models::infinity::{Infinity, InfinityConfig, SamplingConfig, generate};
use infinity::models::schedule::{PixelBudget, Template};
use infinity::models::var::{VarConfig, VarSampling, VarTransformer, VqVae, VqVaeConfig};
use infinity::runtime::io::{Weights, save_safetensors};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Device, Tensor};

/// Text features of one 30-token prompt (the official timing's stand-in for T5's).
fn prompt(text_channels: usize) -> Tensor {
    let values = Philox::new(3).normal(30 * text_channels).into_iter().map(|x| 0.2 * x).collect();
    Tensor::from_vec(values, &[30, text_channels]).unwrap()
}

/// Seconds of one transformer run and one decode.
fn time_once(model: &Infinity, vae: &BitVae) -> (f64, f64) {
    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P006M);
    let sampling = SamplingConfig { seed: 1, ..Default::default() };
    let t = Instant::now();
    let out = generate(model, &[prompt(model.config.text_channels)], None, &schedule, &sampling, &[], |_| {}).unwrap();
    let transformer = t.elapsed().as_secs_f64();
    let t = Instant::now();
    vae.decode(&out.summed_codes).unwrap();
    (transformer, t.elapsed().as_secs_f64())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// GFLOP/s of a 1024³ f32 GEMM on this machine (best of 3 × 20 after a warm-up): the anchor the
/// official timing also measures, to read the stages' rates against.
fn anchor_gflops() -> f64 {
    let a = Tensor::from_vec(Philox::new(1).normal(1 << 20), &[1024, 1024]).unwrap();
    let b = Tensor::from_vec(Philox::new(2).normal(1 << 20), &[1024, 1024]).unwrap();
    let run = || infinity::ops::matmul::matmul(&a, &b).unwrap();
    run();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            (0..20).for_each(|_| drop(run()));
            20.0 * 2.0 * 1024f64.powi(3) / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The official FlopCounter counts of this generation (matmul, linear, conv, SDPA).
const LAYER12_GFLOP: f64 = 220.4;
const D32_DECODE_GFLOP: f64 = 615.5;

fn layer12(runs: usize) {
    let model = Infinity::random(InfinityConfig::preset("layer12").unwrap(), 0).unwrap();
    let vae = BitVae::random(BitVaeConfig::preset("d32").unwrap(), 0).unwrap();
    time_once(&model, &vae); // warm-up
    let anchor = anchor_gflops();
    let mut times: Vec<(f64, f64)> = (0..runs).map(|_| time_once(&model, &vae)).collect();
    times.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (t, d) = times[times.len() / 2];
    println!(
        "layer12 256² CFG: transformer {t:.3} s ({:.0} GFLOP/s) + d32 decode {d:.3} s ({:.0} GFLOP/s); anchor 1024³ GEMM {anchor:.0} GFLOP/s; median of {runs}",
        LAYER12_GFLOP / t,
        D32_DECODE_GFLOP / d
    );
}

/// Writes random weights of `config` in bf16 to `path` (what a bf16 release file holds).
fn write_random(config: &InfinityConfig, path: &std::path::Path) {
    let mut rng = Philox::new(5);
    let tensors: Vec<(String, Tensor)> = config
        .entries()
        .into_iter()
        .filter(|e| !e.buffer)
        .map(|e| {
            let n: usize = e.shape.iter().product();
            let scale = 1.0 / (*e.shape.last().unwrap() as f32).sqrt();
            let values = if e.key.ends_with("scale_mul_1H11") {
                vec![4f32.ln(); n]
            } else {
                rng.normal(n).into_iter().map(|x| x * scale).collect()
            };
            (e.key, Tensor::from_vec(values, &e.shape).unwrap().to_dtype(DType::BF16).unwrap())
        })
        .collect();
    save_safetensors(path, tensors.iter().map(|(k, t)| (k.as_str(), t)), &Default::default()).unwrap();
}

/// A released size with bf16 weights written to a local file and mapped back, with a random
/// VAE of its kind: load, transformer and decode times, the transformer's FLOP rate (≈ 2 ×
/// parameters × 521 tokens × 2 CFG rows) and peak RSS.
fn mapped(preset: &str, vae_preset: &str) {
    let config = InfinityConfig::preset(preset).unwrap();
    let dir = std::env::temp_dir().join(format!("infinity-bench-{preset}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("infinity_{preset}_random_bf16.safetensors"));
    if !path.exists() {
        write_random(&config, &path);
    }
    let base_rss = peak_rss_mib();
    let t = Instant::now();
    let weights = Weights::open(&path).unwrap();
    let mut model = Infinity::with_config(&weights, Infinity::detect_config(&weights).unwrap()).unwrap();
    // The pair tells the layout (see pipeline::check_fit): the 8B's VAE is patchified.
    model.config.spatial_patchify = config.spatial_patchify;
    let load = t.elapsed().as_secs_f64();
    let vae = BitVae::random(BitVaeConfig::preset(vae_preset).unwrap(), 0).unwrap();
    let (t, d) = time_once(&model, &vae);
    let flop = 4.0 * weights.total_params() as f64 * 521.0;
    println!(
        "{preset} (bf16 file, mapped) 256² CFG: load {load:.1} s, transformer {t:.1} s ({:.0} GFLOP/s at ~{:.1} TFLOP), decode {d:.1} s; peak RSS {:.0} MiB (before loading: {base_rss:.0} MiB; the file is {:.1} GB)",
        flop / t / 1e9,
        flop / 1e12,
        peak_rss_mib(),
        std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e9)
    );
}

/// Seconds of one VAR generation (CFG, the demo's sampling) of `classes` and of its decode.
fn time_var(model: &VarTransformer, vae: &VqVae, classes: &[usize]) -> (f64, f64) {
    let t = Instant::now();
    let sampling = VarSampling { seed: 1, ..Default::default() };
    let out = infinity::models::var::generate(model, vae, classes, &sampling, None, |_| {}).unwrap();
    let transformer = t.elapsed().as_secs_f64();
    let t = Instant::now();
    vae.decode(&out.f_hat).unwrap();
    (transformer, t.elapsed().as_secs_f64())
}

/// VAR `preset` with random weights (the official initialisation) and a random release-size
/// VQVAE: the median of `runs` generations of one class.
fn var(preset: &str, runs: usize) {
    let config = VarConfig::preset(preset).unwrap();
    let flops = config.generation_flops();
    let weights = VarTransformer::initial_weights(&config, 0).unwrap();
    let model = VarTransformer::with_config_on(&weights, config, &Device::Cpu).unwrap();
    drop(weights);
    let vae_config = VqVaeConfig::release();
    let vae = VqVae::with_config_on(&VqVae::random_weights(&vae_config, 0).unwrap(), vae_config, &Device::Cpu).unwrap();
    let mut times: Vec<(f64, f64)> = (0..runs).map(|_| time_var(&model, &vae, &[207])).collect();
    times.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (t, d) = times[times.len() / 2];
    println!(
        "VAR {preset} 256² CFG: transformer {t:.2} s ({:.0} GFLOP/s at {:.0} GFLOP) + VQVAE decode {d:.2} s; median of {runs}",
        flops / t / 1e9,
        flops / 1e9
    );
}

/// Open-MAGVIT2 `preset` with random weights (the official initialisation, heads included: its
/// logits are uniform, which changes no cost) and a random imagenet_256_L tokenizer.
fn magvit2(preset: &str, runs: usize) {
    use infinity::models::magvit2::generate::{Sampling, generate};
    use infinity::models::magvit2::{ArConfig, ArModel, Tokenizer, TokenizerConfig};
    let config = ArConfig::preset(preset).unwrap();
    let flops = config.generation_flops();
    let weights = ArModel::initial_weights(&config, 0).unwrap();
    let ar = ArModel::with_config_on(&weights, config, &Device::Cpu).unwrap();
    drop(weights);
    let tok_config = TokenizerConfig::preset("imagenet_256_L").unwrap();
    let tok = Tokenizer::with_config_on(&Tokenizer::random_weights(&tok_config, 0).unwrap(), tok_config, &Device::Cpu)
        .unwrap();
    let mut times: Vec<(f64, f64)> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = generate(&ar, &[207], &Sampling::default(), |_| {}).unwrap();
            let ar_time = t.elapsed().as_secs_f64();
            let t = Instant::now();
            tok.decode(&out.codes).unwrap();
            (ar_time, t.elapsed().as_secs_f64())
        })
        .collect();
    times.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let (t, d) = times[times.len() / 2];
    println!(
        "Open-MAGVIT2 {preset} 256² CFG: AR {t:.2} s ({:.0} tokens/s, {:.0} GFLOP/s at {:.0} GFLOP) + decode {d:.2} s; median of {runs}",
        256.0 / t,
        flops / t / 1e9,
        flops / 1e9
    );
}

/// The device memory of one 1024² image with CFG for the released transformers, by
/// arithmetic (`GenerationMemory`, held to a measured generation by tests/cuda_pipeline.rs).
fn device_memory() {
    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P1M);
    for (preset, vae) in [("2b", "d32"), ("8b", "d14_patchify")] {
        let vae = BitVaeConfig::preset(vae).unwrap();
        let mut config = InfinityConfig::preset(preset).unwrap();
        // The pair tells the layout (see pipeline::check_fit): the 8B's VAE is patchified.
        config.spatial_patchify = vae.patch == 8;
        println!(
            "{preset} on a device, 1024², 1 image, CFG: {}",
            GenerationMemory::of(&config, &vae, &schedule, 1, true)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let picked: Vec<&str> = args.iter().filter(|a| !a.starts_with('-')).map(String::as_str).collect();
    let wants = |section: &str| picked.is_empty() || picked.contains(&section);
    if wants("memory") {
        device_memory();
    }
    if !bench {
        // Smoke test under `cargo test`: the smallest real presets' pipeline once, tiny widths.
        let config = InfinityConfig {
            depth: 2,
            embed_dim: 64,
            num_heads: 2,
            mlp_hidden: 128,
            text_channels: 128,
            bits: 16,
            block_chunks: 2,
            text_maxlen: 32,
            spatial_patchify: false,
        };
        let model = Infinity::random(config, 0).unwrap();
        let vae = BitVae::random(
            BitVaeConfig { base_ch: 32, ch_mult: vec![1; 5], num_res_blocks: 1, z_channels: 16, patch: 16 },
            0,
        )
        .unwrap();
        let (t, d) = time_once(&model, &vae);
        println!("generate bench smoke run: transformer {t:.2} s, decode {d:.2} s");
        let config = VarConfig {
            depth: 2,
            embed_dim: 64,
            num_heads: 2,
            mlp_hidden: 256,
            num_classes: 10,
            shared_aln: false,
            patch_nums: vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
            vocab: 64,
            cvae: 16,
        };
        let weights = VarTransformer::initial_weights(&config, 0).unwrap();
        let model = VarTransformer::with_config_on(&weights, config, &Device::Cpu).unwrap();
        let mut vae_config = VqVaeConfig::release();
        (vae_config.net.base_ch, vae_config.net.ch_mult, vae_config.vocab, vae_config.net.z_channels) =
            (32, vec![1; 5], 64, 16);
        let vae =
            VqVae::with_config_on(&VqVae::random_weights(&vae_config, 0).unwrap(), vae_config, &Device::Cpu).unwrap();
        let (t, d) = time_var(&model, &vae, &[1, 2]);
        println!("VAR smoke run: transformer {t:.2} s, decode {d:.2} s");
        return;
    }
    if wants("layer12") {
        layer12(3);
    }
    if wants("var") {
        var("d16", 3);
    }
    if wants("magvit2") {
        magvit2("B", 3);
    }
    for (preset, vae, env, size) in
        [("2b", "d32", "INFINITY_BENCH_2B", "4.4"), ("8b", "d14_patchify", "INFINITY_BENCH_8B", "17")]
    {
        if std::env::var_os(env).is_some() {
            mapped(preset, vae);
        } else {
            println!("SKIP: {preset} generation (writes a {size} GB bf16 file and takes minutes): set {env}=1");
        }
    }
}
