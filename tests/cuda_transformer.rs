//! The transformer on an executor (the one forward of models/src/infinity, loaded onto the
//! device) against the official goldens: a greedy CFG generation teacher-forced with the
//! golden bits, on every executor (the CPU shim here, a GPU as well when present), for every
//! dev set — devA (head dim 64), devB (16) and devC (32, the 8B's spatial patchify); every
//! width here runs in the fused attention kernels. The device runs
//! bf16 weights and GEMM operands, so it is held to bf16 bounds, not the f32 path's 1e-4: the
//! raw logits of every scale within 2⁻⁵ of the largest golden logit of that scale (about
//! eight bf16 roundings of a ~2⁻⁹ relative step each, in a chain of two blocks, the head and
//! the embedding), and the greedy bit wherever the golden guided margin is clear of that error.

mod common;

use common::{fixture, max_abs, max_abs_diff, open, text_prompts};
use infinity::models::bitvae::detect_config;
use infinity::models::infinity::{Infinity, SamplingConfig, TokenLayout, generate};
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::Tensor;
use infinity::runtime::io::Weights;
use infinity_cuda::Executor;
use infinity_cuda::testing::executors;

/// Relative bound on the raw logits (see the module header).
const LOGIT_BOUND: f32 = 1.0 / 32.0;

#[test]
fn greedy_cfg_generation_follows_the_golden_in_bf16() {
    for (set, ratio) in [("devA", 1.0), ("devB", 0.5), ("devC", 1.0)] {
        let path = fixture(&format!("{set}/transformer.safetensors"));
        let golden = open(&format!("{set}/generate_golden.safetensors"));
        let vae = detect_config(&Weights::open(fixture(&format!("{set}/vae.safetensors"))).unwrap()).unwrap();
        let layout = TokenLayout::of_vae_patch(vae.patch).unwrap();
        let schedule = Template::exact(ratio).unwrap().schedule(PixelBudget::P006M);
        let golden_bits: Vec<Tensor> = (0..schedule.num_scales())
            .map(|k| {
                let (h, w) = layout.vae_grid(schedule.grids[k]);
                let b = golden.get(&format!("bits_scale{k:02}")).unwrap();
                layout.bits_to_tokens(&b.reshape(&[1, h, w, vae.z_channels]).unwrap()).unwrap()
            })
            .collect();
        let sampling = SamplingConfig { cfg: vec![3.0], tau: vec![1.0], top_k: 1, ..Default::default() };
        for exec in executors() {
            let mut on_exec =
                Infinity::open_on(&path, &exec.device()).unwrap_or_else(|e| panic!("{set} {}: {e}", exec.name()));
            on_exec.config.spatial_patchify = layout == TokenLayout::Patchify;
            let mut decisive = 0;
            let mut worst = 0f32;
            generate(&on_exec, &text_prompts(&golden), None, &schedule, &sampling, &golden_bits, |step| {
                let k = step.index;
                let want =
                    golden.get(&format!("raw_logits_scale{k:02}")).unwrap().reshape(step.raw_logits.shape()).unwrap();
                let scale = max_abs(&want);
                let diff = max_abs_diff(step.raw_logits, &want);
                worst = worst.max(diff / scale);
                assert!(
                    diff <= LOGIT_BOUND * scale,
                    "{set} {}: scale {k}: max |diff| {diff:e} of max |logit| {scale:e}",
                    exec.name()
                );
                let (ours, theirs) = (step.raw_logits.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
                let half = ours.len() / 2;
                let guided = |v: &[f32], i: usize| 3.0 * v[i] - 2.0 * v[half + i];
                for (j, &g) in golden_bits[k].to_vec::<u8>().unwrap().iter().enumerate() {
                    let margin = guided(&theirs, 2 * j + 1) - guided(&theirs, 2 * j);
                    // Guidance multiplies the logit error by at most 3 + 2 per logit, two logits.
                    if margin.abs() > 10.0 * LOGIT_BOUND * scale {
                        let mine = u8::from(guided(&ours, 2 * j + 1) > guided(&ours, 2 * j));
                        assert_eq!(mine, g, "{set} {}: scale {k} bit {j} (golden margin {margin})", exec.name());
                        decisive += 1;
                    }
                }
            })
            .unwrap_or_else(|e| panic!("{set} {}: {e}", exec.name()));
            assert!(decisive > 0, "{set} {}: no bit had a clear margin", exec.name());
            eprintln!(
                "{set} {}: worst logit error {worst:.2e} of the scale's largest; {decisive} clear bits agree",
                exec.name()
            );
        }
    }
}

/// Every preset's head dim (layer12–24: 96, layer32: 104, layer40: 112, layer48: 120, the 2B
/// and the 8B: 128), in a one-block model of two heads with random weights whose attention is
/// sharp (log-scales of 20–80, as the dev goldens'): a greedy CFG generation on each executor
/// follows the CPU's f32 one within the bf16 bound above, fed the CPU's bits.
#[test]
fn every_preset_head_dim_generates_on_the_device_as_on_the_cpu() {
    use infinity::models::infinity::InfinityConfig;
    use infinity::runtime::rng::Philox;

    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P006M);
    let mut dims: Vec<usize> =
        InfinityConfig::PRESETS.iter().map(|p| InfinityConfig::preset(p).unwrap().head_dim()).collect();
    dims.dedup();
    assert_eq!(dims, [96, 104, 112, 120, 128]);
    for d in dims {
        let config = InfinityConfig {
            depth: 1,
            embed_dim: 2 * d,
            num_heads: 2,
            mlp_hidden: 256,
            text_channels: 128,
            bits: 32,
            block_chunks: 1,
            text_maxlen: 16,
            spatial_patchify: false,
        };
        let mut rng = Philox::new(d as u64);
        let entries = config
            .entries()
            .into_iter()
            .map(|e| {
                let n = e.shape.iter().product();
                let values: Vec<f32> = if e.key.ends_with("scale_mul_1H11") {
                    rng.uniform(n).into_iter().map(|u| (20.0 + 60.0 * u).ln()).collect()
                } else {
                    rng.normal(n).into_iter().map(|x| 0.05 * x).collect()
                };
                (e.key, Tensor::from_vec(values, &e.shape).unwrap())
            })
            .collect();
        let weights = Weights::new("random.safetensors", entries, Default::default()).unwrap();
        let text = vec![Tensor::from_vec(rng.normal(8 * 128), &[8, 128]).unwrap()];
        let sampling = SamplingConfig { cfg: vec![3.0], tau: vec![1.0], top_k: 1, ..Default::default() };
        let cpu = Infinity::with_config(&weights, config.clone()).unwrap();
        let mut want = Vec::new();
        let reference =
            generate(&cpu, &text, None, &schedule, &sampling, &[], |step| want.push(step.raw_logits.clone())).unwrap();
        for exec in executors() {
            let model = Infinity::with_config_on(&weights, config.clone(), &exec.device()).unwrap();
            generate(&model, &text, None, &schedule, &sampling, &reference.bits, |step| {
                let (golden, scale) = (&want[step.index], max_abs(&want[step.index]));
                let diff = max_abs_diff(step.raw_logits, golden);
                assert!(
                    diff <= LOGIT_BOUND * scale,
                    "head dim {d} on {}: scale {}: max |diff| {diff:e} of {scale:e}",
                    exec.name(),
                    step.index
                );
            })
            .unwrap_or_else(|e| panic!("head dim {d} on {}: {e}", exec.name()));
        }
    }
}

