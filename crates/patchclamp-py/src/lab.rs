//! `patchclamp.lab`: an experiment trained into a run folder, as `patchclamp train`, and the
//! lab's calibrated experiments, as `patchclamp lab`.

use std::path::{Path, PathBuf};

use patchclamp_lab::experiment::Experiment;
use patchclamp_lab::train::{Event, Resume};
use patchclamp_lab::util::interrupt;
use patchclamp_report::lab_run::{self, LabEvent, LabRequest};
use patchclamp_report::train_run::{self, TrainRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors;

/// The lab's calibrated experiments by name (`"induction"`: the flagship's three runs,
/// `"singh"`), as (label, experiment JSON) pairs.
#[pyfunction]
#[pyo3(signature = (name, seed = 0, steps = None))]
pub fn presets(name: &str, seed: u64, steps: Option<u64>) -> PyResult<Vec<(String, String)>> {
    use patchclamp_lab::experiment::presets;
    let runs = match name {
        "induction" => presets::induction(seed, steps.unwrap_or(1500)),
        "singh" => presets::singh(seed, steps.unwrap_or(2000)),
        other => {
            return Err(PyValueError::new_err(format!(
                "no preset {other:?}; the lab has \"induction\" and \"singh\""
            )))
        }
    };
    runs.into_iter()
        .map(|(label, exp)| {
            let json =
                serde_json::to_string(&exp).map_err(|e| PyValueError::new_err(e.to_string()))?;
            Ok((label, json))
        })
        .collect()
}

/// Trains an experiment (a TOML file's path, or the experiment as JSON when `is_json`) into
/// `out` (default `runs/NAME`); `progress(kind, step, value)` sees every step (`"step"`, loss)
/// and evaluation (`"eval"`, in-context loss). Ctrl-C stops after the current step with a
/// checkpoint, so `resume="required"` continues from there. Returns the run folder and its
/// summary JSON.
#[pyfunction]
#[pyo3(signature = (experiment, is_json = false, out = None, steps = None, seed = None, resume = "no", force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    experiment: &str,
    is_json: bool,
    out: Option<PathBuf>,
    steps: Option<u64>,
    seed: Option<u64>,
    resume: &str,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<(PathBuf, String)> {
    let (path, text, mut exp) = if is_json {
        let exp: Experiment = serde_json::from_str(experiment)
            .map_err(|e| PyValueError::new_err(format!("experiment: {e}")))?;
        (PathBuf::from("<experiment>"), String::new(), exp)
    } else {
        let p = PathBuf::from(experiment);
        let text = patchclamp_report::read_spec(&p).map_err(errors::report)?;
        let exp = Experiment::from_toml(&text, &p).map_err(errors::lab)?;
        (p, text, exp)
    };
    if let Some(s) = steps {
        exp.train.steps = s;
    }
    if let Some(s) = seed {
        exp.train.seed = s;
        exp.model.init_seed = s;
    }
    let resume = match resume {
        "no" => Resume::No,
        "required" => Resume::Required,
        "if_present" => Resume::IfPresent,
        other => {
            return Err(PyValueError::new_err(format!(
                "resume={other:?}: use \"no\", \"required\" or \"if_present\""
            )))
        }
    };
    let out = out.unwrap_or_else(|| Path::new("runs").join(&exp.name));
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let source = (!is_json).then_some((path.as_path(), text.as_str()));
    let r = py.detach(|| {
        train_run::train(
            TrainRequest {
                exp,
                source,
                command: format!("patchclamp.lab.train({:?})", path.display().to_string()),
                out,
                resume,
                force,
            },
            |_, e| {
                let (kind, step, value) = match e {
                    Event::Step(s) => ("step", s.step, s.loss as f64),
                    Event::Eval(ev) => ("eval", ev.step, ev.in_context_loss as f64),
                    Event::Resumed(s) => ("resumed", s, f64::NAN),
                };
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|_| match &progress {
                        Some(f) => f.call1(py, (kind, step, value)).map(|_| ()),
                        None => Ok(()),
                    });
                    if let Err(e) = r {
                        raised.set(e);
                        interrupt::request();
                    }
                })
            },
        )
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let done = r.map_err(errors::report)?;
    Ok((done.dir, done.summary))
}

/// The lab's experiments as (name, description) pairs, as `patchclamp lab` lists them.
#[pyfunction]
pub fn experiments() -> Vec<(&'static str, &'static str)> {
    lab_run::EXPERIMENTS.to_vec()
}

/// Runs one of the lab's experiments into `out` (default `runs/NAME`), as `patchclamp lab
/// NAME`; `clamp` is a TOML file with `[[interventions]]` (or, with `clamp_is_json`, a JSON
/// list of interventions) to train one more run under. `progress(label, kind, step, value)`
/// sees each run's start (`"start"`, its length), steps (`"step"`, loss), evaluations
/// (`"eval"`, in-context loss) and a protocol's stages (`"stage"`). Ctrl-C stops the runs
/// after their current step. Returns the folder, its main page and the summary lines.
#[pyfunction]
#[pyo3(name = "lab_run", signature = (name, out = None, seed = 0, steps = None, clamp = None, clamp_is_json = false, force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_lab(
    py: Python<'_>,
    name: &str,
    out: Option<PathBuf>,
    seed: u64,
    steps: Option<u64>,
    clamp: Option<String>,
    clamp_is_json: bool,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<(PathBuf, PathBuf, Vec<String>)> {
    let clamp = match clamp {
        None => None,
        Some(text) if clamp_is_json => Some(crate::hooks::interventions(&text)?),
        Some(path) => Some(lab_run::read_clamp(Path::new(&path)).map_err(errors::report)?),
    };
    let req = LabRequest {
        command: format!("patchclamp.lab.run({name:?})"),
        name: name.to_string(),
        seed,
        steps,
        out: out.unwrap_or_else(|| Path::new("runs").join(name)),
        clamp,
        force,
    };
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let call = |label: &str, kind: &str, step: u64, value: f64| {
        if let Some(f) = &progress {
            Python::attach(|py| {
                if let Err(e) = f.call1(py, (label, kind, step, value)) {
                    raised.set(e);
                    interrupt::request();
                }
            })
        }
    };
    let on_event = |e: LabEvent| match e {
        LabEvent::Start { label, steps } => call(label, "start", 0, steps as f64),
        LabEvent::Train { label, event } => match event {
            Event::Step(s) => call(label, "step", s.step, s.loss as f64),
            Event::Eval(ev) => call(label, "eval", ev.step, ev.in_context_loss as f64),
            Event::Resumed(s) => call(label, "resumed", s, f64::NAN),
        },
        LabEvent::Stage(stage) => call(stage, "stage", 0, f64::NAN),
    };
    // The runs train on worker threads, where Python cannot see signals: this thread waits
    // for them and turns a Ctrl-C into the engine's interrupt.
    let r = py.detach(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(move || lab_run::run(req, on_event));
            while !worker.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    raised.set(e);
                    interrupt::request();
                }
            }
            worker.join().unwrap_or_else(|_| {
                Err(patchclamp_report::Error::Input(
                    "the lab thread panicked".into(),
                ))
            })
        })
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let done = r.map_err(errors::report)?;
    Ok((done.dir, done.report, done.lines))
}
