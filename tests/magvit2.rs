//! Open-MAGVIT2 parity with the official code on devM (a tiny random tokenizer, 128² → 8×8
//! tokens of 10 bits, and a tiny factorized GPT with sub-tokens of 4 and 6 bits): the
//! tokenizer's latent, bits, indices and decoded image; the GPT's teacher-forced logits of both
//! sub-vocabularies; greedy CFG generation; the released `.ckpt` layouts (a tokenizer's EMA
//! weights, an AR checkpoint's first stage) alike with safetensors; and the loaders' refusals.

mod common;

use common::{assert_golden, fixture, max_abs, open};
use infinity::models::magvit2::tokenizer::{codes_of, split};
use infinity::models::magvit2::{Tokenizer, TokenizerConfig};
use infinity::runtime::io::Weights;
use infinity::runtime::{Device, Tensor};

/// The tokenizer input from u8 images (B, H, W, 3): x = f32(u8/127.5 − 1) in f64, NCHW.
fn image_input(golden: &Weights) -> Tensor {
    let img = golden.get("image_u8").unwrap();
    let v: Vec<f32> = img.to_vec::<u8>().unwrap().into_iter().map(|p| (f64::from(p) / 127.5 - 1.0) as f32).collect();
    Tensor::from_vec(v, img.shape()).unwrap().permute(&[0, 3, 1, 2]).unwrap().contiguous().unwrap()
}

fn ints(golden: &Weights, key: &str) -> Vec<i64> {
    golden.get(key).unwrap().to_vec::<i64>().unwrap()
}

#[test]
fn tokenizer_matches_golden_in_every_layout() {
    let golden = open("devM/tokenizer_golden.safetensors");
    for file in ["devM/tokenizer.safetensors", "devM/tokenizer.ckpt", "devM/ar.ckpt"] {
        let tok = Tokenizer::open_on(fixture(file), &Device::Cpu).unwrap();
        assert_eq!(
            tok.config,
            TokenizerConfig { ch: 32, ch_mult: vec![2, 1, 1, 1, 1], num_res_blocks: 1, z_channels: 10 }
        );
        let z = tok.encode(&image_input(&golden)).unwrap();
        let want = golden.get("z").unwrap();
        assert_golden(&format!("{file} z"), &z, want, 1e-4 * max_abs(want));
        let q = tok.tokenize(&image_input(&golden)).unwrap();
        assert_eq!(q.indices.reshape(&[128]).unwrap().to_vec::<i64>().unwrap(), ints(&golden, "indices"), "{file}");
        assert!(q.codes.same_values(golden.get("quantized").unwrap()));
        let (pre, post) = split(&q.indices, [4, 6]).unwrap();
        assert_eq!(pre.to_vec::<i64>().unwrap(), ints(&golden, "indices_pre"));
        assert_eq!(post.to_vec::<i64>().unwrap(), ints(&golden, "indices_post"));
        assert!(codes_of(&pre, &post, [4, 6], 8).unwrap().same_values(golden.get("quantized").unwrap()));
        let decoded = tok.decode(golden.get("quantized").unwrap()).unwrap();
        assert_golden(&format!("{file} decoded"), &decoded, golden.get("decoded").unwrap(), 1e-4);
    }
}
