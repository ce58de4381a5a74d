//! conv2d 3×3 throughput at the BitVAE decoder's shapes (batch 1, random weights), reported
//! as FLOP/s of the direct convolution (criterion's "elem/s" with one element per FLOP): an
//! effective rate, since these shapes take Winograd F(4×4, 3×3), which does a quarter of the
//! products. Other processes may share the cores; compare with `cargo bench --bench matmul`
//! from the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use infinity::ops::conv::{Conv2dParams, conv2d};
use infinity::runtime::Tensor;
use infinity::runtime::rng::Philox;

fn randn(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let data = Philox::new(seed).normal(shape.iter().product()).into_iter().map(|v| v * scale).collect();
    Tensor::from_vec::<f32>(data, shape).expect("the shape matches the data")
}

fn decoder_convs(c: &mut Criterion) {
    eprintln!(
        "limit: the f32 GEMM rate of this machine (cargo bench --bench matmul, same run), times ~4 on the Winograd path"
    );
    let mut group = c.benchmark_group("conv2d_3x3");
    // Each conv runs for 25 ms to 150 ms: a fixed iteration count per sample keeps the run short.
    group.sampling_mode(SamplingMode::Flat);
    for (channels, side) in [(512, 32), (512, 64), (256, 128), (128, 256)] {
        let x = randn(&[1, channels, side, side], 1, 1.0);
        let w = randn(&[channels, channels, 3, 3], 2, 0.02);
        let bias = randn(&[channels], 3, 0.1);
        group.throughput(Throughput::Elements(2 * (channels * channels * 9 * side * side) as u64));
        group.bench_function(format!("{channels}ch_{side}x{side}"), |bench| {
            bench.iter(|| conv2d(black_box(&x), black_box(&w), Some(&bias), Conv2dParams::same(3)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decoder_convs
}
criterion_main!(benches);
