//! The lab's error: what went wrong in a method, a task, a training run or an experiment file.

use std::path::PathBuf;

/// Everything that can go wrong in patchclamp-lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- experiment files and specs ---
    /// An experiment file is malformed or one of its settings is out of range.
    #[error("{path}: {msg}")]
    Experiment { path: PathBuf, msg: String },

    /// A task, model, optimiser or training spec that cannot run.
    #[error("{0}")]
    Spec(String),

    // --- method inputs ---
    /// A prompt, token, setting or selection a method cannot use.
    #[error("{0}")]
    Input(String),

    /// A layer, head, unit or position outside the model.
    #[error("{what} {index} is out of range: the model has {limit}")]
    OutOfRange {
        what: &'static str,
        index: i64,
        limit: String,
    },

    // --- numbers ---
    /// A loss, gradient or score that is not finite.
    #[error("{0}")]
    Numeric(String),

    // --- files ---
    /// A checkpoint is truncated, corrupt, or not one patchclamp wrote.
    #[error("{path} is not a valid checkpoint: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    /// A stop was requested (an interrupt) and the loop ended at a step boundary.
    #[error("interrupted")]
    Interrupted,

    // --- below ---
    /// An error of the engine (forward pass, hooks, loading).
    #[error(transparent)]
    Core(#[from] patchclamp_core::Error),
}

/// `Result` with the lab's error.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

impl Error {
    /// A read error tied to a path (the core's, so every crate words it alike).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Core(patchclamp_core::Error::io(path, source))
    }

    /// A write error tied to a path.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Core(patchclamp_core::Error::write(path, source))
    }

    /// An experiment-file error tied to its path.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Experiment {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
