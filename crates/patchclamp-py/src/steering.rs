//! Steering from Python: vectors from contrastive pairs (`steer extract`, written as the same
//! GGUF control vector and safetensors), and directional ablation as interventions.

use std::path::PathBuf;

use patchclamp_lab::steering::{directional_ablation, extract_at, Method, Pair};
use patchclamp_report::control_vector::ControlVector;
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
    let method = match method {
        "mean" => Method::Mean,
        "pca-diff" => Method::PcaDiff,
        "pca-center" => Method::PcaCenter,
        "llama-mean" => Method::LlamaMean,
        "llama-pca" => Method::LlamaPca,
        m => {
            return Err(PyValueError::new_err(format!(
                "unknown method {m:?}; use \"mean\", \"pca-diff\", \"pca-center\", \"llama-mean\" or \"llama-pca\""
            )))
        }
    };
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
