//! Training an experiment into a run folder: what every face does for `train` (the CLI's
//! `patchclamp train`, Python's `patchclamp.lab.train`): validate, decide whether it resumes,
//! lock the folder, train, write the report, finish the manifest.

use std::path::{Path, PathBuf};

use patchclamp_lab::experiment::{train_experiment, Experiment, FinishedRun};
use patchclamp_lab::train::{check_resume, Event, Resume, RunOptions, Trainer};

use crate::error::{Error, Result};
use crate::run_dir::{RunDir, MANIFEST};

/// The run log's name in a run folder.
pub const LOG: &str = "log.jsonl";
/// The checkpoint's name in a run folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// A run ready to train: its trainer built from the experiment (so everything is validated)
/// before any file is touched.
pub struct Prepared {
    pub label: String,
    pub exp: Experiment,
    pub trainer: Trainer,
}

impl Prepared {
    /// Builds the trainer of `exp`.
    pub fn new(label: &str, exp: Experiment) -> Result<Prepared> {
        let trainer = exp
            .trainer()
            .map_err(|e| Error::Input(format!("building run '{label}': {e}")))?;
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
) -> Result<(RunOptions, PathBuf)> {
    let rel = |f: &str| {
        if sub.is_empty() {
            f.to_string()
        } else {
            format!("{sub}/{f}")
        }
    };
    let toml = toml::to_string(&p.exp).map_err(|e| Error::Input(e.to_string()))?;
    run.write(&rel("experiment.toml"), toml.as_bytes())?;
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

/// Whether the run in `out` is resumed: `resume` applied to what the folder holds, with the
/// checkpoint's identity, bytes and log checked before anything is touched (a refused resume
/// leaves the folder exactly as it was).
pub fn resumes(p: &Prepared, out: &Path, resume: Resume) -> Result<bool> {
    if resume == Resume::No {
        return Ok(false);
    }
    if resume == Resume::Required && !out.join(MANIFEST).is_file() {
        return Err(Error::NothingToResume {
            path: out.to_path_buf(),
        });
    }
    let opts = RunOptions {
        log: Some(out.join(LOG)),
        checkpoint: Some(out.join(CHECKPOINT)),
        resume,
        stop_after: None,
    };
    Ok(check_resume(&p.trainer, &opts)?.is_some())
}

/// One experiment to train into a folder.
pub struct TrainRequest<'a> {
    /// The experiment, overrides applied.
    pub exp: Experiment,
    /// The experiment file and its text, kept beside the run (None for one built in code).
    pub source: Option<(&'a Path, &'a str)>,
    /// The command line (or call) shown in the report.
    pub command: String,
    pub out: PathBuf,
    pub resume: Resume,
    /// Write beside files patchclamp did not write.
    pub force: bool,
}

/// A trained run folder: its report page and summary JSON.
pub struct Trained {
    pub dir: PathBuf,
    pub report: PathBuf,
    pub summary: String,
}

/// Trains `req` into its folder: validated and resume-checked before the folder is touched,
/// locked while it trains, the manifest written last. `train` runs the prepared trainer (a
/// face wraps it in a progress bar); `on_event` sees every step and evaluation.
pub fn train(req: TrainRequest<'_>, on_event: impl FnMut(&str, Event)) -> Result<Trained> {
    req.exp.validate()?;
    let prepared = Prepared::new(&req.exp.name.clone(), req.exp)?;
    let resumes = resumes(&prepared, &req.out, req.resume)?;
    let mut run = if resumes {
        RunDir::resume(&req.out, "train")?
    } else {
        RunDir::create(&req.out, "train", req.force)?
    };
    let resume = if resumes {
        Resume::Required
    } else {
        Resume::No
    };
    let (opts, dir) = register(&prepared, &mut run, "", resume)?;
    run.set_experiment_hash(prepared.exp.identity_hash())?;
    let done = execute(prepared, &opts, dir.clone(), on_event)?;
    let (report, summary) = crate::training::write(&mut run, &req.command, &[done], req.source)?;
    run.finish()?;
    Ok(Trained {
        dir,
        report,
        summary,
    })
}

/// Trains a prepared run to its end; `on_event(label, event)` sees its progress.
pub fn execute(
    p: Prepared,
    opts: &RunOptions,
    dir: PathBuf,
    mut on_event: impl FnMut(&str, Event),
) -> Result<FinishedRun> {
    let label = p.label.clone();
    train_experiment(&label, &p.exp, p.trainer, opts, dir, |e| {
        on_event(&label, e)
    })
    .map_err(|e| match e {
        patchclamp_lab::Error::Interrupted => Error::Lab(e),
        e => Error::Input(format!("training '{label}': {e}")),
    })
}
