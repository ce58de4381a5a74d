//! GPU throughput of the CUDA backend, beside the H100 anchors: bf16 dense peak 989 TFLOP/s
//! (cuBLAS reaches ~800 on 8192³ there), FlashAttention-3 ~630 TFLOP/s at head dim 128,
//! ~3 TB/s for memory-bound kernels. Each measurement launches `iters` times and then waits for
//! the device (`Executor::synchronize`), so criterion's time is the device's.
//!
//! - GEMM: 4096³ bf16 → f32, and the 2B transformer's linear layers at the last 1024² scale
//!   (2 × 4096 tokens with CFG, C = 2048).
//! - Attention: that scale's block-causal attention against the full KV cache as inference
//!   runs it (B = 2, H = 16, Lq = 4096, Lk = 10521, D = 128; q and k normalised beforehand).
//! - Memory-bound kernels at that scale (AdaLN to bf16, gated residual, cast, GELU in bf16,
//!   the fused attention inputs), the bit quantizer and the bitwise sampler: GB/s of their
//!   reads and writes.
//! - The 2B transformer on the device over a whole 1024² schedule (13 scales) with CFG:
//!   seconds per image (the official code's 0.8 s is for this model) and per scale; then the
//!   8B (spatial patchify, 56-bit tokens) the same way, with its peak device memory beside the
//!   README's ~31 GB budget (transformer side: 16.8 GB weights + 12.1 GB KV cache).
//!
//! - VAR d16 and d30 (random weights, the release-size VQVAE) generating 256² images with CFG
//!   and the demo's sampling, at batch 1 and 64: images per second beside the arithmetic floor
//!   (`VarConfig::generation_flops` at the bf16 dense peak).
//!
//! - Open-MAGVIT2 XL (random weights, the 256 tokenizer) generating 256² images with CFG at
//!   batch 1 and 64: tokens/s and images/s beside the arithmetic floor
//!   (`ArConfig::generation_flops` at the bf16 dense peak).
//!
//! Without a GPU it prints a SKIP line and measures nothing (the CPU shim's speed means nothing).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use infinity::cuda::Executor;
use infinity::cuda::adaln::{gated_residual, modulate};
use infinity::cuda::attention::{Attention, BlockCausal, Scores};
use infinity::cuda::bitwise_head::{Sampling, sample_bits};
use infinity::cuda::elementwise::{cast, gelu_tanh};
use infinity::cuda::gemm::{linear, matmul};
use infinity::cuda::quantize::quantize_scale;
use infinity::cuda::rope::attention_inputs;
use infinity::cuda::testing::skip;
use infinity::models::infinity::{Infinity, InfinityConfig, SamplingConfig, generate};
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Tensor};

fn random(exec: &Executor, shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let values = Philox::new(seed).normal(shape.iter().product());
    let t = Tensor::from_vec(values, shape).expect("shape matches").to_dtype(dtype).expect("cast");
    t.to_device(&exec.device()).expect("upload")
}

/// Criterion's time for `iters` runs of `op`, waiting for the device at the end.
fn device_time(exec: &Executor, iters: u64, mut op: impl FnMut()) -> Duration {
    exec.synchronize().expect("device");
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    exec.synchronize().expect("device");
    start.elapsed()
}

