//! patchclamp-lab: methods on top of the core — each a function from (model, inputs, settings)
//! to a typed, serialisable result. The folders follow the workflow:
//!
//! 1. [`tasks`]: synthetic data (repeated segments, in-context classification, Bigram-Backcopy,
//!    flip-flop, bigram languages).
//! 2. [`train`]: the trainer (interventions held during training, exact checkpoints), which
//!    evaluates through [`analysis::probes`]; [`experiment`] files and presets drive it.
//! 3. [`causal`]: activation patching, attribution patching, causal tracing, dataset means.
//! 4. [`analysis`]: logit lens, DLA, Hydra, head detectors, extremes, neurons, linear probes.
//! 5. [`toy`]: analytic toy models of learning dynamics.
//! 6. [`steering`]: steering vectors from contrastive pairs, and the interventions that add them.
//! 7. [`sae`]: sparse autoencoders — training on harvested activations, evaluation, feature
//!    dashboards, contrast, and K11 (the SAE itself and its splice are the core's).
//!
//! [`util`] holds the statistics and linear algebra they share; every fallible function
//! returns the lab's [`Error`].

pub mod analysis;
pub mod causal;
pub mod error;
pub mod experiment;
pub mod sae;
pub mod steering;
pub mod tasks;
pub mod toy;
pub mod train;
pub mod util;

pub use error::{Error, Result};
