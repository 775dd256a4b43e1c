//! `patchclamp train exp.toml`: one training run from an experiment file, and the run
//! executor `lab` shares (progress bar, log, checkpoint, final model).

use std::path::{Path, PathBuf};

use anyhow::Context;
use patchclamp_core::fsutil::write_atomic;
use patchclamp_core::Model;
use patchclamp_lab::experiment::Experiment;
use patchclamp_lab::tasks::TaskSpec;
use patchclamp_lab::train::{self, Event, RunOptions, RunResult, Summary};

use crate::training_report;

/// Arguments of `train`.
#[derive(clap::Args)]
pub struct Args {
    /// The experiment file (TOML: task, model, train, interventions, sources).
    experiment: PathBuf,
    /// Output folder (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the folder's checkpoint (bit-identical to an uninterrupted run).
    #[arg(long)]
    resume: bool,
    /// Override the number of steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Override the data and initialisation seeds.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// A finished run: what it was, what it measured, and its final weights.
pub struct RunOutput {
    pub label: String,
    pub exp: Experiment,
    pub toml: String,
    pub result: RunResult,
    pub summary: Option<Summary>,
    pub model: Model,
    pub dir: PathBuf,
}

/// The phase-change loss level for a task: 0.4 of the loss of guessing among the candidates.
pub fn threshold(task: &TaskSpec) -> f32 {
    match task {
        TaskSpec::Repeated(r) => 0.4 * (r.vocab as f32).ln(),
        TaskSpec::Icl(_) | TaskSpec::FlipFlop(_) => 0.4 * 2f32.ln(),
        TaskSpec::BigramBackcopy(t) => 0.4 * (t.vocab as f32).ln(),
        TaskSpec::Languages(t) => 0.4 * (t.vocab_per_language as f32).ln(),
    }
}

/// Trains `exp` into `dir` (experiment.toml, log.jsonl, checkpoint.safetensors) with a
/// progress bar in `mp`.
pub fn execute(
    label: &str,
    exp: &Experiment,
    dir: &Path,
    resume: bool,
    mp: &indicatif::MultiProgress,
) -> anyhow::Result<RunOutput> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let toml = toml::to_string(exp)?;
    write_atomic(&dir.join("experiment.toml"), toml.as_bytes())?;
    let mut tr = exp
        .trainer()
        .with_context(|| format!("building run '{label}'"))?;
    let bar = mp.add(indicatif::ProgressBar::new(exp.train.steps));
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{prefix:>22} {bar:28} {pos:>5}/{len} {elapsed_precise} {msg}",
    )?);
    bar.set_prefix(label.to_string());
    let opts = RunOptions {
        log: Some(dir.join("log.jsonl")),
        checkpoint: Some(dir.join("checkpoint.safetensors")),
        resume,
        stop_after: None,
    };
    let result = train::run(&mut tr, &exp.task, &opts, |e| match e {
        Event::Step(s) => bar.set_position(s.step),
        Event::Eval(ev) => bar.set_message(format!("in-context loss {:.3}", ev.in_context_loss)),
        Event::Resumed(s) => {
            bar.set_position(s);
            bar.println(format!("{label}: resumed at step {s}"));
        }
    })
    .with_context(|| format!("training '{label}'"))?;
    bar.finish();
    let summary = Summary::of(&result, threshold(&exp.task));
    Ok(RunOutput {
        label: label.to_string(),
        exp: exp.clone(),
        toml,
        result,
        summary,
        model: tr.snapshot()?,
        dir: dir.to_path_buf(),
    })
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
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&exp.name));
    let mp = indicatif::MultiProgress::new();
    let run = execute(&exp.name, &exp, &out, a.resume, &mp)?;
    let source = std::fs::read_to_string(&a.experiment).unwrap_or_default();
    let html = training_report::write(
        &out,
        &format!("patchclamp train {}", a.experiment.display()),
        &[run],
        Some((&a.experiment, &source)),
    )?;
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("report: {}", html.display());
    }
    Ok(())
}
