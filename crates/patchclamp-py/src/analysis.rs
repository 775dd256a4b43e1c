//! The analyses of the CLI (`lens`, `dla`, `heads`, `extremes`, `trace`) from Python: each
//! calls the same lab function, builds the same outcome, and — given a folder — writes the
//! same files (result.json, result.safetensors, figures, report.html).

use std::collections::HashMap;
use std::path::PathBuf;

use numpy::PyArrayDyn;
use patchclamp_core::HookPoint;
use patchclamp_lab::analysis::dla::{direct_logit_attribution, LogitDirection};
use patchclamp_lab::analysis::extremes::{extremes as find_extremes, ExtremeSpec};
use patchclamp_lab::analysis::heads::{head_report, HeadProbe};
use patchclamp_lab::analysis::hydra::hydra as run_hydra;
use patchclamp_lab::analysis::lens::logit_lens;
use patchclamp_lab::analysis::linear_probe::{
    probe_points, tcav_of_labels, FitSpec, Pooling, TcavSets,
};
use patchclamp_lab::analysis::neurons::{
    ablate_against_random, census_study, localize as find_units, pooled_units, StudySpec,
};
use patchclamp_lab::causal::patching::Metric;
use patchclamp_lab::causal::tracing::{trace as run_trace, TraceConfig, TraceKind};
use patchclamp_lab::util::interrupt;
use patchclamp_report::outcomes::{
    DlaOutcome, ExtremesOutcome, HeadsOutcome, HydraOutcome, LensOutcome, LocalizeOutcome,
    NeuronsOutcome, ProbeOutcome, TraceOutcome,
};
use patchclamp_report::{Outcome, Page, RunDir};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::model::Model;
use crate::{arrays, errors};

/// What an analysis returns: its result as JSON, its summary lines, and its grids by name.
pub type Analysed<'py> = (String, String, HashMap<String, Bound<'py, PyArrayDyn<f32>>>);

/// The outcome as JSON, summary and grids; written into `out` (a new run folder) when given.
pub fn finish<'py>(
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

/// The direction `answer` (minus `wrong`) is read along, checked against the vocabulary.
fn direction(m: &Model, answer: u32, wrong: Option<u32>) -> PyResult<LogitDirection> {
    let s = &m.subject;
    Ok(LogitDirection {
        target: s.ids(&[answer]).map_err(errors::report)?[0],
        baseline: wrong
            .map(|w| s.ids(&[w]).map(|v| v[0]))
            .transpose()
            .map_err(errors::report)?,
    })
}

/// The MLP neuron census streamed over `prompts` (dead, lazy, token / bigram / positional
/// detectors; LAPE and average-precision experts when prompts carry labels); Ctrl-C stops
/// between batches.
#[pyfunction]
#[pyo3(signature = (model, prompts, labels, batch = 16, top = 10, lape_top_rate = 0.01, out = None, force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn neurons<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    labels: Vec<Option<String>>,
    batch: usize,
    top: usize,
    lape_top_rate: f64,
    out: Option<PathBuf>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    if labels.len() != prompts.len() {
        return Err(PyValueError::new_err(format!(
            "{} labels for {} prompts: give one per prompt (or none)",
            labels.len(),
            prompts.len()
        )));
    }
    let m = &model.subject.model;
    let stream: Vec<(Vec<u32>, Option<String>)> = prompts.into_iter().zip(labels).collect();
    let total: usize = stream.iter().map(|(p, _)| p.len()).sum();
    let spec = StudySpec {
        batch,
        top,
        lape_top_rate,
    };
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let mut done = 0usize;
    let r = py.detach(|| {
        census_study(m, &stream, &spec, |n| {
            done += n as usize;
            crate::causal::step(&raised, progress.as_ref(), done, total)
        })
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let outcome = NeuronsOutcome {
        model: model.spec.clone(),
        study: r.map_err(errors::lab)?,
        d_mlp: m.cfg.d_mlp(),
    };
    finish(py, model, "neurons", &outcome, out, force)
}

/// The localizer: the `fraction` of units (`"resid_post"` or `"mlp_post"`, pooled over
/// positions and layers) that respond more to `stimuli` than to `control` (Welch t), and with
/// `eval` prompts the loss increase of ablating them against `random_draws` random sets.
#[pyfunction]
#[pyo3(signature = (model, stimuli, control, units = "resid_post", fraction = 0.01, eval = None, random_draws = 10, seed = 0, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn localize<'py>(
    py: Python<'py>,
    model: &Model,
    stimuli: Vec<Vec<u32>>,
    control: Vec<Vec<u32>>,
    units: &str,
    fraction: f64,
    eval: Option<Vec<Vec<u32>>>,
    random_draws: usize,
    seed: u64,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &stimuli)?;
    checked(model, &control)?;
    if let Some(e) = &eval {
        checked(model, e)?;
    }
    let m = &model.subject.model;
    let cfg = &m.cfg;
    let (point, width): (fn(usize) -> HookPoint, usize) = match units {
        "resid_post" => (HookPoint::ResidPost, cfg.d_model),
        "mlp_post" if cfg.has_mlp() => (HookPoint::MlpPost, cfg.d_mlp()),
        "mlp_post" => {
            return Err(PyValueError::new_err(
                "units=\"mlp_post\": this model has no MLPs",
            ))
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown units {other:?}; use \"resid_post\" or \"mlp_post\""
            )))
        }
    };
    let (localized, ablation) = py
        .detach(|| -> patchclamp_lab::Result<_> {
            let xa = pooled_units(m, &stimuli, point)?;
            let xb = pooled_units(m, &control, point)?;
            let localized = find_units(&xa, &xb, width, fraction)?;
            let ablation = match &eval {
                Some(seqs) => Some(ablate_against_random(
                    m,
                    seqs,
                    &localized.units,
                    point,
                    width,
                    (random_draws, seed),
                    || {},
                )?),
                None => None,
            };
            Ok((localized, ablation))
        })
        .map_err(errors::lab)?;
    let outcome = LocalizeOutcome {
        model: model.spec.clone(),
        units: units.to_string(),
        fraction,
        localized,
        ablation,
    };
    finish(py, model, "localize", &outcome, out, force)
}

