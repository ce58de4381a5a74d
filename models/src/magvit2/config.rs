//! Open-MAGVIT2's hyper-parameters: the LFQ tokenizer's and the factorized GPT's, their
//! detection from a checkpoint's shapes, the state-dict entries each implies (official names),
//! and where a checkpoint keeps them: plain (safetensors), a tokenizer's Lightning `.ckpt`
//! (`state_dict.`, its EMA weights under `state_dict.model_ema.<name without dots>`), or an AR
//! `.ckpt` (`state_dict.transformer.*` and the tokenizer under `state_dict.first_stage_model.*`).

use std::collections::BTreeMap;

use infinity_runtime::io::Weights;

use crate::autoencoder::Entry;

/// The tokenizer (`improved_model.py`'s Encoder/Decoder + LFQ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerConfig {
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    /// ResBlocks per level and in the middle.
    pub num_res_blocks: usize,
    /// Latent channels = LFQ bits per token.
    pub z_channels: usize,
}

/// The generator (`gpt.py`'s GPT with token factorization).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArConfig {
    pub dim: usize,
    pub n_head: usize,
    pub spatial_layers: usize,
    pub factorized_layers: usize,
    pub ffn_hidden: usize,
    /// Bits of the two sub-tokens: [pre, post] ([6, 12] in the releases).
    pub factorized_bits: [usize; 2],
    /// Classes without the null class.
    pub class_num: usize,
    /// Tokens per side of the grid (block_size = grid²).
    pub grid: usize,
}

/// Where a checkpoint keeps each entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Official names as they are (our safetensors).
    Plain,
    /// A tokenizer's Lightning checkpoint: its EMA weights, `state_dict.model_ema.<dotless>`,
    /// which the official reconstruction uses (`ema_scope`); the raw ones are left alone.
    TokenizerEma,
    /// An AR Lightning checkpoint: `state_dict.` + `transformer.` / `first_stage_model.`.
    ArCheckpoint,
}

impl Layout {
    /// The layout of a checkpoint, told by its keys.
    pub fn of(weights: &Weights) -> Layout {
        if weights.contains("state_dict.model_ema.encoderconv_inweight") {
            Layout::TokenizerEma
        } else if weights
            .iter()
            .any(|(k, _)| k.starts_with("state_dict.transformer.") || k.starts_with("state_dict.first_stage_model."))
        {
            Layout::ArCheckpoint
        } else {
            Layout::Plain
        }
    }

    /// The stored key of the tokenizer entry `key` (`encoder.…`, `decoder.…`).
    pub fn tokenizer_key(self, key: &str) -> String {
        match self {
            Layout::Plain => key.to_string(),
            Layout::TokenizerEma => format!("state_dict.model_ema.{}", key.replace('.', "")),
            Layout::ArCheckpoint => format!("state_dict.first_stage_model.{key}"),
        }
    }

    /// The stored key of the GPT entry `key` (without the `transformer.` prefix).
    pub fn ar_key(self, key: &str) -> String {
        match self {
            Layout::ArCheckpoint => format!("state_dict.transformer.{key}"),
            _ => key.to_string(),
        }
    }

    /// The shapes of the tokenizer entries in this layout, under their official names.
    fn tokenizer_shapes(self, weights: &Weights) -> BTreeMap<String, Vec<usize>> {
        let all = weights.shapes();
        match self {
            Layout::Plain => all,
            Layout::ArCheckpoint => strip(&all, "state_dict.first_stage_model."),
            // The EMA names have no dots left to split; the raw names give the structure.
            Layout::TokenizerEma => strip(&all, "state_dict."),
        }
    }
}