fn gemms(c: &mut Criterion, exec: &Executor) {
    let mut group = c.benchmark_group("gemm_bf16");
    let n = 4096;
    let (a, b) = (random(exec, &[n, n], DType::BF16, 1), random(exec, &[n, n], DType::BF16, 2));
    group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("4096^3", |bench| {
        bench.iter_custom(|iters| device_time(exec, iters, || drop(matmul(exec, &a, &b, DType::F32).expect("gemm"))))
    });
    // The 2B model's projections at the last 1024² scale with CFG: (tokens, in) → out.
    let tokens = 2 * 4096;
    for (name, k, m) in [("qkv", 2048, 6144), ("proj", 2048, 2048), ("fc1", 2048, 8192), ("fc2", 8192, 2048)] {
        let x = random(exec, &[tokens, k], DType::BF16, 3);
        let w = random(exec, &[m, k], DType::BF16, 4);
        let bias = random(exec, &[m], DType::F32, 5);
        group.throughput(Throughput::Elements(2 * (tokens * k * m) as u64));
        group.bench_function(format!("2b_{name}"), |bench| {
            bench.iter_custom(|iters| {
                device_time(exec, iters, || drop(linear(exec, &x, &w, Some(&bias), DType::BF16).expect("linear")))
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion, exec: &Executor) {
    let schedule = Template::exact(1.0).expect("1:1").schedule(PixelBudget::P1M);
    let offsets = schedule.offsets();
    let (lk, lq) = (schedule.seq_len(), schedule.grids.last().map_or(0, |(h, w)| h * w));
    let (b, h, d) = (2, 16, 128);
    let q = random(exec, &[b, h, lq, d], DType::BF16, 6);
    let (k, v) = (random(exec, &[b, h, lk, d], DType::BF16, 7), random(exec, &[b, h, lk, d], DType::BF16, 8));
    // As inference calls it: q and k already normalised and scaled (`attention_inputs`), the
    // output token-major, no logsumexp.
    let call = Attention {
        q: &q,
        k: &k,
        v: &v,
        mask: BlockCausal { offsets: &offsets, q_start: lk - lq },
        scores: Scores::Dot(1.0),
    };
    let mut out = exec.empty(&[b, lq, h, d], DType::BF16).expect("output");
    let mut group = c.benchmark_group("attention");
    // The last scale sees every key: QKᵀ and PV, 2 FLOP per multiply-add each.
    group.throughput(Throughput::Elements((4 * b * h * lq * lk * d) as u64));
    group.bench_function(format!("last_scale_1024_lq{lq}_lk{lk}_d{d}"), |bench| {
        bench.iter_custom(|iters| device_time(exec, iters, || call.forward_into(exec, &mut out, 0).expect("attention")))
    });
    group.finish();
}

/// The memory-bound kernels at the 2B model's last 1024² scale with CFG (2 × 4096 tokens,
/// C = 2048, 16 heads of 128), beside ~3 TB/s: the throughput counts each input read once and
/// each output written once.
fn memory_bound(c: &mut Criterion, exec: &Executor) {
    let mut group = c.benchmark_group("memory_bound");
    let (rows, tokens, channels) = (2, 4096, 2048);
    let x = random(exec, &[rows, tokens, channels], DType::F32, 9);
    let y = random(exec, &[rows, tokens, channels], DType::F32, 10);
    let (scale, shift) =
        (random(exec, &[rows, channels], DType::F32, 11), random(exec, &[rows, channels], DType::F32, 12));
    let stream = (rows * tokens * channels * 4) as u64;
    let mut bench = |name: &str, bytes: u64, op: &mut dyn FnMut()| {
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(name, |bench| bench.iter_custom(|iters| device_time(exec, iters, &mut *op)));
    };
    bench("adaln_modulate_f32_bf16", stream + stream / 2, &mut || {
        drop(modulate(exec, &x, &scale, &shift, 1e-6, DType::BF16).expect("modulate"))
    });
    bench("gated_residual_f32", 3 * stream, &mut || drop(gated_residual(exec, &x, &y, &scale).expect("gated")));
    bench("cast_f32_bf16", stream + stream / 2, &mut || drop(cast(exec, &x, DType::BF16).expect("cast")));
    let hidden = random(exec, &[rows, tokens, 4 * channels], DType::BF16, 16);
    bench("gelu_tanh_bf16", 4 * stream, &mut || drop(gelu_tanh(exec, &hidden, DType::BF16).expect("gelu")));

    // The last scale's qkv projection (B, n, 3, H, D) bf16 into q and the KV caches.
    let (heads, head_dim) = (16, 128);
    let qkv = random(exec, &[rows, tokens, 3, heads, head_dim], DType::BF16, 13);
    let (cos, sin) =
        (random(exec, &[tokens, head_dim / 2], DType::F32, 14), random(exec, &[tokens, head_dim / 2], DType::F32, 15));
    let head_scale = random(exec, &[heads], DType::F32, 19);
    let cache = || exec.empty(&[rows, heads, tokens, head_dim], DType::BF16).expect("cache");
    let (mut k_cache, mut v_cache) = (cache(), cache());
    let angles = (2 * tokens * head_dim / 2 * 4) as u64;
    bench("attention_inputs", (2 * 3 * rows * heads * tokens * head_dim * 2) as u64 + angles, &mut || {
        let q = attention_inputs(exec, &qkv, &cos, &sin, &head_scale, &mut k_cache, &mut v_cache, 0);
        drop(q.expect("attention inputs"))
    });

    // Training's quantizer on a batch of 16 latents (32 bits, 64 × 64): residual in; bits and
    // codes out.
    let residual = random(exec, &[16, 32, 64, 64], DType::F32, 16);
    let elements = (16 * 32 * 64 * 64) as u64;
    bench("bsq_quantize", elements * (4 + 1 + 4), &mut || drop(quantize_scale(exec, &residual).expect("quantize")));

    // Sampling one 64 × 64 scale of 32 bits for 16 images with CFG: logits in, bits out.
    let logits = random(exec, &[32, tokens, 64], DType::F32, 17);
    let sampling = Sampling { cfg: 3.0, tau: 1.0, top_p: 0.9, greedy: false };
    let mut rng = Philox::new(18);
    bench("bitwise_sample", (32 * tokens * 64 * 4 + 16 * tokens * 32) as u64, &mut || {
        drop(sample_bits(exec, &logits, 16, &sampling, &mut rng).expect("sample"))
    });
    group.finish();
}

/// Seconds per 1024² image of a released transformer size on the device (random weights, CFG,
/// 13 scales), as `infinity-run --device cuda` runs it (conditioning and the draw of the bits
/// on the device), and where they go: the time from one scale's bits to the next (that
/// scale's forward and draw, the bits' download, the host's bookkeeping and the next input's
/// upload).
fn transformer(exec: &Executor, preset: &str) {
    exec.empty_cache();
    exec.reset_peak();
    let config = InfinityConfig::preset(preset).expect("preset");
    let weights = Infinity::random_weights(&config, 0).expect("weights");
    let model = Infinity::with_config_on(&weights, config, &exec.device()).expect("model");
    drop(weights);
    let schedule = Template::exact(1.0).expect("1:1").schedule(PixelBudget::P1M);
    let prompt =
        Tensor::from_vec(Philox::new(3).normal(16 * model.config.text_channels), &[16, model.config.text_channels])
            .expect("shape");
    let sampling = SamplingConfig { seed: 1, ..Default::default() };
    let run = || {
        let start = Instant::now();
        let mut marks = Vec::new();
        generate(&model, std::slice::from_ref(&prompt), None, &schedule, &sampling, &[], |_| {
            marks.push(start.elapsed().as_secs_f64())
        })
        .expect("generate");
        (start.elapsed().as_secs_f64(), marks)
    };
    run(); // compiles the kernels and fills the allocator's cache
    let mut runs: Vec<(f64, Vec<f64>)> = (0..5).map(|_| run()).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (median, marks) = &runs[2];
    let memory = exec.memory();
    println!(
        "{preset} 1024² CFG transformer on {}: {median:.3} s per image (median of 5); peak device memory {:.0} MiB",
        exec.name(),
        memory.peak as f64 / (1 << 20) as f64
    );
    let per_scale: Vec<String> = schedule
        .grids
        .iter()
        .zip(marks.iter().scan(0.0, |last, &t| Some(t - std::mem::replace(last, t))))
        .map(|((h, w), dt)| format!("{h}x{w} {:.1}", dt * 1e3))
        .collect();
    println!("  per scale (ms): {}", per_scale.join(", "));
}

/// VAR `preset` on the device: images/s of whole generations (transformer, sampling on the
/// host, decode) at batch 1 and 64, and the transformer's share beside its arithmetic floor.
fn var_generation(exec: &Executor, preset: &str) {
    use infinity::models::var::{VarConfig, VarSampling, VarTransformer, VqVae, VqVaeConfig, generate};
    exec.empty_cache();
    exec.reset_peak();
    let config = VarConfig::preset(preset).expect("preset");
    let flops = config.generation_flops();
    let weights = VarTransformer::initial_weights(&config, 0).expect("weights");
    let model = VarTransformer::with_config_on(&weights, config, &exec.device()).expect("model");
    drop(weights);
    let vae_config = VqVaeConfig::release();
    let vae_weights = VqVae::random_weights(&vae_config, 0).expect("vae weights");
    let vae = VqVae::with_config_on(&vae_weights, vae_config, &exec.device()).expect("vae");
    for batch in [1usize, 64] {
        let classes: Vec<usize> = (0..batch).map(|i| i * 15 % 1000).collect();
        let sampling = VarSampling { seed: 1, ..Default::default() };
        let run = || {
            let start = Instant::now();
            let out = generate(&model, &vae, &classes, &sampling, None, |_| {}).expect("generate");
            exec.synchronize().expect("sync");
            let transformer = start.elapsed().as_secs_f64();
            vae.decode(&out.f_hat).expect("decode");
            (transformer, start.elapsed().as_secs_f64())
        };
        run();
        let mut runs: Vec<(f64, f64)> = (0..3).map(|_| run()).collect();
        runs.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (transformer, total) = runs[1];
        let floor = flops * batch as f64 / 989e12;
        println!(
            "VAR {preset} 256² CFG batch {batch} on {}: {:.2} images/s ({total:.3} s, transformer {transformer:.3} s = {:.1}× its floor of {:.1} ms at 989 TFLOP/s); peak device memory {:.0} MiB",
            exec.name(),
            batch as f64 / total,
            transformer / floor,
            floor * 1e3,
            exec.memory().peak as f64 / (1 << 20) as f64
        );
    }
}

/// Open-MAGVIT2 `preset` on the device: whole generations (256 steps of two sub-tokens,
/// sampling on the host, decode) at batch 1 and 64, beside the arithmetic floor.
fn magvit2_generation(exec: &Executor, preset: &str) {
    use infinity::models::magvit2::generate::{Sampling, generate};
    use infinity::models::magvit2::{ArConfig, ArModel, Tokenizer, TokenizerConfig};
    exec.empty_cache();
    exec.reset_peak();
    let config = ArConfig::preset(preset).expect("preset");
    let flops = config.generation_flops();
    let weights = ArModel::initial_weights(&config, 0).expect("weights");
    let ar = ArModel::with_config_on(&weights, config, &exec.device()).expect("model");
    drop(weights);
    let tok_config = TokenizerConfig::preset("imagenet_256_L").expect("tokenizer");
    let tok_weights = Tokenizer::random_weights(&tok_config, 0).expect("tokenizer weights");
    let tok = Tokenizer::with_config_on(&tok_weights, tok_config, &exec.device()).expect("tokenizer");
    for batch in [1usize, 64] {
        let classes: Vec<usize> = (0..batch).map(|i| i * 15 % 1000).collect();
        let run = || {
            let start = Instant::now();
            let out = generate(&ar, &classes, &Sampling { seed: 1, ..Default::default() }, |_| {}).expect("generate");
            exec.synchronize().expect("sync");
            let ar_time = start.elapsed().as_secs_f64();
            tok.decode(&out.codes).expect("decode");
            (ar_time, start.elapsed().as_secs_f64())
        };
        run();
        let mut runs: Vec<(f64, f64)> = (0..3).map(|_| run()).collect();
        runs.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (ar_time, total) = runs[1];
        let floor = flops * batch as f64 / 989e12;
        println!(
            "Open-MAGVIT2 {preset} 256² CFG batch {batch} on {}: {:.0} tokens/s, {:.2} images/s ({total:.3} s; AR {ar_time:.3} s = {:.1}× its floor of {:.1} ms at 989 TFLOP/s); peak device memory {:.0} MiB",
            exec.name(),
            (batch * 256) as f64 / ar_time,
            batch as f64 / total,
            ar_time / floor,
            floor * 1e3,
            exec.memory().peak as f64 / (1 << 20) as f64
        );
    }
}

fn benches(c: &mut Criterion) {
    let exec = match Executor::cuda(0) {
        Ok(exec) => exec,
        Err(why) => return skip("CUDA benchmarks", why),
    };
    eprintln!("{}: anchors 989 TFLOP/s bf16 dense, ~630 TFLOP/s FlashAttention-3 (d128), ~3 TB/s", exec.name());
    gemms(c, &exec);
    attention(c, &exec);
    memory_bound(c, &exec);
    transformer(&exec, "2b");
    transformer(&exec, "8b");
    var_generation(&exec, "d16");
    var_generation(&exec, "d30");
    magvit2_generation(&exec, "XL");
}

criterion_group!(cuda, benches);
criterion::criterion_main!(cuda);
