//! Matmul throughput, reported as FLOP/s (criterion's "elem/s" with one element per FLOP).
//!
//! 1024³ runs through `matmul` and through the gemm crate directly in the same run: other
//! processes share the cores, so only the ratio of the two is meaningful. Then the
//! transformer's linear layers: layer-12 (C = 768) at 256² (521 tokens) and one 2B-size layer,
//! and the small scales' few-row products (the few-rows kernel), with f32 and bf16 weights.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use infinity::ops::matmul::{linear, matmul};
use infinity::runtime::rng::Philox;
use infinity::runtime::{DType, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let data = Philox::new(seed).normal(shape.iter().product());
    Tensor::from_vec(data, shape).expect("the shape matches the data")
}

fn square(c: &mut Criterion) {
    eprintln!(
        "limit: 2 cores × 64 f32 FLOP/cycle with two 512-bit FMA pipes (AVX-512, picked at run time), ~460 GFLOP/s \
         measured here at 1024³; 32 FLOP/cycle on AVX2-only CPUs"
    );
    const N: usize = 1024;
    let (a, b) = (randn(&[N, N], 1), randn(&[N, N], 2));
    let mut group = c.benchmark_group("matmul_1024");
    group.throughput(Throughput::Elements(2 * (N * N * N) as u64));
    group.bench_function("ours", |bench| bench.iter(|| matmul(black_box(&a), black_box(&b))));

    let (ad, bd) = (a.to_vec::<f32>().expect("f32"), b.to_vec::<f32>().expect("f32"));
    let mut dst = vec![0.0f32; N * N];
    group.bench_function("gemm_crate", |bench| {
        bench.iter(|| {
            // SAFETY: three contiguous N×N buffers, row stride N, column stride 1.
            unsafe {
                gemm::gemm(
                    N,
                    N,
                    N,
                    dst.as_mut_ptr(),
                    1,
                    N as isize,
                    false,
                    ad.as_ptr(),
                    1,
                    N as isize,
                    bd.as_ptr(),
                    1,
                    N as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            };
            black_box(&mut dst);
        })
    });
    group.finish();
}

fn linears(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    // Each layer runs for 100 ms to 200 ms: a fixed iteration count per sample keeps the run short.
    group.sampling_mode(SamplingMode::Flat);
    for (name, rows, inp, out) in [
        ("layer12_256px_qkv_521x768x2304", 521, 768, 2304),
        ("layer12_256px_fc1_521x768x3072", 521, 768, 3072),
        ("layer12_256px_fc2_521x3072x768", 521, 3072, 768),
        ("2b_fc1_1024x2048x8192", 1024, 2048, 8192),
    ] {
        let (x, w, bias) = (randn(&[rows, inp], 3), randn(&[out, inp], 4), randn(&[out], 5));
        group.throughput(Throughput::Elements(2 * (rows * inp * out) as u64));
        group.bench_function(name, |bench| bench.iter(|| linear(black_box(&x), black_box(&w), Some(&bias))));
    }
    group.finish();

    // A few rows read each weight element once for 2·rows FLOPs: a weight larger than the
    // caches (the 2B's, 67 MB in f32) runs at the speed memory delivers it.
    let mut group = c.benchmark_group("linear_few_rows");
    for (name, rows, inp, out) in [
        ("layer12_8x768x3072", 8, 768, 3072),
        ("layer12_72x768x3072", 72, 768, 3072),
        ("2b_8x2048x8192", 8, 2048, 8192),
    ] {
        let (x, w, bias) = (randn(&[rows, inp], 3), randn(&[out, inp], 4), randn(&[out], 5));
        let w16 = w.to_dtype(DType::BF16).expect("bf16");
        group.throughput(Throughput::Elements(2 * (rows * inp * out) as u64));
        group.bench_function(format!("{name}_f32"), |bench| bench.iter(|| linear(black_box(&x), &w, Some(&bias))));
        group.bench_function(format!("{name}_bf16"), |bench| bench.iter(|| linear(black_box(&x), &w16, Some(&bias))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = square, linears
}
criterion_main!(benches);
