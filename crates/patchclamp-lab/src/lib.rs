//! patchclamp-lab: methods on top of the core — each a function from (model, inputs, settings)
//! to a typed, serialisable result.

pub mod attribution;
pub mod dla;
pub mod experiment;
pub mod extremes;
pub mod heads;
pub mod hydra;
pub mod lens;
pub mod linalg;
pub mod linear_probe;
pub mod means;
pub mod neurons;
pub mod patching;
pub mod probes;
pub mod staggered;
pub mod stats;
pub mod tasks;
pub mod toy;
pub mod tracing;
pub mod train;
