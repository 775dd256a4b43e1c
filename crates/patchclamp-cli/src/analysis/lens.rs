//! `patchclamp lens`: the logit lens over layers and positions, and the latent-language curves.

use std::path::PathBuf;

use patchclamp_lab::analysis::lens::{latent_language, logit_lens};
use patchclamp_report::outcomes::LensOutcome;

use super::{report, Common, PromptArgs};

/// Arguments of `lens`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Top tokens reported per layer and position.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Also report the probability of this token everywhere (repeatable).
    #[arg(long)]
    track: Vec<String>,
    /// Latent-language analysis (Wendler et al.): a JSONL file of {"text"|"tokens", "sets":
    /// {"name": ["token", …], …}}; plots each set's probability at the last position by layer.
    #[arg(long)]
    latent: Option<PathBuf>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let tracked: Vec<u32> = a
        .track
        .iter()
        .map(|t| s.token(t))
        .collect::<patchclamp_report::Result<_>>()?;
    let prompts =
        if a.prompts.prompt.is_empty() && a.prompts.prompts.is_none() && a.latent.is_some() {
            vec![]
        } else {
            s.prompts(&a.prompts.source()?)?
        };
    let lens = prompts
        .iter()
        .map(|p| logit_lens(&s.model, &p.tokens, a.top_k, &tracked))
        .collect::<patchclamp_lab::Result<Vec<_>>>()?;
    let latent = match &a.latent {
        Some(path) => {
            let (names, items) = s.read_latent(path)?;
            Some(latent_language(&s.model, &items, &names)?)
        }
        None => None,
    };
    let outcome = LensOutcome {
        model: a.common.model.clone(),
        prompts: prompts.into_iter().map(|p| p.text).collect(),
        lens,
        latent,
    };
    report(&a.common, "lens", &s, &outcome)
}
