//! Text to image: the checks that the three models of a [`ModelFiles`] fit together — made
//! from tensor shapes alone, before any weight is converted — and the stages prompts → T5
//! features → bits → image.

use std::path::Path;

use infinity_runtime::io::open_checkpoint;
use infinity_runtime::{Device, Error, Result, Tensor};

use crate::bitvae::{self, BitVae, BitVaeConfig};
use crate::infinity::{Infinity, InfinityConfig, TokenLayout};
use crate::model_folder::ModelFiles;
use crate::schedule::PATCH;
use crate::t5::tokenizer::Encoded;
use crate::t5::{T5Config, T5Encoder, T5Tokenizer};

/// The three models, loaded and checked against each other.
pub struct Pipeline {
    /// Dropped after the prompts are encoded (`drop_text_encoder`): it is the largest model.
    pub text: Option<TextEncoder>,
    pub transformer: Infinity,
    pub vae: BitVae,
}

/// One prompt's features and whether its text was cut to the tokenizer's limit
/// ([`TextEncoder::max_tokens`]).
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
        let tw = open_checkpoint(&files.transformer, |_| true)?;
        let mut tc = Infinity::detect_config(&tw)?;
        let vw = bitvae::state_dict(&files.vae)?;
        let vc = bitvae::detect_config(&vw)?;
        let layout =
            check_fit(&tc, &files.transformer.display().to_string(), &vc, &files.vae, &t5_config, &files.t5_config)?;
        tc.spatial_patchify = layout == TokenLayout::Patchify;
        let text = TextEncoder::with_config(&files.t5, t5_config, &files.tokenizer, device)?.for_transformer(&tc);
        Ok(Pipeline {
            text: Some(text),
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

    /// Cuts prompts to what `transformer` reads: no more tokens than the rows of its learned
    /// null text, which classifier-free guidance (and caption dropout in training) puts in a
    /// prompt's place. The official models have 512, the encoder's own limit.
    pub fn for_transformer(mut self, transformer: &InfinityConfig) -> Self {
        self.tokenizer = self.tokenizer.with_max_tokens(transformer.text_maxlen);
        self
    }

    /// Tokens a prompt is cut to, EOS included.
    pub fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
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

/// The prompts of a prompt file: one per line, trimmed, blank lines skipped. Errors name the
/// file (missing, unreadable, not UTF-8).
pub fn read_prompt_file(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// Checks, from configurations alone, that a transformer (`transformer` names it in errors)
/// predicts the VAE's tokens and reads the text encoder's features, and tells how its tokens
/// lie over the VAE's latent: one position each (a patch-16 VAE's bits), or spatial patchify
/// (the 8B: 2×2 positions of a patch-8 VAE, 4× its bits). Nothing in a transformer's own
/// tensors says which; a configuration that asks for patchify gets nothing else.
pub fn check_fit(
    tc: &InfinityConfig,
    transformer: &str,
    vc: &BitVaeConfig,
    vae: &Path,
    t5: &T5Config,
    t5_config: &Path,
) -> Result<TokenLayout> {
    let (z, bits, p) = (vc.z_channels, tc.bits, vc.patch);
    let layout = TokenLayout::of_vae_patch(p).ok_or_else(|| {
        let msg =
            format!("patch {p} VAEs do not fit the image schedules (patch {PATCH}, or {} with patchify)", PATCH / 2);
        Error::format(vae, msg)
    })?;
    let misfit = match layout {
        TokenLayout::Plain if bits == 4 * z || tc.spatial_patchify => Some(format!(
            "{transformer} is spatially patchified (4 × the VAE's {z} bits per token), which needs a patch-{} VAE; \
             this one has patch {p}",
            PATCH / 2
        )),
        TokenLayout::Patchify if bits != 4 * z => Some(format!(
            "a patch-{p} VAE fits only a spatially patchified transformer (4 × its {z} bits = {} per token); \
             {transformer} predicts {bits}",
            4 * z
        )),
        TokenLayout::Plain if bits != z => {
            Some(format!("the VAE makes {z}-bit tokens but {transformer} predicts {bits} bits per token"))
        }
        _ => None,
    };
    if let Some(msg) = misfit {
        return Err(Error::format(vae, msg));
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
    Ok(layout)
}
