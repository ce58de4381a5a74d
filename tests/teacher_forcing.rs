//! Training targets against the official trainer (devA, one step): labels and teacher-forcing
//! inputs without Bitwise Self-Correction, and with it, replaying the trainer's recorded flip
//! masks (on every device); plus the statistics of our own random flips.

mod common;

use common::{assert_golden, open};
use infinity::cuda::testing::executors;
use infinity::models::infinity::TokenLayout;
use infinity::models::infinity::teacher::{Flips, teacher_forcing};
use infinity::models::schedule::{PixelBudget, Template};
use infinity::ops::index::concat;
use infinity::runtime::rng::Philox;
use infinity::runtime::{Device, Tensor};

fn grids() -> Vec<(usize, usize)> {
    Template::exact(1.0).unwrap().schedule(PixelBudget::P006M).grids
}

/// Per-scale (B, h, w, d) labels flattened and concatenated to (B, L, d).
fn flat(labels: &[Tensor]) -> Tensor {
    let rows: Vec<Tensor> = labels
        .iter()
        .map(|t| {
            let s = t.shape();
            t.reshape(&[s[0], s[1] * s[2], s[3]]).unwrap()
        })
        .collect();
    concat(&rows.iter().collect::<Vec<_>>(), 1).unwrap()
}

#[test]
fn plain_teacher_forcing_matches_the_trainer() {
    let g = open("train/teacher_forcing.safetensors");
    let tf = teacher_forcing(g.get("raw_features").unwrap(), &grids(), TokenLayout::Plain, Flips::None).unwrap();
    assert!(flat(&tf.labels).same_values(g.get("off.gt_bits").unwrap()), "labels");
    assert_golden("inputs (BSC off)", &tf.inputs, g.get("off.x_BLC_wo_prefix").unwrap(), 1e-6);
    assert!(tf.flip_rates.iter().all(|&r| r == 0.0));
}

/// With the trainer's recorded flip masks, on the CPU and on every executor (where the latent
/// stays: quantization, flips, resizes and accumulation on the device, the masks uploaded).
#[test]
fn bsc_with_recorded_flips_matches_the_trainer_on_every_device() {
    let g = open("train/teacher_forcing.safetensors");
    let masks: Vec<Tensor> = (0..7)
        .map(|k| {
            let m = g.get(&format!("bsc.flip_mask_scale{k:02}")).unwrap();
            let s = m.shape();
            m.reshape(&[s[0], s[2], s[3], s[4]]).unwrap()
        })
        .collect();
    let devices = std::iter::once(Device::Cpu).chain(executors().iter().map(|e| e.device()));
    for device in devices {
        let latent = g.get("raw_features").unwrap().to_device(&device).unwrap();
        let tf = teacher_forcing(&latent, &grids(), TokenLayout::Plain, Flips::Masks(&masks)).unwrap();
        assert_eq!(tf.inputs.device(), device, "the inputs stay on the device");
        let labels: Vec<Tensor> = tf.labels.iter().map(|t| t.to_cpu().unwrap()).collect();
        assert!(flat(&labels).same_values(g.get("bsc.gt_bits").unwrap()), "{device}: labels");
        let what = format!("{device}: inputs (BSC)");
        assert_golden(&what, &tf.inputs.to_cpu().unwrap(), g.get("bsc.x_BLC_wo_prefix").unwrap(), 1e-6);
        // The README's flipped fractions per scale.
        for (got, want) in tf.flip_rates.iter().zip([0.1875, 0.1367, 0.2959, 0.2235, 0.2278, 0.254, 0.1351]) {
            assert!((got - want).abs() < 5e-4, "{device}: {got} vs {want}");
        }
    }
}

#[test]
fn random_flips_follow_their_drawn_rates_and_the_seed() {
    let latent = Tensor::from_vec(Philox::new(4).normal(2 * 16 * 64 * 64), &[2, 16, 64, 64]).unwrap();
    let grids = Template::exact(1.0).unwrap().schedule(PixelBudget::P1M).grids;
    let run = |seed| {
        teacher_forcing(
            &latent,
            &grids,
            TokenLayout::Plain,
            Flips::Random { strength: 0.3, rng: &mut Philox::new(seed) },
        )
        .unwrap()
    };
    let (a, b) = (run(1), run(1));
    assert!(a.inputs.same_values(&b.inputs) && a.flip_rates == b.flip_rates, "same seed, same flips");
    assert!(!a.inputs.same_values(&run(2).inputs));
    assert!(a.flip_rates.iter().all(|&r| (0.0..=0.31).contains(&r)));
    // The big scales have enough bits for the drawn rate to show as a whole percentage.
    for &r in &a.flip_rates[9..] {
        let nearest = (r * 100.0).round() / 100.0;
        assert!((r - nearest).abs() < 0.004, "{r}");
    }
}

/// Spatial patchify (devC, the 8B's kind): from the patch-8 VAE's latent, the residuals and
/// codes over the VAE grids (twice the token grids), regrouped 2×2 into 56-bit tokens: the
/// official trainer's inputs and labels, on the CPU and on every executor.
#[test]
fn patchified_teacher_forcing_matches_the_official_trainer() {
    let vae = open("devC/vae_golden.safetensors");
    let golden = open("devC/transformer_forward_golden.safetensors");
    let latent = vae.get("encoder_latent").unwrap();
    // The golden's two rows hold the same image.
    let batch = concat(&[latent, latent], 0).unwrap();
    let devices = std::iter::once(Device::Cpu).chain(executors().iter().map(|e| e.device()));
    for device in devices {
        let tf =
            teacher_forcing(&batch.to_device(&device).unwrap(), &grids(), TokenLayout::Patchify, Flips::None).unwrap();
        let labels: Vec<Tensor> = tf.labels.iter().map(|t| t.to_cpu().unwrap()).collect();
        assert!(flat(&labels).same_values(golden.get("gt_bits").unwrap()), "{device}: labels");
        let inputs = tf.inputs.to_cpu().unwrap();
        assert_golden(&format!("{device}: inputs"), &inputs, golden.get("x_BLC_wo_prefix").unwrap(), 1e-6);
    }
}
