//! `patchclamp localize`: the Fedorenko-style localizer — units that respond more to one
//! stimulus set than another (Welch t), and the effect of ablating them versus random units.

use std::path::PathBuf;

use anyhow::bail;
use patchclamp_core::HookPoint;
use patchclamp_lab::analysis::neurons::{ablate_against_random, localize, pooled_units};
use patchclamp_report::outcomes::LocalizeOutcome;

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
        "mlp_post" if cfg.has_mlp() => (HookPoint::MlpPost, cfg.d_mlp()),
        "mlp_post" => bail!("--units mlp_post: this model has no MLPs"),
        other => bail!("unknown --units '{other}'; use resid_post or mlp_post"),
    };
    let toks = |p: &PathBuf| -> patchclamp_report::Result<Vec<Vec<u32>>> {
        Ok(s.read_prompts(p)?.into_iter().map(|p| p.tokens).collect())
    };
    let (sa, sb) = (toks(&a.stimuli)?, toks(&a.control)?);
    let xa = pooled_units(&s.model, &sa, point)?;
    let xb = pooled_units(&s.model, &sb, point)?;
    let localized = localize(&xa, &xb, width, a.fraction)?;
    let ablation = match &a.eval {
        Some(e) => {
            let seqs = toks(e)?;
            let bar = progress(a.random_draws as u64, "random ablations")?;
            let ab = ablate_against_random(
                &s.model,
                &seqs,
                &localized.units,
                point,
                width,
                (a.random_draws, a.seed),
                || bar.inc(1),
            )?;
            bar.finish_and_clear();
            Some(ab)
        }
        None => None,
    };
    let outcome = LocalizeOutcome {
        model: a.common.model.clone(),
        units: a.units.clone(),
        fraction: a.fraction,
        localized,
        ablation,
    };
    report(&a.common, "localize", &s, &outcome)
}
