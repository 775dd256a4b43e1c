//! Sparse autoencoders: training on activation streams, the toy superposition benchmark (K11),
//! and splicing SAELens folders into a model.
//!
//! The SAE itself (format, encode, decode, splice points) is the engine's
//! ([`patchclamp_core::sae`]); this floor trains, evaluates and inspects them.

pub mod checkpoint;
pub mod eval;
pub mod features;
pub mod harvest;
pub mod run;
pub mod store;
pub mod toy;
pub mod train;

use std::path::PathBuf;
use std::sync::Arc;

use patchclamp_core::{Config, Sae, Splice};

use crate::Result;

/// Loads each SAELens folder in `dirs` and splices it at its hook, checked against `cfg`
/// (widths, points) before any compute.
pub fn splices(
    cfg: &Config,
    dirs: &[PathBuf],
    error_term: bool,
    device: &candle_core::Device,
) -> Result<Vec<Splice>> {
    let mut out: Vec<Splice> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let sae = Sae::load(dir, device)?;
        let s = Splice::new(Arc::new(sae), error_term)
            .map_err(|e| crate::Error::Input(format!("{}: {e}", dir.display())))?;
        s.check(cfg)
            .map_err(|e| crate::Error::Input(format!("{}: {e}", dir.display())))?;
        if let Some(o) = out.iter().find(|o| o.at == s.at) {
            return Err(crate::Error::Input(format!(
                "{} and another SAE both splice at {}: splice one per point",
                dir.display(),
                o.at.base()
            )));
        }
        out.push(s);
    }
    Ok(out)
}
