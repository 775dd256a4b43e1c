//! The trainer: seeded batches, optimiser steps, and interventions held in place during
//! training ("optogenetics"), with exact checkpoints.
//!
//! A training forward with an intervention in force runs through the same `Hooks` as
//! inference, so any intervention spec applies with its step window. Replacing ops cut the
//! gradient for the elements they replace (see `patchclamp_core::hooks`): a head whose pattern
//! is clamped gets no gradient on `W_Q` and `W_K`, while its `W_V` and `W_O` still learn. Steps
//! with none in force take the tape-free fused step where the model allows (`fused_step`).

pub(crate) mod checkpoint;
mod evaluate;
mod fused_step;
mod model_spec;
mod optim;
mod run;
mod summary;

pub use checkpoint::{check_checkpoint, load_checkpoint, load_model, save_checkpoint};
pub use evaluate::{EvalRecord, FreeEval, HeadScores};
pub use model_spec::ModelSpec;
pub use optim::{Decay, LrSchedule, Moments, OptimSpec};
pub use run::{check_resume, run, Event, Resume, RunOptions, RunResult, StepRecord};
pub use summary::Summary;

use std::collections::{BTreeSet, HashMap};

use candle_core::{Device, Tensor, Var};
use patchclamp_core::hooks::{ActivationCache, HookPoint, Op};
use patchclamp_core::model::Weights;
use patchclamp_core::rng::Rng;
use patchclamp_core::{Config, Hooks, Intervention, Model};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::{Batch, Task};

/// How to train: steps, batch, optimiser, schedule, evaluation and checkpoint cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub steps: u64,
    pub batch: usize,
    /// Seed of the data stream.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub optim: OptimSpec,
    pub lr: LrSchedule,
    /// Clip the global gradient norm to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// Evaluate (and log probes) every this many steps.
    #[serde(default = "fifty")]
    pub eval_every: u64,
    /// Sequences in the fixed evaluation batch.
    #[serde(default = "sixty_four")]
    pub eval_batch: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
}

fn fifty() -> u64 {
    50
}
fn sixty_four() -> usize {
    64
}

impl TrainSpec {
    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.steps == 0 || self.batch == 0 || self.eval_every == 0 || self.eval_batch == 0 {
            return Err(crate::Error::Spec(
                "steps, batch, eval_every and eval_batch must be positive".into(),
            ));
        }
        if !(self.lr.lr > 0.0 && self.lr.lr.is_finite()) {
            return Err(crate::Error::Spec(format!(
                "learning rate must be positive, got {}",
                self.lr.lr
            )));
        }
        if let Some(c) = self.clip {
            if c.is_nan() || c <= 0.0 {
                return Err(crate::Error::Spec(format!(
                    "clip must be positive, got {c}"
                )));
            }
        }
        self.optim.validate()
    }
}

/// A model whose activations feed `patch` ops during training: the run's own model without
/// interventions (two-pass ablations) or a fixed other model.
pub struct Source {
    pub name: String,
    /// `None`: the trained model itself, run without interventions on the same batch.
    pub model: Option<Model>,
}

/// The name under which the trained model's own unclamped activations are available.
pub const SELF_SOURCE: &str = "self";

/// Loss and bookkeeping of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub grad_norm: f64,
    pub lr: f64,
}

/// A model being trained, its optimiser state and data stream.
pub struct Trainer {
    /// The model; its weights are the trained variables.
    pub model: Model,
    params: Vec<(String, Var)>,
    state: Vec<Moments>,
    frozen: HashMap<String, Vec<bool>>,
    pub spec: TrainSpec,
    /// Held in place in every training forward whose step is in their window.
    pub interventions: Vec<Intervention>,
    sources: Vec<Source>,
    /// Updates done.
    pub step: u64,
    rng: Rng,
    /// The resolved experiment this trainer runs (JSON), stored in its checkpoints so a resume
    /// can tell its own run from another one; `None` for trainers built in code.
    pub identity: Option<String>,
    /// The tape-free step for models of its family (`None` outside it).
    fused: Option<fused_step::FusedStep>,
    /// Whether steps with no intervention in force take the fused step.
    use_fused: bool,
}

