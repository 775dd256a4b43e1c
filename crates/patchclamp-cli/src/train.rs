//! `patchclamp train exp.toml`: one training run from an experiment file, and the run
//! executor `lab` shares (progress bar, run folder, log, checkpoint, final model).

use std::path::PathBuf;

use anyhow::Context;
use patchclamp_lab::experiment::{train_experiment, Experiment, FinishedRun};
use patchclamp_lab::train::{check_resume, Event, Resume, RunOptions, Trainer};
use patchclamp_report::RunDir;

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// The experiment file (TOML: task, model, train, interventions, sources).
    experiment: PathBuf,
    /// Output folder (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the folder's checkpoint (bit-identical to an uninterrupted run); refused
    /// when there is none, or when it was written by another experiment or other overrides.
    #[arg(long)]
    resume: bool,
    /// Like --resume, but start over when the folder holds no checkpoint yet (job scripts
    /// that rerun the same command after a preemption).
    #[arg(long, conflicts_with = "resume")]
    resume_or_start: bool,
    /// Override the number of steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Override the data and initialisation seeds.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Write into --out even if it holds files patchclamp did not write (they are kept).
    #[arg(long)]
    force: bool,
}

/// A run ready to train: its trainer built from the experiment (so everything is validated)
/// before any file is touched.
pub struct Prepared {
    pub label: String,
    pub exp: Experiment,
    pub trainer: Trainer,
}

impl Prepared {
    /// Builds the trainer of `exp`.
    pub fn new(label: &str, exp: Experiment) -> anyhow::Result<Prepared> {
        let trainer = exp
            .trainer()
            .with_context(|| format!("building run '{label}'"))?;
        Ok(Prepared {
            label: label.to_string(),
            exp,
            trainer,
        })
    }
}

/// Registers the run's files in `run` under the sub-folder `sub` ("" for the top level) and
/// writes its experiment.toml; returns the run's options and folder.
pub fn register(
    p: &Prepared,
    run: &mut RunDir,
    sub: &str,
    resume: Resume,
) -> anyhow::Result<(RunOptions, PathBuf)> {
    let rel = |f: &str| {
        if sub.is_empty() {
            f.to_string()
        } else {
            format!("{sub}/{f}")
        }
    };
    run.write(&rel("experiment.toml"), toml::to_string(&p.exp)?.as_bytes())?;
    let opts = RunOptions {
        log: Some(run.file(&rel(LOG))?),
        checkpoint: Some(run.file(&rel(CHECKPOINT))?),
        resume,
        stop_after: None,
    };
    let dir = if sub.is_empty() {
        run.root().to_path_buf()
    } else {
        run.root().join(sub)
    };
    Ok((opts, dir))
}

/// The run log's name in a run folder.
const LOG: &str = "log.jsonl";
/// The checkpoint's name in a run folder.
const CHECKPOINT: &str = "checkpoint.safetensors";

/// Whether the run in `out` is resumed: `resume` applied to what the folder holds, with the
/// checkpoint's identity, bytes and log checked before anything is touched (a refused resume
/// leaves the folder exactly as it was).
fn resumes(p: &Prepared, out: &std::path::Path, resume: Resume) -> anyhow::Result<bool> {
    if resume == Resume::No {
        return Ok(false);
    }
    if resume == Resume::Required && !out.join(patchclamp_report::run_dir::MANIFEST).is_file() {
        Err(patchclamp_report::Error::NothingToResume {
            path: out.to_path_buf(),
        })?
    }
    let opts = RunOptions {
        log: Some(out.join(LOG)),
        checkpoint: Some(out.join(CHECKPOINT)),
        resume,
        stop_after: None,
    };
    Ok(check_resume(&p.trainer, &opts)?.is_some())
}

/// Trains a prepared run with a progress bar in `mp`.
pub fn execute(
    p: Prepared,
    opts: &RunOptions,
    dir: PathBuf,
    mp: &indicatif::MultiProgress,
) -> anyhow::Result<FinishedRun> {
    let label = p.label.clone();
    let bar = mp.add(indicatif::ProgressBar::new(p.exp.train.steps));
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{prefix:>22} {bar:28} {pos:>5}/{len} {elapsed_precise} {msg}",
    )?);
    bar.set_prefix(label.clone());
    let done = train_experiment(&label, &p.exp, p.trainer, opts, dir, |e| match e {
        Event::Step(s) => bar.set_position(s.step),
        Event::Eval(ev) => bar.set_message(format!("in-context loss {:.3}", ev.in_context_loss)),
        Event::Resumed(s) => {
            bar.set_position(s);
            bar.println(format!("{label}: resumed at step {s}"));
        }
    })
    .with_context(|| format!("training '{label}'"))?;
    bar.finish();
    Ok(done)
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let mut exp = Experiment::load(&a.experiment)?;
    if let Some(s) = a.steps {
        exp.train.steps = s;
    }
    if let Some(s) = a.seed {
        exp.train.seed = s;
        exp.model.init_seed = s;
    }
    // The overrides are checked like the file itself (`--steps 0` is refused here).
    exp.validate()
        .with_context(|| format!("{} with the overrides", a.experiment.display()))?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&exp.name));
    let resume = match (a.resume, a.resume_or_start) {
        (true, _) => Resume::Required,
        (_, true) => Resume::IfPresent,
        _ => Resume::No,
    };
    let source = patchclamp_report::read_spec(&a.experiment)?;
    let prepared = Prepared::new(&exp.name.clone(), exp)?;
    let resumes = resumes(&prepared, &out, resume)?;
    let mut run = if resumes {
        RunDir::resume(&out, "train")?
    } else {
        RunDir::create(&out, "train", a.force)?
    };
    let (opts, dir) = register(
        &prepared,
        &mut run,
        "",
        if resumes {
            Resume::Required
        } else {
            Resume::No
        },
    )?;
    run.set_experiment_hash(prepared.exp.identity_hash())?;
    let mp = indicatif::MultiProgress::new();
    let done = execute(prepared, &opts, dir, &mp)?;
    let (html, summary) = patchclamp_report::training::write(
        &mut run,
        &format!("patchclamp train {}", a.experiment.display()),
        &[done],
        Some((&a.experiment, &source)),
    )?;
    run.finish()?;
    if a.json {
        crate::print(&summary);
    } else {
        crate::print(&format!("report: {}", html.display()));
    }
    Ok(())
}
