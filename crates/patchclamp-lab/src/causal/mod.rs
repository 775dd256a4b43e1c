//! Causal analysis: what changes when activations are exchanged between runs.
//!
//! [`patching`] sweeps activation patching over layers, positions and heads, its variants run
//! in batches by [`batched_variants`]; [`attribution`] is its first-order estimate from one
//! backward pass; [`tracing`] is ROME's causal tracing; [`means`] streams dataset means for
//! mean ablations.

pub mod attribution;
pub mod batched_variants;
pub mod means;
pub mod patching;
pub mod tracing;