impl Trainer {
    /// A trainer for `cfg` from random weights (`init_seed`).
    pub fn new(cfg: Config, init_seed: u64, spec: TrainSpec) -> Result<Self> {
        let w = Weights::random(&cfg, init_seed, &Device::Cpu)?;
        Self::from_weights(cfg, w, spec)
    }

    /// A trainer starting from given weights.
    pub fn from_weights(cfg: Config, weights: Weights, spec: TrainSpec) -> Result<Self> {
        spec.validate()?;
        let (mut params, mut handles) = (vec![], vec![]);
        let weights = weights.map_params(|p, t| {
            let v = Var::from_tensor(&t.contiguous()?)?;
            let t = v.as_tensor().clone();
            handles.push((p, v.elem_count()));
            params.push((p.to_string(), v));
            Ok(t)
        })?;
        let state = params
            .iter()
            .map(|(_, v)| spec.optim.init(v.elem_count()))
            .collect();
        let rng = Rng::new(spec.seed);
        let fused = fused_step::FusedStep::new(&cfg, &handles);
        Ok(Trainer {
            model: Model::new(cfg, weights)?,
            params,
            state,
            frozen: HashMap::new(),
            spec,
            interventions: vec![],
            sources: vec![],
            step: 0,
            rng,
            identity: None,
            fused,
            use_fused: true,
        })
    }

    /// Chooses whether steps with no intervention in force use the fused training step (the
    /// default) or, like every other step, the hooked forward with candle's backward. The two
    /// agree to rounding; turning it off reproduces the hooked path's numbers exactly.
    pub fn set_fused(&mut self, on: bool) {
        self.use_fused = on;
    }

    /// Whether the step at `step` takes the fused path: a model of its family, the path on,
    /// and no intervention in force.
    pub fn fused_at(&self, step: u64) -> bool {
        self.use_fused
            && self.fused.is_some()
            && !self.interventions.iter().any(|iv| iv.when.active(step))
    }

    /// Holds `ivs` in place during training (checked against the model now).
    pub fn with_interventions(mut self, ivs: Vec<Intervention>) -> Result<Self> {
        let names: BTreeSet<String> = ivs
            .iter()
            .filter_map(|iv| match &iv.op {
                Op::Patch { source, .. } | Op::SubspacePatch { source, .. } => Some(source.clone()),
                _ => None,
            })
            .collect();
        for n in &names {
            if n != SELF_SOURCE && !self.sources.iter().any(|s| &s.name == n) {
                return Err(Error::Input(format!(
                    "intervention patches from source '{n}', which this run does not define (use '{SELF_SOURCE}' for the model's own unclamped run)"
                )));
            }
        }
        if names.contains(SELF_SOURCE) && !self.sources.iter().any(|s| s.name == SELF_SOURCE) {
            self.sources.push(Source {
                name: SELF_SOURCE.into(),
                model: None,
            });
        }
        // Checked at the longest input the model takes, so any position the spec names fits.
        let s = self.model.cfg.n_ctx;
        let dummy: HashMap<String, ActivationCache> = names
            .iter()
            .map(|n| {
                let mut c = ActivationCache::default();
                for iv in &ivs {
                    c.insert(
                        iv.at,
                        Tensor::zeros(
                            iv.at.shape(&self.model.cfg, 1, s),
                            candle_core::DType::F32,
                            &Device::Cpu,
                        )
                        .expect("cpu alloc"),
                    );
                }
                (n.clone(), c)
            })
            .collect();
        for iv in &ivs {
            iv.validate(&self.model.cfg, 1, s, &dummy)?;
            if !iv.when.overlaps(self.spec.steps) {
                tracing::warn!(
                    "the intervention at {} never acts: its window {} lies outside the run's {} steps",
                    iv.at,
                    window_text(&iv.when),
                    self.spec.steps
                );
            }
        }
        self.interventions = ivs;
        Ok(self)
    }

