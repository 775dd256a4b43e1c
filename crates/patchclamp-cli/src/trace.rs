//! `patchclamp trace`: ROME causal tracing with JSON, safetensors and a heatmap.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::patching::Metric;
use patchclamp_lab::tracing::{trace, TraceConfig, TraceKind};
use serde_json::json;

use crate::plot::Heatmap;
use crate::report;

/// Arguments of `trace`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder or a cached repo id.
    model: String,
    /// The factual prompt.
    #[arg(long)]
    prompt: String,
    /// The subject's text inside the prompt (its tokens get the noise).
    #[arg(long, conflicts_with = "subject_positions")]
    subject: Option<String>,
    /// Or the subject's token positions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    subject_positions: Option<Vec<usize>>,
    /// The expected next token (one token; its probability is measured).
    #[arg(long)]
    answer: String,
    /// What is restored: hidden (resid_post), mlp (mlp_out) or attn (attn_out).
    #[arg(long, default_value = "hidden")]
    kind: String,
    /// Layers restored together (default: 1 for hidden, 10 for mlp and attn, as in ROME).
    #[arg(long)]
    window: Option<usize>,
    /// Noise samples averaged over.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Noise standard deviation (default: 3 × the std of the token embeddings).
    #[arg(long)]
    noise: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Freeze the MLP outputs after each restored window at their corrupted values.
    #[arg(long)]
    severed: bool,
    /// Variants per forward pass (default: about 4096 token rows per forward).
    #[arg(long)]
    batch: Option<usize>,
    /// Output folder (result.json, result.safetensors, heatmap.svg, heatmap.png).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

/// Positions where `needle` occurs as a contiguous run inside `hay`.
fn find_run(hay: &[u32], needle: &[u32]) -> Option<Vec<usize>> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .find(|&i| &hay[i..i + needle.len()] == needle)
        .map(|i| (i..i + needle.len()).collect())
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let kind = match a.kind.as_str() {
        "hidden" => TraceKind::Hidden,
        "mlp" => TraceKind::Mlp,
        "attn" => TraceKind::Attn,
        other => bail!("unknown --kind '{other}'; use hidden, mlp or attn"),
    };
    let m = crate::load_model(&a.model, false)?;
    let tok = m.tokenizer()?;
    let ids = tok.prompt(&m.model.cfg, &a.prompt, None)?;
    let subject = match (&a.subject, &a.subject_positions) {
        (_, Some(p)) => p.clone(),
        (Some(text), None) => {
            let with_space = tok.encode(&format!(" {text}"))?;
            let bare = tok.encode(text)?;
            find_run(&ids, &with_space)
                .or_else(|| find_run(&ids, &bare))
                .with_context(|| format!("the subject {text:?} (tokens {bare:?}) does not occur in the prompt's tokens {ids:?}"))?
        }
        (None, None) => bail!("give --subject TEXT or --subject-positions P,Q"),
    };
    let answer = match tok.encode(&a.answer)?.as_slice() {
        [id] => *id,
        other => bail!(
            "--answer {:?} is {} tokens {other:?}; it must be exactly one",
            a.answer,
            other.len()
        ),
    };
    let cfg = TraceConfig {
        subject: subject.clone(),
        kind,
        window: a
            .window
            .unwrap_or(if kind == TraceKind::Hidden { 1 } else { 10 }),
        samples: a.samples,
        noise: a.noise,
        seed: a.seed,
        metric: Metric::Prob { answer },
        severed: a.severed,
        batch: a
            .batch
            .unwrap_or(patchclamp_lab::patching::default_batch(ids.len())),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "tracing {bar:30} {pos}/{len} runs {elapsed}",
    )?);
    let r = trace(&m.model, &ids, &cfg, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();

    let labels: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let s = tok.decode(&[t]).unwrap_or_default();
            if subject.contains(&i) {
                format!("{i}:{s}*")
            } else {
                format!("{i}:{s}")
            }
        })
        .collect();
    let result = json!({
        "model": a.model, "prompt": a.prompt, "tokens": ids, "token_labels": labels,
        "config": r.config, "noise": r.noise, "clean_metric": r.clean_metric,
        "corrupt_metric": r.corrupt_metric, "total_effect": r.total_effect,
        "n_layers": r.n_layers, "n_positions": r.n_positions,
        "restored": r.restored, "indirect_effect": r.indirect_effect,
    });
    let heat = Heatmap {
        title: format!(
            "causal trace ({}, window {}{}): indirect effect on P(answer)",
            a.kind,
            cfg.window,
            if a.severed { ", severed" } else { "" }
        ),
        values: r.indirect_effect.clone(),
        rows: r.n_layers,
        cols: r.n_positions,
        row_labels: (0..r.n_layers).map(|l| format!("L{l}")).collect(),
        col_labels: labels,
        x_label: "position (* = subject, noised)".into(),
        y_label: "layer".into(),
        colorbar_label: "indirect effect".into(),
    };
    let text = report::write(
        &a.out,
        &result,
        &[
            ("restored", &r.restored),
            ("indirect_effect", &r.indirect_effect),
        ],
        &heat,
    )?;
    if a.json {
        println!("{text}");
    } else {
        println!(
            "P(answer): clean {:.4}, corrupted {:.4} (total effect {:.4}, noise ν = {:.3}); wrote {}/{}",
            r.clean_metric, r.corrupt_metric, r.total_effect, r.noise, a.out.display(), report::FILES
        );
    }
    Ok(())
}
