//! The analyses of the CLI (`lens`, `dla`, `heads`, `extremes`, `trace`) from Python: each
//! calls the same lab function, builds the same outcome, and — given a folder — writes the
//! same files (result.json, result.safetensors, figures, report.html).

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::PyArrayDyn;
use patchclamp_lab::analysis::dla::{direct_logit_attribution, LogitDirection};
use patchclamp_lab::analysis::extremes::{extremes as find_extremes, ExtremeSpec};
use patchclamp_lab::analysis::heads::{head_report, HeadProbe};
use patchclamp_lab::analysis::lens::logit_lens;
use patchclamp_lab::causal::patching::Metric;
use patchclamp_lab::causal::tracing::{trace as run_trace, TraceConfig, TraceKind};
use patchclamp_lab::util::interrupt;
use patchclamp_report::outcomes::{
    DlaOutcome, ExtremesOutcome, HeadsOutcome, LensOutcome, TraceOutcome,
};
use patchclamp_report::{Outcome, Page, RunDir};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::model::Model;
use crate::{arrays, errors};

/// What an analysis returns: its result as JSON, its summary lines, and its grids by name.
type Analysed<'py> = (String, String, HashMap<String, Bound<'py, PyArrayDyn<f32>>>);

/// The outcome as JSON, summary and grids; written into `out` (a new run folder) when given.
fn finish<'py>(
    py: Python<'py>,
    m: &Model,
    command: &str,
    outcome: &impl Outcome,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    let s = &m.subject;
    let vocab = s.vocab();
    if let Some(out) = out {
        patchclamp_report::run_dir::outside_model(&out, &s.home).map_err(errors::report)?;
        let mut run = RunDir::create(&out, command, force).map_err(errors::report)?;
        patchclamp_report::write_outcome(&mut run, outcome, &vocab, &m.spec)
            .map_err(errors::report)?;
        run.finish().map_err(errors::report)?;
    }
    let json = serde_json::to_string(outcome).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut page = Page::default();
    outcome.figures(&vocab, &mut page).map_err(errors::report)?;
    let mut grids = HashMap::new();
    for (name, shape, values) in page.tensors {
        let t = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
            .map_err(errors::candle)?;
        grids.insert(name, arrays::to_numpy(py, &t)?);
    }
    Ok((json, outcome.summary_lines(&vocab).join("\n"), grids))
}

/// Prompts checked against the model.
fn checked(m: &Model, prompts: &[Vec<u32>]) -> PyResult<()> {
    if prompts.is_empty() {
        return Err(PyValueError::new_err("give at least one prompt"));
    }
    for p in prompts {
        m.subject.ids(p).map_err(errors::report)?;
    }
    Ok(())
}

/// The logit lens of each prompt: the top tokens of every layer at every position, and the
/// probabilities of `track`.
#[pyfunction]
#[pyo3(signature = (model, prompts, texts, top_k = 5, track = vec![], out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn lens<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    texts: Vec<String>,
    top_k: usize,
    track: Vec<u32>,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    let m = &model.subject.model;
    let lens = py
        .detach(|| {
            prompts
                .iter()
                .map(|p| logit_lens(m, p, top_k, &track))
                .collect::<patchclamp_lab::Result<Vec<_>>>()
        })
        .map_err(errors::lab)?;
    let outcome = LensOutcome {
        model: model.spec.clone(),
        prompts: texts,
        lens,
        latent: None,
    };
    finish(py, model, "lens", &outcome, out, force)
}

/// Direct logit attribution of `answer` (minus `wrong`) to every head and MLP.
#[pyfunction]
#[pyo3(signature = (model, prompts, texts, answer, answer_label, wrong = None, wrong_label = None, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn dla<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    texts: Vec<String>,
    answer: u32,
    answer_label: String,
    wrong: Option<u32>,
    wrong_label: Option<String>,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    let m = &model.subject.model;
    let dir = LogitDirection {
        target: model.subject.ids(&[answer]).map_err(errors::report)?[0],
        baseline: wrong
            .map(|w| model.subject.ids(&[w]).map(|v| v[0]))
            .transpose()
            .map_err(errors::report)?,
    };
    let dla = py
        .detach(|| direct_logit_attribution(m, &prompts, dir))
        .map_err(errors::lab)?;
    let outcome = DlaOutcome {
        model: model.spec.clone(),
        target: answer_label,
        baseline: wrong_label,
        prompts: texts,
        dla,
    };
    finish(py, model, "dla", &outcome, out, force)
}

