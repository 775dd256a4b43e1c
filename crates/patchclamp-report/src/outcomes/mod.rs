//! The typed outcomes of the analysis commands, as every face writes them: the request echoed
//! (model, prompts, settings) beside the lab's result, and how each is drawn.

mod analyses;
mod causal;
mod checks;
mod model;
mod sae;
mod steering;
mod studies;
mod toy;

pub use analyses::{DlaOutcome, ExtremesOutcome, HeadsOutcome, HydraOutcome};
pub use causal::{PatchOutcome, TraceOutcome};
pub use model::{
    hook_point_shapes, CacheTarget, CacheWritten, GenerateOutcome, InspectOutcome, PointShape,
    RunOutcome, ShownGeneration,
};
pub use sae::{log_density_histogram, SaeEvalOutcome, SaeToyOutcome};
pub use steering::{BatteryOutcome, SweepColumn, SweepOutcome};
pub use studies::{LensOutcome, LocalizeOutcome, NeuronsOutcome, ProbeOutcome, MAX_LENS_FIGURES};
pub use toy::{write_ablations, write_critical_periods, write_toy_phase};
