//! The model: canonical config, families, weights, rotary tables, the forward pass, processing.

pub mod arch;
mod config;
mod forward;
mod init;
pub mod kernels;
mod kv;
mod moe;
mod ops;
mod param;
mod process;
pub mod rope;
mod validate;
mod weights;

pub use config::{
    Activation, Attention, Config, Family, GroupRank, Mlp, Moe, Norm, NormKind, Positions,
    Processing, QkNorm, Rope, RopeScaling, Scoring, Selection, SharedExpert,
};
pub use forward::{Model, Span};
pub use kv::KvCache;
pub use ops::{activation, ensure_finite, linear, softmax_last_dim};
pub use param::{AttnPart, BlockNorm, MlpPart, MoePart, NormPart, Param};
pub use weights::{
    AttnWeights, BlockWeights, Checkpoint, MlpWeights, MoeWeights, NormWeights, Weights,
};
