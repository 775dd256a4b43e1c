//! `Model`: a loaded transformer with its tokenizer, run forward with hooks from Python.

use std::collections::HashMap;

use candle_core::Device;
use numpy::PyArrayDyn;
use patchclamp_core::{Input, Padding};
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::Subject;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::hooks::{self, Spec};
use crate::{arrays, errors};

/// A loaded model (weights, config, tokenizer) that every function of the package runs on.
#[pyclass(frozen, module = "patchclamp._native")]
pub struct Model {
    pub subject: Subject,
    /// What it was loaded from, as given (reports name the model by it).
    pub spec: String,
}

/// The device computations run on: the one place it is chosen.
pub fn device() -> Device {
    Device::Cpu
}

/// `(names, function)` pairs of `run_with_hooks`.
type Functions = Vec<(Vec<String>, Py<PyAny>)>;

/// What `forward` returns: logits and the recorded activations by name.
type Ran<'py> = (
    Bound<'py, PyArrayDyn<f32>>,
    HashMap<String, Bound<'py, PyArrayDyn<f32>>>,
);

impl Model {
    /// Token rows checked against the vocabulary and context, as one (right-padded) input.
    fn input(&self, tokens: &[Vec<u32>]) -> PyResult<Input> {
        for row in tokens {
            self.subject.ids(row).map_err(errors::report)?;
        }
        Input::batch(tokens, Padding::Right, 0, &device()).map_err(errors::core)
    }
}

#[pymethods]
impl Model {
    /// Loads a Hugging Face folder, a cached `ORG/NAME`, or a lab checkpoint; `processing`
    /// applies TransformerLens's weight processing (fold_ln, centring, value biases).
    #[staticmethod]
    #[pyo3(signature = (spec, processing = false))]
    fn load(py: Python<'_>, spec: String, processing: bool) -> PyResult<Model> {
        let subject = py
            .detach(|| Subject::load(&spec, processing, &device()))
            .map_err(errors::report)?;
        Ok(Model { subject, spec })
    }

    /// This model with `saes` `(sae, use_error_term)` spliced into every pass (the weights
    /// are shared, not copied): what the analyses run on when SAEs are attached.
    fn with_saes(&self, saes: Vec<(Py<crate::sae::Sae>, bool)>) -> PyResult<Model> {
        let mut subject = self.subject.clone();
        subject.model.saes = hooks::splices(&self.subject.model, &saes)?;
        Ok(Model {
            subject,
            spec: self.spec.clone(),
        })
    }

