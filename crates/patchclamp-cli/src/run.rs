//! `patchclamp run MODEL --prompt TEXT`: next-token predictions and an optional activation cache.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor, D};
use patchclamp_core::{Hooks, Input, Selector};
use serde_json::json;

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
    let input = Input::single(&ids, &dev)?;

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
    let logits = m.model.forward(&input, &mut hooks)?;
    patchclamp_core::model::ensure_finite(&logits, "the logits")?;

    let last = logits.squeeze(0)?.get(ids.len() - 1)?; // [V]
    let probs = candle_nn::ops::softmax_last_dim(&last.unsqueeze(0)?)?.squeeze(0)?;
    let k = a.top_k.min(cfg.d_vocab);
    let order = last
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .to_vec1::<u32>()?;
    let (logit_v, prob_v) = (last.to_vec1::<f32>()?, probs.to_vec1::<f32>()?);
    let top: Vec<(u32, String, f32, f32)> = order
        .iter()
        .map(|&i| {
            Ok((
                i,
                tok.decode(&[i])?,
                logit_v[i as usize],
                prob_v[i as usize],
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    let cache = hooks.take_cache();
    if let Some(out) = &a.out {
        let tokens = Tensor::new(ids.as_slice(), &dev)?
            .to_dtype(DType::I64)?
            .unsqueeze(0)?;
        cache
            .save_safetensors(out, &[("tokens", tokens)])
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        let out = json!({
            "tokens": ids,
            "token_strs": ids.iter().map(|&i| tok.decode(&[i])).collect::<Result<Vec<_>, _>>()?,
            "top_k": top.iter().map(|(i, s, l, p)| json!({"id": i, "token": s, "logit": l, "prob": p})).collect::<Vec<_>>(),
            "cache": a.out.as_ref().map(|p| json!({"path": p, "points": cache.len(), "bytes": cache.nbytes()})),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} tokens: {:?}", ids.len(), ids);
    println!("next-token predictions after {:?}:", a.prompt);
    println!(
        "  {:>4}  {:>7}  {:>9}  {:>8}  token",
        "rank", "id", "logit", "prob"
    );
    for (r, (i, s, l, p)) in top.iter().enumerate() {
        println!("  {:>4}  {:>7}  {:>9.4}  {:>8.4}  {:?}", r + 1, i, l, p, s);
    }
    if let Some(out) = &a.out {
        println!(
            "cached {} hook points ({:.1} KiB) to {}",
            cache.len(),
            cache.nbytes() as f64 / 1024.0,
            out.display()
        );
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
