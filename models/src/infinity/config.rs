//! Infinity transformer hyper-parameters: the released presets, detection from a state
//! dict's shapes, the `config.json` form, and the exact state-dict entries a configuration
//! implies (official key names, `block_chunks.{c}.module.{j}` block layout).

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfinityConfig {
    pub depth: usize,
    /// Width C.
    pub embed_dim: usize,
    pub num_heads: usize,
    /// FFN hidden width (round(mlp_ratio·C/256)·256 in the official constructor).
    pub mlp_hidden: usize,
    /// Width of the text features (2048 for flan-t5-xl).
    pub text_channels: usize,
    /// Bits per transformer token (the VAE's d, ×4 with spatial patchify).
    pub bits: usize,
    /// Blocks are stored in this many chunks (changes key names only).
    pub block_chunks: usize,
    /// Rows of the learned null text `cfg_uncond`.
    pub text_maxlen: usize,
    /// 8B: the transformer sees 2×2 pixel-unshuffled VAE tokens.
    pub spatial_patchify: bool,
}

/// One state-dict entry; `buffer` marks the persistent zero K biases (stored, never used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub shape: Vec<usize>,
    pub buffer: bool,
}

/// Python's round() (half to even) of 4C/256, times 256.
fn ffn_width(c: usize, mlp_ratio: usize) -> usize {
    let x = (c * mlp_ratio) as f64 / 256.0;
    (x.round_ties_even() as usize) * 256
}