    /// The model's configuration as JSON (the engine's nested `Config`).
    fn cfg_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.subject.model.cfg)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The token ids of `text`, with BOS as TransformerLens adds it (`prepend_bos` overrides).
    #[pyo3(signature = (text, prepend_bos = None))]
    fn to_tokens(&self, text: &str, prepend_bos: Option<bool>) -> PyResult<Vec<u32>> {
        self.subject
            .encode_with(text, prepend_bos)
            .map_err(errors::report)
    }

    /// The text of `ids`.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        match &self.subject.tok {
            Some(t) => t.decode(&ids).map_err(errors::core),
            None => Err(PyValueError::new_err(
                "this model has no tokenizer (a lab checkpoint): its tokens are ids",
            )),
        }
    }

    /// Each id's own text.
    fn str_tokens(&self, ids: Vec<u32>) -> PyResult<Vec<String>> {
        ids.iter()
            .map(|&i| match &self.subject.tok {
                Some(t) => t.decode(&[i]).map_err(errors::core),
                None => Ok(i.to_string()),
            })
            .collect()
    }

    /// Every hook point's name, in forward order (with the points of `saes` spliced).
    #[pyo3(signature = (saes = vec![]))]
    fn hook_names(&self, saes: Vec<(Py<crate::sae::Sae>, bool)>) -> PyResult<Vec<String>> {
        let h =
            patchclamp_core::Hooks::none().splice_all(hooks::splices(&self.subject.model, &saes)?);
        Ok(h.points(&self.subject.model.cfg)
            .iter()
            .map(|p| p.to_string())
            .collect())
    }

    /// Checks hook names, raising KeyError with the nearest names for an unknown one.
    fn check_hook_names(&self, names: Vec<String>) -> PyResult<()> {
        for n in names {
            hooks::point(&self.subject.model, &n)?;
        }
        Ok(())
    }

    /// The hook names a pattern (`blocks.*.hook_resid_pre`) selects, with the engine's globs.
    #[pyo3(signature = (pattern, saes = vec![]))]
    fn resolve_hook_names(
        &self,
        pattern: &str,
        saes: Vec<(Py<crate::sae::Sae>, bool)>,
    ) -> PyResult<Vec<String>> {
        let cfg = &self.subject.model.cfg;
        let sel = patchclamp_core::Selector::parse(pattern).map_err(errors::core)?;
        let h =
            patchclamp_core::Hooks::none().splice_all(hooks::splices(&self.subject.model, &saes)?);
        let points = sel.resolve(&h.points(cfg), cfg).map_err(errors::core)?;
        Ok(points.iter().map(|p| p.to_string()).collect())
    }

    /// One forward pass over `tokens` rows: logits `[batch, pos, d_vocab]` and the activations
    /// recorded at `capture` (names or globs), restricted to `positions` when given, with
    /// `interventions` (JSON) and Python `functions` applied, `saes` `(sae, use_error_term)`
    /// spliced in.
    #[pyo3(signature = (tokens, capture = vec![], positions = None, interventions = None, functions = vec![], saes = vec![]))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<Vec<u32>>,
        capture: Vec<String>,
        positions: Option<Vec<i64>>,
        interventions: Option<String>,
        functions: Functions,
        saes: Vec<(Py<crate::sae::Sae>, bool)>,
    ) -> PyResult<Ran<'py>> {
        let model = &self.subject.model;
        let input = self.input(&tokens)?;
        let (mut h, raised) = hooks::build(
            model,
            Spec {
                capture,
                positions,
                interventions,
                functions,
                saes: hooks::splices(model, &saes)?,
            },
        )?;
        let r = py.detach(|| model.forward(&input, &mut h));
        let logits = raised.result(r)?;
        let mut cache = HashMap::new();
        for (p, t) in h.take_cache().iter() {
            cache.insert(p.to_string(), arrays::to_numpy(py, t)?);
        }
        Ok((arrays::to_numpy(py, &logits)?, cache))
    }

    /// The interventions (JSON) that apply a GGUF control vector at `scale`, on blocks
    /// `layers` (inclusive; llama.cpp's default 1..last), after the prompt only if asked.
    #[pyo3(signature = (path, scale = 1.0, layers = None, after_prompt = false))]
    fn control_vector(
        &self,
        path: &str,
        scale: f64,
        layers: Option<(usize, usize)>,
        after_prompt: bool,
    ) -> PyResult<String> {
        let cfg = &self.subject.model.cfg;
        if !scale.is_finite() {
            return Err(PyValueError::new_err("the scale must be finite"));
        }
        if let Some((a, b)) = layers {
            if a > b || b >= cfg.n_layers {
                return Err(PyValueError::new_err(format!(
                    "layers ({a}, {b}): need A ≤ B ≤ {} (the last block)",
                    cfg.n_layers - 1
                )));
            }
        }
        let cv = ControlVector::read(std::path::Path::new(path)).map_err(errors::report)?;
        let mut ivs = cv
            .interventions(scale, layers, cfg.n_layers, cfg.d_model)
            .map_err(errors::report)?;
        if ivs.is_empty() {
            return Err(PyValueError::new_err(format!(
                "{path} has no direction in blocks {layers:?}"
            )));
        }
        if after_prompt {
            for iv in &mut ivs {
                iv.select.positions = Some(patchclamp_core::hooks::Positions::Generated);
            }
        }
        serde_json::to_string(&ivs).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Generates after each prompt (one ragged batch, `batch` prompts at a time); `spec` is
    /// the engine's `GenerateSpec` as JSON. Returns the generations as JSON and, per prompt,
    /// the activations recorded at `record` over the whole sequence.
    #[pyo3(signature = (prompts, spec, interventions = None, record = vec![], batch = None, stop = vec![], saes = vec![]))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Vec<u32>>,
        spec: &str,
        interventions: Option<String>,
        record: Vec<String>,
        batch: Option<usize>,
        stop: Vec<String>,
        saes: Vec<(Py<crate::sae::Sae>, bool)>,
    ) -> PyResult<(String, Vec<HashMap<String, Bound<'py, PyArrayDyn<f32>>>>)> {
        crate::generate::run(
            self,
            py,
            prompts,
            spec,
            interventions,
            record,
            batch,
            stop,
            saes,
        )
    }

    fn __repr__(&self) -> String {
        let c = &self.subject.model.cfg;
        format!(
            "Model({} · {} layers · d_model {} · vocab {})",
            c.family.name(),
            c.n_layers,
            c.d_model,
            c.d_vocab
        )
    }
}
