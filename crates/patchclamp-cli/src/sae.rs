//! `patchclamp sae …`: train, evaluate and describe SAEs in SAELens's format; and `--sae DIR`,
//! the flag that splices SAEs into `run` and `inspect`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::sae::train::{BDecInit, TrainArch, TrainSpec};
use patchclamp_lab::train::{Decay, LrSchedule};
use patchclamp_report::sae_run::{self, SaeTrainEvent, SaeTrainRequest};

/// `--sae DIR` (repeatable) and `--error-term`: SAEs spliced into the forward pass.
#[derive(clap::Args, Default)]
pub struct SaeArgs {
    /// Splice the SAELens SAE in DIR at its hook point (repeatable; one per point); its
    /// `<hook>.hook_sae_*` points can then be cached and intervened on.
    #[arg(long = "sae", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Keep the SAE's error term, so the model's output is unchanged until a latent is edited.
    #[arg(long, requires = "dirs")]
    pub error_term: bool,
}

impl SaeArgs {
    /// The splices, checked against `cfg`.
    pub fn splices(
        &self,
        cfg: &patchclamp_core::Config,
    ) -> anyhow::Result<Vec<patchclamp_core::Splice>> {
        Ok(patchclamp_lab::sae::splices(
            cfg,
            &self.dirs,
            self.error_term,
            &crate::device(),
        )?)
    }
}

/// The `sae` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Train an SAE on activations harvested from a corpus; writes a SAELens folder.
    #[command(after_help = "Examples:
  patchclamp sae train MODEL --hook blocks.6.hook_resid_post --corpus corpus.txt --arch topk --k 32 \\
      --d-sae 24576 --tokens 10000000 --out runs/sae
  patchclamp sae train MODEL --hook blocks.0.hook_mlp_out --corpus docs.jsonl --arch standard --l1 5 \\
      --d-sae 4096 --tokens 2000000 --out runs/sae-l1
  patchclamp sae train … --out runs/sae --resume     # continue from its checkpoint, bit for bit")]
    Train(Box<TrainArgs>),
    /// Harvest activations at a hook into an on-disk store (sharded safetensors) for reuse.
    Harvest(HarvestArgs),
    /// Evaluate an SAE on a model and corpus: L0, explained variance, CE-loss score, KL, density.
    Eval(EvalArgs),
    /// Feature dashboards: top contexts, quantile groups, logit weights, densities (HTML and
    /// Neuronpedia-style JSON).
    Features(FeaturesArgs),
    /// Rank latents by their activation difference between two prompt sets.
    Contrast(ContrastArgs),
    /// Describe an SAE folder: architecture, widths, hook, normalisation.
    Info(InfoArgs),
}

/// Arguments of `sae features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {
    /// A SAELens folder.
    sae: PathBuf,
    /// A model folder or a cached repo id.
    model: String,
    #[arg(long)]
    corpus: PathBuf,
    /// Output folder (index.html, features/N.html, neuronpedia.json).
    #[arg(long)]
    out: PathBuf,
    /// Latents to describe, e.g. 0-99 or 3,17,42 (default: all).
    #[arg(long)]
    latents: Option<String>,
    #[arg(long, default_value_t = 64)]
    contexts: usize,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Top examples per latent.
    #[arg(long, default_value_t = 20)]
    top: usize,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    processed: bool,
    #[arg(long)]
    json: bool,
}

/// Arguments of `sae contrast`.
#[derive(clap::Args)]
pub struct ContrastArgs {
    /// A SAELens folder.
    sae: PathBuf,
    /// A model folder or a cached repo id.
    model: String,
    /// Prompts of set A (text, one per line, or JSONL).
    #[arg(long)]
    prompts: PathBuf,
    /// Prompts of set B.
    #[arg(long)]
    control: PathBuf,
    /// Latents to list per direction.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Read each prompt's last token (default) or average its tokens (--mean).
    #[arg(long)]
    mean: bool,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    processed: bool,
    #[arg(long)]
    json: bool,
}

