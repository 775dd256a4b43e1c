//! Steering: vectors extracted from contrastive prompt pairs and the interventions that add
//! them to a model's residual stream.

pub mod ablation;
pub mod extract;
pub mod sweep;
pub mod transport;

pub use ablation::directional_ablation;
pub use extract::{extract, steering_interventions, Method, Pair, SteeringVectors};
pub use sweep::{sweep, ScaleRun, SweepSpec};
pub use transport::{fit_transport, linear_act, Transport};
