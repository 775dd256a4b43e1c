//! Analyses of recorded activations and weights: each a function from (model, inputs,
//! settings) to a typed, serialisable result.
//!
//! [`lens`] (logit lens, latent language), [`dla`] (direct logit attribution), [`hydra`]
//! (direct vs total effects), [`heads`] (head detectors and composition), [`probes`] (the head
//! scores the trainer evaluates), [`extremes`] (sinks, drains, massive activations),
//! [`neurons`] (census, LAPE, experts, localizer), [`linear_probe`] (probes, CAV, TCAV),
//! [`predict`] (next-token predictions).

pub mod dla;
pub mod extremes;
pub mod heads;
pub mod hydra;
pub mod lens;
pub mod linear_probe;
pub mod neurons;
pub mod predict;
pub mod probes;
