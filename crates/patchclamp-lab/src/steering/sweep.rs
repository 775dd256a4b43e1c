//! A steering sweep: the same prompts generated under a steering vector at each of several
//! scales, with a per-generation metric averaged over the prompts at each scale.

use patchclamp_core::generate::{generate_batch, GenerateSpec, Generation};
use patchclamp_core::{Intervention, Model};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The generations at one scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRun {
    pub scale: f64,
    /// One per prompt, in order.
    pub generations: Vec<Generation>,
    /// The metric's mean over the prompts, when one was given.
    pub metric: Option<f64>,
    /// The mean number of generated tokens (a stop token ends a generation early).
    pub mean_tokens: f64,
}

/// A per-generation metric: `(prompt index, generation) → value`.
pub type Metric<'a> = &'a dyn Fn(usize, &Generation) -> f64;

/// What a sweep generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The vector's scales, one column each.
    pub scales: Vec<f64>,
    pub generate: GenerateSpec,
    /// Prompts generated at once (the tokens do not depend on it).
    pub batch: usize,
}

/// Generates after every prompt at every scale (`steer(scale)` gives the interventions);
/// `metric(prompt, generation)` is averaged per scale. `progress(done, total)` counts
/// prompts × scales.
pub fn sweep(
    model: &Model,
    prompts: &[Vec<u32>],
    spec: &SweepSpec,
    steer: impl Fn(f64) -> Result<Vec<Intervention>>,
    metric: Option<Metric>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<ScaleRun>> {
    let (scales, batch) = (&spec.scales, spec.batch);
    check_scales(scales)?;
    spec.generate.validate(&model.cfg)?;
    if prompts.is_empty() {
        return Err(Error::Input("a sweep needs at least one prompt".into()));
    }
    if batch == 0 {
        return Err(Error::Input(
            "the batch must hold at least one prompt".into(),
        ));
    }
    // Every scale's interventions are built (and so checked) before any generation.
    let steering = scales
        .iter()
        .map(|&s| steer(s))
        .collect::<Result<Vec<_>>>()?;
    let total = prompts.len() * scales.len();
    let mut done = 0;
    let mut out = vec![];
    for (&scale, ivs) in scales.iter().zip(&steering) {
        let mut generations = vec![];
        for (c, chunk) in prompts.chunks(batch).enumerate() {
            // `rows` name prompts of the whole list: renumbered for this chunk.
            let local: Vec<Intervention> = ivs
                .iter()
                .filter_map(|iv| iv.for_prompts(c * batch, chunk.len()))
                .collect();
            let got = generate_batch(model, chunk, &spec.generate, &local, &[], |_, _| true)?;
            generations.extend(got.into_iter().map(|(g, _)| g));
            done += chunk.len();
            progress(done, total);
            crate::util::interrupt::check()?;
        }
        let metric = metric.map(|m| {
            generations
                .iter()
                .enumerate()
                .map(|(i, g)| m(i, g))
                .sum::<f64>()
                / generations.len() as f64
        });
        let mean_tokens = generations
            .iter()
            .map(|g| g.tokens.len() as f64)
            .sum::<f64>()
            / generations.len() as f64;
        out.push(ScaleRun {
            scale,
            generations,
            metric,
            mean_tokens,
        });
    }
    Ok(out)
}

/// Refuses an empty list, a non-finite scale and a repeated one (its column would be a copy).
pub fn check_scales(scales: &[f64]) -> Result<()> {
    if scales.is_empty() {
        return Err(Error::Input("give at least one scale".into()));
    }
    if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
        return Err(Error::Input(format!("scale {s} is not a finite number")));
    }
    for (i, a) in scales.iter().enumerate() {
        if scales[..i].contains(a) {
            return Err(Error::Input(format!("scale {a} is given twice")));
        }
    }
    Ok(())
}
