//! Norm throughput as memory bandwidth (criterion's GB/s from `Throughput::Bytes`, counting
//! the bytes read and written once): layer_norm at the transformer's shapes and group_norm
//! at the BitVAE decoder's. These ops are memory-bound, so the ceiling is DRAM bandwidth;
//! plain copies of the largest tensor, measured in the same run, show what is reachable
//! while other processes share the cores.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infinity::ops::norm::{group_norm, layer_norm};
use infinity::runtime::Tensor;
use infinity::runtime::rng::Philox;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let data = Philox::new(seed).normal(shape.iter().product());
    Tensor::from_vec(data, shape).expect("the shape matches the data")
}

/// Bytes of f32 data read and written by a norm of `numel` elements with `channels` weights and biases.
fn bytes(numel: usize, channels: usize) -> u64 {
    (4 * (2 * numel + 2 * channels)) as u64
}

fn norms(c: &mut Criterion) {
    eprintln!("limit: roughly 20 GB/s DRAM bandwidth on this 2-core machine (approximate; compare with the copies)");
    let mut group = c.benchmark_group("norm");

    // Transformer: the 2B model's width at a 4096-token batch, and 521 tokens at C = 768.
    for (rows, dim) in [(4096, 2048), (521, 768)] {
        let x = randn(&[rows, dim], 1);
        let (w, b) = (randn(&[dim], 2), randn(&[dim], 3));
        group.throughput(Throughput::Bytes(bytes(rows * dim, dim)));
        group.bench_function(format!("layer_norm_{rows}x{dim}"), |bench| {
            bench.iter(|| layer_norm(black_box(&x), Some(&w), Some(&b), 1e-6))
        });
    }

    // BitVAE decoder: 32 groups, eps 1e-6.
    for (channels, side) in [(512, 64), (256, 128)] {
        let x = randn(&[1, channels, side, side], 4);
        let (w, b) = (randn(&[channels], 5), randn(&[channels], 6));
        group.throughput(Throughput::Bytes(bytes(channels * side * side, channels)));
        group.bench_function(format!("group_norm_1x{channels}x{side}x{side}"), |bench| {
            bench.iter(|| group_norm(black_box(&x), 32, Some(&w), Some(&b), 1e-6))
        });
    }

    // Baselines: a copy into a reused buffer (raw bandwidth), and a copy into a fresh
    // allocation, which like every op's output pays for faulting in new pages.
    let src = Philox::new(7).normal(4096 * 2048);
    let mut dst = vec![0f32; src.len()];
    group.throughput(Throughput::Bytes(bytes(src.len(), 0)));
    group.bench_function("copy_into_4096x2048", |bench| bench.iter(|| dst.copy_from_slice(black_box(&src))));
    group.bench_function("copy_alloc_4096x2048", |bench| bench.iter(|| black_box(&src).clone()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = norms
}
criterion_main!(benches);