/// Arguments of `sae train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// A model folder or a cached repo id.
    model: String,
    /// The hook point to read (TransformerLens name).
    #[arg(long)]
    hook: String,
    /// Text (one document per line) or JSONL (`{"text": …}` per line).
    #[arg(
        long,
        required_unless_present = "activations",
        conflicts_with = "activations"
    )]
    corpus: Option<PathBuf>,
    /// Train on an activation store `sae harvest` wrote instead of harvesting.
    #[arg(long, value_name = "DIR")]
    activations: Option<PathBuf>,
    /// standard (ReLU + L1), topk, batchtopk (saved as jumprelu) or jumprelu.
    #[arg(long, default_value = "topk")]
    arch: String,
    /// TopK / BatchTopK: active latents per token.
    #[arg(long)]
    k: Option<usize>,
    /// Number of latents.
    #[arg(long)]
    d_sae: usize,
    /// Training tokens (steps = tokens / batch, rounded up).
    #[arg(long)]
    tokens: u64,
    /// Tokens per step.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Tokens per context (packed from the corpus, BOS first).
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Linear warm-up steps of the learning rate.
    #[arg(long, default_value_t = 0)]
    lr_warm_up_steps: u64,
    /// Decay the learning rate linearly to 0 over the run.
    #[arg(long)]
    lr_decay: bool,
    /// standard: the L1 coefficient (decoder-norm weighted).
    #[arg(long)]
    l1: Option<f64>,
    /// jumprelu: the L0 coefficient.
    #[arg(long)]
    l0: Option<f64>,
    /// standard / jumprelu: linear warm-up of the sparsity coefficient.
    #[arg(long, default_value_t = 0)]
    sparsity_warm_up_steps: u64,
    /// Scale inputs to mean norm √d_in (folded into the saved weights).
    #[arg(long)]
    normalize: bool,
    /// b_dec's start: geometric-median, mean or zeros.
    #[arg(long, default_value = "geometric-median")]
    b_dec_init: String,
    /// Steps without firing after which a latent is dead (AuxK revives dead TopK latents).
    #[arg(long, default_value_t = 1000)]
    dead_window: u64,
    /// Shuffle-buffer size in batches.
    #[arg(long, default_value_t = 4)]
    buffer_batches: usize,
    /// Contexts per forward pass of the model.
    #[arg(long, default_value_t = 8)]
    contexts_per_forward: usize,
    /// Write a checkpoint every N steps (0: only at the end; always at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Log every N steps.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Held-out text: CE-loss score, delta LM loss and KL score every --eval-every steps.
    #[arg(long)]
    eval_corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 500, requires = "eval_corpus")]
    eval_every: u64,
    /// Held-out contexts per evaluation.
    #[arg(long, default_value_t = 16, requires = "eval_corpus")]
    eval_contexts: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Write into --out even if it holds files patchclamp did not write.
    #[arg(long)]
    force: bool,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    processed: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sae harvest`.
#[derive(clap::Args)]
pub struct HarvestArgs {
    /// A model folder or a cached repo id.
    model: String,
    #[arg(long)]
    hook: String,
    #[arg(long)]
    corpus: PathBuf,
    /// Activations to store.
    #[arg(long)]
    tokens: u64,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Shuffle-buffer rows.
    #[arg(long, default_value_t = 16384)]
    buffer: usize,
    /// Rows per shard file.
    #[arg(long, default_value_t = 65536)]
    shard_rows: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    processed: bool,
    #[arg(long)]
    json: bool,
}

/// Arguments of `sae eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A SAELens folder.
    sae: PathBuf,
    /// A model folder or a cached repo id.
    model: String,
    /// Text or JSONL corpus.
    #[arg(long)]
    corpus: PathBuf,
    /// Contexts to evaluate.
    #[arg(long, default_value_t = 64)]
    contexts: usize,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Write result.json, the density histogram and report.html here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    processed: bool,
    #[arg(long)]
    json: bool,
}

