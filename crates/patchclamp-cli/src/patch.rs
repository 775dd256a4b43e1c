//! `patchclamp patch`: an activation-patching sweep with JSON, safetensors and heatmaps.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_core::Tokenizer;
use patchclamp_lab::attribution::attribute;
use patchclamp_lab::patching::{default_batch, sweep, Direction, Metric, PatchingConfig, Site};
use serde_json::json;

use crate::plot::Heatmap;
use crate::report;

/// Arguments of `patch`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder or a cached repo id.
    model: String,
    /// The clean prompt (the model gets the answer right).
    #[arg(long)]
    clean: String,
    /// The corrupted prompt (same number of tokens, e.g. a swapped name).
    #[arg(long)]
    corrupted: String,
    /// The correct next token (its text, e.g. " Mary"; must be one token).
    #[arg(long)]
    answer: String,
    /// The competing token for logit differences.
    #[arg(long)]
    wrong: Option<String>,
    /// What to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out (per position) or
    /// z, q, k, v, pattern (per head, all positions).
    #[arg(long, default_value = "resid_pre")]
    point: String,
    /// Patch corrupted values into the clean run (necessity) instead of the reverse.
    #[arg(long)]
    noising: bool,
    /// logit-diff (needs --wrong), prob, logprob or kl.
    #[arg(long, default_value = "logit-diff")]
    metric: String,
    /// Variants per forward pass (default: about 4096 token rows per forward).
    #[arg(long)]
    batch: Option<usize>,
    /// Patch this many consecutive layers around each layer together (sliding window).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    processed: bool,
    /// Output folder (result.json, result.safetensors, heatmap.svg, heatmap.png).
    #[arg(long)]
    out: PathBuf,
    /// Print the JSON result to stdout too.
    #[arg(long)]
    json: bool,
}

/// The id of `text` if it is exactly one token.
fn one_token(tok: &Tokenizer, text: &str, what: &str) -> anyhow::Result<u32> {
    let ids = tok.encode(text)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => bail!("--{what} {text:?} is {} tokens {ids:?}; it must be exactly one (mind the leading space)", ids.len()),
    }
}

/// How the sweep is computed.
#[derive(Clone, Copy, PartialEq)]
pub enum Method {
    /// One patched forward per variant (batched).
    Exact,
    /// First-order estimate from two forwards and one backward.
    Attribution,
}

pub fn main(a: Args, method: Method) -> anyhow::Result<()> {
    let site: Site = serde_json::from_value(json!(a.point)).map_err(|_| {
        anyhow::anyhow!("unknown --point '{}'; use resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern", a.point)
    })?;
    let m = crate::load_model(&a.model, a.processed)?;
    let tok = m.tokenizer()?;
    let cfg = &m.model.cfg;
    let clean = tok.prompt(cfg, &a.clean, None).context("--clean")?;
    let corrupt = tok.prompt(cfg, &a.corrupted, None).context("--corrupted")?;
    let answer = one_token(tok, &a.answer, "answer")?;
    let metric = match a.metric.as_str() {
        "logit-diff" => {
            let Some(w) = &a.wrong else {
                bail!("--metric logit-diff needs --wrong TOKEN")
            };
            Metric::LogitDiff {
                answer,
                wrong: one_token(tok, w, "wrong")?,
            }
        }
        "prob" => Metric::Prob { answer },
        "logprob" => Metric::LogProb { answer },
        "kl" => Metric::Kl,
        other => bail!("unknown --metric '{other}'; use logit-diff, prob, logprob or kl"),
    };
    let pc = PatchingConfig {
        site,
        direction: if a.noising {
            Direction::Noise
        } else {
            Direction::Denoise
        },
        metric,
        batch: a.batch.unwrap_or(default_batch(clean.len())),
        window: a.window,
    };
    let r = match method {
        Method::Exact => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template(
                "patching {bar:30} {pos}/{len} variants {elapsed}",
            )?);
            let r = sweep(&m.model, &clean, &corrupt, &pc, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            r
        }
        Method::Attribution => attribute(&m.model, &clean, &corrupt, site, pc.direction, metric)?,
    };
    let method_name = match method {
        Method::Exact => "patching",
        Method::Attribution => "attribution patching",
    };

    let token_labels: Vec<String> = clean
        .iter()
        .zip(&corrupt)
        .enumerate()
        .map(|(i, (&c, &k))| {
            let c = tok.decode(&[c]).unwrap_or_default();
            let k = tok.decode(&[k]).unwrap_or_default();
            if c == k {
                format!("{i}:{c}")
            } else {
                format!("{i}:{c}/{k}")
            }
        })
        .collect();
    let col_labels: Vec<String> = if site.per_head() {
        (0..r.n_cols).map(|h| format!("H{h}")).collect()
    } else {
        token_labels.clone()
    };
    let row_labels: Vec<String> = (0..r.n_layers).map(|l| format!("L{l}")).collect();

    let result = json!({
        "model": a.model, "clean": a.clean, "corrupted": a.corrupted,
        "clean_tokens": clean, "corrupted_tokens": corrupt, "token_labels": token_labels,
        "method": method_name, "config": pc, "n_layers": r.n_layers, "n_cols": r.n_cols, "col_labels": col_labels,
        "clean_metric": r.clean_metric, "corrupt_metric": r.corrupt_metric,
        "values": r.values, "normalized": r.normalized, "unchanged": r.unchanged,
    });
    let heat = Heatmap {
        title: format!(
            "{} {method_name} of {}, metric {}",
            if a.noising { "noising" } else { "denoising" },
            a.point,
            a.metric
        ),
        values: r.normalized.clone(),
        rows: r.n_layers,
        cols: r.n_cols,
        row_labels,
        col_labels,
        x_label: if site.per_head() {
            "head".into()
        } else {
            "position (clean/corrupted token)".into()
        },
        y_label: "layer".into(),
        colorbar_label: "normalised recovery".into(),
    };
    let text = report::write(
        &a.out,
        &result,
        &[("values", &r.values), ("normalized", &r.normalized)],
        &heat,
    )?;
    if a.json {
        println!("{text}");
    } else {
        println!(
            "clean {:.4}, corrupted {:.4}; {} layers × {} {}; wrote {}/{}",
            r.clean_metric,
            r.corrupt_metric,
            r.n_layers,
            r.n_cols,
            if site.per_head() {
                "heads"
            } else {
                "positions"
            },
            a.out.display(),
            report::FILES
        );
    }
    Ok(())
}
