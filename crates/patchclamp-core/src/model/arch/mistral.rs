//! Mistral: Llama with sliding-window attention.

use crate::error::Result;
use crate::model::arch::{llama, Fields};
use crate::model::config::{Config, Family};

pub(super) fn config(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Mistral)?;
    cfg.attn.sliding_window = f.opt_positive_usize("sliding_window")?;
    Ok(cfg)
}
