//! `Model.generate`: the engine's batched generation, with interventions and recordings.

use std::collections::HashMap;

use numpy::PyArrayDyn;
use patchclamp_core::generate::{generate_spliced, GenerateSpec};
use patchclamp_core::HookPoint;
use patchclamp_report::outcomes::{GenerateOutcome, ShownGeneration};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::hooks::{self, Raised};
use crate::model::Model;
use crate::{arrays, errors};

/// Generations as JSON (the CLI's `--json` outcome) and each prompt's recordings.
type Out<'py> = (String, Vec<HashMap<String, Bound<'py, PyArrayDyn<f32>>>>);

#[allow(clippy::too_many_arguments)]
pub fn run<'py>(
    m: &Model,
    py: Python<'py>,
    prompts: Vec<Vec<u32>>,
    spec: &str,
    interventions: Option<String>,
    record: Vec<String>,
    batch: Option<usize>,
    stop: Vec<String>,
    saes: Vec<(Py<crate::sae::Sae>, bool)>,
) -> PyResult<Out<'py>> {
    let s = &m.subject;
    let cfg = &s.model.cfg;
    let spec: GenerateSpec =
        serde_json::from_str(spec).map_err(|e| PyValueError::new_err(format!("generate: {e}")))?;
    spec.validate(cfg).map_err(errors::core)?;
    if prompts.is_empty() {
        return Err(PyValueError::new_err("generate needs at least one prompt"));
    }
    for p in &prompts {
        s.ids(p).map_err(errors::report)?;
    }
    if stop.iter().any(|t| t.is_empty()) {
        return Err(PyValueError::new_err(
            "a stop string '' would stop before the first token; give non-empty strings",
        ));
    }
    if !stop.is_empty() && s.tok.is_none() {
        return Err(PyValueError::new_err(
            "stop strings need a tokenizer; this model's tokens are ids (use stop tokens)",
        ));
    }
    let ivs = match &interventions {
        Some(j) => hooks::interventions(j)?,
        None => vec![],
    };
    let splices = hooks::splices(&s.model, &saes)?;
    let all = patchclamp_core::Hooks::none()
        .splice_all(splices.iter().cloned())
        .points(cfg);
    let mut points: Vec<HookPoint> = vec![];
    for pattern in &record {
        let sel = patchclamp_core::Selector::parse(pattern).map_err(errors::core)?;
        for p in sel.resolve(&all, cfg).map_err(errors::core)? {
            if !points.contains(&p) {
                points.push(p);
            }
        }
    }
    let batch = batch.unwrap_or(prompts.len());
    let raised = Raised::default();
    let mut sofar: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
    let done = py.detach(|| {
        generate_spliced(
            &s.model,
            &prompts,
            batch,
            &spec,
            &ivs,
            &points,
            &splices,
            |i, t| {
                // Ctrl-C ends every prompt at its next token; the interrupt is raised after.
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    raised.set(e);
                    return false;
                }
                if raised.is_set() {
                    return false;
                }
                if stop.is_empty() {
                    return true;
                }
                sofar[i].push(t);
                let text = s.text_of(&sofar[i]);
                !stop.iter().any(|x| text.contains(x))
            },
        )
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let done = done.map_err(errors::core)?;
    let mut generations = vec![];
    let mut recordings = vec![];
    for (ids, (g, rec)) in prompts.iter().zip(done) {
        let mut cache = HashMap::new();
        for (p, t) in rec.iter() {
            cache.insert(p.to_string(), arrays::to_numpy(py, t)?);
        }
        recordings.push(cache);
        generations.push(ShownGeneration {
            prompt: s.text_of(ids),
            prompt_tokens: ids.clone(),
            text: s.text_of(&g.tokens),
            tokens: g.tokens,
            stop: g.stop,
        });
    }
    let json = serde_json::to_string(&GenerateOutcome { generations })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((json, recordings))
}