    /// Adds a fixed model whose activations `patch` ops can read under `name`.
    pub fn with_source(mut self, name: &str, model: Model) -> Self {
        self.sources.push(Source {
            name: name.into(),
            model: Some(model),
        });
        self
    }

    /// Fixes rows `rows` of parameter `name` to `values` (row-major) and keeps them there.
    pub fn freeze_rows(
        &mut self,
        name: &str,
        rows: std::ops::Range<usize>,
        values: &[f32],
    ) -> Result<()> {
        let (_, var) = self
            .params
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Input(format!("no parameter named '{name}'")))?;
        let dims = var.dims().to_vec();
        let width: usize = dims[1..].iter().product();
        if rows.end > dims[0] || values.len() != rows.len() * width {
            return Err(Error::Input(format!(
                "cannot freeze rows {rows:?} of {name} {dims:?} to {} values",
                values.len()
            )));
        }
        let mut data = var.flatten_all()?.to_vec1::<f32>()?;
        data[rows.start * width..rows.end * width].copy_from_slice(values);
        var.set(&Tensor::from_vec(data, dims.as_slice(), &Device::Cpu)?)?;
        let mut mask = vec![false; var.elem_count()];
        mask[rows.start * width..rows.end * width].fill(true);
        self.frozen.insert(name.into(), mask);
        Ok(())
    }

    /// The trained parameters in a fixed order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The current weights as an inference model (no gradient tracking, fast kernels), copied.
    pub fn snapshot(&self) -> Result<Model> {
        let w = self.model.weights.map(|_, t| Ok(t.detach().copy()?))?;
        Ok(Model::new(self.model.cfg.clone(), w)?)
    }

    /// The current weights without gradient tracking, sharing their storage (valid until the
    /// next update): the per-step source runs and evaluations need no copy.
    pub(crate) fn detached(&self) -> Result<Model> {
        Ok(Model::new(
            self.model.cfg.clone(),
            self.model.weights.map(|_, t| Ok(t.detach()))?,
        )?)
    }

    /// The hooks of a training (or clamped evaluation) forward at `step` on `batch`.
    pub fn hooks(&self, step: u64, batch: &Batch) -> Result<Hooks> {
        let mut hooks = Hooks::none().intervene_all(self.interventions.iter().cloned());
        hooks.set_step(step);
        for src in &self.sources {
            let points: Vec<HookPoint> = self
                .interventions
                .iter()
                .filter(|iv| iv.when.active(step))
                .filter(|iv| match &iv.op {
                    Op::Patch { source, .. } | Op::SubspacePatch { source, .. } => {
                        source == &src.name
                    }
                    _ => false,
                })
                .map(|iv| iv.at)
                .collect();
            if points.is_empty() {
                continue;
            }
            let model = match &src.model {
                Some(m) => m.clone(),
                None => self.detached()?,
            };
            let mut h = points.iter().fold(Hooks::none(), |h, p| {
                h.capture(patchclamp_core::Selector::Point(*p))
            });
            model.forward(&crate::tasks::loss::input(batch, model.device())?, &mut h)?;
            hooks = hooks.source(src.name.clone(), h.take_cache());
        }
        Ok(hooks)
    }

    /// The loss of `batch` at the current weights under the interventions active at `step`.
    pub fn loss(&self, task: &dyn Task, batch: &Batch, step: u64) -> Result<Tensor> {
        let mut hooks = self.hooks(step, batch)?;
        let logits = self.model.forward(
            &crate::tasks::loss::input(batch, self.model.device())?,
            &mut hooks,
        )?;
        crate::tasks::loss::mean_loss(&logits, batch, task.classes())
    }

    /// Gradients of the loss on `batch` for every parameter (zeros where none flows), through
    /// the hooked forward and candle's backward whatever the step.
    pub fn gradients(&self, task: &dyn Task, batch: &Batch) -> Result<(f32, Vec<Tensor>)> {
        let loss = self.loss(task, batch, self.step)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(Error::Numeric(format!(
                "training loss became {value} at step {}; lower the learning rate or add clipping",
                self.step
            )));
        }
        let grads = loss.backward()?;
        let out = self
            .params
            .iter()
            .map(|(_, v)| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((value, out))
    }

    /// The loss on `batch` and its gradients (flattened, in [`Trainer::params`] order) from the
    /// fused step, which takes no interventions; an error for a model outside its family.
    pub fn fused_gradients(
        &mut self,
        task: &dyn Task,
        batch: &Batch,
    ) -> Result<(f32, Vec<Vec<f32>>)> {
        let values = self.values()?;
        self.fused_gradients_at(&values, task, batch)
    }

    /// The parameters' current values, flattened, in [`Trainer::params`] order.
    fn values(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .params
            .iter()
            .map(|(_, v)| v.flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?)
    }

    fn fused_gradients_at(
        &mut self,
        values: &[Vec<f32>],
        task: &dyn Task,
        batch: &Batch,
    ) -> Result<(f32, Vec<Vec<f32>>)> {
        let step = self.step;
        let fused = self.fused.as_mut().ok_or_else(|| {
            Error::Input("the fused training step does not support this model".into())
        })?;
        let (value, grads) = fused.loss_and_grads(values, batch, task.classes())?;
        if !value.is_finite() {
            return Err(Error::Numeric(format!(
                "training loss became {value} at step {step}; lower the learning rate or add clipping"
            )));
        }
        Ok((value, grads))
    }

    /// Draws a batch from the data stream and does one update.
    pub fn train_step(&mut self, task: &dyn Task) -> Result<StepStats> {
        let batch = task.batch(&mut self.rng, self.spec.batch);
        let mut values = self.values()?;
        let (loss, mut gs) = if self.fused_at(self.step) {
            self.fused_gradients_at(&values, task, &batch)?
        } else {
            let (loss, grads) = self.gradients(task, &batch)?;
            let gs = grads
                .iter()
                .map(|g| g.flatten_all()?.to_vec1::<f32>())
                .collect::<candle_core::Result<_>>()?;
            (loss, gs)
        };
        // Per-tensor sums in parallel, added in a fixed order: deterministic.
        let squares: Vec<f64> = gs
            .par_iter()
            .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .collect();
        let norm = squares.iter().sum::<f64>().sqrt();
        if let Some(c) = self.spec.clip {
            if norm > c {
                let f = (c / (norm + 1e-6)) as f32;
                gs.par_iter_mut()
                    .for_each(|g| g.iter_mut().for_each(|x| *x *= f));
            }
        }
        let lr = self.spec.lr.at(self.step, self.spec.steps);
        let t = self.step + 1;
        for (((name, var), (p, g)), st) in self
            .params
            .iter()
            .zip(values.iter_mut().zip(&gs))
            .zip(self.state.iter_mut())
        {
            let frozen = self.frozen.get(name).map_or(&[][..], |m| m.as_slice());
            self.spec.optim.update_parallel(p, g, st, t, lr, frozen);
            var.set(&Tensor::from_slice(p, var.dims(), &Device::Cpu)?)?;
        }
        if let Some(fused) = self.fused.as_mut() {
            fused.recycle(gs);
        }
        self.step = t;
        Ok(StepStats {
            loss,
            grad_norm: norm,
            lr,
        })
    }

    /// The data stream's state (checkpoints save it).
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }
}

/// `from = 10, until = 20` as written in the file.
fn window_text(w: &patchclamp_core::hooks::Schedule) -> String {
    let mut parts = vec![];
    if let Some(a) = w.from {
        parts.push(format!("from = {a}"));
    }
    if let Some(b) = w.until {
        parts.push(format!("until = {b}"));
    }
    parts.join(", ")
}
