//! The flan-t5 tokenizer: its `tokenizer.json` (SentencePiece Unigram) through the
//! `tokenizers` crate, with T5's framing applied here: the content ids, truncated to 511, then
//! EOS `</s>`; no BOS, no padding.
//!
//! The framing is ours rather than the file's post-processor so that EOS is appended even when
//! a `tokenizer.json` lacks one, and so that truncation is exactly the reference's (content
//! first cut to 511 tokens, then EOS), whatever truncation or padding the file configures.

use std::path::{Path, PathBuf};

use infinity_runtime::{Error, Result};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::normalizers::{Lowercase, NFKC, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

/// The encoder's context: 511 content tokens and EOS.
pub const MAX_TOKENS: usize = 512;
const EOS: &str = "</s>";
/// T5's special tokens in id order: padding 0, end of sequence 1, unknown 2.
const SPECIALS: [&str; 3] = ["<pad>", EOS, "<unk>"];

pub struct T5Tokenizer {
    inner: Tokenizer,
    path: PathBuf,
    eos: u32,
    /// Tokens a prompt is cut to, EOS included ([`T5Tokenizer::with_max_tokens`]).
    max_tokens: usize,
}

/// One prompt's token ids, EOS last; `truncated` when content past the tokenizer's limit
/// (511 tokens, or fewer for a model that reads fewer) was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// A `tokenizer.json` as the `tokenizers` crate reads it, without its decoder (prompts are
/// only encoded). That crate panics on some malformed files instead of returning an error
/// (its decoder and normalizer deserializers `expect`); a hostile file must be an error here:
/// the text is read as JSON first, the decoder dropped, and a panic left is caught.
fn parse(text: &str) -> std::result::Result<Tokenizer, String> {
    let mut json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(decoder) = json.get_mut("decoder") {
        *decoder = serde_json::Value::Null;
    }
    match std::panic::catch_unwind(move || serde_json::from_value::<Tokenizer>(json)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("the tokenizers crate could not read it".into()),
    }
}

impl T5Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`; errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut inner = parse(&text).map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        let eos = inner
            .token_to_id(EOS)
            .ok_or_else(|| Error::format(path, format!("the vocabulary has no end-of-sequence token '{EOS}'")))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::format(path, format!("cannot disable truncation: {e}")))?;
        Ok(T5Tokenizer { inner, path: path.to_path_buf(), eos, max_tokens: MAX_TOKENS })
    }

    /// Cuts prompts to `max_tokens` (EOS included; at most [`MAX_TOKENS`], at least 1): the
    /// rows of a transformer's learned null text, which must cover every prompt it reads.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens.clamp(1, MAX_TOKENS);
        self
    }

    /// Tokens a prompt is cut to, EOS included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Token ids of `text`: at most `max_tokens() − 1` content tokens (511 by default), then
    /// EOS. Errors name the tokenizer file.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::format(&self.path, format!("cannot tokenize the prompt: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        let truncated = ids.len() >= self.max_tokens;
        ids.truncate(self.max_tokens - 1);
        ids.push(self.eos);
        Ok(Encoded { ids, truncated })
    }
}

/// Trains a SentencePiece-style Unigram tokenizer on `texts` and returns its `tokenizer.json`.
///
/// The ids of T5's special tokens are T5's (`<pad>` 0, `</s>` 1, `<unk>` 2), so the file frames
/// prompts exactly as flan-t5's does. Text is NFKC-normalised and lower-cased: for a small
/// vocabulary learned from a few thousand captions, "Flag" and "flag" should be one word.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<String> {
    const OP: &str = "tokenizer training";
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::invalid(OP, &[texts.len()], format!("{what}: {e}"));
    if vocab_size <= SPECIALS.len() {
        let msg = format!("a vocabulary of {vocab_size} has no room beyond the {} special tokens", SPECIALS.len());
        return Err(Error::invalid(OP, &[texts.len()], msg));
    }
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(vocab_size as u32)
        .special_tokens(SPECIALS.iter().map(|t| AddedToken::from(*t, true)).collect())
        .unk_token(Some(SPECIALS[2].to_string()))
        .build()
        .map_err(|e| fail("settings", &e))?;
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer
        .with_normalizer(Some(Sequence::new(vec![NFKC.into(), Lowercase.into()])))
        .map_err(|e| fail("normaliser", &e))?;
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    tokenizer.with_pre_tokenizer(Some(metaspace.clone()));
    tokenizer.with_decoder(Some(metaspace));
    tokenizer.train(&mut trainer, texts.iter()).map_err(|e| fail("training", &e))?;
    tokenizer.to_string(true).map_err(|e| fail("serialising", &e))
}
