//! `patchclamp run MODEL --prompt TEXT`: next-token predictions and an optional activation cache.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use patchclamp_core::{Hooks, Selector};
use patchclamp_lab::analysis::predict::next_tokens;
use patchclamp_report::outcomes::{CacheTarget, RunOutcome};

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder or a cached repo id.
    model: String,
    /// The prompt (token ids separated by spaces for a model without a tokenizer).
    #[arg(long, required_unless_present = "tokens", conflicts_with = "tokens")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (no BOS is added).
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,…")]
    tokens: Option<Vec<u32>>,
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
    #[command(flatten)]
    sae: crate::sae::SaeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if !a.cache.is_empty() && a.out.is_none() {
        bail!("--cache needs --out FILE.safetensors to write the activations to");
    }
    if a.cache.is_empty() && (a.out.is_some() || a.positions.is_some()) {
        bail!("--out and --positions apply to the activation cache; add --cache PATTERN");
    }
    if a.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if a.tokens.is_some() && a.prepend_bos.is_some() {
        bail!("--prepend-bos applies to --prompt; --tokens are used exactly as given");
    }
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    let target = match &a.out {
        Some(out) => Some(CacheTarget::check(out, &subject.home)?),
        None => None,
    };
    let ids = match (&a.prompt, &a.tokens) {
        (_, Some(ids)) => subject.ids(ids)?,
        (Some(text), None) => subject.encode_with(text, a.prepend_bos)?,
        (None, None) => unreachable!("clap requires --prompt or --tokens"),
    };
    let model = &subject.model;
    let dev = model.device().clone();

    let mut hooks = Hooks::none().splice_all(a.sae.splices(&model.cfg)?);
    if let Some(path) = &a.intervene {
        let list = read_interventions(path)?;
        for iv in &list {
            iv.validate(&model.cfg, 1, ids.len(), &Default::default())
                .with_context(|| path.display().to_string())?;
        }
        // Inference runs at step 0: a spec whose windows all start later changes nothing.
        if !list.is_empty() && list.iter().all(|iv| !iv.when.active(0)) {
            tracing::warn!(
                "no intervention in {} is active at step 0 (inference), so none acts; drop their `when` windows to apply them",
                path.display()
            );
        }
        hooks = hooks.intervene_all(list);
    }
    for pattern in &a.cache {
        hooks =
            hooks.capture(Selector::parse(pattern).with_context(|| format!("--cache {pattern}"))?);
    }
    if let Some(pos) = &a.positions {
        hooks = hooks.at_positions(pos.clone());
    }
    let top = next_tokens(model, &ids, &mut hooks, a.top_k)?;
    let cache = hooks.take_cache();
    let written = match target {
        Some(t) => {
            let tokens = Tensor::new(ids.as_slice(), &dev)?
                .to_dtype(DType::I64)?
                .unsqueeze(0)?;
            Some(t.write(&cache, tokens)?)
        }
        None => None,
    };
    let outcome = RunOutcome::new(ids, top, &subject.vocab(), written);
    if a.json {
        crate::print(&serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    let ids = &outcome.tokens;
    crate::print(&format!("{} tokens: {:?}", ids.len(), ids));
    let prompt = a
        .prompt
        .clone()
        .unwrap_or_else(|| format!("{:?}", outcome.tokens));
    crate::print(&format!("next-token predictions after {prompt:?}:"));
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
    let text = patchclamp_report::read_spec(path)?;
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
