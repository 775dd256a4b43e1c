//! `patchclamp heads`: every head detector, as score grids.

use patchclamp_lab::analysis::heads::{head_report, HeadProbe};
use patchclamp_report::outcomes::HeadsOutcome;

use super::{report, Common};

/// Arguments of `heads`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Random sequences in the probe.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Length of the random block (repeated `--repeats` times).
    #[arg(long, default_value_t = 24)]
    block: usize,
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let mut probe = HeadProbe::for_model(&s.model, a.block);
    probe.n = a.n;
    probe.repeats = a.repeats;
    probe.seed = a.seed;
    let outcome = HeadsOutcome {
        model: a.common.model.clone(),
        heads: head_report(&s.model, &probe)?,
    };
    report(&a.common, "heads", &s, &outcome)
}
