//! patchclamp-report: everything a run leaves on disk, and the inputs every face reads alike.
//!
//! 1. [`input`]: a model by name ([`Subject`]: a folder, a cached repo id or a lab checkpoint),
//!    its prompts ([`PromptSource`]: texts, text or JSONL files, a task) and single tokens.
//! 2. [`RunDir`]: the output folder — an exclusive lock, files written atomically, and a
//!    manifest written last, so a complete run is recognisable and a rerun never mixes sets.
//! 3. [`Outcome`]: what a typed lab result implements to be written: `result.json` (the
//!    result itself), `result.safetensors`, figures ([`plot`]) and `report.html`
//!    ([`write_outcome`]). [`outcomes`] holds the implementations for the lab's analyses.
//! 4. [`training`]: the report of training runs (curves, patterns, `summary.json`);
//!    [`train_run`] trains an experiment into a folder, [`lab_run`] runs the lab's calibrated
//!    experiments (several runs side by side, the toy protocols, the K8 battery).
//!
//! The CLI, the Python package and a server call the same lab function, get the same struct,
//! and hand it here: a face adds no numbers.

pub mod control_vector;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod html;
pub mod input;
pub mod lab_run;
pub mod outcomes;
pub mod output;
pub mod plot;
pub mod revision;
pub mod run_dir;
pub mod sae_run;
pub mod train_run;
pub mod training;
pub mod transport_file;
pub mod vocab;

use std::path::Path;

pub use error::{Error, Result};
pub use input::{Prompt, PromptSource, Subject};
pub use output::{write_outcome, Figure, Outcome, Page, Written};
pub use run_dir::{content_hash, Manifest, RunDir};
pub use vocab::Vocab;

/// Reads a spec file (experiment, interventions, clamp), refusing one larger than the core's
/// `SPEC_LIMIT`.
pub fn read_spec(path: &Path) -> Result<String> {
    Ok(patchclamp_core::fsutil::read_text(
        path,
        patchclamp_core::fsutil::SPEC_LIMIT,
        "spec files",
    )?)
}

/// Reads a prompt or corpus file, refusing one larger than the core's `TEXT_LIMIT`.
pub fn read_text(path: &Path) -> Result<String> {
    Ok(patchclamp_core::fsutil::read_text(
        path,
        patchclamp_core::fsutil::TEXT_LIMIT,
        "prompt and spec files",
    )?)
}
