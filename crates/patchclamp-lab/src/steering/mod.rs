//! Steering: vectors extracted from contrastive prompt pairs and the interventions that add
//! them to a model's residual stream; function vectors, Linear-AcT, directional ablation and
//! dynamic composition; sweeps over a vector's scale; the K8 battery on a two-style toy LM.

pub mod ablation;
pub mod battery;
pub mod dynamic;
pub mod extract;
pub mod function_vector;
pub mod sweep;
pub mod transport;

pub use ablation::directional_ablation;
pub use dynamic::{dynamic_composition, DynamicRun, DynamicSpec};
pub use extract::{
    extract, extract_at, head_steering, normalize_norms, steering_interventions, Method, Pair,
    SteeringVectors,
};
pub use function_vector::{function_vector, FunctionVector, TaskPrompt};
pub use sweep::{sweep, ScaleRun, SweepSpec};
pub use transport::{fit_transport, linear_act, Transport};
