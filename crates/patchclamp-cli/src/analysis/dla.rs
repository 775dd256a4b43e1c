//! `patchclamp dla`: direct logit attribution to every head and MLP.

use patchclamp_lab::dla::{direct_logit_attribution, LogitDirection};
use serde_json::json;

use super::{layer_head_map, Common, Output, PromptArgs, Subject};

/// Arguments of `dla`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// The token whose logit is attributed (text of one token, or an id).
    #[arg(long)]
    target: String,
    /// Attribute `logit[target] − logit[baseline]` instead.
    #[arg(long)]
    baseline: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = Subject::load(&a.common)?;
    let prompts = s.prompts(&a.prompts)?;
    let dir = LogitDirection {
        target: s.token(&a.target)?,
        baseline: a.baseline.as_deref().map(|b| s.token(b)).transpose()?,
    };
    let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let d = direct_logit_attribution(&s.model, &toks, dir)?;
    let what = match &a.baseline {
        Some(b) => format!("logit[{}] - logit[{b}]", a.target),
        None => format!("logit[{}]", a.target),
    };
    // Heads, and the MLPs as an extra column.
    let mut grid = d.heads.clone();
    if !d.mlps.is_empty() {
        for (row, m) in grid.iter_mut().zip(&d.mlps) {
            row.push(*m);
        }
    }
    let mut heat = layer_head_map(
        &format!("direct logit attribution of {what}"),
        &grid,
        "mean contribution",
    );
    if !d.mlps.is_empty() {
        *heat.col_labels.last_mut().expect("a column") = "MLP".into();
    }
    let mut out = Output::new("Direct logit attribution", json!({}));
    out.heatmap(
        "dla",
        "Mean over prompts of each head's (and MLP's) direct contribution, final-norm scale frozen",
        heat,
    );
    let mean_total = d.total.iter().sum::<f64>() / d.total.len() as f64;
    let mut ranked: Vec<(usize, f64)> = (0..d.labels.len())
        .map(|k| {
            (
                k,
                d.components.iter().map(|c| c[k]).sum::<f64>() / d.components.len() as f64,
            )
        })
        .collect();
    ranked.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    let mut summary = format!(
        "{what}: mean {mean_total:.4} over {} prompts; largest parts:",
        prompts.len()
    );
    for (k, v) in ranked.iter().take(6) {
        summary.push_str(&format!(" {} {v:+.3};", d.labels[*k]));
    }
    out.result = json!({
        "model": a.common.model, "target": a.target, "baseline": a.baseline,
        "prompts": prompts.iter().map(|p| &p.text).collect::<Vec<_>>(), "dla": d,
    });
    out.write(&a.common, &summary)
}
