//! The whole pipeline on an executor (what `infinity-run --device cuda` runs): prompts → T5 on
//! the device → the transformer's scales on the device (the conditioning included) → the
//! BitVAE decoder on the device, against the same model folder run on the CPU. The device computes in bf16, so a sampled bit
//! may differ wherever the CPU's margin is within rounding; the device generation is therefore
//! teacher-forced with the CPU's bits, and what is compared is each stage's numbers: features
//! and logits within the bounds of tests/cuda_t5.rs and tests/cuda_transformer.rs (2⁻⁶ and
//! 2⁻⁵ of the largest value), the image within the decoder's (tests/cuda_bitvae.rs: mean error
//! 2⁻⁵ of the mean magnitude, no pixel off by more than 0.25).

mod common;

use common::{fixture, max_abs, max_abs_diff};
use infinity::cuda::Executor;
use infinity::cuda::testing::executors;
use infinity::models::device_memory::GenerationMemory;
use infinity::models::infinity::{SamplingConfig, generate};
use infinity::models::model_folder::ModelFiles;
use infinity::models::pipeline::Pipeline;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::ops::elementwise::sub;
use infinity::runtime::{Device, Tensor};

fn mean_abs(t: &Tensor) -> f32 {
    let v = t.to_f32_vec().unwrap();
    v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32
}

#[test]
fn the_device_pipeline_follows_the_cpu_stage_by_stage() {
    let files = ModelFiles::from_dir(&fixture("devA")).unwrap();
    let pipeline = Pipeline::load(&files, &Device::Cpu).unwrap();
    let prompts = ["a red cat on a mat", "x"];
    let cpu_text = pipeline.encode_prompts(&prompts).unwrap();
    let schedule = Template::exact(1.0).unwrap().schedule(files.default_pn.unwrap_or(PixelBudget::P006M));
    let sampling = SamplingConfig { seed: 5, ..Default::default() };
    let features: Vec<Tensor> = cpu_text.iter().map(|e| e.features.clone()).collect();
    let mut cpu_logits = Vec::new();
    let cpu = generate(&pipeline.transformer, &features, None, &schedule, &sampling, &[], |step| {
        cpu_logits.push(step.raw_logits.clone())
    })
    .unwrap();
    let cpu_image = pipeline.vae.decode(&cpu.summed_codes).unwrap();

    for exec in executors() {
        let name = exec.name();
        // All three models loaded onto the executor.
        let mut on_exec = Pipeline::load(&files, &exec.device()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = on_exec.encode_prompts(&prompts).unwrap();
        on_exec.drop_text_encoder();
        for (got, want) in text.iter().zip(&cpu_text) {
            let (diff, scale) = (max_abs_diff(&got.features, &want.features), max_abs(&want.features));
            assert!(diff <= scale / 64.0, "{name}: features off by {diff:e} of {scale:e}");
        }
        // The CPU's features and bits: each stage is compared on the same inputs.
        let mut k = 0;
        let out = generate(&on_exec.transformer, &features, None, &schedule, &sampling, &cpu.bits, |step| {
            let want = &cpu_logits[k];
            let (diff, scale) = (max_abs_diff(step.raw_logits, want), max_abs(want));
            assert!(diff <= scale / 32.0, "{name}: scale {k} logits off by {diff:e} of {scale:e}");
            k += 1;
        })
        .unwrap();
        assert_eq!(k, schedule.num_scales());
        assert!(out.summed_codes.same_values(&cpu.summed_codes), "{name}: the forced bits sum to the same codes");
        let image = on_exec.vae.decode(&out.summed_codes).unwrap();
        let error = sub(&image, &cpu_image).unwrap();
        assert!(mean_abs(&error) <= mean_abs(&cpu_image) / 32.0, "{name}: mean image error {}", mean_abs(&error));
        assert!(max_abs(&error) <= 0.25, "{name}: worst pixel off by {}", max_abs(&error));
        let memory = exec.memory();
        eprintln!("{name}: pipeline peak {} KiB, {} KiB cached after the run", memory.peak >> 10, memory.cached >> 10);
    }
}

/// The memory arithmetic of `GenerationMemory` (the README's figures for the 8B and the 2B at
/// 1024²) holds a generation of two images with CFG on a private shim executor: the weights on
/// the device stay within its weights term, the transformer stage within weights, caches,
/// conditioning and activations, the peak within its peak, and the weights and the preallocated KV caches,
/// which are certainly alive together, within the measured peak.
#[test]
fn a_generation_stays_within_its_memory_arithmetic() {
    let files = ModelFiles::from_dir(&fixture("devA")).unwrap();
    let exec = Executor::shim();
    let mut pipeline = Pipeline::load(&files, &exec.device()).unwrap();
    let features: Vec<Tensor> =
        pipeline.encode_prompts(&["a red cat on a mat", "x"]).unwrap().into_iter().map(|e| e.features).collect();
    pipeline.drop_text_encoder();
    exec.empty_cache();
    exec.reset_peak();
    let weights = exec.memory().in_use;
    let schedule = Template::exact(1.0).unwrap().schedule(PixelBudget::P006M);
    let budget = GenerationMemory::of(&pipeline.transformer.config, &pipeline.vae.config, &schedule, 2, true);
    let sampling = SamplingConfig { seed: 5, ..Default::default() };
    let out = generate(&pipeline.transformer, &features, None, &schedule, &sampling, &[], |_| {}).unwrap();
    let transformer_peak = exec.memory().peak;
    pipeline.vae.decode(&out.summed_codes).unwrap();
    let peak = exec.memory().peak;
    let transformer_stage = budget.weights + budget.transformer_stage();
    eprintln!(
        "devA, 2 images, CFG: measured peak {} KiB, {} KiB before decoding; arithmetic {} KiB, {} KiB",
        peak >> 10,
        transformer_peak >> 10,
        budget.peak() >> 10,
        transformer_stage >> 10
    );
    assert!(
        transformer_peak <= transformer_stage,
        "transformer stage {transformer_peak} over the arithmetic's {transformer_stage}"
    );
    assert!(weights <= budget.weights, "weights on the device {weights} over the arithmetic's {}", budget.weights);
    assert!(peak <= budget.peak(), "peak {peak} over the arithmetic's {}", budget.peak());
    assert!(weights + budget.kv_cache <= peak, "the caches ({}) were not all allocated: peak {peak}", budget.kv_cache);
}
