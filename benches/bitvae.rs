//! BitVAE decode at the d32 release architecture (random weights): a 16×16×32 code map to a
//! 256×256 image, 616 GFLOP. The official PyTorch code (MKL/oneDNN, 2 threads) takes 4.61 s
//! for it on the project's 2-core machine (~134 GFLOP/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infinity::models::bitvae::{BitVae, BitVaeConfig};
use infinity::runtime::Tensor;
use infinity::runtime::rng::Philox;

/// Multiply-adds × 2 of every convolution in the decoder for an h×w latent.
fn decoder_flops(c: &BitVaeConfig, h: usize, w: usize) -> u64 {
    let conv = |cout: usize, cin: usize, k: usize, px: usize| 2 * (cout * cin * k * k * px) as u64;
    let top = c.base_ch * c.ch_mult[c.num_levels() - 1];
    let mut px = h * w;
    let mut f = conv(top, c.z_channels, 3, px);
    f += 2 * 2 * conv(top, top, 3, px); // mid: two ResBlocks of two convs
    for l in (0..c.num_levels()).rev() {
        for (cin, cout) in c.net().decoder_blocks(l) {
            f += conv(cout, cin, 3, px) + conv(cout, cout, 3, px);
            if cin != cout {
                f += conv(cout, cin, 1, px);
            }
        }
        if c.net().decoder_upsamples(l) {
            px *= 4;
            let ch = c.base_ch * c.ch_mult[l];
            f += conv(ch, ch, 3, px);
        }
    }
    f + conv(3, c.base_ch * c.ch_mult[0], 3, px)
}

fn decode(cr: &mut Criterion) {
    let config = BitVaeConfig::preset("d32").unwrap();
    let flops = decoder_flops(&config, 16, 16);
    eprintln!(
        "BitVAE d32 decode 16x16 -> 256x256: {:.0} GFLOP as direct convolutions (the Winograd path does fewer); time the official code beside it with ../shared/tools/official-cpu-timing",
        flops as f64 / 1e9
    );
    let vae = BitVae::random(config, 0).unwrap();
    let z = Tensor::from_vec(Philox::new(1).normal(32 * 16 * 16), &[1, 32, 16, 16]).unwrap();
    let mut g = cr.benchmark_group("bitvae");
    g.sample_size(10).measurement_time(std::time::Duration::from_secs(30));
    g.throughput(Throughput::Elements(flops));
    g.bench_function("decode_d32_16x16_to_256x256 (elem = FLOP)", |b| b.iter(|| vae.decode(&z).unwrap()));
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
