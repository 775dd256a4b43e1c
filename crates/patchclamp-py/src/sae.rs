//! `patchclamp.sae`: SAELens folders loaded, encoded and decoded; SAEs trained and evaluated
//! into run folders, as `patchclamp sae train` / `sae eval` do.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use patchclamp_lab::sae::train::TrainSpec;
use patchclamp_lab::util::interrupt;
use patchclamp_report::sae_run::{self, SaeTrainEvent, SaeTrainRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::model::{device, Model};
use crate::{arrays, errors};

/// An SAE (or transcoder) in SAELens's format.
#[pyclass(frozen, module = "patchclamp._native")]
pub struct Sae {
    pub inner: Arc<patchclamp_core::Sae>,
}

#[pymethods]
impl Sae {
    /// Reads a SAELens folder (cfg.json, sae_weights.safetensors, …).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Sae> {
        let sae = py
            .detach(|| patchclamp_core::Sae::load(&path, &device()))
            .map_err(errors::core)?;
        Ok(Sae {
            inner: Arc::new(sae),
        })
    }

    /// The configuration as cfg.json's text (v6 layout).
    fn cfg_json(&self) -> String {
        self.inner.cfg.to_json()
    }

    /// SAELens's architecture name.
    fn architecture(&self) -> &'static str {
        self.inner.cfg.architecture_name()
    }

    /// A weight by SAELens's name (`W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold`, …).
    fn weight<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
        let s = &*self.inner;
        let t = match name {
            "W_enc" => Some(&s.w_enc),
            "b_enc" => s.b_enc.as_ref(),
            "W_dec" => Some(&s.w_dec),
            "b_dec" => Some(&s.b_dec),
            "threshold" => s.threshold.as_ref(),
            "W_skip" => s.w_skip.as_ref(),
            "b_gate" => s.gated.as_ref().map(|g| &g.b_gate),
            "r_mag" => s.gated.as_ref().map(|g| &g.r_mag),
            "b_mag" => s.gated.as_ref().map(|g| &g.b_mag),
            "sparsity" => s.sparsity.as_ref(),
            other => return Err(PyValueError::new_err(format!("no SAE weight {other:?}"))),
        };
        t.map(|t| arrays::to_numpy(py, t)).transpose()
    }

    /// The latents `[..., d_sae]` of activations `[..., d_in]` (`[..., heads, d_head]` for hook_z).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = arrays::from_numpy(&x, &device())?;
        let out = py.detach(|| self.inner.encode(&t)).map_err(errors::core)?;
        arrays::to_numpy(py, &out)
    }

    /// The reconstruction `[..., d_out]` of latents (normalisation undone where it can be:
    /// constant-norm and layer-norm SAEs need their input, so `forward` is the way there).
    fn decode<'py>(
        &self,
        py: Python<'py>,
        acts: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = arrays::from_numpy(&acts, &device())?;
        let s = &*self.inner;
        if *t.dims().last().unwrap_or(&0) != s.cfg.d_sae {
            return Err(PyValueError::new_err(format!(
                "decode takes [..., d_sae = {}] latents, got shape {:?}",
                s.cfg.d_sae,
                t.dims()
            )));
        }
        if !matches!(s.cfg.normalize, patchclamp_core::sae::Normalize::None) {
            return Err(PyValueError::new_err(
                "this SAE normalises each input: decode needs the input's statistics; use forward(x)",
            ));
        }
        let out = py
            .detach(|| {
                s.recons(&t)
                    .and_then(|r| s.finish(&r, &patchclamp_core::sae::NormState::None, None))
            })
            .map_err(errors::core)?;
        arrays::to_numpy(py, &out)
    }

    /// The reconstruction of activations in their own shape (SAELens's forward, no error term).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let t = arrays::from_numpy(&x, &device())?;
        let out = py.detach(|| self.inner.forward(&t)).map_err(errors::core)?;
        arrays::to_numpy(py, &out)
    }

    /// Writes the SAE as a SAELens folder.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(errors::core)
    }
}

