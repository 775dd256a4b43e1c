//! The tokenizer: Hugging Face `tokenizer.json`, with TransformerLens's BOS convention.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::Config;

/// A loaded `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::NotFound {
                what: "tokenizer",
                path: path.into(),
                hint: String::new(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, without any special tokens the tokenizer would add.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of an exact token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Prompt ids as TransformerLens makes them: BOS first when `prepend_bos` (default: the
    /// model's TL default). An empty prompt is an error.
    pub fn prompt(&self, cfg: &Config, text: &str, prepend_bos: Option<bool>) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        let mut ids = self.encode(text)?;
        if prepend_bos.unwrap_or(cfg.default_prepend_bos) {
            let bos = cfg.bos_token_id.ok_or_else(|| {
                Error::Input("prepend_bos is on but the model config has no bos_token_id".into())
            })?;
            ids.insert(0, bos);
        }
        if ids.is_empty() {
            return Err(Error::Input(format!(
                "the prompt {text:?} produced no tokens"
            )));
        }
        Ok(ids)
    }
}
