//! Steering from Python: vectors from contrastive pairs (`steer extract`, written as the same
//! GGUF control vector and safetensors), and directional ablation as interventions.

use std::path::PathBuf;

use patchclamp_core::generate::GenerateSpec;
use patchclamp_lab::steering::{directional_ablation, extract_at, linear_act, Method, Pair};
use patchclamp_lab::steering::{sweep, SweepSpec};
use patchclamp_lab::util::interrupt;
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::outcomes::{SweepColumn, SweepOutcome};
use pyo3::exceptions::{PyFileExistsError, PyValueError};
use pyo3::prelude::*;

use crate::errors;
use crate::model::Model;

/// Extracts one vector per block in `layers` (inclusive) from (positive, negative) token
/// pairs, read at `position`; with `out` (a `.gguf` path) writes it as a llama.cpp control
/// vector and beside it as `.safetensors`. Returns the blocks and their vectors.
#[pyfunction]
#[pyo3(signature = (model, pairs, layers, method = "pca-diff", position = -1, out = None, force = false))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn steering_extract(
    py: Python<'_>,
    model: &Model,
    pairs: Vec<(Vec<u32>, Vec<u32>)>,
    layers: (usize, usize),
    method: &str,
    position: i64,
    out: Option<PathBuf>,
    force: bool,
) -> PyResult<(Vec<usize>, Vec<Vec<f32>>)> {
    let method = Method::from_name(method).map_err(errors::lab)?;
    let s = &model.subject;
    let (a, b) = layers;
    if a > b || b >= s.model.cfg.n_layers {
        return Err(PyValueError::new_err(format!(
            "layers ({a}, {b}): need A ≤ B ≤ {} (the last block)",
            s.model.cfg.n_layers - 1
        )));
    }
    // Every path is checked before the (long) extraction, so nothing is computed in vain.
    let files = match &out {
        Some(_) if a == 0 => {
            return Err(PyValueError::new_err(
                "a llama.cpp control vector has no slot for block 0: extract at blocks 1 and up to write one",
            ))
        }
        Some(out) => {
            if out.extension().is_none_or(|e| e != "gguf") {
                return Err(PyValueError::new_err(format!(
                    "out={} should end in .gguf",
                    out.display()
                )));
            }
            let side = out.with_extension("safetensors");
            for p in [out, &side] {
                if p.exists() && !force {
                    return Err(PyFileExistsError::new_err(format!(
                        "{} exists; pass force=True to replace it",
                        p.display()
                    )));
                }
            }
            patchclamp_report::run_dir::outside_model(out, &s.home).map_err(errors::report)?;
            Some((out.clone(), side))
        }
        None => None,
    };
    let pairs: Vec<Pair> = pairs
        .into_iter()
        .map(|(positive, negative)| {
            s.ids(&positive).and_then(|_| s.ids(&negative))?;
            Ok(Pair { positive, negative })
        })
        .collect::<patchclamp_report::Result<_>>()
        .map_err(errors::report)?;
    let blocks: Vec<usize> = (a..=b).collect();
    let v = py
        .detach(|| extract_at(&s.model, &pairs, &blocks, method, position))
        .map_err(errors::lab)?;
    if let Some((gguf, side)) = files {
        let cv =
            ControlVector::from_vectors(&v, s.model.cfg.family.name()).map_err(errors::report)?;
        cv.write(&gguf).map_err(errors::report)?;
        cv.write_safetensors(&side).map_err(errors::report)?;
    }
    Ok((v.layers, v.vectors))
}