/// Linear probes on labelled prompts (held-out accuracy at each `points`, default every block's
/// output), or — given `tcav = (concept, random, class, inputs)` — TCAV of the concept label
/// for the class token at the one point, with its random-concept test.
#[pyfunction]
#[pyo3(signature = (model, prompts, labels, points = None, pooling = "last", test_fraction = 0.25, seed = 0, tcav = None, tcav_runs = 10, out = None, force = false))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn probe<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    labels: Vec<Option<String>>,
    points: Option<Vec<String>>,
    pooling: &str,
    test_fraction: f64,
    seed: u64,
    tcav: Option<(String, String, u32, String, Option<String>)>,
    tcav_runs: usize,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    if labels.len() != prompts.len() {
        return Err(PyValueError::new_err(format!(
            "{} labels for {} prompts: give one per prompt",
            labels.len(),
            prompts.len()
        )));
    }
    let m = &model.subject.model;
    let pooling = match pooling {
        "last" => Pooling::Last,
        "mean" => Pooling::Mean,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown pooling {other:?}; use \"last\" or \"mean\""
            )))
        }
    };
    let points: Vec<HookPoint> = match &points {
        Some(names) => names
            .iter()
            .map(|n| crate::hooks::point(m, n))
            .collect::<PyResult<_>>()?,
        None => (0..m.cfg.n_layers).map(HookPoint::ResidPost).collect(),
    };
    let mut outcome = ProbeOutcome {
        model: model.spec.clone(),
        pooling: format!("{pooling:?}").to_lowercase(),
        probes: None,
        tcav: None,
        tcav_question: None,
    };
    match tcav {
        None => {
            let probes = py
                .detach(|| {
                    probe_points(
                        m,
                        &prompts,
                        &labels,
                        &points,
                        pooling,
                        (test_fraction, seed),
                        FitSpec::default(),
                        || {},
                    )
                })
                .map_err(errors::lab)?;
            outcome.probes = Some(probes);
        }
        Some((concept, random, class_id, class_label, inputs)) => {
            if points.len() != 1 {
                return Err(PyValueError::new_err(
                    "TCAV reads one point: give points=[NAME]",
                ));
            }
            let class_id = model.subject.ids(&[class_id]).map_err(errors::report)?[0];
            let sets = TcavSets {
                concept: &concept,
                random: &random,
                inputs: inputs.as_deref(),
            };
            let labelled: Vec<(Vec<u32>, Option<String>)> =
                prompts.into_iter().zip(labels).collect();
            let t = py
                .detach(|| {
                    tcav_of_labels(m, &labelled, &sets, points[0], class_id, (tcav_runs, seed))
                })
                .map_err(errors::lab)?;
            outcome.tcav = Some(t);
            outcome.tcav_question = Some((concept.clone(), class_label, points[0].to_string()));
        }
    }
    finish(py, model, "probe", &outcome, out, force)
}

/// Hydra: each layer's direct against its total effect when ablated (resampled from
/// `sources`), and which later layers compensate.
#[pyfunction]
#[pyo3(signature = (model, prompts, texts, sources, source_texts, answer, wrong = None, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn hydra<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    texts: Vec<String>,
    sources: Vec<Vec<u32>>,
    source_texts: Vec<String>,
    answer: u32,
    wrong: Option<u32>,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<Analysed<'py>> {
    checked(model, &prompts)?;
    checked(model, &sources)?;
    let dir = direction(model, answer, wrong)?;
    let m = &model.subject.model;
    let h = py
        .detach(|| run_hydra(m, &prompts, &sources, dir))
        .map_err(errors::lab)?;
    let outcome = HydraOutcome {
        model: model.spec.clone(),
        prompts: texts,
        sources: source_texts,
        hydra: h,
    };
    finish(py, model, "hydra", &outcome, out, force)
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
    let dir = direction(model, answer, wrong)?;
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
