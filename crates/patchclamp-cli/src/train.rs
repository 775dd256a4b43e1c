//! `patchclamp train exp.toml`: one training run from an experiment file, and the progress
//! bars `lab` shares.

use std::path::PathBuf;

use anyhow::Context;
use patchclamp_lab::experiment::Experiment;
use patchclamp_lab::train::{Event, Resume};
use patchclamp_report::train_run::{self, TrainRequest};

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

/// A run's progress bar, named by its label.
pub fn progress_bar(
    label: &str,
    steps: u64,
    mp: &indicatif::MultiProgress,
) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = mp.add(indicatif::ProgressBar::new(steps));
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{prefix:>22} {bar:28} {pos:>5}/{len} {elapsed_precise} {msg}",
    )?);
    bar.set_prefix(label.to_string());
    Ok(bar)
}

/// One training event on a run's bar.
pub fn show(bar: &indicatif::ProgressBar, label: &str, e: Event) {
    match e {
        Event::Step(s) => bar.set_position(s.step),
        Event::Eval(ev) => bar.set_message(format!("in-context loss {:.3}", ev.in_context_loss)),
        Event::Resumed(s) => {
            bar.set_position(s);
            bar.println(format!("{label}: resumed at step {s}"));
        }
    }
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
    let bar = progress_bar(&exp.name, exp.train.steps, &indicatif::MultiProgress::new())?;
    let done = train_run::train(
        TrainRequest {
            exp,
            source: Some((&a.experiment, &source)),
            command: format!("patchclamp train {}", a.experiment.display()),
            out,
            resume,
            force: a.force,
        },
        |label, e| show(&bar, label, e),
    )?;
    bar.finish();
    if a.json {
        crate::print(&done.summary);
    } else {
        crate::print(&format!("report: {}", done.report.display()));
    }
    Ok(())
}