/// The interventions (JSON) that project `direction` out of every residual point and block
/// output (Arditi et al.'s directional ablation).
#[pyfunction]
pub fn directional_ablation_interventions(model: &Model, direction: Vec<f32>) -> PyResult<String> {
    if direction.iter().any(|x| !x.is_finite()) {
        return Err(PyValueError::new_err(
            "the direction holds NaN or infinite values",
        ));
    }
    let ivs = directional_ablation(&model.subject.model.cfg, &direction).map_err(errors::lab)?;
    serde_json::to_string(&ivs).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The direction of block `block` in a GGUF control vector (what `--ablate FILE:K` reads).
#[pyfunction]
pub fn control_vector_direction(path: PathBuf, block: usize) -> PyResult<Vec<f32>> {
    let cv = ControlVector::read(&path).map_err(errors::report)?;
    cv.directions.get(&block).cloned().ok_or_else(|| {
        let have: Vec<String> = cv.directions.keys().map(|k| k.to_string()).collect();
        PyValueError::new_err(format!(
            "{} has no direction.{block} (it has blocks {})",
            path.display(),
            have.join(", ")
        ))
    })
}

/// Fits Linear-AcT maps at `point` from `source` to `target` prompts (`steer fit-act`) and
/// writes them to `out` (`.safetensors`).
#[pyfunction]
#[pyo3(signature = (model, source, target, point, out, force = false))]
pub fn fit_act(
    py: Python<'_>,
    model: &Model,
    source: Vec<Vec<u32>>,
    target: Vec<Vec<u32>>,
    point: &str,
    out: PathBuf,
    force: bool,
) -> PyResult<usize> {
    let s = &model.subject;
    if out.extension().is_none_or(|e| e != "safetensors") {
        return Err(PyValueError::new_err(format!(
            "out={} should end in .safetensors",
            out.display()
        )));
    }
    if out.exists() && !force {
        return Err(PyFileExistsError::new_err(format!(
            "{} exists; pass force=True to replace it",
            out.display()
        )));
    }
    patchclamp_report::run_dir::outside_model(&out, &s.home).map_err(errors::report)?;
    let at = crate::hooks::point(&s.model, point)?;
    for p in source.iter().chain(&target) {
        s.ids(p).map_err(errors::report)?;
    }
    let t = py
        .detach(|| linear_act(&s.model, &source, &target, at))
        .map_err(errors::lab)?;
    patchclamp_report::transport_file::write(&out, at, s.model.cfg.family.name(), &t)
        .map_err(errors::report)?;
    Ok(t.scale.len())
}

/// The intervention (JSON) that applies a Linear-AcT map file at strength `strength` in [0, 1].
#[pyfunction]
#[pyo3(signature = (model, path, strength = 1.0))]
pub fn transport_intervention(model: &Model, path: PathBuf, strength: f64) -> PyResult<String> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(PyValueError::new_err(format!(
            "the strength λ must be in [0, 1] (0 is the identity, 1 the fitted map), got {strength}"
        )));
    }
    let f = patchclamp_report::transport_file::read(&path).map_err(errors::report)?;
    let iv = f.transport.intervention(f.point, strength);
    iv.validate(&model.subject.model.cfg, 1, 1, &Default::default())
        .map_err(errors::core)?;
    serde_json::to_string(&[iv]).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Generations under control vectors at several scales (`steer sweep`): each `(file, scale)`
