//! What `run` and `inspect` print: a prompt's predictions, and a model's hook points.

use std::path::PathBuf;

use patchclamp_core::{Config, HookPoint};
use patchclamp_lab::analysis::predict::Prediction;
use serde::Serialize;

use crate::vocab::Vocab;

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

/// Every hook point of `cfg` with its symbolic shape.
pub fn hook_point_shapes(cfg: &Config) -> Vec<PointShape> {
    // Sizes no model dimension takes, so they can be told apart in the shape.
    const BATCH: usize = 1_000_001;
    const POS: usize = 1_000_003;
    HookPoint::all(cfg)
        .into_iter()
        .map(|p| PointShape {
            name: p.to_string(),
            shape: p
                .shape(cfg, BATCH, POS)
                .iter()
                .map(|&d| match d {
                    BATCH => "batch".to_string(),
                    POS => "pos".to_string(),
                    n => n.to_string(),
                })
                .collect(),
        })
        .collect()
}
