//! patchclamp-lab: methods on top of the core — each a function from (model, inputs, settings)
//! to a typed, serialisable result.

pub mod attribution;
pub mod experiment;
pub mod means;
pub mod patching;
pub mod probes;
pub mod tasks;
pub mod toy;
pub mod tracing;
pub mod train;
