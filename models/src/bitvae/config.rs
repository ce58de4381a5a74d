//! BitVAE hyper-parameters: the released presets, detection from a checkpoint's shapes, and
//! the exact list of state-dict entries (name, shape) a configuration implies.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::autoencoder::{KeyStyle, NetShape};

/// The architecture of the official BitVAE (`bsq_vae/flux_vqgan.py`, image mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitVaeConfig {
    /// Channels of the first level (128 in every release).
    pub base_ch: usize,
    /// Channel multiplier per level (encoder and decoder use the same list).
    pub ch_mult: Vec<usize>,
    /// ResBlocks per encoder level; decoder levels have one more.
    pub num_res_blocks: usize,
    /// Latent channels = bits per token.
    pub z_channels: usize,
    /// Spatial stride between pixels and latent tokens (a power of two).
    pub patch: usize,
}

pub use crate::autoencoder::Entry;

impl BitVaeConfig {
    /// The names [`BitVaeConfig::preset`] knows.
    pub const PRESETS: [&str; 6] = ["d16", "d24", "d32", "d32reg", "d64", "d14_patchify"];

    /// The released image tokenizers: d16, d24, d32 (and d32reg), d64 with patch 16, and the
    /// 8B model's d14 with patch 8 and four levels.
    pub fn preset(name: &str) -> Option<BitVaeConfig> {
        let image = |d| BitVaeConfig {
            base_ch: 128,
            ch_mult: vec![1, 2, 4, 4, 4],
            num_res_blocks: 2,
            z_channels: d,
            patch: 16,
        };
        Some(match name {
            "d16" => image(16),
            "d24" => image(24),
            "d32" | "d32reg" => image(32),
            "d64" => image(64),
            "d14_patchify" => BitVaeConfig { ch_mult: vec![1, 2, 4, 4], patch: 8, ..image(14) },
            _ => return None,
        })
    }

    /// Reads the `config.json` form: `{"base_ch", "ch_mult", "num_res_blocks", "z_channels", "patch"}`.
    pub fn from_json(v: &Value) -> Result<BitVaeConfig, String> {
        let uint = |key: &str| -> Result<usize, String> {
            v.get(key)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| format!("'{key}' must be a non-negative integer"))
        };
        let ch_mult = v
            .get("ch_mult")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .and_then(|a| a.iter().map(|m| m.as_u64().map(|m| m as usize)).collect::<Option<Vec<_>>>())
            .ok_or("'ch_mult' must be a non-empty list of integers")?;
        let config = BitVaeConfig {
            base_ch: uint("base_ch")?,
            ch_mult,
            num_res_blocks: uint("num_res_blocks")?,
            z_channels: uint("z_channels")?,
            patch: uint("patch")?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "base_ch": self.base_ch,
            "ch_mult": self.ch_mult,
            "num_res_blocks": self.num_res_blocks,
            "z_channels": self.z_channels,
            "patch": self.patch,
        })
    }

    pub fn num_levels(&self) -> usize {
        self.ch_mult.len()
    }

    /// Number of stride-2 stages: log2(patch).
    pub fn num_downsamples(&self) -> usize {
        self.patch.trailing_zeros() as usize
    }

    /// Checks the internal consistency the network relies on.
    pub fn validate(&self) -> Result<(), String> {
        if !self.patch.is_power_of_two() || self.patch < 2 {
            return Err(format!("patch {} is not a power of two ≥ 2", self.patch));
        }
        if self.num_downsamples() > self.num_levels() {
            return Err(format!("patch {} needs more than {} levels", self.patch, self.num_levels()));
        }
        if self.ch_mult.iter().any(|&m| !(self.base_ch * m).is_multiple_of(32)) || self.base_ch == 0 {
            return Err("every level's channel count must be a positive multiple of 32 (GroupNorm groups)".into());
        }
        if self.z_channels == 0 || self.num_res_blocks == 0 {
            return Err("z_channels and num_res_blocks must be positive".into());
        }
        Ok(())
    }

    /// The encoder/decoder layers: no attention, wrapped keys.
    pub fn net(&self) -> NetShape {
        NetShape {
            base_ch: self.base_ch,
            ch_mult: self.ch_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            z_channels: self.z_channels,
            downsamples: self.num_downsamples(),
            attention: false,
            keys: KeyStyle::Wrapped,
        }
    }

    /// Every state-dict entry in the native key form (`….conv.weight`, `….norm.weight`).
    pub fn entries(&self) -> Vec<Entry> {
        let mut e = self.net().entries();
        for q in ["quantizer", "quantize"] {
            e.push(Entry { key: format!("{q}.lfq.mask"), shape: vec![self.z_channels], buffer: true });
        }
        e
    }

    /// Infers the configuration from the shapes of a state dict in native or flat key form
    /// (`shapes` maps key → shape). The result is not yet checked against every entry.
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<BitVaeConfig, String> {
        let get = |native: &str| -> Result<&Vec<usize>, String> {
            shapes
                .get(native)
                .or_else(|| shapes.get(&flat_key(native)))
                .ok_or_else(|| format!("missing tensor '{native}' (not a BitVAE checkpoint?)"))
        };
        let dim = |native: &str, i: usize| -> Result<usize, String> {
            let s = get(native)?;
            s.get(i).copied().ok_or_else(|| format!("tensor '{native}' has shape {s:?}, expected rank > {i}"))
        };
        let base_ch = dim("encoder.conv_in.conv.weight", 0)?;
        let z_channels = dim("encoder.conv_out.conv.weight", 0)?;
        let level_present = |l: usize| {
            let native = format!("encoder.down.{l}.block.0.conv1.conv.weight");
            shapes.contains_key(&native) || shapes.contains_key(&flat_key(&native))
        };
        let num_levels = (0..).take_while(|&l| level_present(l)).count();
        if num_levels == 0 {
            return Err("missing tensor 'encoder.down.0.block.0.conv1.conv.weight'".into());
        }
        let mut ch_mult = Vec::with_capacity(num_levels);
        for l in 0..num_levels {
            let c = dim(&format!("encoder.down.{l}.block.0.conv1.conv.weight"), 0)?;
            if base_ch == 0 || c % base_ch != 0 {
                return Err(format!("encoder level {l} has {c} channels, not a multiple of the base {base_ch}"));
            }
            ch_mult.push(c / base_ch);
        }
        let has = |native: String| shapes.contains_key(&native) || shapes.contains_key(&flat_key(&native));
        let num_res_blocks = (0..).take_while(|&b| has(format!("encoder.down.0.block.{b}.conv1.conv.weight"))).count();
        let downsamples =
            (0..num_levels).take_while(|&l| has(format!("encoder.down.{l}.downsample.conv.conv.weight"))).count();
        let config = BitVaeConfig { base_ch, ch_mult, num_res_blocks, z_channels, patch: 1 << downsamples };
        config.validate()?;
        Ok(config)
    }
}

