//! patchclamp-core: one hookable transformer, exact to TransformerLens hook for hook.
//!
//! ```no_run
//! use patchclamp_core::{load, Hooks, Input, Processing, Selector};
//!
//! let dev = candle_core::Device::Cpu;
//! let mut m = load("tests/fixtures/models/gpt2", &dev)?;      // a folder or "ORG/NAME" in the HF cache
//! m.model.process(Processing::all())?;                          // optional: TransformerLens's fold_ln & co.
//! let ids = m.tokenizer()?.prompt(&m.model.cfg, "The cat sat on the", None)?; // BOS as TL does
//! let mut hooks = Hooks::none().capture(Selector::parse("blocks.*.attn.hook_pattern")?);
//! let logits = m.model.forward(&Input::single(&ids, &dev)?, &mut hooks)?;
//! let pattern = hooks.cache().head("blocks.1.attn.hook_pattern".parse()?, 3)?; // [batch, q, k]
//! let ablated = Hooks::none().edit("blocks.0.hook_mlp_out".parse()?, |_, x| Ok(x.zeros_like()?));
//! # Ok::<(), patchclamp_core::Error>(())
//! ```

pub mod error;
pub mod fsutil;
pub mod generate;
pub mod hooks;
pub mod hub;
pub mod input;
pub mod load;
pub mod model;
pub mod rng;
pub mod sae;
pub mod sys;
pub mod testing;
pub mod tokenizer;

pub use error::{Error, Result};
pub use hooks::{ActivationCache, HookPoint, Hooks, Intervention, Op, Selection, Selector, Splice};
pub use input::{Input, Padding};
pub use load::{load, Loaded};
pub use model::{Config, Model, Processing};
pub use sae::Sae;
pub use tokenizer::Tokenizer;
