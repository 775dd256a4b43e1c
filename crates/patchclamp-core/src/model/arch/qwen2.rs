//! Qwen2: Llama with biases on q, k and v (not on the output projection); no BOS by default.

use crate::error::{Error, Result};
use crate::model::arch::{llama, Fields};
use crate::model::config::{Config, Family};

pub(super) fn config(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Qwen2)?;
    cfg.attn.qkv_bias = true;
    cfg.attn.o_bias = false;
    // TransformerLens does not prepend BOS for Qwen models.
    cfg.default_prepend_bos = false;
    if f.bool_or("use_sliding_window", false)? {
        // Qwen2 slides only in layers >= max_window_layers; refuse rather than run it wrong.
        return Err(Error::config(
            f.path,
            "use_sliding_window = true (per-layer sliding windows) is not supported for qwen2",
        ));
    }
    Ok(cfg)
}