/// Arguments of `sae info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// A SAELens folder.
    sae: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn main(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Harvest(a) => harvest(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Features(a) => features(a),
        Cmd::Contrast(a) => contrast(a),
        Cmd::Info(a) => info(a),
    }
}

/// `0-99`, `3,17,42` or a mix.
fn latent_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = vec![];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                if a > b {
                    bail!("--latents {part}: the range is empty");
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.trim()
                    .parse()
                    .with_context(|| format!("--latents {part}"))?,
            ),
        }
    }
    if out.is_empty() {
        bail!("--latents names no latent");
    }
    Ok(out)
}

fn features(a: FeaturesArgs) -> anyhow::Result<()> {
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    if a.contexts == 0 || a.batch == 0 || a.top == 0 {
        bail!("--contexts, --batch and --top must be positive");
    }
    let spec = patchclamp_lab::sae::features::FeatureSpec {
        latents: match &a.latents {
            Some(s) => latent_list(s)?,
            None => vec![],
        },
        top: a.top,
        ..Default::default()
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches [{elapsed}]",
    )?);
    let (index, lines) = sae_run::features(
        &subject,
        &a.sae,
        &a.corpus,
        a.context_size,
        a.contexts,
        a.batch,
        &spec,
        &a.out,
        a.force,
        |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        crate::print(&serde_json::to_string_pretty(
            &serde_json::json!({"index": index, "summary": lines}),
        )?);
        return Ok(());
    }
    for l in &lines {
        crate::print(l);
    }
    crate::print(&format!("dashboards: {}", index.display()));
    Ok(())
}

