//! `patchclamp trace`: ROME causal tracing with JSON, safetensors, a heatmap and a page.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::causal::patching::Metric;
use patchclamp_lab::causal::tracing::{trace, TraceConfig, TraceKind};
use patchclamp_report::outcomes::TraceOutcome;
use patchclamp_report::Subject;

use crate::analysis::{report, Common};

/// Arguments of `trace`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder or a cached repo id.
    model: String,
    /// The factual prompt.
    #[arg(long)]
    prompt: String,
    /// The subject's text inside the prompt (its tokens get the noise).
    #[arg(long, conflicts_with = "subject_positions")]
    subject: Option<String>,
    /// Or the subject's token positions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    subject_positions: Option<Vec<usize>>,
    /// The expected next token (one token; its probability is measured).
    #[arg(long)]
    answer: String,
    /// What is restored: hidden (resid_post), mlp (mlp_out) or attn (attn_out).
    #[arg(long, default_value = "hidden")]
    kind: String,
    /// Layers restored together (default: 1 for hidden; 10 for mlp and attn, as in ROME, or
    /// every layer of a smaller model).
    #[arg(long)]
    window: Option<usize>,
    /// Noise samples averaged over.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Noise standard deviation (default: 3 × the std of the token embeddings).
    #[arg(long)]
    noise: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Freeze the MLP outputs after each restored window at their corrupted values.
    #[arg(long)]
    severed: bool,
    /// Variants per forward pass (default: about 4096 token rows per forward).
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    sae: crate::sae::SaeArgs,
    /// Output folder (result.json, result.safetensors, heatmap.svg, heatmap.png).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
    /// Write into --out even if it holds files patchclamp did not write (they are kept).
    #[arg(long)]
    force: bool,
}

/// Positions where `needle` occurs as a contiguous run inside `hay`.
fn find_run(hay: &[u32], needle: &[u32]) -> Option<Vec<usize>> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .find(|&i| &hay[i..i + needle.len()] == needle)
        .map(|i| (i..i + needle.len()).collect())
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let kind = match a.kind.as_str() {
        "hidden" => TraceKind::Hidden,
        "mlp" => TraceKind::Mlp,
        "attn" => TraceKind::Attn,
        other => bail!("unknown --kind '{other}'; use hidden, mlp or attn"),
    };
    if a.noise == Some(0.0) {
        // The library accepts it as a limit; a user asking for it gets a map of zeros.
        bail!("--noise 0 corrupts nothing, so every indirect effect is 0; give a positive standard deviation or omit it");
    }
    let mut s = Subject::load(&a.model, false, &crate::device())?;
    s.model.saes = a.sae.splices(&s.model.cfg)?;
    let ids = s.encode(&a.prompt)?;
    let subject = match (&a.subject, &a.subject_positions) {
        (_, Some(p)) => p.clone(),
        (Some(text), None) => {
            let Some(tok) = &s.tok else {
                bail!("this model has no tokenizer: give the subject as --subject-positions P,Q")
            };
            let with_space = tok.encode(&format!(" {text}"))?;
            let bare = tok.encode(text)?;
            find_run(&ids, &with_space)
                .or_else(|| find_run(&ids, &bare))
                .with_context(|| format!("the subject {text:?} (tokens {bare:?}) does not occur in the prompt's tokens {ids:?}"))?
        }
        (None, None) => bail!("give --subject TEXT or --subject-positions P,Q"),
    };
    let answer = s.token(&a.answer).context("--answer")?;
    let cfg = TraceConfig {
        subject: subject.clone(),
        kind,
        // ROME's default of 10 layers, on a model with fewer, is all of them.
        window: a.window.unwrap_or(if kind == TraceKind::Hidden {
            1
        } else {
            10.min(s.model.cfg.n_layers)
        }),
        samples: a.samples,
        noise: a.noise,
        seed: a.seed,
        metric: Metric::Prob { answer },
        severed: a.severed,
        batch: a
            .batch
            .unwrap_or(patchclamp_lab::causal::patching::default_batch(ids.len())),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "tracing {bar:30} {pos}/{len} runs {elapsed}",
    )?);
    let r = trace(&s.model, &ids, &cfg, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let outcome = TraceOutcome::new(&a.model, &a.prompt, ids, r, &s.vocab(), &a.kind);
    let common = Common {
        model: a.model,
        processed: false,
        out: a.out,
        json: a.json,
        force: a.force,
        sae: a.sae,
    };
    report(&common, "trace", &s, &outcome)
}