/// Every head detector (previous-token, induction, duplicate, sink, copying, composition).
#[pyfunction]
#[pyo3(signature = (model, n = 64, block = 24, repeats = 2, seed = 0, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn heads<'py>(
    py: Python<'py>,
    model: &Model,
    n: usize,
    block: usize,
    repeats: usize,
    seed: u64,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    let m = &model.subject.model;
    let mut probe = HeadProbe::for_model(m, block);
    probe.n = n;
    probe.repeats = repeats;
    probe.seed = seed;
    let heads = py.detach(|| head_report(m, &probe)).map_err(errors::lab)?;
    let outcome = HeadsOutcome {
        model: model.spec.clone(),
        heads,
    };
    finish(py, model, "heads", &outcome, out, force)
}

/// Attention sinks, value drains, residual peaks and massive activations.
#[pyfunction]
#[pyo3(signature = (model, prompts, triggers = vec![], abs_min = 100.0, ratio = 1000.0, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn extremes<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    triggers: Vec<u32>,
    abs_min: f32,
    ratio: f32,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    let m = &model.subject.model;
    let spec = ExtremeSpec {
        triggers,
        abs_min,
        ratio,
    };
    let extremes = py
        .detach(|| find_extremes(m, &prompts, &spec))
        .map_err(errors::lab)?;
    let outcome = ExtremesOutcome {
        model: model.spec.clone(),
        extremes,
        spec,
    };
    finish(py, model, "extremes", &outcome, out, force)
}

/// ROME causal tracing of `prompt`: the subject's positions noised, each (layer, position)
/// restored in turn; Ctrl-C stops between batches.
#[pyfunction]
#[pyo3(signature = (model, prompt, text, subject, answer, kind = "hidden", window = None, samples = 10, noise = None, seed = 0, severed = false, batch = None, out = None, force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn trace<'py>(
    py: Python<'py>,
    model: &Model,
    prompt: Vec<u32>,
    text: String,
    subject: Vec<usize>,
    answer: u32,
    kind: &str,
    window: Option<usize>,
    samples: usize,
    noise: Option<f64>,
    seed: u64,
    severed: bool,
    batch: Option<usize>,
    out: Option<PathBuf>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Analysed<'py>> {
    checked(model, std::slice::from_ref(&prompt))?;
    let answer = model.subject.ids(&[answer]).map_err(errors::report)?[0];
    let trace_kind = match kind {
        "hidden" => TraceKind::Hidden,
        "mlp" => TraceKind::Mlp,
        "attn" => TraceKind::Attn,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown kind {other:?}; use \"hidden\", \"mlp\" or \"attn\""
            )))
        }
    };
    if noise == Some(0.0) {
        return Err(PyValueError::new_err(
            "noise=0 corrupts nothing, so every indirect effect is 0; give a positive standard deviation or None",
        ));
    }
    let m = &model.subject.model;
    let cfg = TraceConfig {
        subject,
        kind: trace_kind,
        // ROME's default of 10 layers, on a model with fewer, is all of them.
        window: window.unwrap_or(if trace_kind == TraceKind::Hidden {
            1
        } else {
            10.min(m.cfg.n_layers)
        }),
        samples,
        noise,
        seed,
        metric: Metric::Prob { answer },
        severed,
        batch: batch.unwrap_or(patchclamp_lab::causal::patching::default_batch(
            prompt.len(),
        )),
    };
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let r = py.detach(|| {
        run_trace(m, &prompt, &cfg, |done, total| {
            crate::causal::step(&raised, progress.as_ref(), done, total)
        })
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let r = r.map_err(errors::lab)?;
    let outcome = TraceOutcome::new(&model.spec, &text, prompt, r, &model.subject.vocab(), kind);
    finish(py, model, "trace", &outcome, out, force)
}
