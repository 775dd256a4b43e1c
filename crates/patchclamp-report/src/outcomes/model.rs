//! What `run` and `inspect` print: a prompt's predictions, and a model's hook points.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use patchclamp_core::{ActivationCache, Config};
use patchclamp_lab::analysis::predict::Prediction;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::vocab::Vocab;

/// The file `run --cache` writes, checked before the forward pass: never a folder, never inside
/// the model's own folder, and never a file patchclamp did not write (such as the model's
/// `model.safetensors` copied elsewhere).
pub struct CacheTarget {
    path: PathBuf,
}

impl CacheTarget {
    /// Checks that `path` may receive a cache of a model loaded from `model_home`.
    pub fn check(path: &Path, model_home: &Path) -> Result<CacheTarget> {
        if path.is_dir() {
            return Err(Error::Input(format!(
                "--out {} is a folder; run writes one .safetensors file",
                path.display()
            )));
        }
        crate::run_dir::outside_model(path, model_home)?;
        if path.exists() && !patchclamp_core::hooks::is_cache_file(path) {
            return Err(Error::Input(format!(
                "--out {} exists and is not an activation cache patchclamp wrote; remove it or choose another path",
                path.display()
            )));
        }
        Ok(CacheTarget {
            path: path.to_path_buf(),
        })
    }

    /// Writes `cache` and the prompt's `tokens` (atomically).
    pub fn write(&self, cache: &ActivationCache, tokens: Tensor) -> Result<CacheWritten> {
        cache
            .save_safetensors(&self.path, &[("tokens", tokens)])
            .map_err(|e| match e {
                patchclamp_core::Error::Write { source, .. } => Error::Write {
                    path: self.path.clone(),
                    source,
                },
                e => Error::Core(e),
            })?;
        Ok(CacheWritten {
            path: self.path.clone(),
            points: cache.len(),
            bytes: cache.nbytes(),
        })
    }
}

/// A predicted token with its text.
#[derive(Serialize)]
pub struct ShownPrediction {
    pub id: u32,
    pub token: String,
    pub logit: f32,
    pub prob: f32,
}

/// Where `run --cache` wrote the activations.
#[derive(Serialize)]
pub struct CacheWritten {
    pub path: PathBuf,
    pub points: usize,
    pub bytes: usize,
}

/// A prompt's tokens and the model's next-token predictions after it.
#[derive(Serialize)]
pub struct RunOutcome {
    pub tokens: Vec<u32>,
    pub token_strs: Vec<String>,
    pub top_k: Vec<ShownPrediction>,
    pub cache: Option<CacheWritten>,
}

impl RunOutcome {
    /// The outcome of predicting after `tokens`.
    pub fn new(
        tokens: Vec<u32>,
        top: Vec<Prediction>,
        vocab: &Vocab,
        cache: Option<CacheWritten>,
    ) -> Self {
        RunOutcome {
            token_strs: tokens.iter().map(|&t| vocab.show(t)).collect(),
            tokens,
            top_k: top
                .into_iter()
                .map(|p| ShownPrediction {
                    id: p.id,
                    token: vocab.show(p.id),
                    logit: p.logit,
                    prob: p.prob,
                })
                .collect(),
            cache,
        }
    }
}

/// A hook point with its shape (`batch` and `pos` named, model dimensions as numbers).
#[derive(Serialize)]
pub struct PointShape {
    pub name: String,
    pub shape: Vec<String>,
}

/// A model's folder, config, size and every hook point.
#[derive(Serialize)]
pub struct InspectOutcome<'a> {
    pub dir: &'a std::path::Path,
    pub config: &'a Config,
    pub n_params: usize,
    pub tokenizer: Option<&'a std::path::Path>,
    pub hook_points: Vec<PointShape>,
}

/// Every hook point of `cfg`, with `splices`' SAE points, and its symbolic shape.
pub fn hook_point_shapes(cfg: &Config, splices: &[patchclamp_core::Splice]) -> Vec<PointShape> {
    // Sizes no model dimension takes, so they can be told apart in the shape.
    const BATCH: usize = 1_000_001;
    const POS: usize = 1_000_003;
    let hooks = patchclamp_core::Hooks::none().splice_all(splices.iter().cloned());
    hooks
        .points(cfg)
        .into_iter()
        .map(|p| PointShape {
            name: p.to_string(),
            shape: hooks
                .shape(p, cfg, BATCH, POS)
                .iter()
                .enumerate()
                .map(|(i, &d)| match d {
                    BATCH => "batch".to_string(),
                    POS => "pos".to_string(),
                    // An expert's rows are the tokens routed to it; the others' every token.
                    _ if i == 0 && matches!(p, patchclamp_core::HookPoint::Expert(..)) => {
                        "routed".to_string()
                    }
                    n if n == BATCH * POS => "batch·pos".to_string(),
                    n => n.to_string(),
                })
                .collect(),
        })
        .collect()
}

/// One prompt's generation as `generate --json` prints it.
#[derive(Serialize)]
pub struct ShownGeneration {
    /// The prompt as given (text, or the ids written out).
    pub prompt: String,
    /// The prompt's ids, BOS included when one was added.
    pub prompt_tokens: Vec<u32>,
    /// The generated ids only.
    pub tokens: Vec<u32>,
    /// The generated tokens as text.
    pub text: String,
    /// Why it ended.
    pub stop: patchclamp_core::generate::Stop,
}

/// What `generate` prints: one generation per prompt, in order.
#[derive(Serialize)]
pub struct GenerateOutcome {
    pub generations: Vec<ShownGeneration>,
}
