//! `patchclamp.lab.train`: an experiment trained into a run folder, as `patchclamp train`.

use std::path::{Path, PathBuf};

use patchclamp_lab::experiment::Experiment;
use patchclamp_lab::train::{Event, Resume};
use patchclamp_lab::util::interrupt;
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
