//! `patchclamp localize`: the Fedorenko-style localizer — units that respond more to one
//! stimulus set than another (Welch t), and the effect of ablating them versus random units.

use std::path::PathBuf;

use anyhow::bail;
use patchclamp_core::HookPoint;
use patchclamp_lab::analysis::neurons::{ablate_against_random, localize, pooled_units};
use patchclamp_report::plot::{LinePlot, Series};
use patchclamp_report::{Assembled, Page};
use serde_json::json;

use super::{progress, report, Common};

/// Arguments of `localize`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Stimuli expected to drive the units (e.g. sentences): a text or .jsonl file.
    #[arg(long)]
    stimuli: PathBuf,
    /// Control stimuli (e.g. non-word lists).
    #[arg(long)]
    control: PathBuf,
    /// Units recorded: resid_post (each block's output) or mlp_post (MLP neurons).
    #[arg(long, default_value = "resid_post")]
    units: String,
    /// Fraction of units selected (top by t).
    #[arg(long, default_value_t = 0.01)]
    fraction: f64,
    /// Prompts whose next-token loss is measured with the selected units ablated.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Random unit sets of the same size to compare with.
    #[arg(long, default_value_t = 10)]
    random_draws: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let cfg = &s.model.cfg;
    let (point, width): (fn(usize) -> HookPoint, usize) = match a.units.as_str() {
        "resid_post" => (HookPoint::ResidPost, cfg.d_model),
        "mlp_post" if cfg.has_mlp() => (HookPoint::MlpPost, cfg.d_mlp),
        "mlp_post" => bail!("--units mlp_post: this model has no MLPs"),
        other => bail!("unknown --units '{other}'; use resid_post or mlp_post"),
    };
    let toks = |p: &PathBuf| -> patchclamp_report::Result<Vec<Vec<u32>>> {
        Ok(s.read_prompts(p)?.into_iter().map(|p| p.tokens).collect())
    };
    let (sa, sb) = (toks(&a.stimuli)?, toks(&a.control)?);
    let xa = pooled_units(&s.model, &sa, point)?;
    let xb = pooled_units(&s.model, &sb, point)?;
    let loc = localize(&xa, &xb, width, a.fraction)?;
    let mut out = Page::default();
    let per_layer: Vec<f64> = (0..cfg.n_layers)
        .map(|l| loc.units.iter().filter(|u| u.0 == l).count() as f64)
        .collect();
    out.line(
        "selected_per_layer",
        "Selected units per layer",
        LinePlot {
            title: format!("top {:.1}% units by Welch t", 100.0 * a.fraction),
            x_label: "layer".into(),
            y_label: "units".into(),
            series: vec![Series {
                name: "selected".into(),
                xs: (0..cfg.n_layers).map(|l| l as f64).collect(),
                ys: per_layer,
                dashed: false,
            }],
            markers: vec![],
            hline: None,
            y_range: None,
        },
    );
    let mut summary = format!(
        "{} units selected of {} (t from {:.2} to {:.2})",
        loc.units.len(),
        cfg.n_layers * width,
        loc.t.first().copied().unwrap_or(0.0),
        loc.t.last().copied().unwrap_or(0.0)
    );
    let mut ablation = serde_json::Value::Null;
    if let Some(e) = &a.eval {
        let seqs = toks(e)?;
        let bar = progress(a.random_draws as u64, "random ablations")?;
        let ab = ablate_against_random(
            &s.model,
            &seqs,
            &loc.units,
            point,
            width,
            (a.random_draws, a.seed),
            || bar.inc(1),
        )?;
        bar.finish_and_clear();
        let (base, sel, random) = (ab.base_loss, ab.selected_increase, ab.random_increases);
        let mean = random.iter().sum::<f64>() / random.len().max(1) as f64;
        summary.push_str(&format!(
            "\nablating them raises the loss by {sel:.4} nats; random units of the same count: {mean:.4} (mean of {})",
            random.len()
        ));
        ablation = json!({"base_loss": base, "selected_increase": sel, "random_increases": random, "random_mean": mean});
    }
    out.tensors.push((
        "t".into(),
        vec![cfg.n_layers, width],
        loc.all_t.iter().flatten().map(|&x| x as f32).collect(),
    ));
    let outcome = Assembled {
        title: "Localizer".into(),
        result: json!({ "model": a.common.model, "units": a.units, "fraction": a.fraction, "localized": loc, "ablation": ablation }),
        page: out,
        summary,
    };
    report(&a.common, "localize", &s, &outcome)
}
