//! The model: canonical config, families, weights, rotary tables, the forward pass, processing.

pub mod arch;
mod config;
mod fused_attention;
mod fused_linear;
mod init;
pub mod kernels;
mod process;
pub mod rope;
mod transformer;
mod weights;

pub use config::{Activation, Config, MlpKind, NormKind, Positions, Processing, Rope, RopeScaling};
pub use transformer::{activation, ensure_finite, linear, softmax_last_dim, KvPrefix, Model, Span};
pub use weights::{AttnWeights, BlockWeights, Checkpoint, MlpWeights, NormWeights, Weights};
