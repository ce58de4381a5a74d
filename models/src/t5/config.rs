//! T5 encoder hyper-parameters: the flan-t5-xl preset, the Hugging Face `config.json` form
//! (with the activation checks that keep us to the gated-GELU encoders we implement), and the
//! exact encoder state-dict entries a configuration implies (HF key names).

use std::path::Path;

use infinity_runtime::{Error, Result};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head; num_heads · d_kv need not equal d_model.
    pub d_kv: usize,
    pub num_heads: usize,
    /// Hidden width of the gated FFN.
    pub d_ff: usize,
    pub num_layers: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f32,
}

/// One encoder state-dict entry. `alias_of` marks a second name of another entry's tensor
/// (`encoder.embed_tokens.weight` is tied to `shared.weight`); a checkpoint may hold either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub shape: Vec<usize>,
    pub alias_of: Option<String>,
}

/// Activations HF computes as 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), the one we implement.
const TANH_GELUS: [&str; 2] = ["gelu_new", "gelu_pytorch_tanh"];

impl T5Config {
    /// google/flan-t5-xl, the text encoder of every released Infinity model.
    pub fn flan_t5_xl() -> T5Config {
        T5Config {
            vocab_size: 32128,
            d_model: 2048,
            d_kv: 64,
            num_heads: 32,
            d_ff: 5120,
            num_layers: 24,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
        }
    }

    /// Width of the attention's q/k/v projections.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Reads a Hugging Face `config.json`; errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<T5Config> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let json: Value =
            serde_json::from_slice(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        T5Config::from_json(&json).map_err(|msg| Error::format(path, format!("not a supported T5 encoder: {msg}")))
    }

