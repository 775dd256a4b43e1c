//! `patchclamp._native`: the compiled half of the Python package. Each function parses its
//! arguments, calls one engine or lab function with the GIL released, and returns numpy
//! arrays and JSON; the pure-Python half (`python/patchclamp`) gives them TransformerLens's
//! names and shapes.

mod analysis;
mod arrays;
mod causal;
mod errors;
mod generate;
mod hooks;
mod lab;
mod model;
mod sae;
mod steering;

use pyo3::prelude::*;

/// Uses `n` threads for every later computation (once, before the first one).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "the thread count must be at least 1",
        ));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|_| {
            pyo3::exceptions::PyRuntimeError::new_err(
                "the thread pool already started: call set_num_threads before the first computation, or set RAYON_NUM_THREADS before importing patchclamp",
            )
        })
}

/// The number of threads computations use.
#[pyfunction]
fn get_num_threads() -> usize {
    rayon::current_num_threads()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<arrays::TensorMemory>()?;
    m.add_class::<sae::Sae>()?;
    m.add_function(wrap_pyfunction!(sae::sae_train, m)?)?;
    m.add_function(wrap_pyfunction!(sae::sae_eval, m)?)?;
    m.add_function(wrap_pyfunction!(sae::sae_harvest, m)?)?;
    m.add_function(wrap_pyfunction!(sae::sae_features, m)?)?;
    m.add_function(wrap_pyfunction!(sae::sae_contrast, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(causal::patching_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(causal::attribution_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::lens, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::dla, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::heads, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::extremes, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::trace, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::neurons, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::hydra, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::localize, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::probe, m)?)?;
    m.add_function(wrap_pyfunction!(steering::steering_extract, m)?)?;
    m.add_function(wrap_pyfunction!(steering::steering_sweep, m)?)?;
    m.add_function(wrap_pyfunction!(steering::control_vector_direction, m)?)?;
    m.add_function(wrap_pyfunction!(steering::fit_act, m)?)?;
    m.add_function(wrap_pyfunction!(steering::transport_intervention, m)?)?;
    m.add_function(wrap_pyfunction!(
        steering::directional_ablation_interventions,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(lab::train, m)?)?;
    m.add_function(wrap_pyfunction!(lab::presets, m)?)?;
    m.add_function(wrap_pyfunction!(lab::experiments, m)?)?;
    m.add_function(wrap_pyfunction!(lab::run_lab, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
