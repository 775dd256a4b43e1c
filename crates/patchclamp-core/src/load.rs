//! Loading a model from disk: config, memory-mapped weights (upcast to f32), tokenizer.

use candle_core::Device;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::hub::{locate, ModelFiles};
use crate::model::{arch, Checkpoint, Config, Model};
use crate::tokenizer::Tokenizer;

/// A model with the tokenizer and files it came from.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    pub files: ModelFiles,
}

impl Loaded {
    /// The tokenizer, or an error saying where it was expected.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::NotFound {
            what: "tokenizer",
            path: self.files.dir.join("tokenizer.json"),
            hint: " (pass token ids instead, or add the model's tokenizer.json)".into(),
        })
    }
}

/// Loads the model `spec` names (a folder or a cached repo id) onto `device`.
pub fn load(spec: &str, device: &Device) -> Result<Loaded> {
    let files = locate(spec)?;
    let cfg = read_config(&files.config)?;
    let ckpt = Checkpoint::open(&files.weights, device)?;
    ckpt.check_holds(&cfg)
        .map_err(|e| Error::config(&files.config, e.to_string()))?;
    let weights = arch::weights_from_hf(&cfg, &ckpt)?;
    ckpt.finish()?;
    let model = Model::new(cfg, weights)?;
    model.check_finite()?;
    let tokenizer = match &files.tokenizer {
        Some(p) => Some(Tokenizer::from_file(p)?),
        None => None,
    };
    tracing::debug!(dir = %files.dir.display(), family = %model.cfg.family, "loaded model");
    Ok(Loaded {
        model,
        tokenizer,
        files,
    })
}

/// Parses `config.json` into the canonical config.
pub fn read_config(path: &std::path::Path) -> Result<Config> {
    let text = crate::fsutil::read_text(path, crate::fsutil::SPEC_LIMIT, "config files")?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
    arch::config_from_hf(&json, path)
}