impl InfinityConfig {
    pub const PRESETS: [&'static str; 8] =
        ["layer12", "layer16", "layer24", "layer32", "layer40", "layer48", "2b", "8b"];

    /// Official model types (`tools/run_infinity.py`): depth, width, heads and chunk count.
    pub fn preset(name: &str) -> Option<InfinityConfig> {
        let (depth, c, heads, chunks, bits, patchify) = match name {
            "layer12" => (12, 768, 8, 4, 32, false),
            "layer16" => (16, 1152, 12, 4, 32, false),
            "layer24" => (24, 1536, 16, 4, 32, false),
            "layer32" => (32, 2080, 20, 4, 32, false),
            "layer40" => (40, 2688, 24, 4, 32, false),
            "layer48" => (48, 3360, 28, 4, 32, false),
            "2b" => (32, 2048, 16, 8, 32, false),
            "8b" => (40, 3584, 28, 8, 56, true),
            _ => return None,
        };
        Some(InfinityConfig {
            depth,
            embed_dim: c,
            num_heads: heads,
            mlp_hidden: ffn_width(c, 4),
            text_channels: 2048,
            bits,
            block_chunks: chunks,
            text_maxlen: 512,
            spatial_patchify: patchify,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// The text attentive pool uses its own heads: 128-wide on the text side (64 past C = 4096).
    pub fn pool_heads(&self) -> usize {
        self.text_channels / if self.embed_dim > 4096 { 64 } else { 128 }
    }

    pub fn blocks_per_chunk(&self) -> usize {
        self.depth / self.block_chunks
    }

    /// State-dict prefix of block `i`.
    pub fn block_prefix(&self, i: usize) -> String {
        let per = self.blocks_per_chunk();
        format!("block_chunks.{}.module.{}.", i / per, i % per)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            self.depth,
            self.embed_dim,
            self.num_heads,
            self.mlp_hidden,
            self.text_channels,
            self.bits,
            self.block_chunks,
        ];
        if positive.contains(&0) {
            return Err("every size must be positive".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) || !self.head_dim().is_multiple_of(4) {
            return Err(format!(
                "width {} does not split into {} heads of a multiple of 4 (2-D RoPE)",
                self.embed_dim, self.num_heads
            ));
        }
        if !self.depth.is_multiple_of(self.block_chunks) {
            return Err(format!("depth {} is not divisible into {} chunks", self.depth, self.block_chunks));
        }
        let hp = self.pool_heads();
        if hp == 0 || !self.text_channels.is_multiple_of(hp) || !self.embed_dim.is_multiple_of(hp) {
            return Err(format!(
                "text width {} and width {} do not split into the pool's heads",
                self.text_channels, self.embed_dim
            ));
        }
        Ok(())
    }

    pub fn from_json(v: &Value) -> Result<InfinityConfig, String> {
        let uint = |key: &str| -> Result<usize, String> {
            v.get(key)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| format!("'{key}' must be a non-negative integer"))
        };
        let config = InfinityConfig {
            depth: uint("depth")?,
            embed_dim: uint("embed_dim")?,
            num_heads: uint("num_heads")?,
            mlp_hidden: uint("mlp_hidden")?,
            text_channels: uint("text_channels")?,
            bits: uint("bits")?,
            block_chunks: uint("block_chunks")?,
            text_maxlen: uint("text_maxlen")?,
            spatial_patchify: v.get("spatial_patchify").and_then(Value::as_bool).unwrap_or(false),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "mlp_hidden": self.mlp_hidden,
            "text_channels": self.text_channels,
            "bits": self.bits,
            "block_chunks": self.block_chunks,
            "text_maxlen": self.text_maxlen,
            "spatial_patchify": self.spatial_patchify,
        })
    }

    /// Every state-dict entry, non-block entries first.
    pub fn entries(&self) -> Vec<Entry> {
        let (c, t, hp) = (self.embed_dim, self.text_channels, self.pool_heads());
        let mut e = Vec::new();
        let mut push = |key: String, shape: Vec<usize>, buffer: bool| e.push(Entry { key, shape, buffer });
        push("cfg_uncond".into(), vec![self.text_maxlen, t], false);
        push("pos_start".into(), vec![1, 1, c], false);
        push("text_norm.weight".into(), vec![t], false);
        push("text_proj_for_sos.ca.mat_q".into(), vec![1, hp, c / hp], false);
        push("text_proj_for_sos.ca.v_bias".into(), vec![c], false);
        push("text_proj_for_sos.ca.zero_k_bias".into(), vec![c], true);
        push("text_proj_for_sos.ca.mat_kv.weight".into(), vec![2 * c, t], false);
        push("text_proj_for_sos.ca.proj.weight".into(), vec![c, c], false);
        push("text_proj_for_sos.ca.proj.bias".into(), vec![c], false);
        push("text_proj_for_ca.0.weight".into(), vec![c, t], false);
        push("text_proj_for_ca.0.bias".into(), vec![c], false);
        push("text_proj_for_ca.2.weight".into(), vec![c, c], false);
        push("text_proj_for_ca.2.bias".into(), vec![c], false);
        push("lvl_embed.weight".into(), vec![15, c], false);
        push("word_embed.weight".into(), vec![c, self.bits], false);
        push("word_embed.bias".into(), vec![c], false);
        push("shared_ada_lin.1.weight".into(), vec![6 * c, c], false);
        push("shared_ada_lin.1.bias".into(), vec![6 * c], false);
        for i in 0..self.depth {
            let p = self.block_prefix(i);
            let f = self.mlp_hidden;
            push(format!("{p}ada_gss"), vec![1, 1, 6, c], false);
            push(format!("{p}sa.mat_qkv.weight"), vec![3 * c, c], false);
            push(format!("{p}sa.q_bias"), vec![c], false);
            push(format!("{p}sa.v_bias"), vec![c], false);
            push(format!("{p}sa.zero_k_bias"), vec![c], true);
            push(format!("{p}sa.scale_mul_1H11"), vec![1, self.num_heads, 1, 1], false);
            push(format!("{p}sa.proj.weight"), vec![c, c], false);
            push(format!("{p}sa.proj.bias"), vec![c], false);
            push(format!("{p}ca.mat_q.weight"), vec![c, c], false);
            push(format!("{p}ca.mat_q.bias"), vec![c], false);
            push(format!("{p}ca.mat_kv.weight"), vec![2 * c, c], false);
            push(format!("{p}ca.v_bias"), vec![c], false);
            push(format!("{p}ca.zero_k_bias"), vec![c], true);
            push(format!("{p}ca.proj.weight"), vec![c, c], false);
            push(format!("{p}ca.proj.bias"), vec![c], false);
            push(format!("{p}ca_norm.weight"), vec![c], false);
            push(format!("{p}ca_norm.bias"), vec![c], false);
            push(format!("{p}ffn.fc1.weight"), vec![f, c], false);
            push(format!("{p}ffn.fc1.bias"), vec![f], false);
            push(format!("{p}ffn.fc2.weight"), vec![c, f], false);
            push(format!("{p}ffn.fc2.bias"), vec![c], false);
        }
        push("head_nm.ada_lin.1.weight".into(), vec![2 * c, c], false);
        push("head_nm.ada_lin.1.bias".into(), vec![2 * c], false);
        push("head.weight".into(), vec![2 * self.bits, c], false);
        push("head.bias".into(), vec![2 * self.bits], false);
        e
    }

    /// Infers the configuration from a state dict's shapes (key → shape).
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<InfinityConfig, String> {
        let dim = |key: &str, i: usize| -> Result<usize, String> {
            let s = shapes.get(key).ok_or_else(|| format!("missing tensor '{key}' (not an Infinity transformer?)"))?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{key}' has shape {s:?}, expected rank > {i}"))
        };
        // Chunk c holds blocks under `block_chunks.{c}.module.{j}.`; count both levels.
        let has_block =
            |c: usize, j: usize| shapes.contains_key(&format!("block_chunks.{c}.module.{j}.ffn.fc1.weight"));
        let block_chunks = (0..).take_while(|&c| has_block(c, 0)).count();
        if block_chunks == 0 {
            return Err("missing tensor 'block_chunks.0.module.0.ffn.fc1.weight' (no transformer blocks)".into());
        }
        let per_chunk = (0..).take_while(|&j| has_block(0, j)).count();
        let config = InfinityConfig {
            depth: block_chunks * per_chunk,
            embed_dim: dim("pos_start", 2)?,
            num_heads: dim("block_chunks.0.module.0.sa.scale_mul_1H11", 1)?,
            mlp_hidden: dim("block_chunks.0.module.0.ffn.fc1.weight", 0)?,
            text_channels: dim("text_norm.weight", 0)?,
            bits: dim("word_embed.weight", 1)?,
            block_chunks,
            text_maxlen: dim("cfg_uncond", 0)?,
            spatial_patchify: false,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_widths_round_half_to_even() {
        assert_eq!(InfinityConfig::preset("layer32").unwrap().mlp_hidden, 8192); // 32.5 → 32
        assert_eq!(InfinityConfig::preset("layer48").unwrap().mlp_hidden, 13312); // 52.5 → 52
    }

    #[test]
    fn detection_round_trips_every_preset() {
        for name in InfinityConfig::PRESETS {
            let mut c = InfinityConfig::preset(name).unwrap();
            let shapes = c.entries().into_iter().map(|e| (e.key, e.shape)).collect();
            c.spatial_patchify = false; // not visible in shapes
            assert_eq!(InfinityConfig::detect(&shapes).unwrap(), c, "{name}");
        }
    }

    #[test]
    fn json_round_trip() {
        let c = InfinityConfig::preset("8b").unwrap();
        assert_eq!(InfinityConfig::from_json(&c.to_json()).unwrap(), c);
    }
}