/// Launches per block and scale: each is a few microseconds of fixed cost on a GPU, which is
/// most of what a small scale costs (cuda/PERF.md), so the count is held to a budget: 22 per
/// block whatever the batch, 7 more per scale (embedding, level embedding, head, and the draw
/// of the bits, so that only they come to the host). Before the fusions of the inference path
/// a block took 29 plus 2 per sample.
#[test]
fn a_block_stays_within_its_launch_budget() {
    const PER_BLOCK: u64 = 22;
    const PER_SCALE: u64 = 7;
    let model = Infinity::open(fixture("devA/transformer.safetensors")).unwrap();
    let golden = open("devA/generate_golden.safetensors");
    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P006M);
    let sampling = SamplingConfig { cfg: vec![3.0], tau: vec![1.0], top_k: 1, ..Default::default() };
    // An executor of its own: the other tests' launches must not be counted.
    let exec = &Executor::shim();
    let on_exec = Infinity::open_on(fixture("devA/transformer.safetensors"), &exec.device()).unwrap();
    let prompts = text_prompts(&golden);
    // The conditional and unconditional halves.
    let samples = 2 * prompts.len() as u64;
    let depth = model.config.depth as u64;
    let mut counts = Vec::new();
    let mut last = exec.launches();
    generate(&on_exec, &prompts, None, &schedule, &sampling, &[], |_| {
        counts.push(exec.launches() - last);
        last = exec.launches();
    })
    .unwrap();
    eprintln!("launches per scale ({depth} blocks, {samples} samples): {counts:?}");
    // Scale 0 also projects each block's text keys and values.
    let budget = depth * PER_BLOCK + PER_SCALE;
    for (k, &n) in counts.iter().enumerate().skip(1) {
        assert!(n <= budget, "scale {k}: {n} launches, over the budget of {budget}");
    }
}
