//! `patchclamp probe`: linear probes on labelled prompts (held-out accuracy per layer), and TCAV
//! for a concept with its random-concept significance test.

use anyhow::bail;
use patchclamp_core::HookPoint;
use patchclamp_lab::analysis::linear_probe::{
    probe_points, tcav_of_labels, FitSpec, Pooling, TcavSets,
};
use patchclamp_report::outcomes::ProbeOutcome;

use super::{progress, report, Common, PromptArgs};

/// Arguments of `probe`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Labelled prompts: a .jsonl file with a "label" on every line.
    #[command(flatten)]
    prompts: PromptArgs,
    /// Probe this hook point (TransformerLens name); default: every layer's hook_resid_post.
    #[arg(long)]
    point: Option<String>,
    /// Read the last token's activation or the mean over tokens.
    #[arg(long, value_enum, default_value = "last")]
    pooling: PoolingArg,
    /// Fraction of prompts held out for the accuracy.
    #[arg(long, default_value_t = 0.25)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// TCAV: the label of the concept's examples (needs --point, --tcav-random, --tcav-class).
    #[arg(long)]
    tcav_concept: Option<String>,
    /// TCAV: the label of the random examples.
    #[arg(long)]
    tcav_random: Option<String>,
    /// TCAV: the class token whose logit's sensitivity is scored.
    #[arg(long)]
    tcav_class: Option<String>,
    /// TCAV: the label of the inputs scored (default: every other prompt).
    #[arg(long)]
    tcav_inputs: Option<String>,
    /// TCAV: concept-vs-random runs (and random-vs-random runs).
    #[arg(long, default_value_t = 10)]
    tcav_runs: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolingArg {
    Last,
    Mean,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let cfg = &s.model.cfg;
    let pooling = match a.pooling {
        PoolingArg::Last => Pooling::Last,
        PoolingArg::Mean => Pooling::Mean,
    };
    let points: Vec<HookPoint> = match &a.point {
        Some(p) => vec![HookPoint::parse_for(p, cfg)?],
        None => (0..cfg.n_layers).map(HookPoint::ResidPost).collect(),
    };
    let pooling_name = format!("{pooling:?}").to_lowercase();
    let mut outcome = ProbeOutcome {
        model: a.common.model.clone(),
        pooling: pooling_name,
        probes: None,
        tcav: None,
        tcav_question: None,
    };
    match &a.tcav_concept {
        None => {
            let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
            let labels: Vec<Option<String>> = prompts.iter().map(|p| p.label.clone()).collect();
            let bar = progress(points.len() as u64, "probing")?;
            let probes = probe_points(
                &s.model,
                &toks,
                &labels,
                &points,
                pooling,
                (a.test_fraction, a.seed),
                FitSpec::default(),
                || bar.inc(1),
            )?;
            bar.finish_and_clear();
            outcome.probes = Some(probes);
        }
        Some(concept) => {
            let (Some(random), Some(class), Some(_)) = (&a.tcav_random, &a.tcav_class, &a.point)
            else {
                bail!("TCAV needs --point, --tcav-concept, --tcav-random and --tcav-class");
            };
            let sets = TcavSets {
                concept,
                random,
                inputs: a.tcav_inputs.as_deref(),
            };
            let labelled: Vec<(Vec<u32>, Option<String>)> =
                prompts.into_iter().map(|p| (p.tokens, p.label)).collect();
            let class_id = s.token(class)?;
            outcome.tcav = Some(tcav_of_labels(
                &s.model,
                &labelled,
                &sets,
                points[0],
                class_id,
                (a.tcav_runs, a.seed),
            )?);
            outcome.tcav_question = Some((concept.clone(), class.clone(), points[0].to_string()));
        }
    }
    report(&a.common, "probe", &s, &outcome)
}