fn contrast(a: ContrastArgs) -> anyhow::Result<()> {
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let sae = std::sync::Arc::new(patchclamp_core::Sae::load(&a.sae, &crate::device())?);
    let read = |p: &std::path::Path| -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(subject
            .read_prompts(p)?
            .into_iter()
            .map(|p| p.tokens)
            .collect())
    };
    let (pa, pb) = (read(&a.prompts)?, read(&a.control)?);
    if let Some(out) = &a.out {
        patchclamp_report::run_dir::outside_model(out, &subject.home)?;
        patchclamp_report::run_dir::check(out, "sae contrast", a.force)?;
    }
    let c =
        patchclamp_lab::sae::features::contrast(&subject.model, &sae, &pa, &pb, !a.mean, a.top)?;
    let outcome = sae_run::SaeContrastOutcome {
        sae: a.sae.display().to_string(),
        contrast: c,
    };
    if let Some(out) = &a.out {
        let mut run = patchclamp_report::RunDir::create(out, "sae contrast", a.force)?;
        patchclamp_report::write_outcome(&mut run, &outcome, &subject.vocab(), &a.model)?;
        run.finish()?;
    }
    if a.json {
        crate::print(&serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    use patchclamp_report::Outcome;
    for l in outcome.summary_lines(&subject.vocab()) {
        crate::print(&l);
    }
    Ok(())
}

/// The trainer's settings from the flags.
fn spec(a: &TrainArgs, d_in: usize) -> anyhow::Result<TrainSpec> {
    let only = |flag: &str, set: bool, archs: &str| -> anyhow::Result<()> {
        if set {
            bail!("--{flag} applies to --arch {archs}, not {}", a.arch);
        }
        Ok(())
    };
    let arch = match a.arch.as_str() {
        "standard" => {
            only("k", a.k.is_some(), "topk or batchtopk")?;
            only("l0", a.l0.is_some(), "jumprelu")?;
            TrainArch::Standard {
                l1: a.l1.unwrap_or(5.0),
                l1_warm_up_steps: a.sparsity_warm_up_steps,
            }
        }
        "topk" | "batchtopk" => {
            only("l1", a.l1.is_some(), "standard")?;
            only("l0", a.l0.is_some(), "jumprelu")?;
            let k = a.k.context("--arch topk and batchtopk need --k")?;
            if k == 0 || k > a.d_sae {
                bail!("--k {k} must lie in 1..=--d-sae ({})", a.d_sae);
            }
            if a.arch == "topk" {
                TrainArch::Topk { k }
            } else {
                TrainArch::Batchtopk {
                    k,
                    threshold_lr: 0.01,
                }
            }
        }
        "jumprelu" => {
            only("k", a.k.is_some(), "topk or batchtopk")?;
            only("l1", a.l1.is_some(), "standard")?;
            TrainArch::Jumprelu {
                l0: a.l0.unwrap_or(1.0),
                l0_warm_up_steps: a.sparsity_warm_up_steps,
                bandwidth: 0.05,
                init_threshold: 0.01,
            }
        }
        other => bail!("unknown --arch '{other}'; use standard, topk, batchtopk or jumprelu"),
    };
    if a.tokens == 0 || a.batch == 0 {
        bail!("--tokens and --batch must be positive");
    }
    let b_dec_init = match a.b_dec_init.as_str() {
        "geometric-median" => BDecInit::GeometricMedian,
        "mean" => BDecInit::Mean,
        "zeros" => BDecInit::Zeros,
        other => bail!("unknown --b-dec-init '{other}'; use geometric-median, mean or zeros"),
    };
    Ok(TrainSpec {
        arch,
        d_in,
        d_sae: a.d_sae,
        batch: a.batch,
        steps: a.tokens.div_ceil(a.batch as u64),
        lr: LrSchedule {
            lr: a.lr,
            warmup: a.lr_warm_up_steps,
            decay: if a.lr_decay {
                Decay::Linear
            } else {
                Decay::Constant
            },
            min_ratio: 0.0,
        },
        optim: Default::default(),
        // TopK-style SAEs keep unit decoder rows; ReLU+L1 and JumpReLU weigh sparsity by them.
        unit_decoder: matches!(arch, TrainArch::Topk { .. } | TrainArch::Batchtopk { .. }),
        decoder_init_norm: 0.1,
        tied: false,
        b_dec_init,
        aux_coef: 1.0,
        dead_window: a.dead_window,
        normalize: a.normalize,
        seed: a.seed,
    })
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    let hook = patchclamp_core::HookPoint::parse_for(&a.hook, &subject.model.cfg)
        .with_context(|| format!("--hook {}", a.hook))?;
    let d_in: usize = hook.shape(&subject.model.cfg, 1, 1)[2..].iter().product();
    let spec = spec(&a, d_in)?;
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
    )?);
    let show = |e: SaeTrainEvent| match e {
        SaeTrainEvent::Counting => tracing::info!("counting the corpus's tokens"),
        SaeTrainEvent::Start { steps, .. } => {
            bar.set_length(steps);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        SaeTrainEvent::Resuming { step } => {
            bar.set_position(step);
            bar.set_message(format!("re-drawing the first {step} steps' batches"));
        }
        SaeTrainEvent::Step {
            stats,
            tokens_per_s,
        } => {
            bar.set_position(stats.step);
            bar.set_message(format!(
                "L0 {:.1} EV {:.3} dead {} · {:.0} tok/s",
                stats.l0, stats.explained_variance, stats.dead, tokens_per_s
            ));
        }
    };
    let done = sae_run::train(
        &subject,
        SaeTrainRequest {
            buffer: a.buffer_batches.max(1) * spec.batch,
            spec,
            hook,
            corpus: a.corpus.clone().unwrap_or_default(),
            activations: a.activations.clone(),
            context_size: a.context_size,
            contexts_per_forward: a.contexts_per_forward,
            checkpoint_every: a.checkpoint_every,
            log_every: a.log_every,
            eval_corpus: a.eval_corpus.clone(),
            eval_every: a.eval_every,
            eval_contexts: a.eval_contexts,
            out: a.out.clone(),
            resume: a.resume,
            force: a.force,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        },
        show,
    )?;
    bar.finish_and_clear();
    if a.json {
        crate::print(&serde_json::to_string_pretty(&serde_json::json!({
            "dir": done.dir, "sae": done.sae, "report": done.report, "last": done.last,
            "tokens_per_s": done.tokens_per_s,
        }))?);
        return Ok(());
    }
    for l in &done.lines {
        crate::print(l);
    }
    crate::print(&format!(
        "SAELens folder: {}; report: {}",
        done.sae.display(),
        done.report.display()
    ));
    Ok(())
}

