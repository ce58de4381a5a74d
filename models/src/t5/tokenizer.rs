//! The flan-t5 tokenizer: its `tokenizer.json` (SentencePiece Unigram) through the
//! `tokenizers` crate, with T5's framing applied here: the content ids, truncated to 511, then
//! EOS `</s>`; no BOS, no padding.
//!
//! The framing is ours rather than the file's post-processor so that EOS is appended even when
//! a `tokenizer.json` lacks one, and so that truncation is exactly the reference's (content
//! first cut to 511 tokens, then EOS), whatever truncation or padding the file configures.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use infinity_runtime::{Error, Result};
use tokenizers::Tokenizer;

/// The encoder's context: 511 content tokens and EOS.
pub const MAX_TOKENS: usize = 512;
const EOS: &str = "</s>";

pub struct T5Tokenizer {
    inner: Tokenizer,
    path: PathBuf,
    eos: u32,
}

/// One prompt's token ids, EOS last; `truncated` when content past 511 tokens was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

impl T5Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`; errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut inner =
            Tokenizer::from_str(&text).map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        let eos = inner
            .token_to_id(EOS)
            .ok_or_else(|| Error::format(path, format!("the vocabulary has no end-of-sequence token '{EOS}'")))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::format(path, format!("cannot disable truncation: {e}")))?;
        Ok(T5Tokenizer { inner, path: path.to_path_buf(), eos })
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Token ids of `text`: at most 511 content tokens, then EOS. Errors name the tokenizer file.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::format(&self.path, format!("cannot tokenize the prompt: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        let truncated = ids.len() >= MAX_TOKENS;
        ids.truncate(MAX_TOKENS - 1);
        ids.push(self.eos);
        Ok(Encoded { ids, truncated })
    }
}
