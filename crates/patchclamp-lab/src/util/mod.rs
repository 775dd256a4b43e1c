//! Numerical utilities the methods share: streamed statistics and small dense linear algebra.

pub mod interrupt;
pub mod linalg;
pub mod stats;
