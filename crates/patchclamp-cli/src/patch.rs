//! `patchclamp patch` / `attribute`: an activation-patching sweep with JSON, safetensors,
//! heatmaps and a report page.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::causal::attribution::attribute;
use patchclamp_lab::causal::patching::{
    default_batch, sweep, Direction, Metric, PatchingConfig, Site,
};
use patchclamp_report::outcomes::PatchOutcome;
use patchclamp_report::Subject;

use crate::analysis::{report, Common};

/// Arguments of `patch`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// The clean prompt (the model gets the answer right).
    #[arg(long)]
    clean: String,
    /// The corrupted prompt (same number of tokens, e.g. a swapped name).
    #[arg(long)]
    corrupted: String,
    /// The correct next token (its text, e.g. " Mary"; exactly one token; or id:N).
    #[arg(long)]
    answer: String,
    /// The competing token for logit differences.
    #[arg(long)]
    wrong: Option<String>,
    /// What to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out (per position) or
    /// z, q, k, v, pattern (per head, all positions).
    #[arg(long, default_value = "resid_pre")]
    point: String,
    /// Patch corrupted values into the clean run (necessity) instead of the reverse.
    #[arg(long)]
    noising: bool,
    /// logit-diff (needs --wrong), prob, logprob or kl.
    #[arg(long, default_value = "logit-diff")]
    metric: String,
    /// Variants per forward pass (default: about 4096 token rows per forward).
    #[arg(long)]
    batch: Option<usize>,
    /// Patch this many consecutive layers around each layer together (sliding window).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    processed: bool,
    /// Output folder (result.json, result.safetensors, heatmap.svg/png, report.html).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    sae: crate::sae::SaeArgs,
    /// Print the JSON result to stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Write into --out even if it holds files patchclamp did not write (they are kept).
    #[arg(long)]
    force: bool,
}

/// How the sweep is computed.
#[derive(Clone, Copy, PartialEq)]
pub enum Method {
    /// One patched forward per variant (batched).
    Exact,
    /// First-order estimate from two forwards and one backward.
    Attribution,
}

pub fn main(a: Args, method: Method) -> anyhow::Result<()> {
    let site: Site = serde_json::from_value(serde_json::Value::String(a.point.clone())).map_err(|_| {
        anyhow::anyhow!("unknown --point '{}'; use resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern", a.point)
    })?;
    if method == Method::Attribution && (a.window != 1 || a.batch.is_some()) {
        bail!("--window and --batch apply to `patch`; attribution estimates single-layer patches from one backward pass");
    }
    if a.wrong.is_some() && a.metric != "logit-diff" {
        bail!(
            "--wrong applies to --metric logit-diff; --metric {} reads --answer only",
            a.metric
        );
    }
    let mut s = Subject::load(&a.model, a.processed, &crate::device())?;
    s.model.saes = a.sae.splices(&s.model.cfg)?;
    patchclamp_lab::causal::patching::check_window(a.window, s.model.cfg.n_layers)
        .context("--window")?;
    let clean = s.encode(&a.clean).context("--clean")?;
    let corrupt = s.encode(&a.corrupted).context("--corrupted")?;
    let answer = s.token(&a.answer).context("--answer")?;
    let metric = match a.metric.as_str() {
        "logit-diff" => {
            let Some(w) = &a.wrong else {
                bail!("--metric logit-diff needs --wrong TOKEN")
            };
            Metric::LogitDiff {
                answer,
                wrong: s.token(w).context("--wrong")?,
            }
        }
        "prob" => Metric::Prob { answer },
        "logprob" => Metric::LogProb { answer },
        "kl" => Metric::Kl,
        other => bail!("unknown --metric '{other}'; use logit-diff, prob, logprob or kl"),
    };
    let pc = PatchingConfig {
        site,
        direction: if a.noising {
            Direction::Noise
        } else {
            Direction::Denoise
        },
        metric,
        batch: a.batch.unwrap_or(default_batch(clean.len())),
        window: a.window,
    };
    let (r, method_name) = match method {
        Method::Exact => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template(
                "patching {bar:30} {pos}/{len} variants {elapsed}",
            )?);
            let r = sweep(&s.model, &clean, &corrupt, &pc, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            (r, "patching")
        }
        Method::Attribution => (
            attribute(&s.model, &clean, &corrupt, site, pc.direction, metric)?,
            "attribution patching",
        ),
    };
    let outcome = PatchOutcome::new(
        &a.model,
        (&a.clean, &a.corrupted),
        (clean, corrupt),
        method_name,
        pc,
        r,
        &s.vocab(),
        (&a.point, &a.metric),
    );
    let common = Common {
        model: a.model,
        processed: a.processed,
        out: a.out,
        json: a.json,
        force: a.force,
        sae: a.sae,
    };
    let command = match method {
        Method::Exact => "patch",
        Method::Attribution => "attribute",
    };
    report(&common, command, &s, &outcome)
}
