//! VAR's hyper-parameters: the VQVAE's and the transformer's, their detection from a
//! checkpoint's shapes, the exact state-dict entries each implies (the released files' keys,
//! buffers included), and the scale schedules with their φ table.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::autoencoder::{Entry, EntryList, KeyStyle, NetShape};

/// The 256² schedule (d16–d30) and the 512² one (d36): tokens per side at each scale.
pub const PATCH_NUMS_256: [usize; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
pub const PATCH_NUMS_512: [usize; 10] = [1, 2, 3, 4, 6, 9, 13, 18, 24, 32];

/// Pixels per latent token of the VQVAE (four stride-2 stages).
pub const PATCH: usize = 16;

/// Tokens of a schedule: Σ pn².
pub fn seq_len(patch_nums: &[usize]) -> usize {
    patch_nums.iter().map(|p| p * p).sum()
}

/// The φ convolution each scale of `scales` uses when `phis` of them are shared (the official
/// `PhiPartiallyShared`): the one whose tick is nearest to si/(n − 1), the first on ties. The
/// ticks are numpy's linspace in f64 — i·step + start, the last set to stop — because for 10
/// scales two of the distances tie in exact arithmetic and rounding decides them.
pub fn phi_table(phis: usize, scales: usize) -> Vec<usize> {
    let k = phis as f64;
    let (start, stop) =
        if phis == 4 { (1.0 / 3.0 / k, 1.0 - 1.0 / 3.0 / k) } else { (1.0 / 2.0 / k, 1.0 - 1.0 / 2.0 / k) };
    let ticks: Vec<f64> = (0..phis)
        .map(|i| if i + 1 == phis && phis > 1 { stop } else { i as f64 * ((stop - start) / (k - 1.0)) + start })
        .collect();
    (0..scales)
        .map(|si| {
            let at = if scales > 1 { si as f64 / (scales - 1) as f64 } else { 0.0 };
            let mut best = 0;
            for (i, t) in ticks.iter().enumerate() {
                if (t - at).abs() < (ticks[best] - at).abs() {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// The VQVAE (`vae_ch160v4096z32`): the conv autoencoder with attention, a codebook and the
/// partially shared φ convolutions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VqVaeConfig {
    pub net: NetShape,
    /// Codebook entries V.
    pub vocab: usize,
    /// Shared φ convolutions (4 in the release).
    pub phis: usize,
    /// Rows of the stored usage statistics `quantize.ema_vocab_hit_SV` (one per training scale).
    pub stat_scales: usize,
}

impl VqVaeConfig {
    /// The released tokenizer of every VAR model.
    pub fn release() -> Self {
        VqVaeConfig {
            net: NetShape {
                base_ch: 160,
                ch_mult: vec![1, 1, 2, 2, 4],
                num_res_blocks: 2,
                z_channels: 32,
                downsamples: 4,
                attention: true,
                keys: KeyStyle::Flat,
            },
            vocab: 4096,
            phis: 4,
            stat_scales: 10,
        }
    }

    /// Latent channels Cvae.
    pub fn cvae(&self) -> usize {
        self.net.z_channels
    }

    pub fn validate(&self) -> Result<(), String> {
        let n = &self.net;
        if n.downsamples != 4 || n.num_levels() < 5 {
            return Err(format!(
                "{} levels with {} downsamplings: VAR's VQVAE has stride 16",
                n.num_levels(),
                n.downsamples
            ));
        }
        if n.base_ch == 0 || n.ch_mult.iter().any(|&m| !(n.base_ch * m).is_multiple_of(32)) {
            return Err("every level's channel count must be a positive multiple of 32 (GroupNorm groups)".into());
        }
        if self.vocab == 0 || self.phis == 0 || n.z_channels == 0 || n.num_res_blocks == 0 {
            return Err("vocabulary, φ count, latent channels and ResBlocks must be positive".into());
        }
        Ok(())
    }

    /// Every state-dict entry, in the official module order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut e = EntryList::new(KeyStyle::Flat);
        e.entries = self.net.entries();
        let c = self.cvae();
        e.buffer("quantize.ema_vocab_hit_SV".into(), vec![self.stat_scales, self.vocab]);
        for k in 0..self.phis {
            e.conv(&format!("quantize.quant_resi.qresi_ls.{k}"), c, c, 3);
        }
        e.param("quantize.embedding.weight".into(), vec![self.vocab, c]);
        e.conv("quant_conv", c, c, 3);
        e.conv("post_quant_conv", c, c, 3);
        e.entries
    }

    /// The configuration a state dict's shapes (key → shape) imply.
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self, String> {
        let dim = |key: &str, i: usize| -> Result<usize, String> {
            let s = shapes.get(key).ok_or_else(|| format!("missing tensor '{key}' (not a VAR VQVAE?)"))?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{key}' has shape {s:?}, expected rank > {i}"))
        };
        let base_ch = dim("encoder.conv_in.weight", 0)?;
        let levels =
            (0..).take_while(|l| shapes.contains_key(&format!("encoder.down.{l}.block.0.conv1.weight"))).count();
        let mut ch_mult = Vec::with_capacity(levels);
        for l in 0..levels {
            let c = dim(&format!("encoder.down.{l}.block.0.conv1.weight"), 0)?;
            if base_ch == 0 || c % base_ch != 0 {
                return Err(format!("encoder level {l} has {c} channels, not a multiple of the base {base_ch}"));
            }
            ch_mult.push(c / base_ch);
        }
        let count = |f: &dyn Fn(usize) -> String| (0..).take_while(|&i| shapes.contains_key(&f(i))).count();
        let config = VqVaeConfig {
            net: NetShape {
                base_ch,
                ch_mult,
                num_res_blocks: count(&|b| format!("encoder.down.0.block.{b}.conv1.weight")),
                z_channels: dim("quant_conv.weight", 0)?,
                downsamples: count(&|l| format!("encoder.down.{l}.downsample.conv.weight")),
                attention: shapes.contains_key("encoder.mid.attn_1.qkv.weight"),
                keys: KeyStyle::Flat,
            },
            vocab: dim("quantize.embedding.weight", 0)?,
            phis: count(&|k| format!("quantize.quant_resi.qresi_ls.{k}.weight")),
            stat_scales: dim("quantize.ema_vocab_hit_SV", 0)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The class-conditional transformer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarConfig {
    pub depth: usize,
    /// Width C (= D, the condition's width).
    pub embed_dim: usize,
    pub num_heads: usize,
    /// FFN hidden width (round(4C) in the releases).
    pub mlp_hidden: usize,
    /// Classes without the null class (1000 for ImageNet).
    pub num_classes: usize,
    /// One AdaLN projection for all blocks plus a learned per-block offset (d36).
    pub shared_aln: bool,
    pub patch_nums: Vec<usize>,
    /// Codebook entries V (the head's width).
    pub vocab: usize,
    /// Latent channels of the VQVAE (the word embedding's input).
    pub cvae: usize,
}

impl VarConfig {
    /// The names [`VarConfig::preset`] knows.
    pub const PRESETS: [&str; 5] = ["d16", "d20", "d24", "d30", "d36"];

    /// The released models: depth d, C = 64·d, d heads, at 256² — d36 at 512² with shared AdaLN.
    pub fn preset(name: &str) -> Option<VarConfig> {
        let depth: usize = name.strip_prefix('d')?.parse().ok()?;
        if !matches!(depth, 16 | 20 | 24 | 30 | 36) {
            return None;
        }
        let c = 64 * depth;
        Some(VarConfig {
            depth,
            embed_dim: c,
            num_heads: depth,
            mlp_hidden: 4 * c,
            num_classes: 1000,
            shared_aln: depth == 36,
            patch_nums: if depth == 36 { PATCH_NUMS_512.to_vec() } else { PATCH_NUMS_256.to_vec() },
            vocab: 4096,
            cvae: 32,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Reads the `--config` form: `{"depth", "embed_dim", "num_heads", "num_classes",
    /// "resolution": 256 | 512}` and optionally `"mlp_hidden"` (4C), `"shared_aln"` (false),
    /// `"vocab"` (4096) and `"cvae"` (32).
    pub fn from_json(v: &Value) -> Result<VarConfig, String> {
        let uint = |key: &str, default: Option<usize>| -> Result<usize, String> {
            match v.get(key) {
                None => default.ok_or_else(|| format!("'{key}' is missing")),
                Some(x) => {
                    x.as_u64().map(|n| n as usize).ok_or_else(|| format!("'{key}' must be a non-negative integer"))
                }
            }
        };
        let embed_dim = uint("embed_dim", None)?;
        let patch_nums = match uint("resolution", None)? {
            256 => PATCH_NUMS_256.to_vec(),
            512 => PATCH_NUMS_512.to_vec(),
            r => return Err(format!("'resolution' {r}: the schedules are 256 and 512")),
        };
        let shared_aln = match v.get("shared_aln") {
            None => false,
            Some(b) => b.as_bool().ok_or("'shared_aln' must be true or false")?,
        };
        let config = VarConfig {
            depth: uint("depth", None)?,
            embed_dim,
            num_heads: uint("num_heads", None)?,
            mlp_hidden: uint("mlp_hidden", embed_dim.checked_mul(4))?,
            num_classes: uint("num_classes", None)?,
            shared_aln,
            patch_nums,
            vocab: uint("vocab", Some(4096))?,
            cvae: uint("cvae", Some(32))?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn seq_len(&self) -> usize {
        seq_len(&self.patch_nums)
    }

    pub fn num_scales(&self) -> usize {
        self.patch_nums.len()
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.patch_nums.last().copied().unwrap_or(0) * PATCH
    }

    /// Multiply-adds × 2 of one generated image with CFG (two rows per image): every block's
    /// linears and the head for each token, attention of each scale's queries over the keys of
    /// the scales so far, and the AdaLN projections once. The arithmetic floor of a device is
    /// this over its peak rate.
    pub fn generation_flops(&self) -> f64 {
        let (c, h) = (self.embed_dim as f64, self.mlp_hidden as f64);
        let per_token = self.depth as f64 * (4.0 * c * c + 2.0 * c * h) + c * self.vocab as f64;
        let mut seen = 0.0;
        let mut attention = 0.0;
        for p in &self.patch_nums {
            let n = (p * p) as f64;
            seen += n;
            attention += self.depth as f64 * 2.0 * c * n * seen;
        }
        let ada_projections = if self.shared_aln { 1.0 } else { self.depth as f64 };
        let ada = ada_projections * 6.0 * c * c + 2.0 * c * c;
        2.0 * 2.0 * (per_token * self.seq_len() as f64 + attention + ada)
    }

    /// Index of the null class (the unconditional row of CFG).
    pub fn null_class(&self) -> usize {
        self.num_classes
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!("width {} is not divisible by {} heads", self.embed_dim, self.num_heads));
        }
        if self.depth == 0 || self.vocab == 0 || self.cvae == 0 || self.mlp_hidden == 0 || self.num_classes == 0 {
            return Err("depth, vocabulary, latent channels, FFN width and classes must be positive".into());
        }
        if self.patch_nums.is_empty() || self.patch_nums.windows(2).any(|w| w[0] >= w[1]) || self.patch_nums[0] != 1 {
            return Err(format!("patch_nums {:?} must start at 1 and grow", self.patch_nums));
        }
        Ok(())
    }

    /// Every state-dict entry of the released `.pth`, in its order (buffers included).
    pub fn entries(&self) -> Vec<Entry> {
        let (c, l) = (self.embed_dim, self.seq_len());
        let mut e = EntryList::new(KeyStyle::Flat);
        e.param("pos_start".into(), vec![1, 1, c]);
        e.param("pos_1LC".into(), vec![1, l, c]);
        e.buffer("lvl_1L".into(), vec![1, l]);
        e.buffer("attn_bias_for_masking".into(), vec![1, 1, l, l]);
        e.param("word_embed.weight".into(), vec![c, self.cvae]);
        e.param("word_embed.bias".into(), vec![c]);
        e.param("class_emb.weight".into(), vec![self.num_classes + 1, c]);
        e.param("lvl_embed.weight".into(), vec![self.num_scales(), c]);
        if self.shared_aln {
            e.param("shared_ada_lin.1.weight".into(), vec![6 * c, c]);
            e.param("shared_ada_lin.1.bias".into(), vec![6 * c]);
        }
        for i in 0..self.depth {
            let b = |name: &str| format!("blocks.{i}.{name}");
            if self.shared_aln {
                e.param(b("ada_gss"), vec![1, 1, 6, c]);
            }
            e.param(b("attn.scale_mul_1H11"), vec![1, self.num_heads, 1, 1]);
            e.param(b("attn.q_bias"), vec![c]);
            e.param(b("attn.v_bias"), vec![c]);
            e.buffer(b("attn.zero_k_bias"), vec![c]);
            e.param(b("attn.mat_qkv.weight"), vec![3 * c, c]);
            e.param(b("attn.proj.weight"), vec![c, c]);
            e.param(b("attn.proj.bias"), vec![c]);
            e.param(b("ffn.fc1.weight"), vec![self.mlp_hidden, c]);
            e.param(b("ffn.fc1.bias"), vec![self.mlp_hidden]);
            e.param(b("ffn.fc2.weight"), vec![c, self.mlp_hidden]);
            e.param(b("ffn.fc2.bias"), vec![c]);
            if !self.shared_aln {
                e.param(b("ada_lin.1.weight"), vec![6 * c, c]);
                e.param(b("ada_lin.1.bias"), vec![6 * c]);
            }
        }
        e.param("head_nm.ada_lin.1.weight".into(), vec![2 * c, c]);
        e.param("head_nm.ada_lin.1.bias".into(), vec![2 * c]);
        e.param("head.weight".into(), vec![self.vocab, c]);
        e.param("head.bias".into(), vec![self.vocab]);
        e.entries
    }

    /// The configuration a state dict's shapes imply. The schedule follows from the length of
    /// `pos_1LC`: 680 tokens are the 256² schedule, 2240 the 512² one.
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self, String> {
        let dim = |key: &str, i: usize| -> Result<usize, String> {
            let s = shapes.get(key).ok_or_else(|| format!("missing tensor '{key}' (not a VAR transformer?)"))?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{key}' has shape {s:?}, expected rank > {i}"))
        };
        let l = dim("pos_1LC", 1)?;
        let patch_nums = [PATCH_NUMS_256, PATCH_NUMS_512]
            .into_iter()
            .find(|p| seq_len(p) == l)
            .ok_or_else(|| format!("pos_1LC has {l} tokens: no known schedule (680 for 256², 2240 for 512²)"))?
            .to_vec();
        let config = VarConfig {
            depth: (0..).take_while(|i| shapes.contains_key(&format!("blocks.{i}.attn.mat_qkv.weight"))).count(),
            embed_dim: dim("word_embed.weight", 0)?,
            num_heads: dim("blocks.0.attn.scale_mul_1H11", 1)?,
            mlp_hidden: dim("blocks.0.ffn.fc1.weight", 0)?,
            num_classes: dim("class_emb.weight", 0)?.saturating_sub(1),
            shared_aln: shapes.contains_key("shared_ada_lin.1.weight"),
            patch_nums,
            vocab: dim("head.weight", 0)?,
            cvae: dim("word_embed.weight", 1)?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_configs() {
        let v = serde_json::json!({"depth": 2, "embed_dim": 64, "num_heads": 2, "num_classes": 10, "resolution": 256});
        let c = VarConfig::from_json(&v).unwrap();
        assert_eq!((c.mlp_hidden, c.vocab, c.cvae, c.shared_aln, c.seq_len()), (256, 4096, 32, false, 680));
        let bad =
            serde_json::json!({"depth": 2, "embed_dim": 64, "num_heads": 3, "num_classes": 10, "resolution": 256});
        assert!(VarConfig::from_json(&bad).unwrap_err().contains("divisible"));
        let bad =
            serde_json::json!({"depth": 2, "embed_dim": 64, "num_heads": 2, "num_classes": 10, "resolution": 300});
        assert!(VarConfig::from_json(&bad).unwrap_err().contains("resolution"));
    }

    #[test]
    fn phi_tables_of_the_official_schedules() {
        // manifests/schedules.json: exact ties at scales 2 and 7 of 10, decided by rounding.
        assert_eq!(phi_table(4, 10), [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
        assert_eq!(phi_table(4, 14), [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]);
        assert_eq!(phi_table(1, 10), [0; 10]);
    }

    #[test]
    fn presets_detect_round_trip() {
        for name in VarConfig::PRESETS {
            let c = VarConfig::preset(name).unwrap();
            let shapes = c.entries().into_iter().map(|e| (e.key, e.shape)).collect();
            assert_eq!(VarConfig::detect(&shapes).unwrap(), c, "{name}");
        }
        let v = VqVaeConfig::release();
        let shapes = v.entries().into_iter().map(|e| (e.key, e.shape)).collect();
        assert_eq!(VqVaeConfig::detect(&shapes).unwrap(), v);
    }
}
