//! The BitVAE decoder, loaded onto each executor (its one forward, models/src/bitvae/net.rs,
//! running the ops' kernels there), against the official goldens of devA (256×256) and devB
//! (176×352): the golden summed latent decoded on every executor (the CPU shim here, a GPU as well when present) and compared with the golden
//! image, which the f32 CPU decoder matches within 1e-4 (tests/bitvae.rs).
//!
//! Bound: the device rounds every convolution's input and weights to bf16, a relative error
//! of up to u = 2⁻⁹ each; f32 accumulation adds nothing comparable. The dev decoders chain
//! L = 30 convolutions (conv_in; two in each of the 2 mid blocks and of the 2 blocks of each
//! of the 5 levels; 4 after upsampling; conv_out), and the group norms keep the activations at
//! unit scale, so the independent roundings add up like a random walk: about √(2L)·u ≈ 1.5% of
//! a typical pixel. The test allows twice that on average, mean |error| ≤ 2⁻⁵·mean |golden|
//! (measured on the shim: 1.9% of mean |golden| ≈ 0.25 for devA, 1.6% for devB), and for the
//! worst pixel of an image in [-1, 1] 2⁻² absolute (measured: 0.091 and 0.083; 0.118 on the
//! generation goldens' latents). Both fail for real bugs (checked on devA by breaking the code
//! on purpose): convolutions whose top padding row reads the image instead of zeros give a
//! mean error of 22% and a worst pixel of 1.2, and skipping the second mid block 104% and 2.0.

mod common;

use common::{assert_quantized_like_golden, fixture, max_abs, max_abs_diff, open, vae_image_input};
use infinity::models::bitvae::BitVae;
use infinity::models::bitvae::quantizer::quantize;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::{Error, Tensor};
use infinity_cuda::testing::executors;

/// Bound on the mean |error| relative to the mean |golden| pixel (see the module doc).
const MEAN_BOUND: f32 = 1.0 / 32.0;
/// Bound on the largest |error| of any pixel (see the module doc).
const MAX_BOUND: f32 = 0.25;

fn mean_abs(v: impl Iterator<Item = f32>, n: usize) -> f32 {
    (v.map(|x| f64::from(x.abs())).sum::<f64>() / n as f64) as f32
}

#[test]
fn decoded_images_follow_the_goldens_in_bf16() {
    for set in ["devA", "devB"] {
        let path = fixture(&format!("{set}/vae.safetensors"));
        let golden = open(&format!("{set}/vae_golden.safetensors"));
        let want = golden.get("decoded").unwrap().to_f32_vec().unwrap();
        let scale = mean_abs(want.iter().copied(), want.len());
        for exec in executors() {
            let vae = BitVae::open_on(&path, &exec.device()).unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            let image = vae
                .decode(golden.get("summed_quantized_latent").unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
            assert_eq!(image.shape(), golden.get("decoded").unwrap().shape(), "{set} on {}", exec.name());
            let errors: Vec<f32> = image.to_f32_vec().unwrap().iter().zip(&want).map(|(g, w)| g - w).collect();
            let mean = mean_abs(errors.iter().copied(), errors.len());
            let worst = errors.iter().fold(0f32, |m, e| m.max(e.abs()));
            eprintln!(
                "{set} on {}: mean |error| {:.2}% of mean |golden| {scale:.3}, worst {worst:.3}",
                exec.name(),
                100.0 * mean / scale
            );
            assert!(mean <= MEAN_BOUND * scale, "{set} on {}: mean |error| {mean:e}", exec.name());
            assert!(worst <= MAX_BOUND, "{set} on {}: worst |error| {worst:e}", exec.name());
        }
    }
}

#[test]
fn latents_of_the_wrong_shape_are_refused() {
    let vae = BitVae::open_on(fixture("devB/vae.safetensors"), &executors()[0].device()).unwrap();
    for shape in [&[1, 32, 2, 2][..], &[16, 2, 2]] {
        let err = vae.decode(&Tensor::zeros(shape, infinity::runtime::DType::F32)).expect_err("refused");
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("(B, 16, h, w)"), "{err}");
    }
}

/// The encoder and the multi-scale quantizer on every executor. The quantizer's resizes and
/// sums are f32 there too, so from the golden latent it is held to the CPU test's own checks
/// (tests/bitvae.rs). The encoder rounds its convolutions' operands to bf16, as the decoder
/// does: the same bound on the mean error; its largest error, relative to the largest latent
/// value, within 2⁻⁴. Measured on the shim: mean 1.8% (devA) and 2.0% (devB) of the mean
/// |latent|, worst 2.5e-2 and 2.2e-2 of the largest. Padding the encoder's downsampling on the
/// wrong sides (top and left) fails it: mean 104%.
#[test]
fn encoded_latents_and_bits_follow_the_goldens() {
    for (set, ratio) in [("devA", 1.0), ("devB", 0.5)] {
        let golden = open(&format!("{set}/vae_golden.safetensors"));
        let grids = Template::exact(ratio).unwrap().schedule(PixelBudget::P006M).grids;
        let want = golden.get("encoder_latent").unwrap();
        for exec in executors() {
            let device = exec.device();
            let vae = BitVae::open_on(fixture(&format!("{set}/vae.safetensors")), &device).unwrap();
            let latent = vae.encode(&vae_image_input(&golden)).unwrap_or_else(|e| panic!("{set} on {device}: {e}"));
            assert_eq!(latent.device(), device);
            let got = latent.to_f32_vec().unwrap();
            let errors: Vec<f32> = got.iter().zip(want.to_f32_vec().unwrap()).map(|(g, w)| g - w).collect();
            let (mean, scale) =
                (mean_abs(errors.iter().copied(), errors.len()), mean_abs(got.iter().copied(), got.len()));
            let worst = max_abs_diff(&latent, &want.reshape(latent.shape()).unwrap()) / max_abs(want);
            eprintln!(
                "{set} latent on {device}: mean |error| {:.2}% of mean |latent|, worst {worst:.2e} of the largest",
                100.0 * mean / scale
            );
            assert!(mean <= MEAN_BOUND * scale, "{set} on {device}: mean |error| {mean:e}");
            assert!(worst <= 1.0 / 16.0, "{set} on {device}: worst |error| {worst:e} of the largest");

            let q = quantize(&want.to_device(&device).unwrap(), &grids).unwrap();
            assert_quantized_like_golden(&format!("{set} on {device}"), &q, &golden, &grids);
        }
    }
}
