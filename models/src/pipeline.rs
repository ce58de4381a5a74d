//! Text to image: where a model's files are (a model folder with `config.json`, or explicit
//! paths), the checks that the three models fit together — made from tensor shapes alone,
//! before any weight is converted — and the stages prompts → T5 features → bits → image.

use std::path::{Path, PathBuf};

use infinity_runtime::io::Weights;
use infinity_runtime::{Device, Error, Result, Tensor};
use serde_json::Value;

use crate::bitvae::{self, BitVae, BitVaeConfig};
use crate::infinity::{Infinity, InfinityConfig};
use crate::schedule::{PATCH, PixelBudget};
use crate::t5::tokenizer::Encoded;
use crate::t5::{T5Config, T5Encoder, T5Tokenizer};

/// The files of one text-to-image model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFiles {
    pub transformer: PathBuf,
    pub vae: PathBuf,
    /// T5 encoder weights: a safetensors/.pth file, a sharded index json or a Hugging Face folder.
    pub t5: PathBuf,
    /// The encoder's Hugging Face `config.json`.
    pub t5_config: PathBuf,
    pub tokenizer: PathBuf,
    /// The pixel budget the model was trained for, when its folder says so.
    pub default_pn: Option<PixelBudget>,
}

impl ModelFiles {
    /// Reads `dir/config.json`: `{"transformer", "vae", "t5", "t5_config", "tokenizer"}` file
    /// names relative to the folder (defaults: transformer.safetensors, vae.safetensors,
    /// t5.safetensors, t5_config.json, tokenizer.json) and optionally `"pn"`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
        let file = |key: &str, default: &str| -> Result<PathBuf> {
            match v.get(key) {
                None => Ok(dir.join(default)),
                Some(Value::String(name)) => Ok(dir.join(name)),
                Some(_) => Err(Error::format(&config_path, format!("'{key}' must be a file name"))),
            }
        };
        let default_pn = match v.get("pn") {
            None => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|e: String| Error::format(&config_path, e))?),
            Some(_) => return Err(Error::format(&config_path, "'pn' must be a string such as \"0.06M\"")),
        };
        Ok(ModelFiles {
            transformer: file("transformer", "transformer.safetensors")?,
            vae: file("vae", "vae.safetensors")?,
            t5: file("t5", "t5.safetensors")?,
            t5_config: file("t5_config", "t5_config.json")?,
            tokenizer: file("tokenizer", "tokenizer.json")?,
            default_pn,
        })
    }

    /// Fails on the first file that does not exist, naming it.
    pub fn check_exist(&self) -> Result<()> {
        for p in [&self.transformer, &self.vae, &self.t5, &self.t5_config, &self.tokenizer] {
            if !p.exists() {
                return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
            }
        }
        Ok(())
    }
}

/// The three models, loaded and checked against each other.
pub struct Pipeline {
    /// Dropped after the prompts are encoded (`drop_text_encoder`): it is the largest model.
    pub text: Option<TextEncoder>,
    pub transformer: Infinity,
    pub vae: BitVae,
}

/// One prompt's features and whether its text was cut to the tokenizer's limit.
pub struct EncodedPrompt {
    pub features: Tensor,
    pub truncated: bool,
}

impl Pipeline {
    /// Maps the weight files, detects every configuration from the tensor shapes and checks
    /// that the models fit together before building them, each straight onto `device`.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        files.check_exist()?;
        let t5_config = T5Config::open(&files.t5_config)?;
        let tw = Weights::open(&files.transformer)?;
        let tc = Infinity::detect_config(&tw)?;
        let vw = bitvae::state_dict(&files.vae)?;
        let vc = bitvae::detect_config(&vw)?;
        check_fit(&tc, &files.transformer.display().to_string(), &vc, &files.vae, &t5_config, &files.t5_config)?;
        Ok(Pipeline {
            text: Some(TextEncoder::with_config(&files.t5, t5_config, &files.tokenizer, device)?),
            transformer: Infinity::with_config_on(&tw, tc, device)?,
            vae: BitVae::with_config_on(&vw, vc, device)?,
        })
    }

    /// T5 features of each prompt (its valid tokens only, EOS included).
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Vec<EncodedPrompt>> {
        self.text_encoder("pipeline.encode_prompts")?.encode(prompts)
    }

    fn text_encoder(&self, op: &'static str) -> Result<&TextEncoder> {
        self.text.as_ref().ok_or_else(|| Error::invalid(op, &[], "the text encoder was already dropped"))
    }

    pub fn drop_text_encoder(&mut self) {
        self.text = None;
    }
}