/// The "flat" (Flux-like) name the official loader also accepts for a native key:
/// `x.conv.weight` → `x.weight`, `x.norm.bias` → `x.bias`.
pub fn flat_key(native: &str) -> String {
    for wrapper in [".conv.", ".norm."] {
        if let Some(i) = native.rfind(wrapper) {
            let tail = &native[i + wrapper.len()..];
            if tail == "weight" || tail == "bias" {
                return format!("{}.{tail}", &native[..i]);
            }
        }
    }
    native.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d32_parameter_count_matches_the_release() {
        let c = BitVaeConfig::preset("d32").unwrap();
        let n: usize = c.entries().iter().filter(|e| !e.buffer).map(|e| e.shape.iter().product::<usize>()).sum();
        assert_eq!(n, 110_118_051);
    }

    #[test]
    fn detection_round_trips_every_preset() {
        for name in ["d16", "d24", "d32", "d64", "d14_patchify"] {
            let c = BitVaeConfig::preset(name).unwrap();
            let shapes = c.entries().into_iter().map(|e| (e.key, e.shape)).collect();
            assert_eq!(BitVaeConfig::detect(&shapes).unwrap(), c, "{name}");
        }
    }

    #[test]
    fn json_round_trip_and_errors() {
        let c = BitVaeConfig::preset("d14_patchify").unwrap();
        assert_eq!(BitVaeConfig::from_json(&c.to_json()).unwrap(), c);
        let mut bad = c.to_json();
        bad["patch"] = json!(12);
        assert!(BitVaeConfig::from_json(&bad).unwrap_err().contains("power of two"));
        bad["ch_mult"] = json!("x");
        assert!(BitVaeConfig::from_json(&bad).unwrap_err().contains("ch_mult"));
    }

    #[test]
    fn flat_keys() {
        assert_eq!(flat_key("encoder.conv_in.conv.weight"), "encoder.conv_in.weight");
        assert_eq!(flat_key("decoder.mid.block_1.norm1.norm.bias"), "decoder.mid.block_1.norm1.bias");
        assert_eq!(flat_key("quantizer.lfq.mask"), "quantizer.lfq.mask");
    }
}