fn harvest(a: HarvestArgs) -> anyhow::Result<()> {
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    let hook = patchclamp_core::HookPoint::parse_for(&a.hook, &subject.model.cfg)
        .with_context(|| format!("--hook {}", a.hook))?;
    let bar = indicatif::ProgressBar::new(a.tokens);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} activations [{elapsed} < {eta}]",
    )?);
    let (dir, info) = sae_run::harvest(
        &subject,
        hook,
        &a.corpus,
        a.tokens,
        a.context_size,
        a.buffer,
        a.shard_rows,
        a.seed,
        &a.out,
        a.force,
        |d, _| bar.set_position(d),
    )?;
    bar.finish_and_clear();
    if a.json {
        crate::print(&serde_json::to_string_pretty(&info)?);
    } else {
        crate::print(&format!(
            "{} activations of width {} at {} in {} shards: {}",
            info.rows,
            info.d_in,
            info.hook,
            info.shards.len(),
            dir.display()
        ));
    }
    Ok(())
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let subject = patchclamp_report::Subject::load(&a.model, a.processed, &crate::device())?;
    if a.contexts == 0 || a.batch == 0 {
        bail!("--contexts and --batch must be positive");
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} batches [{elapsed}]",
    )?);
    let (outcome, report) = sae_run::evaluate(
        &subject,
        &a.sae,
        &a.corpus,
        a.context_size,
        a.contexts,
        a.batch,
        a.out.as_deref().map(|o| (o, a.force)),
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        crate::print(&serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    use patchclamp_report::Outcome;
    for l in outcome.summary_lines(&subject.vocab()) {
        crate::print(&l);
    }
    if let Some(r) = report {
        crate::print(&format!("report: {}", r.display()));
    }
    Ok(())
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let sae = patchclamp_core::Sae::load(&a.sae, &crate::device())?;
    let c = &sae.cfg;
    if a.json {
        crate::print(&c.to_json());
        return Ok(());
    }
    crate::print(&format!("architecture  {}", c.architecture_name()));
    crate::print(&format!(
        "widths        d_in {} → d_sae {} → d_out {}",
        c.d_in, c.d_sae, c.d_out
    ));
    crate::print(&format!(
        "hook          {}",
        c.hook_name.as_deref().unwrap_or("(not named)")
    ));
    if let Some(o) = &c.hook_name_out {
        crate::print(&format!("writes        {o}"));
    }
    if let Some(k) = c.k {
        crate::print(&format!(
            "k             {k} (rescale by decoder norm: {})",
            c.rescale_acts_by_decoder_norm
        ));
    }
    crate::print(&format!(
        "input         normalise {:?}, b_dec subtracted: {}, hook_z reshape: {}",
        c.normalize, c.apply_b_dec_to_input, c.reshape_hook_z
    ));
    if let Some(s) = &sae.sparsity {
        let v: Vec<f32> = s.to_vec1()?;
        let dead = v.iter().filter(|&&x| x <= -9.0).count();
        crate::print(&format!(
            "sparsity      {} latents, {dead} never fired (log10 density ≤ −9)",
            v.len()
        ));
    }
    Ok(())
}
