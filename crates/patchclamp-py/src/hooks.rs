//! A forward pass's `Hooks` from Python arguments: captures, declarative interventions (the
//! fast path) and Python functions (the flexible path, one call per activation).

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use patchclamp_core::{HookPoint, Hooks, Intervention, Model, Selector};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{arrays, errors};

/// The first Python exception a hook function raised during a pass: the pass stops there and
/// the exception is re-raised unchanged once the GIL is back.
#[derive(Clone, Default)]
pub struct Raised(Arc<Mutex<Option<PyErr>>>);

impl Raised {
    /// Whether an exception is kept.
    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Keeps `e` unless an earlier exception is already kept.
    pub fn set(&self, e: PyErr) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The raised exception, if any (taken).
    pub fn take(&self) -> Option<PyErr> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// `r` as a Python result: a hook's own exception first, else the engine's error.
    pub fn result<T>(&self, r: patchclamp_core::Result<T>) -> PyResult<T> {
        match (self.take(), r) {
            (Some(e), _) => Err(e),
            (None, r) => r.map_err(errors::core),
        }
    }
}

/// The engine error that stops a pass after a hook function raised.
fn stopped(point: HookPoint) -> patchclamp_core::Error {
    patchclamp_core::Error::Input(format!("the Python hook at {point} raised"))
}

/// Calls `f(activation, name)` (the package's wrapper builds TransformerLens's `hook` object)
/// and returns the replacement: what `f` returned, or — when it returned `None` — the array
/// it was given, which it may have edited in place (TransformerLens's in-place hooks).
fn call(f: &Py<PyAny>, point: HookPoint, x: &Tensor) -> PyResult<Tensor> {
    Python::attach(|py| {
        py.check_signals()?;
        let given = arrays::to_numpy_copy(py, x)?;
        let out = f.call1(py, (given.clone(), point.to_string()))?;
        let out = if out.is_none(py) {
            given
        } else {
            out.bind(py)
                .cast::<PyArrayDyn<f32>>()
                .map_err(|_| {
                    PyValueError::new_err(format!(
                        "the hook at {point} returned {}, expected None or a float32 array",
                        out.bind(py)
                            .get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })?
                .clone()
        };
        if out.shape() != x.dims() {
            return Err(PyValueError::new_err(format!(
                "the hook at {point} returned an array of shape {:?}; the activation has shape {:?}",
                out.shape(),
                x.dims()
            )));
        }
        let ro = out.try_readonly()?;
        if !ro
            .as_slice()
            .map_or(true, |v| v.iter().all(|v| v.is_finite()))
        {
            return Err(PyValueError::new_err(format!(
                "the hook at {point} returned NaN or infinite values"
            )));
        }
        arrays::from_numpy(&ro, x.device())
    })
}

/// What a pass records and changes, as the Python face passes it.
pub struct Spec {
    /// Hook names or glob patterns to record.
    pub capture: Vec<String>,
    /// Positions to record (absolute; negative counts from the end).
    pub positions: Option<Vec<i64>>,
    /// Interventions, as a JSON list in the intervention-file schema.
    pub interventions: Option<String>,
    /// (hook names, function) pairs.
    pub functions: Vec<(Vec<String>, Py<PyAny>)>,
    /// SAEs spliced into the pass.
    pub saes: Vec<patchclamp_core::Splice>,
}

/// The splices of `(sae, use_error_term)` pairs, checked against `model`.
pub fn splices(
    model: &Model,
    saes: &[(Py<crate::sae::Sae>, bool)],
) -> PyResult<Vec<patchclamp_core::Splice>> {
    Python::attach(|py| {
        saes.iter()
            .map(|(s, err)| {
                let inner = s.bind(py).get().inner.clone();
                let sp = patchclamp_core::Splice::new(inner, *err).map_err(errors::core)?;
                sp.check(&model.cfg).map_err(errors::core)?;
                Ok(sp)
            })
            .collect()
    })
}

/// Parses a JSON list of interventions (or one object) in the intervention-file schema.
pub fn interventions(json: &str) -> PyResult<Vec<Intervention>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| PyValueError::new_err(format!("interventions: {e}")))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| PyValueError::new_err(format!("intervention {i}: {e}")))
        })
        .collect()
}

/// The hook point `name` of `model`, or KeyError naming the nearest (a layer past the
/// model's is an unknown name too, as in TransformerLens's hook dictionary).
pub fn point(model: &Model, name: &str) -> PyResult<HookPoint> {
    HookPoint::parse_for(name, &model.cfg).map_err(|e| match e {
        patchclamp_core::Error::OutOfRange { .. } => {
            pyo3::exceptions::PyKeyError::new_err(e.to_string())
        }
        e => errors::core(e),
    })
}

/// The `Hooks` of `spec` for `model`, and the slot its functions' exceptions land in.
pub fn build(model: &Model, spec: Spec) -> PyResult<(Hooks, Raised)> {
    let mut hooks = Hooks::none().splice_all(spec.saes);
    let all = hooks.points(&model.cfg);
    for pattern in &spec.capture {
        let sel = Selector::parse(pattern).map_err(errors::core)?;
        // Resolved now so an unknown name fails before any compute, with the nearest names.
        sel.resolve(&all, &model.cfg).map_err(errors::core)?;
        hooks = hooks.capture(sel);
    }
    if let Some(p) = spec.positions {
        hooks = hooks.at_positions(p);
    }
    if let Some(json) = &spec.interventions {
        hooks = hooks.intervene_all(interventions(json)?);
    }
    let raised = Raised::default();
    for (names, f) in spec.functions {
        for name in names {
            let p = point(model, &name)?;
            let f = Python::attach(|py| f.clone_ref(py));
            let slot = raised.clone();
            hooks = hooks.edit(p, move |at, x| match call(&f, at, x) {
                Ok(t) => Ok(t),
                Err(e) => {
                    slot.set(e);
                    Err(stopped(at))
                }
            });
        }
    }
    Ok((hooks, raised))
}
