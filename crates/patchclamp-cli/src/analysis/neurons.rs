//! `patchclamp neurons`: the MLP neuron census streamed over a prompt file — frequencies, dead
//! and lazy neurons, token / bigram / positional detectors with their vocabulary projections,
//! and, when prompts carry labels, LAPE language-specific neurons and average-precision experts.

use patchclamp_lab::analysis::neurons::{census_study, StudySpec};
use patchclamp_report::outcomes::NeuronsOutcome;

use super::{progress, report, Common, PromptArgs};

/// Arguments of `neurons`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Detectors listed per layer (all are in result.json).
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// LAPE: fraction of neurons selected (lowest entropy over labels); the paper uses 0.01.
    #[arg(long, default_value_t = 0.01)]
    lape_top_rate: f64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let total: u64 = prompts.iter().map(|p| p.tokens.len() as u64).sum();
    let bar = progress(total, "tokens")?;
    let stream: Vec<(Vec<u32>, Option<String>)> =
        prompts.into_iter().map(|p| (p.tokens, p.label)).collect();
    let spec = StudySpec {
        batch: a.batch,
        top: a.top,
        lape_top_rate: a.lape_top_rate,
    };
    let study = census_study(&s.model, &stream, &spec, |n| bar.inc(n))?;
    bar.finish_and_clear();
    let outcome = NeuronsOutcome {
        model: a.common.model.clone(),
        study,
        d_mlp: s.model.cfg.d_mlp(),
    };
    report(&a.common, "neurons", &s, &outcome)
}
