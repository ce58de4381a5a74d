//! What a text-to-image generation holds in an accelerator's memory, from the configurations
//! alone (no weight read): the weights as placed there (GEMM and convolution weights bf16, the
//! rest f32), the KV caches preallocated for the whole schedule, the text's K/V and AdaLN
//! tables of every block, the transformer's activations
//! at the last and largest scale, and the BitVAE decoder at full resolution. The text encoder is
//! dropped before the transformer starts and the caches before the decoder runs, so the peak is
//! the weights plus the larger of the two stages.
//!
//! Every term is an upper estimate: what is alive at once is bounded by adding everything a
//! stage may hold. `tests/cuda_pipeline.rs` holds a generation on the shim to it, and the
//! README gives the 8B's and the 2B's figures at 1024².

use std::fmt;

use infinity_cuda::conv::COL_BUDGET;
use infinity_cuda::size_class;

use crate::bitvae::BitVaeConfig;
use crate::infinity::{InfinityConfig, TokenLayout};
use crate::schedule::Schedule;

/// Device bytes of one generation, by what holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationMemory {
    /// The transformer's and the BitVAE's weights.
    pub weights: usize,
    /// K and V of every block for every token of the schedule, bf16.
    pub kv_cache: usize,
    /// What every scale reads of the text: the packed features (f32), each block's cross-
    /// attention K and V (bf16) and AdaLN table (f32), for prompts of the model's longest text.
    pub conditioning: usize,
    /// The transformer's largest scale in flight: the residual stream (f32), its normed and
    /// projected operands, the FFN's hidden layer (bf16), the head's logits (f32).
    pub activations: usize,
    /// The decoder at full resolution: five f32 feature maps of the batch and a 3×3
    /// convolution's bf16 column matrix.
    pub decoder: usize,
}

impl GenerationMemory {
    /// `images` images over `schedule`, with the unconditional half when `cfg`. Each tensor
    /// counts as the allocator hands it out ([`size_class`]: 512 B granules, 2 MiB above 1 MiB).
    pub fn of(transformer: &InfinityConfig, vae: &BitVaeConfig, schedule: &Schedule, images: usize, cfg: bool) -> Self {
        let rows = images * if cfg { 2 } else { 1 };
        let (c, hidden, bits) = (transformer.embed_dim, transformer.mlp_hidden, transformer.bits);
        let kv_cache = transformer.depth * 2 * size_class(rows * schedule.seq_len() * c * 2);
        let text = rows * transformer.text_maxlen;
        let conditioning = size_class(text * c * 4)
            + transformer.depth * (size_class(text * 2 * c * 2) + size_class(rows * 6 * c * 4));
        let last = schedule.tokens().max().unwrap_or(0) * rows;
        // x f32; normed, q/k/v and the attention output bf16; the FFN's hidden layer bf16 and
        // its f32 activation; the logits f32.
        let activations = [c * 4, c * 2, 3 * c * 2, c * 2, hidden * 2, hidden * 4, 2 * bits * 4]
            .iter()
            .map(|per_row| size_class(last * per_row))
            .sum();

        let (gh, gw) = TokenLayout::of(transformer).vae_grid(schedule.last());
        let pixels = gh * gw * vae.patch * vae.patch;
        // The widest channels at full resolution: the last up level's, or what enters it.
        let full_ch = vae.base_ch * vae.ch_mult.iter().take(2).copied().max().unwrap_or(1);
        // A 3×3 convolution's bf16 column matrix: the batch's when within the budget, else one
        // image's (cuda/src/conv.rs).
        let taps = full_ch * 9 * pixels;
        let columns = if images * taps <= COL_BUDGET { images * taps } else { taps };
        // Five maps: a residual block's input, its norm's and its convolutions' outputs, the sum.
        let decoder = 5 * size_class(images * full_ch * pixels * 4) + size_class(2 * columns);

        // Each block also fuses its biases at load: q‖0‖v for the qkv projection and 0‖v for
        // the cross-attention's kv (counted on top of the entries they come from).
        let fused = transformer.depth * (size_class(3 * c * 4) + size_class(2 * c * 4));
        let weights = bytes_of(transformer.entries().into_iter().map(|e| (e.key, e.shape)))
            + bytes_of(vae.entries().into_iter().map(|e| (e.key, e.shape)))
            + fused;
        GenerationMemory { weights, kv_cache, conditioning, activations, decoder }
    }

    /// The transformer's stage: its caches, its conditioning and its activations.
    pub fn transformer_stage(&self) -> usize {
        self.kv_cache + self.conditioning + self.activations
    }

    /// The peak: the weights and the larger stage (the transformer's is freed before decoding).
    pub fn peak(&self) -> usize {
        self.weights + self.transformer_stage().max(self.decoder)
    }
}

/// Weights as placed on an accelerator: `….weight` matrices and kernels bf16, the rest f32.
fn bytes_of(entries: impl Iterator<Item = (String, Vec<usize>)>) -> usize {
    entries
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            size_class(if shape.len() >= 2 && key.ends_with(".weight") { 2 * n } else { 4 * n })
        })
        .sum()
}

impl fmt::Display for GenerationMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gb = |b: usize| b as f64 / 1e9;
        write!(
            f,
            "{:.2} GB peak: weights {:.2}, KV cache {:.2}, conditioning {:.2}, activations {:.2}, decoder {:.2}",
            gb(self.peak()),
            gb(self.weights),
            gb(self.kv_cache),
            gb(self.conditioning),
            gb(self.activations),
            gb(self.decoder)
        )
    }
}