    /// The Hugging Face `config.json` form. Fields HF gives defaults to may be absent and take
    /// those defaults; the sizes must be present.
    pub fn from_json(v: &Value) -> std::result::Result<T5Config, String> {
        let uint = |key: &str, default: Option<usize>| -> std::result::Result<usize, String> {
            match v.get(key) {
                None => default.ok_or_else(|| format!("'{key}' is missing")),
                Some(x) => {
                    x.as_u64().map(|n| n as usize).ok_or_else(|| format!("'{key}' must be a non-negative integer"))
                }
            }
        };
        check_activation(v)?;
        let eps = match v.get("layer_norm_epsilon") {
            None => 1e-6,
            Some(x) => x.as_f64().ok_or("'layer_norm_epsilon' must be a number")? as f32,
        };
        let config = T5Config {
            vocab_size: uint("vocab_size", None)?,
            d_model: uint("d_model", None)?,
            d_kv: uint("d_kv", None)?,
            num_heads: uint("num_heads", None)?,
            d_ff: uint("d_ff", None)?,
            num_layers: uint("num_layers", None)?,
            relative_attention_num_buckets: uint("relative_attention_num_buckets", Some(32))?,
            relative_attention_max_distance: uint("relative_attention_max_distance", Some(128))?,
            layer_norm_epsilon: eps,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the forward pass relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [self.vocab_size, self.d_model, self.d_kv, self.num_heads, self.d_ff, self.num_layers];
        if sizes.contains(&0) {
            return Err("every size must be positive".into());
        }
        // Each direction's half of the buckets starts with half/2 exact buckets, and the
        // log-spaced ones need max_distance beyond them.
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact == 0 || self.relative_attention_max_distance <= max_exact {
            return Err(format!(
                "relative_attention_num_buckets {} and relative_attention_max_distance {} leave no exact or no log-spaced buckets",
                self.relative_attention_num_buckets, self.relative_attention_max_distance
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon < 0.0 {
            return Err(format!("layer_norm_epsilon {} must be a non-negative number", self.layer_norm_epsilon));
        }
        Ok(())
    }

    /// Every encoder state-dict entry in HF order; the relative position bias lives in block 0
    /// only and is shared by all blocks.
    pub fn entries(&self) -> Vec<Entry> {
        let (d, inner, f) = (self.d_model, self.inner_dim(), self.d_ff);
        let embedding = |key: &str, alias_of: Option<&str>| Entry {
            key: key.into(),
            shape: vec![self.vocab_size, d],
            alias_of: alias_of.map(Into::into),
        };
        let mut e =
            vec![embedding("shared.weight", None), embedding("encoder.embed_tokens.weight", Some("shared.weight"))];
        let mut push = |key: String, shape: Vec<usize>| e.push(Entry { key, shape, alias_of: None });
        for i in 0..self.num_layers {
            let attn = format!("encoder.block.{i}.layer.0.SelfAttention");
            for p in ["q", "k", "v"] {
                push(format!("{attn}.{p}.weight"), vec![inner, d]);
            }
            push(format!("{attn}.o.weight"), vec![d, inner]);
            if i == 0 {
                push(
                    format!("{attn}.relative_attention_bias.weight"),
                    vec![self.relative_attention_num_buckets, self.num_heads],
                );
            }
            push(format!("encoder.block.{i}.layer.0.layer_norm.weight"), vec![d]);
            let ffn = format!("encoder.block.{i}.layer.1.DenseReluDense");
            push(format!("{ffn}.wi_0.weight"), vec![f, d]);
            push(format!("{ffn}.wi_1.weight"), vec![f, d]);
            push(format!("{ffn}.wo.weight"), vec![d, f]);
            push(format!("encoder.block.{i}.layer.1.layer_norm.weight"), vec![d]);
        }
        push("encoder.final_layer_norm.weight".into(), vec![d]);
        e
    }
}

/// Accepts only the gated tanh-GELU FFN. HF derives `is_gated_act` and `dense_act_fn` from
/// `feed_forward_proj` ("gated-gelu" means gelu_new), but explicit values in the file win.
fn check_activation(v: &Value) -> std::result::Result<(), String> {
    let text = |key: &str| -> std::result::Result<Option<&str>, String> {
        v.get(key).map(|x| x.as_str().ok_or_else(|| format!("'{key}' must be a string"))).transpose()
    };
    let proj = text("feed_forward_proj")?.unwrap_or("relu");
    let (gated, act) = match proj.split_once('-') {
        Some(("gated", act)) => (true, if proj == "gated-gelu" { "gelu_new" } else { act }),
        _ => (false, proj),
    };
    let gated = match v.get("is_gated_act") {
        None => gated,
        Some(x) => x.as_bool().ok_or("'is_gated_act' must be a boolean")?,
    };
    let (act_field, act) = match text("dense_act_fn")? {
        Some(explicit) => ("dense_act_fn", explicit),
        None => ("feed_forward_proj", act),
    };
    if !gated {
        return Err(format!(
            "feed_forward_proj '{proj}' (is_gated_act false) is not supported: only the gated-GELU FFN of flan-t5 ('gated-gelu') is implemented"
        ));
    }
    if !TANH_GELUS.contains(&act) {
        return Err(format!(
            "{act_field} gives the activation '{act}', which is not supported: only gelu_new (the tanh GELU of 'gated-gelu') is implemented"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn xl_json() -> Value {
        json!({
            "vocab_size": 32128, "d_model": 2048, "d_kv": 64, "num_heads": 32, "d_ff": 5120, "num_layers": 24,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6
        })
    }

    #[test]
    fn reads_the_flan_t5_xl_config() {
        assert_eq!(T5Config::from_json(&xl_json()).unwrap(), T5Config::flan_t5_xl());
    }

    #[test]
    fn refuses_other_activations_naming_the_field() {
        let mut relu = xl_json();
        relu.as_object_mut()
            .unwrap()
            .retain(|k, _| !["feed_forward_proj", "dense_act_fn", "is_gated_act"].contains(&k.as_str()));
        assert!(T5Config::from_json(&relu).unwrap_err().contains("feed_forward_proj 'relu'"));
        let mut silu = xl_json();
        silu["dense_act_fn"] = json!("silu");
        assert!(T5Config::from_json(&silu).unwrap_err().contains("dense_act_fn"));
        let mut ungated = xl_json();
        ungated["is_gated_act"] = json!(false);
        assert!(T5Config::from_json(&ungated).unwrap_err().contains("is_gated_act false"));
        let mut missing = xl_json();
        missing.as_object_mut().unwrap().remove("d_kv");
        assert!(T5Config::from_json(&missing).unwrap_err().contains("'d_kv' is missing"));
    }

    #[test]
    fn entries_list_the_tied_embedding_as_an_alias() {
        let entries = T5Config::flan_t5_xl().entries();
        assert_eq!(entries.len(), 220);
        assert_eq!(entries[1].alias_of.as_deref(), Some("shared.weight"));
        assert_eq!(entries.iter().filter(|e| e.key.ends_with("relative_attention_bias.weight")).count(), 1);
    }
}
