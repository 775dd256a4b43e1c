//! Training one experiment to the end: the trainer's loop, its summary, its final weights.

use std::path::PathBuf;

use patchclamp_core::Model;

use super::Experiment;
use crate::error::Result;
use crate::train::{self, Event, RunOptions, RunResult, Summary, Trainer};

/// A finished run: what it was, what it measured, and its final weights.
pub struct FinishedRun {
    /// The run's name in tables and figures.
    pub label: String,
    /// The experiment, as resolved (overrides applied).
    pub exp: Experiment,
    /// The experiment as TOML, exactly as saved beside the run.
    pub toml: String,
    /// Every step and evaluation record.
    pub result: RunResult,
    /// The headline numbers (none for a run without evaluations).
    pub summary: Option<Summary>,
    /// The trained weights.
    pub model: Model,
    /// The run's folder.
    pub dir: PathBuf,
}

/// Trains `tr` (built from `exp`) to its last step, logging and checkpointing as `opts` says.
pub fn train_experiment(
    label: &str,
    exp: &Experiment,
    mut tr: Trainer,
    opts: &RunOptions,
    dir: PathBuf,
    on_event: impl FnMut(Event),
) -> Result<FinishedRun> {
    let result = train::run(&mut tr, &exp.task, opts, on_event)?;
    let summary = Summary::of(&result, exp.task.phase_threshold());
    Ok(FinishedRun {
        label: label.to_string(),
        exp: exp.clone(),
        toml: toml::to_string(exp).map_err(|e| crate::Error::Input(e.to_string()))?,
        result,
        summary,
        model: tr.snapshot()?,
        dir,
    })
}