/// Trains an SAE on `model`'s activations at `hook` harvested from `corpus` into `out`;
/// `spec` is the trainer's settings as JSON (`d_in` filled in here). `progress(step, steps,
/// l0, explained_variance, dead, tokens_per_s)` sees each step; Ctrl-C stops at a step with
/// the last checkpoint kept. Returns (folder, SAELens folder, summary lines, last step JSON).
#[pyfunction]
#[pyo3(signature = (model, hook, corpus, spec, out, context_size = 128, buffer_batches = 4, contexts_per_forward = 8, checkpoint_every = 500, log_every = 50, resume = false, force = false, progress = None, activations = None, eval_corpus = None, eval_every = 500, eval_contexts = 16))]
#[allow(clippy::too_many_arguments)]
pub fn sae_train(
    py: Python<'_>,
    model: &Model,
    hook: &str,
    corpus: PathBuf,
    spec: &str,
    out: PathBuf,
    context_size: usize,
    buffer_batches: usize,
    contexts_per_forward: usize,
    checkpoint_every: u64,
    log_every: u64,
    resume: bool,
    force: bool,
    progress: Option<Py<PyAny>>,
    activations: Option<PathBuf>,
    eval_corpus: Option<PathBuf>,
    eval_every: u64,
    eval_contexts: usize,
) -> PyResult<(PathBuf, PathBuf, Vec<String>, String)> {
    let cfg = &model.subject.model.cfg;
    let point = crate::hooks::point(&model.subject.model, hook)?;
    let mut v: serde_json::Value =
        serde_json::from_str(spec).map_err(|e| PyValueError::new_err(format!("spec: {e}")))?;
    let d_in: usize = point.shape(cfg, 1, 1)[2..].iter().product();
    v["d_in"] = d_in.into();
    let spec: TrainSpec =
        serde_json::from_value(v).map_err(|e| PyValueError::new_err(format!("spec: {e}")))?;
    let req = SaeTrainRequest {
        buffer: buffer_batches.max(1) * spec.batch,
        spec,
        hook: point,
        corpus,
        activations,
        context_size,
        contexts_per_forward,
        checkpoint_every,
        log_every,
        eval_corpus,
        eval_every,
        eval_contexts,
        out,
        resume,
        force,
        command: "patchclamp.sae.train".into(),
    };
    interrupt::clear();
    let raised = crate::hooks::Raised::default();
    let done = py.detach(|| {
        sae_run::train(&model.subject, req, |e| {
            if let (
                Some(f),
                SaeTrainEvent::Step {
                    stats,
                    tokens_per_s,
                },
            ) = (&progress, e)
            {
                Python::attach(|py| {
                    if let Err(err) = py.check_signals() {
                        raised.set(err);
                        interrupt::request();
                        return;
                    }
                    if let Err(err) = f.call1(
                        py,
                        (
                            stats.step,
                            stats.l0,
                            stats.explained_variance,
                            stats.dead,
                            tokens_per_s,
                        ),
                    ) {
                        raised.set(err);
                        interrupt::request();
                    }
                });
            } else {
                Python::attach(|py| {
                    if let Err(err) = py.check_signals() {
                        raised.set(err);
                        interrupt::request();
                    }
                });
            }
        })
    });
    interrupt::clear();
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let done = done.map_err(errors::report)?;
    let last =
        serde_json::to_string(&done.last).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((done.dir, done.sae, done.lines, last))
}

