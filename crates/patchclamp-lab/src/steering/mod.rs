//! Steering: vectors extracted from contrastive prompt pairs and the interventions that add
//! them to a model's residual stream.

pub mod ablation;
pub mod extract;
pub mod transport;

pub use ablation::directional_ablation;
pub use extract::{extract, steering_interventions, Method, Pair, SteeringVectors};
pub use transport::{fit_transport, linear_act, Transport};
