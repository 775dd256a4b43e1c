//! `patchclamp run MODEL --prompt TEXT`: next-token predictions and an optional activation cache.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use patchclamp_core::{Hooks, Selector};
use patchclamp_lab::analysis::predict::next_tokens;
use patchclamp_report::outcomes::{CacheWritten, RunOutcome};
use patchclamp_report::Vocab;

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder or a cached repo id.
    model: String,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Record hook points matching PATTERN (TransformerLens names, `*` globs; `'*'` = every point).
    #[arg(long, value_name = "PATTERN")]
    cache: Vec<String>,
    /// Keep only these positions of cached activations (comma-separated; negative from the end).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    positions: Option<Vec<i64>>,
    /// Where to write the cache: one safetensors file keyed by hook name, plus `tokens`.
    #[arg(long, value_name = "FILE.safetensors")]
    out: Option<PathBuf>,
    /// How many next-token predictions to show.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Apply the interventions in FILE (TOML `[[interventions]]` tables, or a JSON list).
    #[arg(long, value_name = "FILE")]
    intervene: Option<PathBuf>,
    /// Prepend the BOS token (default: the model's TransformerLens default).
    #[arg(long)]
    prepend_bos: Option<bool>,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    processed: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if !a.cache.is_empty() && a.out.is_none() {
        bail!("--cache needs --out FILE.safetensors to write the activations to");
    }
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let m = crate::load_model(&a.model, a.processed)?;
    let tok = m.tokenizer()?;
    let cfg = &m.model.cfg;
    let ids = tok.prompt(cfg, &a.prompt, a.prepend_bos)?;
    let dev = m.model.device().clone();

    let mut hooks = Hooks::none();
    if let Some(path) = &a.intervene {
        hooks = hooks.intervene_all(read_interventions(path)?);
    }
    for pattern in &a.cache {
        hooks =
            hooks.capture(Selector::parse(pattern).with_context(|| format!("--cache {pattern}"))?);
    }
    if let Some(pos) = &a.positions {
        hooks = hooks.at_positions(pos.clone());
    }
    let top = next_tokens(&m.model, &ids, &mut hooks, a.top_k)?;
    let cache = hooks.take_cache();
    let written = match &a.out {
        Some(out) => {
            let tokens = Tensor::new(ids.as_slice(), &dev)?
                .to_dtype(DType::I64)?
                .unsqueeze(0)?;
            cache
                .save_safetensors(out, &[("tokens", tokens)])
                .with_context(|| format!("writing {}", out.display()))?;
            Some(CacheWritten {
                path: out.clone(),
                points: cache.len(),
                bytes: cache.nbytes(),
            })
        }
        None => None,
    };
    let outcome = RunOutcome::new(ids, top, &Vocab::new(Some(tok)), written);
    if a.json {
        crate::print(&serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    let ids = &outcome.tokens;
    crate::print(&format!("{} tokens: {:?}", ids.len(), ids));
    crate::print(&format!("next-token predictions after {:?}:", a.prompt));
    crate::print(&format!(
        "  {:>4}  {:>7}  {:>9}  {:>8}  token",
        "rank", "id", "logit", "prob"
    ));
    for (r, p) in outcome.top_k.iter().enumerate() {
        crate::print(&format!(
            "  {:>4}  {:>7}  {:>9.4}  {:>8.4}  {:?}",
            r + 1,
            p.id,
            p.logit,
            p.prob,
            p.token
        ));
    }
    if let Some(c) = &outcome.cache {
        crate::print(&format!(
            "cached {} hook points ({:.1} KiB) to {}",
            c.points,
            c.bytes as f64 / 1024.0,
            c.path.display()
        ));
    }
    Ok(())
}

/// Interventions from a TOML file (`[[interventions]]` tables) or a JSON list.
pub fn read_interventions(
    path: &std::path::Path,
) -> anyhow::Result<Vec<patchclamp_core::Intervention>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        interventions: Vec<patchclamp_core::Intervention>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let list = if is_json {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        let f: File = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " "))
        })?;
        f.interventions
    };
    Ok(list)
}
