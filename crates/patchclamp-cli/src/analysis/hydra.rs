//! `patchclamp hydra`: direct versus total effects of ablating each layer, and who compensates.

use patchclamp_lab::dla::LogitDirection;
use patchclamp_lab::hydra::hydra;
use serde_json::json;

use super::{Common, Output, Subject};
use crate::plot::line::{LinePlot, Series};
use crate::plot::Heatmap;

/// Arguments of `hydra`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// The prompt (repeatable; each needs a --source of the same length).
    #[arg(long = "prompt", required = true)]
    prompt: Vec<String>,
    /// The prompt whose layer outputs replace the clean ones (resample ablation).
    #[arg(long = "source", required = true)]
    source: Vec<String>,
    /// The token whose logit is measured.
    #[arg(long)]
    target: String,
    /// Measure `logit[target] − logit[baseline]` instead.
    #[arg(long)]
    baseline: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = Subject::load(&a.common)?;
    let enc = |v: &[String]| {
        v.iter()
            .map(|p| s.encode(p))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (clean, source) = (enc(&a.prompt)?, enc(&a.source)?);
    let dir = LogitDirection {
        target: s.token(&a.target)?,
        baseline: a.baseline.as_deref().map(|b| s.token(b)).transpose()?,
    };
    let h = hydra(&s.model, &clean, &source, dir)?;
    let mut out = Output::new("Hydra effect", json!({}));
    let xs: Vec<f64> = (0..h.labels.len()).map(|i| i as f64).collect();
    out.line("effects", "Direct effect (frozen unembedding) vs total effect (downstream recomputed) of resample-ablating each layer output, in forward order", LinePlot {
        title: "direct vs total effect".into(),
        x_label: "layer output (attn, mlp, … in order)".into(),
        y_label: "logit drop".into(),
        series: vec![
            Series { name: "direct".into(), xs: xs.clone(), ys: h.direct.clone(), dashed: false },
            Series { name: "total".into(), xs, ys: h.total.clone(), dashed: false },
        ],
        markers: vec![],
        hline: Some((0.0, String::new())),
        y_range: None,
    });
    let n = h.labels.len();
    let short: Vec<String> = h
        .labels
        .iter()
        .map(|l| {
            l.replace("blocks.", "")
                .replace(".hook_", " ")
                .replace("_out", "")
        })
        .collect();
    out.heatmap(
        "compensation",
        "Change of each downstream layer's direct effect when a layer is ablated (row)",
        Heatmap {
            title: "compensation".into(),
            values: h.compensation.iter().flatten().map(|&x| x as f32).collect(),
            rows: n,
            cols: n,
            row_labels: short.clone(),
            col_labels: short,
            x_label: "downstream layer output".into(),
            y_label: "ablated".into(),
            colorbar_label: "change of direct effect".into(),
        },
    );
    let (i, _) = h
        .direct
        .iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |b, (i, &d)| if d.abs() > b.1 { (i, d.abs()) } else { b },
        );
    let summary = format!(
        "largest direct effect: {} DE {:.3}, TE {:.3} (compensation {:.3})",
        h.labels[i],
        h.direct[i],
        h.total[i],
        h.direct[i] - h.total[i]
    );
    out.result =
        json!({ "model": a.common.model, "prompts": a.prompt, "sources": a.source, "hydra": h });
    out.write(&a.common, &summary)
}
