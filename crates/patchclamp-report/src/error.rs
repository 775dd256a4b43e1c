//! The report floor's error: what went wrong writing a run's files or reading its inputs.

use std::path::PathBuf;

/// Everything that can go wrong in patchclamp-report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- run folders ---
    /// Another process holds the folder's lock.
    #[error("{path} is in use by another patchclamp run (its lock file is held); wait for it or choose another --out")]
    Busy { path: PathBuf },

    /// The folder holds files patchclamp did not write.
    #[error("{path} holds files that are not a patchclamp run ({listed}); choose an empty or new folder, or pass --force to write beside them")]
    NotOurs { path: PathBuf, listed: String },

    /// The output path is a file, not a folder.
    #[error("{path} is a file; --out names a folder")]
    NotAFolder { path: PathBuf },

    /// The folder holds a different command's complete run.
    #[error("{path} holds a complete `{found}` run; choose another --out, or pass --force to replace it")]
    OtherRun { path: PathBuf, found: String },

    /// `--resume` was asked for a folder that holds no run.
    #[error("{path} holds no patchclamp run to resume")]
    NothingToResume { path: PathBuf },

    /// Writing a file failed at the OS level.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Reading a file failed at the OS level.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    // --- inputs ---
    /// A model could not be loaded.
    #[error("loading {spec}: {source}")]
    Load {
        spec: String,
        source: patchclamp_core::Error,
    },

    /// A lab checkpoint could not be loaded.
    #[error("loading the lab checkpoint {spec}: {source}")]
    LoadCheckpoint {
        spec: String,
        source: patchclamp_lab::Error,
    },

    /// A prompt, token or prompt file is unusable.
    #[error("{0}")]
    Input(String),

    // --- below ---
    /// An error of the engine (loading, forward pass, tokenizer).
    #[error(transparent)]
    Core(#[from] patchclamp_core::Error),

    /// An error of a method (a task, a trainer, an analysis).
    #[error(transparent)]
    Lab(#[from] patchclamp_lab::Error),

    /// Serialising a result failed.
    #[error("serialising the result: {0}")]
    Json(#[from] serde_json::Error),

    /// Building a tensor file failed.
    #[error("writing tensors: {0}")]
    Tensors(String),
}

/// `Result` with the report floor's error.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}