/// The T5 encoder and its tokenizer: prompts → features, without the other models (training
/// needs only this part of the pipeline).
pub struct TextEncoder {
    pub tokenizer: T5Tokenizer,
    pub t5: T5Encoder,
}

impl TextEncoder {
    /// `t5`: weights (file, sharded index json or Hugging Face folder); `t5_config`: its
    /// `config.json`; `tokenizer`: its `tokenizer.json`.
    pub fn open(t5: &Path, t5_config: &Path, tokenizer: &Path) -> Result<Self> {
        Self::with_config(t5, T5Config::open(t5_config)?, tokenizer, &Device::Cpu)
    }

    /// As `open`, with the encoder's configuration already read (e.g. to check it first) and
    /// the encoder on `device`.
    pub fn with_config(t5: &Path, config: T5Config, tokenizer: &Path, device: &Device) -> Result<Self> {
        Ok(TextEncoder { tokenizer: T5Tokenizer::open(tokenizer)?, t5: T5Encoder::open_on(t5, config, device)? })
    }

    /// Each prompt's token ids, checked against the encoder's vocabulary.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Vec<Encoded>> {
        let vocab = self.t5.config.vocab_size;
        prompts
            .iter()
            .map(|p| {
                let enc = self.tokenizer.encode(p)?;
                if let Some(&bad) = enc.ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::invalid("pipeline.encode_prompts", &[enc.ids.len()], format!("token id {bad} is outside the text encoder's vocabulary of {vocab}: tokenizer and encoder do not belong together")));
                }
                Ok(enc)
            })
            .collect()
    }

    /// T5 features of each prompt (its valid tokens only, EOS included), on the host, where
    /// the transformer's conditioning is computed; the prompts are encoded as one batch.
    pub fn encode(&self, prompts: &[&str]) -> Result<Vec<EncodedPrompt>> {
        let tokens = self.tokenize(prompts)?;
        let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        let features = self.t5.encode_batch(&ids)?;
        features
            .into_iter()
            .zip(&tokens)
            .map(|(features, t)| Ok(EncodedPrompt { features: features.to_cpu()?, truncated: t.truncated }))
            .collect()
    }
}

/// Checks, from configurations alone, that a transformer (`transformer` names it in errors)
/// predicts the VAE's tokens and reads the text encoder's features.
pub fn check_fit(
    tc: &InfinityConfig,
    transformer: &str,
    vc: &BitVaeConfig,
    vae: &Path,
    t5: &T5Config,
    t5_config: &Path,
) -> Result<()> {
    let vae_bits = vc.z_channels * if tc.spatial_patchify { 4 } else { 1 };
    if vae_bits != tc.bits {
        return Err(Error::format(
            vae,
            format!("the VAE makes {vae_bits}-bit tokens but {transformer} predicts {} bits per token", tc.bits),
        ));
    }
    if vc.patch != PATCH {
        return Err(Error::format(
            vae,
            format!("patch {} VAEs do not fit the image schedules (patch {PATCH})", vc.patch),
        ));
    }
    if t5.d_model != tc.text_channels {
        return Err(Error::format(
            t5_config,
            format!(
                "the text encoder is {} wide but {transformer} expects {}-wide text features",
                t5.d_model, tc.text_channels
            ),
        ));
    }
    Ok(())
}