/// Evaluates the SAE folder `sae` on `model` over `contexts` contexts of `corpus`; writes a
/// report into `out` when given. Returns the outcome as JSON.
#[pyfunction]
#[pyo3(signature = (model, sae, corpus, contexts = 64, context_size = 128, batch = 8, out = None, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn sae_eval(
    py: Python<'_>,
    model: &Model,
    sae: PathBuf,
    corpus: PathBuf,
    contexts: usize,
    context_size: usize,
    batch: usize,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<String> {
    if contexts == 0 || batch == 0 {
        return Err(PyValueError::new_err("contexts and batch must be positive"));
    }
    let (outcome, _) = py
        .detach(|| {
            sae_run::evaluate(
                &model.subject,
                &sae,
                &corpus,
                context_size,
                contexts,
                batch,
                out.as_deref().map(|o| (o, force)),
                |_, _| {},
            )
        })
        .map_err(errors::report)?;
    serde_json::to_string(&outcome).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Feature dashboards of the SAE folder `sae` on `model` over `contexts` contexts of `corpus`,
/// written into `out`; returns the index page and the dashboards as JSON.
#[pyfunction]
#[pyo3(signature = (model, sae, corpus, out, latents = vec![], contexts = 64, context_size = 128, batch = 8, top = 20, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn sae_features(
    py: Python<'_>,
    model: &Model,
    sae: PathBuf,
    corpus: PathBuf,
    out: PathBuf,
    latents: Vec<usize>,
    contexts: usize,
    context_size: usize,
    batch: usize,
    top: usize,
    force: bool,
) -> PyResult<(PathBuf, String)> {
    if contexts == 0 || batch == 0 || top == 0 {
        return Err(PyValueError::new_err(
            "contexts, batch and top must be positive",
        ));
    }
    let spec = patchclamp_lab::sae::features::FeatureSpec {
        latents,
        top,
        ..Default::default()
    };
    let (index, _) = py
        .detach(|| {
            sae_run::features(
                &model.subject,
                &sae,
                &corpus,
                context_size,
                contexts,
                batch,
                &spec,
                &out,
                force,
                |_, _| {},
            )
        })
        .map_err(errors::report)?;
    let json = std::fs::read_to_string(out.join("result.json"))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((index, json))
}

/// Latents of `sae` ranked by mean activation on prompts `a` minus prompts `b` (token rows),
/// at each prompt's last token unless `mean`; returns the contrast as JSON.
#[pyfunction]
#[pyo3(signature = (model, sae, a, b, top = 10, mean = false))]
pub fn sae_contrast(
    py: Python<'_>,
    model: &Model,
    sae: &Sae,
    a: Vec<Vec<u32>>,
    b: Vec<Vec<u32>>,
    top: usize,
    mean: bool,
) -> PyResult<String> {
    if top == 0 {
        return Err(PyValueError::new_err("top must be at least 1"));
    }
    for row in a.iter().chain(&b) {
        model.subject.ids(row).map_err(errors::report)?;
    }
    let c = py
        .detach(|| {
            patchclamp_lab::sae::features::contrast(
                &model.subject.model,
                &sae.inner,
                &a,
                &b,
                !mean,
                top,
            )
        })
        .map_err(errors::lab)?;
    serde_json::to_string(&c).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Harvests `tokens` activations at `hook` from `corpus` into an activation store in `out`;
/// returns the folder and `store.json`'s text.
#[pyfunction]
#[pyo3(signature = (model, hook, corpus, tokens, out, context_size = 128, buffer = 16384, shard_rows = 65536, seed = 0, force = false))]
#[allow(clippy::too_many_arguments)]
pub fn sae_harvest(
    py: Python<'_>,
    model: &Model,
    hook: &str,
    corpus: PathBuf,
    tokens: u64,
    out: PathBuf,
    context_size: usize,
    buffer: usize,
    shard_rows: usize,
    seed: u64,
    force: bool,
) -> PyResult<(PathBuf, String)> {
    let point = crate::hooks::point(&model.subject.model, hook)?;
    let (dir, info) = py
        .detach(|| {
            sae_run::harvest(
                &model.subject,
                point,
                &corpus,
                tokens,
                context_size,
                buffer,
                shard_rows,
                seed,
                &out,
                force,
                |_, _| {},
            )
        })
        .map_err(errors::report)?;
    Ok((
        dir,
        serde_json::to_string(&info).map_err(|e| PyValueError::new_err(e.to_string()))?,
    ))
}
