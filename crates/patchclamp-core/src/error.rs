//! The one error type of the core crate: each variant names the thing that was wrong.

use std::path::PathBuf;

/// Everything that can go wrong in patchclamp-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- finding and reading files ---
    /// A model folder, file or cache entry is not on disk.
    #[error("{what} not found: {path}{hint}")]
    NotFound {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    /// A model was asked for by repo id but no local copy exists.
    #[error("model '{repo}' is not on disk (looked in {looked}); patchclamp never downloads: fetch it once elsewhere (e.g. `huggingface-cli download {repo}`) and copy the folder here, or pass a local folder")]
    ModelNotCached { repo: String, looked: String },

    /// Reading a file failed at the OS level.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Writing a file failed at the OS level.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file is larger than patchclamp reads whole (a prompt or spec file, `/dev/zero`).
    #[error("{path} is larger than {limit}; patchclamp reads {what} whole")]
    TooLarge {
        path: PathBuf,
        limit: String,
        what: &'static str,
    },

    /// A JSON file (config, index, tokenizer) is malformed or misses a field.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// The config names an architecture patchclamp does not know.
    #[error("unknown model family '{found}' in {path}; supported: {supported}")]
    UnknownFamily {
        found: String,
        path: PathBuf,
        supported: String,
    },

    /// A safetensors file is truncated or corrupt.
    #[error("{path} is not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    // --- weights ---
    /// A tensor the architecture needs is missing from the checkpoint.
    #[error("weight '{name}' is missing from the checkpoint{near}")]
    MissingWeight { name: String, near: String },

    /// The checkpoint holds tensors the config gives no place to.
    #[error("the checkpoint holds {count} tensors the config does not use ({names}): config.json and the weights disagree (check n_layer / num_hidden_layers)")]
    UnusedWeights { count: usize, names: String },

    /// A checkpoint tensor has a shape the config does not allow.
    #[error("weight '{name}' has shape {found:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A checkpoint tensor has a dtype that cannot hold weights.
    #[error(
        "weight '{name}' has dtype {found}, expected a floating-point dtype (f32, f16, bf16, f64)"
    )]
    WeightDtype { name: String, found: String },

    // --- tokens and inputs ---
    /// The tokenizer could not be loaded or failed on the input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An input is empty, too long, or otherwise unusable.
    #[error("{0}")]
    Input(String),

    // --- hooks ---
    /// A hook name did not parse.
    #[error("unknown hook point '{name}'{near}")]
    UnknownHook { name: String, near: String },

    /// A hook point, head or position is outside the model.
    #[error("{what} {index} is out of range: the model has {limit}")]
    OutOfRange {
        what: &'static str,
        index: i64,
        limit: String,
    },

    /// A value failed a numeric check (NaN, infinity).
    #[error("{0}")]
    Numeric(String),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the core error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error tied to a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A write error tied to a path.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write {
            path: path.into(),
            source,
        }
    }

    /// A config/JSON error tied to a path.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The `n` names from `candidates` closest to `name` by edit distance, formatted as a hint.
pub fn nearest_hint<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> String {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    if scored.is_empty() {
        return String::new();
    }
    let names: Vec<String> = scored
        .iter()
        .take(n)
        .map(|(_, c)| format!("'{c}'"))
        .collect();
    format!("; did you mean {}?", names.join(", "))
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("hook_z", "hook_z"), 0);
    }

    #[test]
    fn nearest_hint_orders_by_distance() {
        let h = nearest_hint("hook_zz", ["hook_q", "hook_z", "hook_pattern"], 2);
        assert!(h.starts_with("; did you mean 'hook_z'"), "{h}");
    }
}
