//! patchclamp-core: one hookable transformer, exact to TransformerLens hook for hook.
//!
//! ```no_run
//! use patchclamp_core::{load, Hooks, Input, Selector};
//! let dev = candle_core::Device::Cpu;
//! let m = load("tests/fixtures/models/gpt2", &dev)?;
//! let ids = m.tokenizer()?.prompt(&m.model.cfg, "The cat sat", None)?;
//! let mut hooks = Hooks::none().capture(Selector::parse("blocks.*.attn.hook_pattern")?);
//! let logits = m.model.forward(&Input::single(&ids, &dev)?, &mut hooks)?;
//! let pattern = hooks.cache().by_name("blocks.0.attn.hook_pattern")?;
//! # Ok::<(), patchclamp_core::Error>(())
//! ```

pub mod error;
pub mod fsutil;
pub mod hooks;
pub mod hub;
pub mod input;
pub mod load;
pub mod model;
pub mod rng;
pub mod tokenizer;

pub use error::{Error, Result};
pub use hooks::{ActivationCache, HookPoint, Hooks, Selector};
pub use input::{Input, Padding};
pub use load::{load, Loaded};
pub use model::{Config, Model, Processing};
pub use tokenizer::Tokenizer;
