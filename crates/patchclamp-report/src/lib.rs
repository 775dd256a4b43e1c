//! patchclamp-report: everything a run leaves on disk, and the inputs every face reads alike.
//!
//! 1. [`input`]: a model by name ([`Subject`]: a folder, a cached repo id or a lab checkpoint),
//!    its prompts ([`PromptSource`]: texts, text or JSONL files, a task) and single tokens.
//! 2. [`RunDir`]: the output folder — an exclusive lock, files written atomically, and a
//!    manifest written last, so a complete run is recognisable and a rerun never mixes sets.
//! 3. [`Outcome`]: what a typed lab result implements to be written: `result.json` (the
//!    result itself), `result.safetensors`, figures ([`plot`]) and `report.html`
//!    ([`write_outcome`]). [`outcomes`] holds the implementations for the lab's analyses.
//! 4. [`training`]: the report of training runs (curves, patterns, `summary.json`).
//!
//! The CLI, the Python package and a server call the same lab function, get the same struct,
//! and hand it here: a face adds no numbers.

pub mod error;
pub mod html;
pub mod input;
pub mod outcomes;
pub mod output;
pub mod plot;
pub mod revision;
pub mod run_dir;
pub mod training;
pub mod vocab;

use std::path::Path;

pub use error::{Error, Result};
pub use input::{Prompt, PromptSource, Subject};
pub use output::{write_outcome, Figure, Outcome, Page, Written};
pub use run_dir::{content_hash, Manifest, RunDir};
pub use vocab::Vocab;

/// Largest text file read as prompts or a spec (a guard against `/dev/zero` and mistakes).
pub const MAX_TEXT_FILE: u64 = 1 << 30;

/// Reads a text file, refusing one larger than [`MAX_TEXT_FILE`].
pub fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    f.take(MAX_TEXT_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_TEXT_FILE {
        return Err(Error::Input(format!(
            "{} is larger than {} GiB; patchclamp reads prompt and spec files whole",
            path.display(),
            MAX_TEXT_FILE >> 30
        )));
    }
    Ok(text)
}