fn strip(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> BTreeMap<String, Vec<usize>> {
    shapes.iter().filter_map(|(k, s)| Some((k.strip_prefix(prefix)?.to_string(), s.clone()))).collect()
}

fn param(entries: &mut Vec<Entry>, key: String, shape: Vec<usize>) {
    entries.push(Entry { key, shape, buffer: false });
}

impl TokenizerConfig {
    /// The released tokenizers: `imagenet_128_L` (stride 8), `imagenet_256_L`, `pretrain_16384`
    /// (14 bits) and `pretrain_262144`.
    pub fn preset(name: &str) -> Option<Self> {
        let base = |ch_mult: Vec<usize>, z| TokenizerConfig { ch: 128, ch_mult, num_res_blocks: 4, z_channels: z };
        Some(match name {
            "imagenet_128_L" => base(vec![1, 2, 2, 4], 18),
            "imagenet_256_L" | "pretrain_262144" => base(vec![1, 1, 2, 2, 4], 18),
            "pretrain_16384" => base(vec![1, 1, 2, 2, 4], 14),
            _ => return None,
        })
    }

    pub fn num_levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// Pixels per token side: 2^(levels − 1).
    pub fn downsample(&self) -> usize {
        1 << (self.num_levels() - 1)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ch_mult.is_empty() || self.num_res_blocks == 0 || self.z_channels == 0 || self.z_channels > 32 {
            return Err("levels, ResBlocks and 1–32 latent bits are required".into());
        }
        if self.ch == 0 || self.ch_mult.iter().any(|&m| m == 0 || !(self.ch * m).is_multiple_of(32)) {
            return Err("every level's width must be a positive multiple of 32 (GroupNorm groups)".into());
        }
        Ok(())
    }

    /// Widths (in, out) of the ResBlocks of encoder level `l`.
    pub fn encoder_blocks(&self, l: usize) -> Vec<(usize, usize)> {
        let cin = if l == 0 { self.ch } else { self.ch * self.ch_mult[l - 1] };
        let cout = self.ch * self.ch_mult[l];
        (0..self.num_res_blocks).map(|b| (if b == 0 { cin } else { cout }, cout)).collect()
    }

    /// The width entering decoder level `l` (levels run top-down from the top width).
    pub fn decoder_in(&self, l: usize) -> usize {
        let top = self.num_levels() - 1;
        if l == top { self.ch * self.ch_mult[top] } else { self.ch * self.ch_mult[l + 1] }
    }

    /// Widths (in, out) of the ResBlocks of decoder level `l`.
    pub fn decoder_blocks(&self, l: usize) -> Vec<(usize, usize)> {
        let (cin, cout) = (self.decoder_in(l), self.ch * self.ch_mult[l]);
        (0..self.num_res_blocks).map(|b| (if b == 0 { cin } else { cout }, cout)).collect()
    }

    pub fn top(&self) -> usize {
        self.ch * self.ch_mult[self.num_levels() - 1]
    }

    /// Every entry of the encoder and decoder, official names, in state-dict order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut e = Vec::new();
        let norm = |e: &mut Vec<Entry>, name: String, c: usize| {
            param(e, format!("{name}.weight"), vec![c]);
            param(e, format!("{name}.bias"), vec![c]);
        };
        let resblock = |e: &mut Vec<Entry>, name: &str, cin: usize, cout: usize| {
            norm(e, format!("{name}.norm1"), cin);
            norm(e, format!("{name}.norm2"), cout);
            param(e, format!("{name}.conv1.weight"), vec![cout, cin, 3, 3]);
            param(e, format!("{name}.conv2.weight"), vec![cout, cout, 3, 3]);
            if cin != cout {
                param(e, format!("{name}.nin_shortcut.weight"), vec![cout, cin, 1, 1]);
            }
        };
        let (top, z) = (self.top(), self.z_channels);
        param(&mut e, "encoder.conv_in.weight".into(), vec![self.ch, 3, 3, 3]);
        for l in 0..self.num_levels() {
            let blocks = self.encoder_blocks(l);
            for (b, &(cin, cout)) in blocks.iter().enumerate() {
                resblock(&mut e, &format!("encoder.down.{l}.block.{b}"), cin, cout);
            }
            if l + 1 < self.num_levels() {
                let c = blocks[0].1;
                param(&mut e, format!("encoder.down.{l}.downsample.weight"), vec![c, c, 3, 3]);
                param(&mut e, format!("encoder.down.{l}.downsample.bias"), vec![c]);
            }
        }
        for i in 0..self.num_res_blocks {
            resblock(&mut e, &format!("encoder.mid_block.{i}"), top, top);
        }
        norm(&mut e, "encoder.norm_out".into(), top);
        param(&mut e, "encoder.conv_out.weight".into(), vec![z, top, 1, 1]);
        param(&mut e, "encoder.conv_out.bias".into(), vec![z]);

        param(&mut e, "decoder.conv_in.weight".into(), vec![top, z, 3, 3]);
        param(&mut e, "decoder.conv_in.bias".into(), vec![top]);
        for i in 0..self.num_res_blocks {
            resblock(&mut e, &format!("decoder.mid_block.{i}"), top, top);
        }
        for l in 0..self.num_levels() {
            let blocks = self.decoder_blocks(l);
            for (b, &(cin, cout)) in blocks.iter().enumerate() {
                resblock(&mut e, &format!("decoder.up.{l}.block.{b}"), cin, cout);
            }
            if l > 0 {
                let c = blocks[0].1;
                param(&mut e, format!("decoder.up.{l}.upsample.conv1.weight"), vec![4 * c, c, 3, 3]);
                param(&mut e, format!("decoder.up.{l}.upsample.conv1.bias"), vec![4 * c]);
            }
        }
        for l in 0..self.num_levels() {
            let c = self.decoder_in(l);
            for g in ["gamma", "beta"] {
                param(&mut e, format!("decoder.adaptive.{l}.{g}.weight"), vec![c, z]);
                param(&mut e, format!("decoder.adaptive.{l}.{g}.bias"), vec![c]);
            }
        }
        let bottom = self.ch * self.ch_mult[0];
        norm(&mut e, "decoder.norm_out".into(), bottom);
        param(&mut e, "decoder.conv_out.weight".into(), vec![3, bottom, 3, 3]);
        param(&mut e, "decoder.conv_out.bias".into(), vec![3]);
        e
    }

    /// The configuration a checkpoint's shapes imply (any [`Layout`]).
    pub fn detect(weights: &Weights) -> Result<Self, String> {
        let shapes = Layout::of(weights).tokenizer_shapes(weights);
        let dim = |key: &str, i: usize| -> Result<usize, String> {
            let s =
                shapes.get(key).ok_or_else(|| format!("missing tensor '{key}' (not an Open-MAGVIT2 tokenizer?)"))?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{key}' has shape {s:?}"))
        };
        let ch = dim("encoder.conv_in.weight", 0)?;
        // What sets it apart from the other tokenizers with these names: the adaptive norms.
        dim("decoder.adaptive.0.gamma.weight", 0)?;
        let levels =
            (0..).take_while(|l| shapes.contains_key(&format!("encoder.down.{l}.block.0.conv1.weight"))).count();
        let mut ch_mult = Vec::with_capacity(levels);
        for l in 0..levels {
            let c = dim(&format!("encoder.down.{l}.block.0.conv1.weight"), 0)?;
            if ch == 0 || c % ch != 0 {
                return Err(format!("encoder level {l} has {c} channels, not a multiple of {ch}"));
            }
            ch_mult.push(c / ch);
        }
        let config = TokenizerConfig {
            ch,
            ch_mult,
            num_res_blocks: (0..)
                .take_while(|b| shapes.contains_key(&format!("encoder.down.0.block.{b}.conv1.weight")))
                .count(),
            z_channels: dim("encoder.conv_out.weight", 0)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// torch's `find_multiple`: `n` rounded up to a multiple of `k`.
fn find_multiple(n: usize, k: usize) -> usize {
    n.div_ceil(k) * k
}

impl ArConfig {
    pub const PRESETS: [&str; 3] = ["B", "L", "XL"];

    /// The released generators at 256² (16×16 tokens, sub-tokens of 6 and 12 bits).
    pub fn preset(name: &str) -> Option<Self> {
        let (dim, n_head, spatial_layers, factorized_layers) = match name {
            "B" => (1024, 16, 24, 2),
            "L" => (1280, 20, 36, 3),
            "XL" => (1536, 24, 48, 4),
            _ => return None,
        };
        Some(ArConfig {
            dim,
            n_head,
            spatial_layers,
            factorized_layers,
            ffn_hidden: find_multiple(2 * 4 * dim / 3, 256),
            factorized_bits: [6, 12],
            class_num: 1000,
            grid: 16,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    /// Tokens of an image.
    pub fn tokens(&self) -> usize {
        self.grid * self.grid
    }

    /// Sub-vocabulary sizes [2^pre, 2^post].
    pub fn vocab(&self) -> [usize; 2] {
        self.factorized_bits.map(|b| 1 << b)
    }

    pub fn bits(&self) -> usize {
        self.factorized_bits[0] + self.factorized_bits[1]
    }

    /// Multiply-adds × 2 of one generated image with CFG (two rows): every block's linears for
    /// each token (the spatial stack once per token, the factorized stack for its two slots),
    /// the heads, and causal attention over the tokens so far. The arithmetic floor of a device
    /// is this over its peak rate.
    pub fn generation_flops(&self) -> f64 {
        let (d, f, n) = (self.dim as f64, self.ffn_hidden as f64, self.tokens() as f64);
        let block = 4.0 * d * d + 3.0 * d * f;
        let [pre, post] = self.vocab().map(|v| v as f64);
        let linears =
            n * (self.spatial_layers as f64 + 2.0 * self.factorized_layers as f64) * block + n * d * (pre + post);
        let attention = self.spatial_layers as f64 * 2.0 * d * n * (n + 1.0) / 2.0;
        2.0 * 2.0 * (linears + attention)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.n_head == 0 || !self.dim.is_multiple_of(self.n_head) || !self.head_dim().is_multiple_of(4) {
            return Err(format!("width {} over {} heads must give a head width divisible by 4", self.dim, self.n_head));
        }
        if self.factorized_bits.iter().any(|&b| b == 0 || b > 20) || self.grid == 0 || self.class_num == 0 {
            return Err("sub-tokens of 1–20 bits, a grid and classes are required".into());
        }
        if self.spatial_layers == 0 || self.factorized_layers == 0 || self.ffn_hidden == 0 {
            return Err("layers and the FFN width must be positive".into());
        }
        Ok(())
    }

    /// Every GPT entry (names without the `transformer.` prefix), in state-dict order.
    pub fn entries(&self) -> Vec<Entry> {
        let (d, h) = (self.dim, self.ffn_hidden);
        let [pre, post] = self.vocab();
        let mut e = Vec::new();
        param(&mut e, "pre_emb.weight".into(), vec![pre, d]);
        param(&mut e, "post_emb.weight".into(), vec![post, d]);
        param(&mut e, "class_emb.embedding_table.weight".into(), vec![self.class_num + 1, d]);
        for (stack, n) in [("spatial_blocks", self.spatial_layers), ("factorized_blocks", self.factorized_layers)] {
            for i in 0..n {
                let b = |name: &str| format!("{stack}.{i}.{name}");
                param(&mut e, b("attention.wqkv.weight"), vec![3 * d, d]);
                param(&mut e, b("attention.wo.weight"), vec![d, d]);
                param(&mut e, b("feed_forward.w1.weight"), vec![h, d]);
                param(&mut e, b("feed_forward.w3.weight"), vec![h, d]);
                param(&mut e, b("feed_forward.w2.weight"), vec![d, h]);
                param(&mut e, b("attention_norm.weight"), vec![d]);
                param(&mut e, b("ffn_norm.weight"), vec![d]);
            }
        }
        param(&mut e, "norm.weight".into(), vec![d]);
        param(&mut e, "head.0.weight".into(), vec![pre, d]);
        param(&mut e, "head.1.weight".into(), vec![post, d]);
        e
    }

    /// The configuration a checkpoint's shapes imply for images of `grid` × `grid` tokens (the
    /// checkpoints record neither the grid nor the head count: heads are 64 wide, as in every
    /// release, when the width allows it, else 16).
    pub fn detect(weights: &Weights, grid: usize) -> Result<Self, String> {
        let layout = Layout::of(weights);
        let shapes = weights.shapes();
        let dim = |key: &str, i: usize| -> Result<usize, String> {
            let stored = layout.ar_key(key);
            let s = shapes
                .get(&stored)
                .ok_or_else(|| format!("missing tensor '{stored}' (not an Open-MAGVIT2 AR model?)"))?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{stored}' has shape {s:?}"))
        };
        let count = |stack: &str| {
            (0..)
                .take_while(|i| shapes.contains_key(&layout.ar_key(&format!("{stack}.{i}.attention.wqkv.weight"))))
                .count()
        };
        let bits = |key: &str| -> Result<usize, String> {
            let n = dim(key, 0)?;
            if n.is_power_of_two() {
                Ok(n.trailing_zeros() as usize)
            } else {
                Err(format!("'{key}' has {n} rows, not a power of two"))
            }
        };
        let d = dim("pre_emb.weight", 1)?;
        let head_dim = if d.is_multiple_of(64) { 64 } else { 16 };
        let config = ArConfig {
            dim: d,
            n_head: d / head_dim,
            spatial_layers: count("spatial_blocks"),
            factorized_layers: count("factorized_blocks"),
            ffn_hidden: dim("spatial_blocks.0.feed_forward.w1.weight", 0)?,
            factorized_bits: [bits("pre_emb.weight")?, bits("post_emb.weight")?],
            class_num: dim("class_emb.embedding_table.weight", 0)?.saturating_sub(1),
            grid,
        };
        config.validate()?;
        Ok(config)
    }
}
