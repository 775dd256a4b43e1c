//! Activation-patching sweeps and attribution patching, as the CLI's `patch` and `attribute`.

use patchclamp_lab::causal::attribution::attribute;
use patchclamp_lab::causal::patching::{
    default_batch, sweep, Direction, Metric, PatchingConfig, Site,
};
use patchclamp_lab::util::interrupt;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors;
use crate::model::Model;

/// The site, direction and metric of a sweep from their Python spellings.
fn settings(site: &str, metric: &str, noising: bool) -> PyResult<(Site, Direction, Metric)> {
    let site: Site = serde_json::from_value(serde_json::Value::String(site.into())).map_err(|_| {
        PyValueError::new_err(format!("unknown site '{site}'; use resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v or pattern"))
    })?;
    let metric: Metric =
        serde_json::from_str(metric).map_err(|e| PyValueError::new_err(format!("metric: {e}")))?;
    let direction = if noising {
        Direction::Noise
    } else {
        Direction::Denoise
    };
    Ok((site, direction, metric))
}

/// Checks the prompts against the model (vocabulary, context).
fn check(m: &Model, clean: &[u32], corrupt: &[u32]) -> PyResult<()> {
    m.subject.ids(clean).map_err(errors::report)?;
    m.subject.ids(corrupt).map_err(errors::report)?;
    Ok(())
}

/// A patching sweep's result as JSON (the lab's `PatchingResult`).
fn json(r: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(r).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Patches every layer × position (or head) of `site` from one run into the other; Ctrl-C
/// stops between batches.
#[pyfunction]
#[pyo3(signature = (model, clean, corrupt, site, metric, noising = false, batch = None, window = 1, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn patching_sweep(
    py: Python<'_>,
    model: &Model,
    clean: Vec<u32>,
    corrupt: Vec<u32>,
    site: &str,
    metric: &str,
    noising: bool,
    batch: Option<usize>,
    window: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    check(model, &clean, &corrupt)?;
    let (site, direction, metric) = settings(site, metric, noising)?;
    let m = &model.subject.model;
    patchclamp_lab::causal::patching::check_window(window, m.cfg.n_layers).map_err(errors::lab)?;
    let cfg = PatchingConfig {
        site,
        direction,
        metric,
        batch: batch.unwrap_or(default_batch(clean.len())),
        window,
    };
    if cfg.batch == 0 {
        return Err(PyValueError::new_err("batch must be at least 1"));
    }
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let r = py.detach(|| {
        sweep(m, &clean, &corrupt, &cfg, |done, total| {
            step(&raised, progress.as_ref(), done, total)
        })
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    json(&r.map_err(errors::lab)?)
}

/// One step of a long loop: the progress callback, then a pending Ctrl-C (or the callback's
/// exception) asks the loop to stop at this boundary.
pub fn step(
    raised: &crate::hooks::Raised,
    progress: Option<&Py<PyAny>>,
    done: usize,
    total: usize,
) {
    Python::attach(|py| {
        let r = py.check_signals().and_then(|_| match progress {
            Some(f) => f.call1(py, (done, total)).map(|_| ()),
            None => Ok(()),
        });
        if let Err(e) = r {
            raised.set(e);
            interrupt::request();
        }
    })
}

/// First-order estimates of every patch of `site` from two forwards and one backward.
#[pyfunction]
#[pyo3(signature = (model, clean, corrupt, site, metric, noising = false))]
pub fn attribution_sweep(
    py: Python<'_>,
    model: &Model,
    clean: Vec<u32>,
    corrupt: Vec<u32>,
    site: &str,
    metric: &str,
    noising: bool,
) -> PyResult<String> {
    check(model, &clean, &corrupt)?;
    let (site, direction, metric) = settings(site, metric, noising)?;
    let m = &model.subject.model;
    let r = py.detach(|| attribute(m, &clean, &corrupt, site, direction, metric));
    json(&r.map_err(errors::lab)?)
}
