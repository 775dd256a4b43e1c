//! Engine errors as the Python exceptions a user expects, with the engine's messages.

use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyKeyError, PyNotADirectoryError, PyOSError,
    PyRuntimeError, PyValueError,
};
use pyo3::PyErr;

/// The Python exception of a core error.
pub fn core(e: patchclamp_core::Error) -> PyErr {
    use patchclamp_core::Error as E;
    let msg = e.to_string();
    match e {
        E::NotFound { .. } | E::ModelNotCached { .. } => PyFileNotFoundError::new_err(msg),
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        E::Io { .. } | E::Write { .. } => PyOSError::new_err(msg),
        E::UnknownHook { .. } => PyKeyError::new_err(msg),
        E::Candle(_) => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// The Python exception of a lab error.
pub fn lab(e: patchclamp_lab::Error) -> PyErr {
    match e {
        patchclamp_lab::Error::Core(c) => core(c),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// The Python exception of a report-floor error (run folders, loading, prompts).
pub fn report(e: patchclamp_report::Error) -> PyErr {
    use patchclamp_report::Error as E;
    let msg = e.to_string();
    match e {
        // The message keeps the spec's context; the class is the cause's.
        E::Load { source, .. } => {
            let class = core(source);
            pyo3::Python::attach(|py| {
                let t = class.get_type(py);
                PyErr::from_type(t, msg)
            })
        }
        E::LoadCheckpoint { source, .. } => {
            let class = lab(source);
            pyo3::Python::attach(|py| PyErr::from_type(class.get_type(py), msg))
        }
        E::Core(c) => core(c),
        E::Lab(l) => lab(l),
        E::NotOurs { .. } | E::OtherRun { .. } => PyFileExistsError::new_err(msg),
        E::NotAFolder { .. } => PyNotADirectoryError::new_err(msg),
        E::NothingToResume { .. } => PyFileNotFoundError::new_err(msg),
        E::Busy { .. } => PyRuntimeError::new_err(msg),
        E::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        E::Write { .. } | E::Read { .. } => PyOSError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// A tensor-library error (shapes, dtypes) as a RuntimeError.
pub fn candle(e: candle_core::Error) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}
