//! patchclamp-lab: methods on top of the core — each a function from (model, inputs, settings)
//! to a typed, serialisable result.

pub mod attribution;
pub mod means;
pub mod patching;
pub mod tracing;
