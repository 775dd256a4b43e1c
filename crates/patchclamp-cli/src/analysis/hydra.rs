//! `patchclamp hydra`: direct versus total effects of ablating each layer, and who compensates.

use patchclamp_lab::analysis::dla::LogitDirection;
use patchclamp_lab::analysis::hydra::hydra;
use patchclamp_report::outcomes::HydraOutcome;

use super::{report, Common};

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
    /// The token whose logit is measured (text of one token, or id:N).
    #[arg(long, alias = "target")]
    answer: String,
    /// Measure `logit[answer] − logit[wrong]` instead.
    #[arg(long, alias = "baseline")]
    wrong: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let enc = |v: &[String]| {
        v.iter()
            .map(|p| s.encode(p))
            .collect::<patchclamp_report::Result<Vec<_>>>()
    };
    let (clean, source) = (enc(&a.prompt)?, enc(&a.source)?);
    let dir = LogitDirection {
        target: s.token(&a.answer)?,
        baseline: a.wrong.as_deref().map(|b| s.token(b)).transpose()?,
    };
    let outcome = HydraOutcome {
        model: a.common.model.clone(),
        prompts: a.prompt,
        sources: a.source,
        hydra: hydra(&s.model, &clean, &source, dir)?,
    };
    report(&a.common, "hydra", &s, &outcome)
}
