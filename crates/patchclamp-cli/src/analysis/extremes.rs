//! `patchclamp extremes`: attention sinks, value drains, residual peaks, massive activations.

use patchclamp_lab::analysis::extremes::{extremes, ExtremeSpec};
use patchclamp_lab::tasks::TaskSpec;
use patchclamp_report::outcomes::ExtremesOutcome;

use super::{report, Common, PromptArgs};

/// Arguments of `extremes`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Trigger tokens (Bigram-Backcopy): their queries are scored separately (repeatable;
    /// prompts from a Bigram-Backcopy --task bring their own).
    #[arg(long)]
    trigger: Vec<String>,
    /// Massive activations: |x| above this…
    #[arg(long, default_value_t = 100.0)]
    abs_min: f32,
    /// …and at least this many times the median |x| of the hidden state.
    #[arg(long, default_value_t = 1000.0)]
    ratio: f32,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let mut triggers: Vec<u32> = a
        .trigger
        .iter()
        .map(|t| s.token(t))
        .collect::<patchclamp_report::Result<_>>()?;
    // Prompts drawn from a Bigram-Backcopy task come with its triggers.
    if let (true, Some(TaskSpec::BigramBackcopy(bb))) =
        (triggers.is_empty(), a.prompts.task_spec()?)
    {
        triggers = bb.trigger_tokens();
    }
    let spec = ExtremeSpec {
        triggers,
        abs_min: a.abs_min,
        ratio: a.ratio,
    };
    let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let outcome = ExtremesOutcome {
        model: a.common.model.clone(),
        extremes: extremes(&s.model, &toks, &spec)?,
        spec,
    };
    report(&a.common, "extremes", &s, &outcome)
}
