//! `patchclamp dla`: direct logit attribution to every head and MLP.

use patchclamp_lab::analysis::dla::{direct_logit_attribution, LogitDirection};
use patchclamp_report::outcomes::DlaOutcome;

use super::{report, Common, PromptArgs};

/// Arguments of `dla`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// The token whose logit is attributed (text of one token, or id:N).
    #[arg(long, alias = "target")]
    answer: String,
    /// Attribute `logit[answer] − logit[wrong]` instead.
    #[arg(long, alias = "baseline")]
    wrong: Option<String>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let dir = LogitDirection {
        target: s.token(&a.answer)?,
        baseline: a.wrong.as_deref().map(|b| s.token(b)).transpose()?,
    };
    let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let outcome = DlaOutcome {
        model: a.common.model.clone(),
        target: a.answer,
        baseline: a.wrong,
        prompts: prompts.into_iter().map(|p| p.text).collect(),
        dla: direct_logit_attribution(&s.model, &toks, dir)?,
    };
    report(&a.common, "dla", &s, &outcome)
}