/// vector times each of `scales`, on blocks `layers` (llama.cpp's 1..last by default), after
/// the prompt only if asked; the metric is the share of generations containing one of
/// `contains`. Ctrl-C stops between generations.
#[pyfunction]
#[pyo3(signature = (model, prompts, texts, vectors, scales, spec, layers = None, after_prompt = false, contains = vec![], batch = None, out = None, force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn steering_sweep<'py>(
    py: Python<'py>,
    model: &Model,
    prompts: Vec<Vec<u32>>,
    texts: Vec<String>,
    vectors: Vec<(PathBuf, f64)>,
    scales: Vec<f64>,
    spec: &str,
    layers: Option<(usize, usize)>,
    after_prompt: bool,
    contains: Vec<String>,
    batch: Option<usize>,
    out: Option<PathBuf>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<crate::analysis::Analysed<'py>> {
    let s = &model.subject;
    let cfg = &s.model.cfg;
    patchclamp_lab::steering::sweep::check_scales(&scales).map_err(errors::lab)?;
    if contains.iter().any(|c| c.is_empty()) {
        return Err(PyValueError::new_err(
            "contains '' holds in every text; give non-empty strings",
        ));
    }
    if vectors.is_empty() {
        return Err(PyValueError::new_err("give at least one control vector"));
    }
    if let Some((a, b)) = layers {
        if a > b || b >= cfg.n_layers {
            return Err(PyValueError::new_err(format!(
                "layers ({a}, {b}): need A ≤ B ≤ {} (the last block)",
                cfg.n_layers - 1
            )));
        }
    }
    let generate: GenerateSpec =
        serde_json::from_str(spec).map_err(|e| PyValueError::new_err(format!("generate: {e}")))?;
    let mut cvs = vec![];
    for (path, scale) in &vectors {
        if !scale.is_finite() {
            return Err(PyValueError::new_err("a vector's scale must be finite"));
        }
        let cv = ControlVector::read(path).map_err(errors::report)?;
        cv.interventions(1.0, layers, cfg.n_layers, cfg.d_model)
            .map_err(errors::report)?;
        cvs.push((cv, *scale));
    }
    for p in &prompts {
        s.ids(p).map_err(errors::report)?;
    }
    if let Some(out) = &out {
        patchclamp_report::run_dir::outside_model(out, &s.home).map_err(errors::report)?;
        patchclamp_report::run_dir::check(out, "steer sweep", force).map_err(errors::report)?;
    }
    let text = |ids: &[u32]| s.text_of(ids);
    let contains_metric = |_: usize, g: &patchclamp_core::generate::Generation| -> f64 {
        let t = text(&g.tokens);
        contains.iter().any(|c| t.contains(c.as_str())) as u8 as f64
    };
    let steer = |times: f64| -> patchclamp_lab::Result<Vec<patchclamp_core::Intervention>> {
        let mut ivs = vec![];
        for (cv, scale) in &cvs {
            ivs.extend(
                cv.interventions(scale * times, layers, cfg.n_layers, cfg.d_model)
                    .map_err(|e| patchclamp_lab::Error::Input(e.to_string()))?,
            );
        }
        if after_prompt {
            for iv in &mut ivs {
                iv.select.positions = Some(patchclamp_core::hooks::Positions::Generated);
            }
        }
        Ok(ivs)
    };
    let sweep_spec = SweepSpec {
        scales,
        generate,
        batch: batch.unwrap_or(prompts.len().max(1)),
    };
    let raised = crate::hooks::Raised::default();
    interrupt::clear();
    let runs = py.detach(|| {
        // Built here: a `dyn Fn` reference cannot cross into the detached closure.
        let metric: Option<patchclamp_lab::steering::sweep::Metric> =
            (!contains.is_empty()).then_some(&contains_metric);
        sweep(
            &s.model,
            &prompts,
            &sweep_spec,
            steer,
            metric,
            |done, total| crate::causal::step(&raised, progress.as_ref(), done, total),
        )
    });
    if let Some(e) = raised.take() {
        return Err(e);
    }
    let runs = runs.map_err(errors::lab)?;
    let shown: Vec<(String, Vec<u32>)> = texts.into_iter().zip(prompts).collect();
    let range = match layers {
        Some((a, b)) => format!("{a}-{b}"),
        None => "1-last".into(),
    };
    let outcome = SweepOutcome {
        vectors: vectors
            .iter()
            .map(|(p, sc)| format!("{}:{sc} (blocks {range})", p.display()))
            .collect(),
        metric_name: (!contains.is_empty()).then(|| {
            let list: Vec<String> = contains.iter().map(|c| format!("{c:?}")).collect();
            format!("contains {}", list.join(" or "))
        }),
        columns: SweepColumn::of(runs, &shown, text),
    };
    crate::analysis::finish(py, model, "steer sweep", &outcome, out, force)
}
