//! The typed outcomes of the analysis commands, as every face writes them: the request echoed
//! (model, prompts, settings) beside the lab's result, and how each is drawn.

mod analyses;
mod causal;
mod toy;

pub use analyses::{DlaOutcome, ExtremesOutcome, HeadsOutcome, HydraOutcome};
pub use causal::{PatchOutcome, TraceOutcome};
pub use toy::{write_ablations, write_critical_periods, write_toy_phase};
