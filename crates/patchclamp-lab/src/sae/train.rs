//! Training an SAE on a stream of activations: ReLU + L1, TopK (with AuxK), BatchTopK and
//! JumpReLU, with SAELens's losses, written as one hand-derived forward and backward.
//!
//! Latents are sparse, so the step keeps them as per-row lists: the decoder, its gradient, the
//! encoder's gradient and AuxK cost `batch · active · d_in` instead of `batch · d_sae · d_in`;
//! only the encoder's forward product is dense. Every sum runs in a fixed order (rows, then
//! latents), and work is split over outputs, never over a sum: the same seed gives the same
//! bits on any thread count, and a resumed run equals an uninterrupted one.
//!
//! Losses (per batch of `B` rows, as SAELens computes them):
//! `mse = Σ_b ‖x̂_b − x_b‖² / B`; ReLU: `+ λ Σ_b Σ_s a_bs ‖W_dec,s‖ / B`; JumpReLU:
//! `+ λ Σ_b #{s : pre_bs > θ_s} / B` through a rectangle straight-through estimator of width
//! `bandwidth`; TopK/BatchTopK: `+ c · min(n_dead / k_aux, 1) · Σ_b ‖ê_b − (x_b − x̂_b)‖² / B`
//! where `ê` decodes the `k_aux = d_in / 2` largest pre-activations of dead latents (AuxK).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use patchclamp_core::model::kernels::tiles::mm;
use patchclamp_core::rng::Rng;

use crate::train::{LrSchedule, Moments, OptimSpec};
use crate::{Error, Result};

/// The architecture being trained, with its sparsity settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrainArch {
    /// ReLU latents with a decoder-norm-weighted L1 penalty, warmed up linearly.
    Standard {
        l1: f64,
        #[serde(default)]
        l1_warm_up_steps: u64,
    },
    /// The `k` largest pre-activations of each row (relu'd).
    Topk { k: usize },
    /// The `k · B` largest activations of the whole batch; saved as JumpReLU with a global
    /// threshold estimated as an EMA of the smallest kept activation.
    Batchtopk {
        k: usize,
        #[serde(default = "threshold_lr")]
        threshold_lr: f64,
    },
    /// `pre · [pre > θ]` with a learned θ and an L0 penalty (DeepMind's step loss).
    Jumprelu {
        l0: f64,
        #[serde(default)]
        l0_warm_up_steps: u64,
        #[serde(default = "bandwidth")]
        bandwidth: f64,
        #[serde(default = "init_threshold")]
        init_threshold: f64,
    },
}

fn threshold_lr() -> f64 {
    0.01
}
fn bandwidth() -> f64 {
    0.05
}
fn init_threshold() -> f64 {
    0.01
}

/// How `b_dec` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    /// The geometric median of the first batch (Weiszfeld iterations).
    #[default]
    GeometricMedian,
    /// The mean of the first batch.
    Mean,
    /// Zeros.
    Zeros,
}

/// Everything that fixes a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Architecture and sparsity penalty.
    pub arch: TrainArch,
    /// Width of the activations.
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Rows per step.
    pub batch: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Learning rate over steps.
    pub lr: LrSchedule,
    /// The update rule (Adam by default).
    #[serde(default)]
    pub optim: OptimSpec,
    /// Keep every decoder row at unit norm (renormalised after each step).
    #[serde(default = "yes")]
    pub unit_decoder: bool,
    /// Initial decoder row norm when the decoder is free (SAELens's heuristic 0.1).
    #[serde(default = "init_norm")]
    pub decoder_init_norm: f64,
    /// Tied weights: `W_enc = W_decᵀ` (Cunningham et al.).
    #[serde(default)]
    pub tied: bool,
    /// How `b_dec` starts.
    #[serde(default)]
    pub b_dec_init: BDecInit,
    /// AuxK's coefficient (TopK and BatchTopK).
    #[serde(default = "one")]
    pub aux_coef: f64,
    /// A latent is dead after this many steps without firing.
    #[serde(default = "dead_window")]
    pub dead_window: u64,
    /// Scale inputs to mean norm √d_in (SAELens's `expected_average_only_in`), folded into the
    /// weights at the end.
    #[serde(default)]
    pub normalize: bool,
    /// Seed of the initial weights.
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}
fn init_norm() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}
fn dead_window() -> u64 {
    1000
}

impl TrainSpec {
    /// Checks the settings before any work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(m));
        if self.d_in == 0 || self.d_sae == 0 {
            return bad(format!(
                "d_in = {} and d_sae = {} must be positive",
                self.d_in, self.d_sae
            ));
        }
        if self.batch == 0 || self.steps == 0 {
            return bad("the batch and the step count must be positive".into());
        }
        if !(self.lr.lr.is_finite() && self.lr.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr.lr));
        }
        if self.tied && !self.unit_decoder {
            return bad("tied weights keep unit-norm rows: drop unit_decoder = false".into());
        }
        if !(self.decoder_init_norm.is_finite() && self.decoder_init_norm > 0.0) {
            return bad(format!(
                "decoder_init_norm {} must be positive",
                self.decoder_init_norm
            ));
        }
        self.optim.validate()?;
        match self.arch {
            TrainArch::Topk { k } | TrainArch::Batchtopk { k, .. } if k == 0 || k > self.d_sae => {
                bad(format!("k = {k} must lie in 1..=d_sae ({})", self.d_sae))
            }
            TrainArch::Standard { l1, .. } if !(l1.is_finite() && l1 >= 0.0) => {
                bad(format!("l1 coefficient {l1} must be ≥ 0"))
            }
            TrainArch::Jumprelu { l0, bandwidth, init_threshold, .. }
                if !(l0.is_finite() && l0 >= 0.0 && bandwidth > 0.0 && init_threshold >= 0.0) =>
            {
                bad(format!(
                    "jumprelu settings out of range (l0 {l0} ≥ 0, bandwidth {bandwidth} > 0, init_threshold {init_threshold} ≥ 0)"
                ))
            }
            TrainArch::Batchtopk { threshold_lr, .. } if !(0.0..=1.0).contains(&threshold_lr) => {
                bad(format!("threshold_lr {threshold_lr} must lie in [0, 1]"))
            }
            _ => Ok(()),
        }
    }
}

/// The trained parameters, `W_enc` stored transposed (one row per latent).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `W_encᵀ` `[d_sae, d_in]` (empty when tied: `W_dec` serves).
    pub w_enc_t: Vec<f32>,
    /// `b_enc` `[d_sae]`.
    pub b_enc: Vec<f32>,
    /// `W_dec` `[d_sae, d_in]`.
    pub w_dec: Vec<f32>,
    /// `b_dec` `[d_in]`.
    pub b_dec: Vec<f32>,
    /// JumpReLU thresholds `[d_sae]` (empty otherwise).
    pub threshold: Vec<f32>,
}

/// One step's numbers (on its own batch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The update number (1-based).
    pub step: u64,
    /// Total loss.
    pub loss: f64,
    /// `Σ‖x̂ − x‖² / B` (SAELens's `mse_loss`).
    pub mse: f64,
    /// The sparsity or auxiliary term.
    pub aux: f64,
    /// Mean active latents per row.
    pub l0: f64,
    /// `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²` over the batch (SAELens's formula).
    pub explained_variance: f64,
    /// Latents not fired within the dead window.
    pub dead: usize,
    /// The learning rate used.
    pub lr: f64,
}

/// A training run's whole state: parameters, optimiser moments, counters.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub spec: TrainSpec,
    pub params: Params,
    moments: Vec<Moments>,
    /// Updates done.
    pub step: u64,
    /// Steps since each latent last fired.
    pub since_fired: Vec<u64>,
    /// Tokens each latent fired on, over the whole run (for `sparsity.safetensors`).
    pub fired: Vec<u64>,
    /// Rows seen.
    pub tokens: u64,
    /// BatchTopK's running threshold.
    pub topk_threshold: f64,
    /// The input scaling factor (`normalize`), fixed from the first batch.
    pub scale: Option<f64>,
}

/// Per-row latents of one batch: `(latent, pre-activation, activation)`.
type Active = Vec<Vec<(u32, f32, f32)>>;

impl Trainer {
    /// A fresh run; `first` is the first batch (`b_dec` init and the input scale).
    pub fn new(spec: TrainSpec, first: &[f32]) -> Result<Trainer> {
        spec.validate()?;
        let (d, s) = (spec.d_in, spec.d_sae);
        check_batch(&spec, first)?;
        let mut rng = Rng::new(spec.seed);
        let norm = if spec.unit_decoder {
            1.0
        } else {
            spec.decoder_init_norm
        };
        let mut w_dec = rng.normal_vec(s * d, 1.0);
        for row in w_dec.chunks_mut(d) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v *= norm as f32 / n);
        }
        let w_enc_t = if spec.tied { vec![] } else { w_dec.clone() };
        let scale = spec.normalize.then(|| input_scale(first, d));
        let scaled: Vec<f32> = match scale {
            Some(c) => first.iter().map(|v| v * c as f32).collect(),
            None => first.to_vec(),
        };
        let b_dec = match spec.b_dec_init {
            BDecInit::Zeros => vec![0.0; d],
            BDecInit::Mean => mean_rows(&scaled, d),
            BDecInit::GeometricMedian => geometric_median(&scaled, d, 100),
        };
        let threshold = match spec.arch {
            TrainArch::Jumprelu { init_threshold, .. } => vec![init_threshold as f32; s],
            _ => vec![],
        };
        let params = Params {
            w_enc_t,
            b_enc: vec![0.0; s],
            w_dec,
            b_dec,
            threshold,
        };
        let moments = params_slices(&params)
            .iter()
            .map(|p| spec.optim.init(p.len()))
            .collect();
        Ok(Trainer {
            moments,
            params,
            step: 0,
            since_fired: vec![0; s],
            fired: vec![0; s],
            tokens: 0,
            topk_threshold: 0.0,
            scale,
            spec,
        })
    }

    /// One update on a batch `[batch, d_in]` (row-major).
    pub fn step(&mut self, batch: &[f32]) -> Result<StepStats> {
        check_batch(&self.spec, batch)?;
        let spec = self.spec.clone();
        let (d, s, b) = (spec.d_in, spec.d_sae, spec.batch);
        let x: Vec<f32> = match self.scale {
            Some(c) => batch.iter().map(|v| v * c as f32).collect(),
            None => batch.to_vec(),
        };
        let t = self.step + 1;
        if let TrainArch::Jumprelu { .. } = spec.arch {
            // θ ≥ 0, projected before the step as SAELens does.
            self.params
                .threshold
                .iter_mut()
                .for_each(|v| *v = v.max(0.0));
        }
        let p = &self.params;
        let w_enc_t: &[f32] = if spec.tied { &p.w_dec } else { &p.w_enc_t };

        // --- forward -----------------------------------------------------------------------
        let u: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| row.iter().zip(&p.b_dec).map(|(a, c)| a - c))
            .collect();
        let pre = encoder_product(&u, w_enc_t, &p.b_enc, b, d, s);
        let active: Active = match spec.arch {
            TrainArch::Standard { .. } => rows_where(&pre, s, |_, v| v > 0.0),
            TrainArch::Jumprelu { .. } => rows_where(&pre, s, |j, v| v > p.threshold[j]),
            TrainArch::Topk { k } => top_k_rows(&pre, s, k),
            TrainArch::Batchtopk { k, .. } => batch_top_k(&pre, s, k * b),
        };
        let x_hat = decode_rows(&active, &p.w_dec, &p.b_dec, d);
        let err: Vec<f32> = x_hat.iter().zip(&x).map(|(a, c)| a - c).collect();
        let sq: f64 = err.iter().map(|&e| (e as f64) * (e as f64)).sum();
        let mse = sq / b as f64;
        let mean = mean_rows(&x, d);
        let var: f64 = x
            .chunks(d)
            .flat_map(|r| r.iter().zip(&mean).map(|(a, m)| ((a - m) as f64).powi(2)))
            .sum();
        let explained_variance = if var > 0.0 { 1.0 - sq / var } else { f64::NAN };
        let l0 = active.iter().map(|r| r.len()).sum::<usize>() as f64 / b as f64;

        // Dead latents, as of before this step (SAELens's mask for AuxK).
        let dead_mask: Vec<bool> = self
            .since_fired
            .iter()
            .map(|&n| n > spec.dead_window)
            .collect();
        let n_dead = dead_mask.iter().filter(|&&m| m).count();

        // --- losses and the gradient at x̂ ---------------------------------------------------
        let gscale = 2.0 / b as f32;
        let g_out: Vec<f32> = err.iter().map(|e| e * gscale).collect();
        let norms = row_norms(&p.w_dec, d);
        let mut aux = 0.0f64;
        // Per-row extra entries: (latent, pre, dL/dpre) from AuxK or JumpReLU's band.
        let mut aux_rows: Vec<Vec<(u32, f32, f32)>> = vec![vec![]; b];
        let mut g_aux_out: Option<Vec<f32>> = None;
        let mut aux_acts: Vec<Vec<(u32, f32)>> = vec![];
        let coef = |warm: u64, v: f64| {
            if warm > 0 {
                v * (t as f64 / warm as f64).min(1.0)
            } else {
                v
            }
        };
        let l1_now = match spec.arch {
            TrainArch::Standard {
                l1,
                l1_warm_up_steps,
            } => coef(l1_warm_up_steps, l1),
            _ => 0.0,
        };
        match spec.arch {
            TrainArch::Standard { .. } => {
                aux = l1_now
                    * active
                        .iter()
                        .flatten()
                        .map(|&(j, _, a)| a as f64 * norms[j as usize] as f64)
                        .sum::<f64>()
                    / b as f64;
            }
            TrainArch::Topk { .. } | TrainArch::Batchtopk { .. } if n_dead > 0 => {
                let k_aux_full = (d / 2).max(1);
                let scale = (n_dead as f64 / k_aux_full as f64).min(1.0);
                let k_aux = k_aux_full.min(n_dead);
                aux_acts = dead_top_k(&pre, s, &dead_mask, k_aux);
                let e_hat = decode_rows_plain(&aux_acts, &p.w_dec, d);
                // Residual R = x − x̂ (a constant); the loss is c·scale·Σ‖ê − R‖²/B.
                let diff: Vec<f32> = e_hat.iter().zip(&err).map(|(e, r)| e + r).collect();
                let c = spec.aux_coef * scale;
                aux = c * diff.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / b as f64;
                g_aux_out = Some(diff.iter().map(|v| v * (c as f32) * gscale).collect());
            }
            TrainArch::Jumprelu {
                l0,
                l0_warm_up_steps,
                ..
            } => {
                aux = coef(l0_warm_up_steps, l0) * l0_count(&active) / b as f64;
            }
            _ => {}
        }
        let loss = mse + aux;
        if !loss.is_finite() {
            return Err(Error::Numeric(format!(
                "the SAE's loss is {loss} at step {t}: lower the learning rate or check the inputs"
            )));
        }

        // --- backward: dL/dpre at every entry that has one ----------------------------------
        // Active entries: dL/da = g_out_b · W_dec[s] (+ λ‖W_dec[s]‖), and da/dpre = 1.
        let mut g_pre: Vec<Vec<(u32, f32, f32)>> = active
            .par_iter()
            .enumerate()
            .map(|(r, row)| {
                let g = &g_out[r * d..(r + 1) * d];
                row.iter()
                    .map(|&(j, _, a)| {
                        let w = &p.w_dec[j as usize * d..(j as usize + 1) * d];
                        let mut ga = dot(g, w);
                        if l1_now > 0.0 {
                            ga += (l1_now / b as f64) as f32 * norms[j as usize];
                        }
                        (j, a, ga)
                    })
                    .collect()
            })
            .collect();
        let mut g_threshold: Vec<f32> = vec![];
        if let TrainArch::Jumprelu {
            l0,
            l0_warm_up_steps,
            bandwidth,
            ..
        } = spec.arch
        {
            g_threshold = vec![0f32; s];
            let eps = bandwidth as f32;
            let l0c = (coef(l0_warm_up_steps, l0) / b as f64) as f32;
            // Entries within half a bandwidth of θ: the straight-through gradient of θ.
            for r in 0..b {
                let g = &g_out[r * d..(r + 1) * d];
                for j in 0..s {
                    let (v, th) = (pre[r * s + j], p.threshold[j]);
                    let z = (v - th) / eps;
                    if z > -0.5 && z < 0.5 {
                        let w = &p.w_dec[j * d..(j + 1) * d];
                        let ga = dot(g, w);
                        // JumpReLU: ∂a/∂θ = −(θ/ε)·rect; Step (L0): ∂/∂θ = −(1/ε)·rect.
                        g_threshold[j] += -(th / eps) * ga - l0c / eps;
                    }
                }
            }
        }
        if let Some(g_aux) = &g_aux_out {
            // AuxK entries: ê uses the raw pre-activation, so dL/dpre = g_aux_b · W_dec[s].
            for (r, row) in aux_acts.iter().enumerate() {
                let g = &g_aux[r * d..(r + 1) * d];
                for &(j, v) in row {
                    let w = &p.w_dec[j as usize * d..(j as usize + 1) * d];
                    aux_rows[r].push((j, v, dot(g, w)));
                }
            }
        }
        for (r, extra) in aux_rows.into_iter().enumerate() {
            // (latent, value used in decoding, dL/dpre); AuxK values decode through g_aux.
            g_pre[r].extend(extra.into_iter().map(|(j, v, g)| (j | AUX_BIT, v, g)));
        }

        // --- parameter gradients, one latent at a time ----------------------------------------
        let mut by_latent: Vec<Vec<(u32, f32, f32, bool)>> = vec![vec![]; s];
        for (r, row) in g_pre.iter().enumerate() {
            for &(j, v, g) in row {
                let is_aux = j & AUX_BIT != 0;
                by_latent[(j & !AUX_BIT) as usize].push((r as u32, v, g, is_aux));
            }
        }
        let g_aux_ref = g_aux_out.as_deref();
        let mut g_w_dec = vec![0f32; s * d];
        let mut g_w_enc_t = vec![0f32; s * d];
        let mut g_b_enc = vec![0f32; s];
        g_w_dec
            .par_chunks_mut(d)
            .zip(g_w_enc_t.par_chunks_mut(d))
            .zip(g_b_enc.par_iter_mut())
            .enumerate()
            .for_each(|(j, ((gd, ge), gb))| {
                let list = &by_latent[j];
                if list.is_empty() {
                    return;
                }
                let mut asum = 0f64;
                for &(r, v, g, is_aux) in list {
                    let r = r as usize;
                    // Decoder: x̂ (or ê for AuxK entries) = Σ v·W_dec[s].
                    let go = match (is_aux, g_aux_ref) {
                        (true, Some(ga)) => &ga[r * d..(r + 1) * d],
                        _ => &g_out[r * d..(r + 1) * d],
                    };
                    axpy(gd, v, go);
                    if !is_aux {
                        asum += v as f64;
                    }
                    // Encoder: pre = u·W_enc + b_enc.
                    axpy(ge, g, &u[r * d..(r + 1) * d]);
                    *gb += g;
                }
                if l1_now > 0.0 && asum > 0.0 {
                    // d/dW_dec of λ Σ a‖W_dec[s]‖ / B.
                    let w = &p.w_dec[j * d..(j + 1) * d];
                    let c = (l1_now * asum / b as f64) as f32 / norms[j];
                    axpy(gd, c, w);
                }
            });
        // b_dec: through x̂ directly, and through u = x − b_dec.
        let mut g_b_dec = vec![0f32; d];
        for r in 0..b {
            axpy(&mut g_b_dec, 1.0, &g_out[r * d..(r + 1) * d]);
        }
        let du: Vec<Vec<f32>> = g_pre
            .par_iter()
            .map(|row| {
                let mut acc = vec![0f32; d];
                for &(j, _, g) in row {
                    let j = (j & !AUX_BIT) as usize;
                    axpy(&mut acc, g, &w_enc_t[j * d..(j + 1) * d]);
                }
                acc
            })
            .collect();
        for row in &du {
            axpy(&mut g_b_dec, -1.0, row);
        }
        if spec.tied {
            for (a, e) in g_w_dec.iter_mut().zip(&g_w_enc_t) {
                *a += e;
            }
        }

        // --- counters ----------------------------------------------------------------------
        for n in self.since_fired.iter_mut() {
            *n += 1;
        }
        for row in &active {
            for &(j, _, _) in row {
                self.since_fired[j as usize] = 0;
                self.fired[j as usize] += 1;
            }
        }
        if let TrainArch::Batchtopk { threshold_lr, .. } = spec.arch {
            let min_pos = active
                .iter()
                .flatten()
                .map(|&(_, _, a)| a)
                .filter(|&a| a > 0.0)
                .fold(f32::INFINITY, f32::min);
            if min_pos.is_finite() {
                self.topk_threshold =
                    (1.0 - threshold_lr) * self.topk_threshold + threshold_lr * min_pos as f64;
            }
        }

        // --- update --------------------------------------------------------------------------
        let lr = spec.lr.at(self.step, spec.steps);
        let grads: Vec<Vec<f32>> = {
            let mut g = vec![];
            if !spec.tied {
                g.push(g_w_enc_t);
            }
            g.push(g_b_enc);
            g.push(g_w_dec);
            g.push(g_b_dec);
            if !self.params.threshold.is_empty() {
                g.push(g_threshold);
            }
            g
        };
        for ((param, grad), m) in params_slices_mut(&mut self.params)
            .into_iter()
            .zip(&grads)
            .zip(self.moments.iter_mut())
        {
            spec.optim.update_parallel(param, grad, m, t, lr, &[]);
        }
        if spec.unit_decoder {
            self.params.w_dec.par_chunks_mut(d).for_each(|row| {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if n > 0.0 {
                    row.iter_mut().for_each(|v| *v /= n);
                }
            });
        }
        self.step = t;
        self.tokens += b as u64;
        Ok(StepStats {
            step: t,
            loss,
            mse,
            aux,
            l0,
            explained_variance,
            dead: n_dead,
            lr,
        })
    }

    /// The latents not fired within the dead window.
    pub fn dead(&self) -> usize {
        self.since_fired
            .iter()
            .filter(|&&n| n > self.spec.dead_window)
            .count()
    }

    /// Each latent's firing frequency over the run.
    pub fn frequencies(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.fired.iter().map(|&f| f as f64 / n).collect()
    }

    /// The optimiser moments, in the order of [`Trainer::param_names`].
    pub fn moments(&self) -> &[Moments] {
        &self.moments
    }

    /// Replaces the moments (restoring a checkpoint).
    pub fn set_moments(&mut self, m: Vec<Moments>) -> Result<()> {
        let lens: Vec<usize> = params_slices(&self.params)
            .iter()
            .map(|p| p.len())
            .collect();
        if m.len() != lens.len()
            || m.iter()
                .zip(&lens)
                .any(|(m, &n)| m.m.len() != n && !m.m.is_empty())
        {
            return Err(Error::Spec(
                "the checkpoint's optimiser state does not fit the SAE".into(),
            ));
        }
        self.moments = m;
        Ok(())
    }

    /// The names of the trained tensors, in update order.
    pub fn param_names(&self) -> Vec<&'static str> {
        let mut v = vec![];
        if !self.spec.tied {
            v.push("W_enc_t");
        }
        v.extend(["b_enc", "W_dec", "b_dec"]);
        if !self.params.threshold.is_empty() {
            v.push("threshold");
        }
        v
    }
}

/// Marks AuxK entries in a latent index.
const AUX_BIT: u32 = 1 << 31;

fn check_batch(spec: &TrainSpec, batch: &[f32]) -> Result<()> {
    if batch.len() != spec.batch * spec.d_in {
        return Err(Error::Input(format!(
            "a batch holds {} values, expected {} rows × d_in {}",
            batch.len(),
            spec.batch,
            spec.d_in
        )));
    }
    if let Some(i) = batch.iter().position(|v| !v.is_finite()) {
        return Err(Error::Numeric(format!(
            "the activations hold a non-finite value ({}) at row {}",
            batch[i],
            i / spec.d_in
        )));
    }
    Ok(())
}

/// The parameters in update order.
fn params_slices(p: &Params) -> Vec<&[f32]> {
    let mut v: Vec<&[f32]> = vec![];
    if !p.w_enc_t.is_empty() {
        v.push(&p.w_enc_t);
    }
    v.extend([&p.b_enc[..], &p.w_dec[..], &p.b_dec[..]]);
    if !p.threshold.is_empty() {
        v.push(&p.threshold);
    }
    v
}

fn params_slices_mut(p: &mut Params) -> Vec<&mut [f32]> {
    let mut v: Vec<&mut [f32]> = vec![];
    if !p.w_enc_t.is_empty() {
        v.push(&mut p.w_enc_t);
    }
    v.push(&mut p.b_enc);
    v.push(&mut p.w_dec);
    v.push(&mut p.b_dec);
    if !p.threshold.is_empty() {
        v.push(&mut p.threshold);
    }
    v
}

/// `pre = u · W_encᵀᵀ + b_enc` `[b, s]`, rows split across threads (each row's sums fixed).
fn encoder_product(
    u: &[f32],
    w_enc_t: &[f32],
    b_enc: &[f32],
    b: usize,
    d: usize,
    s: usize,
) -> Vec<f32> {
    let mut pre = vec![0f32; b * s];
    for row in pre.chunks_mut(s) {
        row.copy_from_slice(b_enc);
    }
    const ROWS: usize = 64;
    pre.par_chunks_mut(ROWS * s)
        .zip(u.par_chunks(ROWS * d))
        .for_each(|(out, rows)| {
            let m = rows.len() / d;
            // B(p, j) = W_encᵀ[j, p]: the transpose is a stride.
            mm((m, s, d), out, s, rows, (d, 1), w_enc_t, (1, d), 1.0, true);
        });
    pre
}

/// Per row, the latents where `keep(latent, pre)` holds, with their pre-activation as value.
fn rows_where(pre: &[f32], s: usize, keep: impl Fn(usize, f32) -> bool + Sync) -> Active {
    pre.par_chunks(s)
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|&(j, &v)| keep(j, v))
                .map(|(j, &v)| (j as u32, v, v))
                .collect()
        })
        .collect()
}

/// Per row, the `k` largest pre-activations that are positive.
fn top_k_rows(pre: &[f32], s: usize, k: usize) -> Active {
    pre.par_chunks(s)
        .map(|row| {
            let mut idx: Vec<u32> = (0..s as u32).collect();
            if k < s {
                idx.select_nth_unstable_by(k, |&a, &b| {
                    row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                });
                idx.truncate(k);
            }
            idx.sort_unstable();
            idx.into_iter()
                .filter(|&j| row[j as usize] > 0.0)
                .map(|j| (j, row[j as usize], row[j as usize]))
                .collect()
        })
        .collect()
}

/// The `n` largest positive activations of the whole batch.
fn batch_top_k(pre: &[f32], s: usize, n: usize) -> Active {
    let mut idx: Vec<u32> = (0..pre.len() as u32)
        .filter(|&i| pre[i as usize] > 0.0)
        .collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n, |&a, &b| {
            pre[b as usize].total_cmp(&pre[a as usize]).then(a.cmp(&b))
        });
        idx.truncate(n);
    }
    idx.sort_unstable();
    let rows = pre.len() / s;
    let mut out: Active = vec![vec![]; rows];
    for i in idx {
        let (r, j) = (i as usize / s, i as usize % s);
        out[r].push((j as u32, pre[i as usize], pre[i as usize]));
    }
    out
}

/// Per row, the `k` largest pre-activations among dead latents (raw values, as SAELens).
fn dead_top_k(pre: &[f32], s: usize, dead: &[bool], k: usize) -> Vec<Vec<(u32, f32)>> {
    let cand: Vec<u32> = (0..s as u32).filter(|&j| dead[j as usize]).collect();
    pre.par_chunks(s)
        .map(|row| {
            let mut idx = cand.clone();
            if k < idx.len() {
                idx.select_nth_unstable_by(k, |&a, &b| {
                    row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                });
                idx.truncate(k);
            }
            idx.sort_unstable();
            idx.into_iter().map(|j| (j, row[j as usize])).collect()
        })
        .collect()
}

/// `x̂ = Σ a·W_dec[s] + b_dec`, per row.
fn decode_rows(active: &Active, w_dec: &[f32], b_dec: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; active.len() * d];
    out.par_chunks_mut(d)
        .zip(active.par_iter())
        .for_each(|(o, row)| {
            o.copy_from_slice(b_dec);
            for &(j, _, a) in row {
                axpy(o, a, &w_dec[j as usize * d..(j as usize + 1) * d]);
            }
        });
    out
}

/// `Σ v·W_dec[s]` per row (no bias).
fn decode_rows_plain(rows: &[Vec<(u32, f32)>], w_dec: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * d];
    out.par_chunks_mut(d)
        .zip(rows.par_iter())
        .for_each(|(o, row)| {
            for &(j, v) in row {
                axpy(o, v, &w_dec[j as usize * d..(j as usize + 1) * d]);
            }
        });
    out
}

fn l0_count(active: &Active) -> f64 {
    active.iter().map(|r| r.len()).sum::<usize>() as f64
}

fn row_norms(w: &[f32], d: usize) -> Vec<f32> {
    w.chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-8))
        .collect()
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The mean of `[n, d]` rows.
pub fn mean_rows(x: &[f32], d: usize) -> Vec<f32> {
    let n = (x.len() / d).max(1);
    let mut m = vec![0f64; d];
    for row in x.chunks(d) {
        for (a, v) in m.iter_mut().zip(row) {
            *a += *v as f64;
        }
    }
    m.into_iter().map(|v| (v / n as f64) as f32).collect()
}

/// The geometric median of `[n, d]` rows (Weiszfeld's iterations from the mean).
pub fn geometric_median(x: &[f32], d: usize, iters: usize) -> Vec<f32> {
    let mut y: Vec<f64> = mean_rows(x, d).into_iter().map(|v| v as f64).collect();
    for _ in 0..iters {
        let mut num = vec![0f64; d];
        let mut den = 0f64;
        for row in x.chunks(d) {
            let dist = row
                .iter()
                .zip(&y)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-8);
            for (n, a) in num.iter_mut().zip(row) {
                *n += *a as f64 / dist;
            }
            den += 1.0 / dist;
        }
        let next: Vec<f64> = num.iter().map(|n| n / den).collect();
        let moved = next
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        y = next;
        if moved < 1e-7 {
            break;
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

/// SAELens's `expected_average_only_in` factor: `√d / mean‖x‖`.
pub fn input_scale(x: &[f32], d: usize) -> f64 {
    let n = (x.len() / d).max(1) as f64;
    let mean_norm = x
        .chunks(d)
        .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n;
    if mean_norm > 0.0 {
        (d as f64).sqrt() / mean_norm
    } else {
        1.0
    }
}

impl Trainer {
    /// The trained SAE in SAELens's inference form: the input scale folded into the weights,
    /// BatchTopK as JumpReLU with its global threshold, and `sparsity` = log10 frequencies.
    pub fn to_sae(
        &self,
        hook_name: &str,
        metadata: serde_json::Map<String, serde_json::Value>,
        device: &candle_core::Device,
    ) -> Result<patchclamp_core::Sae> {
        use candle_core::Tensor;
        use patchclamp_core::sae::{Architecture, SaeConfig};
        let (d, s) = (self.spec.d_in, self.spec.d_sae);
        let p = &self.params;
        let c = self.scale.unwrap_or(1.0) as f32;
        let w_enc_t = if self.spec.tied { &p.w_dec } else { &p.w_enc_t };
        // W_enc [d, s] from its transpose, times the input scale.
        let mut w_enc = vec![0f32; d * s];
        for j in 0..s {
            for i in 0..d {
                w_enc[i * s + j] = w_enc_t[j * d + i] * c;
            }
        }
        let w_dec: Vec<f32> = p.w_dec.iter().map(|v| v / c).collect();
        let b_dec: Vec<f32> = p.b_dec.iter().map(|v| v / c).collect();
        let (arch, threshold) = match self.spec.arch {
            TrainArch::Standard { .. } => (Architecture::Standard, None),
            TrainArch::Topk { .. } => (Architecture::TopK, None),
            TrainArch::Jumprelu { .. } => (Architecture::JumpRelu, Some(p.threshold.clone())),
            TrainArch::Batchtopk { .. } => (
                Architecture::JumpRelu,
                Some(vec![self.topk_threshold as f32; s]),
            ),
        };
        let mut cfg = SaeConfig::new(arch, d, s, hook_name, metadata);
        if let TrainArch::Topk { k } = self.spec.arch {
            cfg = cfg.with_k(k);
        }
        let sparsity: Vec<f32> = self
            .frequencies()
            .iter()
            .map(|f| (f + 1e-10).log10() as f32)
            .collect();
        let t = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        Ok(patchclamp_core::Sae {
            cfg,
            w_enc: t(w_enc, &[d, s])?,
            b_enc: Some(t(p.b_enc.clone(), &[s])?),
            w_dec: t(w_dec, &[s, d])?,
            b_dec: t(b_dec, &[d])?,
            threshold: threshold.map(|v| t(v, &[s])).transpose()?,
            gated: None,
            w_skip: None,
            sparsity: Some(t(sparsity, &[s])?),
            path: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: TrainArch) -> TrainSpec {
        TrainSpec {
            arch,
            d_in: 6,
            d_sae: 10,
            batch: 5,
            steps: 10,
            lr: LrSchedule::constant(1e-3),
            optim: OptimSpec::Sgd {
                momentum: 0.0,
                weight_decay: 0.0,
            },
            unit_decoder: false,
            decoder_init_norm: 0.5,
            tied: false,
            b_dec_init: BDecInit::Mean,
            aux_coef: 1.0,
            dead_window: 1000,
            normalize: false,
            seed: 3,
        }
    }

    /// The loss of a trainer's current parameters on `x` (one step at lr 0 computes it).
    fn loss_at(tr: &Trainer, x: &[f32]) -> f64 {
        let mut t = tr.clone();
        t.spec.lr = LrSchedule::constant(1e-30);
        t.step(x).unwrap().loss
    }

    /// SGD with lr η moves each parameter by −η·g: recover g and compare it with a central
    /// finite difference of the loss (f64 accumulation, f32 parameters; relative 2e-2).
    fn check_gradients(arch: TrainArch, tied: bool) {
        let mut sp = spec(arch);
        sp.tied = tied;
        sp.unit_decoder = tied;
        let mut rng = Rng::new(11);
        let x: Vec<f32> = rng.normal_vec(sp.batch * sp.d_in, 1.0);
        let tr = Trainer::new(sp.clone(), &x).unwrap();
        let eta = 1e-3f32;
        let mut stepped = tr.clone();
        stepped.spec.unit_decoder = false; // the projection is not part of the gradient
        stepped.spec.lr = LrSchedule::constant(eta as f64);
        stepped.step(&x).unwrap();
        let names = tr.param_names();
        let before = params_slices(&tr.params);
        let after = params_slices(&stepped.params);
        let mut checked = 0;
        for (k, (p0, p1)) in before.iter().zip(&after).enumerate() {
            for i in (0..p0.len()).step_by(7) {
                let g = (p0[i] - p1[i]) / eta;
                let h = 1e-3f32;
                let mut plus = tr.clone();
                params_slices_mut(&mut plus.params)[k][i] += h;
                let mut minus = tr.clone();
                params_slices_mut(&mut minus.params)[k][i] -= h;
                let fd = (loss_at(&plus, &x) - loss_at(&minus, &x)) / (2.0 * h as f64);
                let tol = 2e-2 * fd.abs().max(g.abs() as f64).max(1e-2);
                assert!(
                    (fd - g as f64).abs() <= tol,
                    "{arch:?} tied={tied} {}[{i}]: backward {g}, finite difference {fd}",
                    names[k]
                );
                checked += 1;
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_gradients(
            TrainArch::Standard {
                l1: 0.3,
                l1_warm_up_steps: 0,
            },
            false,
        );
        check_gradients(
            TrainArch::Standard {
                l1: 0.3,
                l1_warm_up_steps: 0,
            },
            true,
        );
        check_gradients(TrainArch::Topk { k: 3 }, false);
        check_gradients(
            TrainArch::Batchtopk {
                k: 3,
                threshold_lr: 0.01,
            },
            false,
        );
    }

    /// TopK's loss with AuxK's residual held at `r` (SAELens detaches it), from the forward
    /// helpers alone.
    /// Also returns which latents were selected: a finite difference across a change of
    /// selection measures the jump, not the gradient.
    fn topk_loss_fixed_residual(tr: &Trainer, x: &[f32], r: &[f32], k: usize) -> (f64, Vec<u32>) {
        let (d, s, b) = (tr.spec.d_in, tr.spec.d_sae, tr.spec.batch);
        let p = &tr.params;
        let u: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| row.iter().zip(&p.b_dec).map(|(a, c)| a - c))
            .collect();
        let pre = encoder_product(&u, &p.w_enc_t, &p.b_enc, b, d, s);
        let act = top_k_rows(&pre, s, k);
        let x_hat = decode_rows(&act, &p.w_dec, &p.b_dec, d);
        let mse: f64 = x_hat
            .iter()
            .zip(x)
            .map(|(a, c)| ((a - c) as f64).powi(2))
            .sum::<f64>()
            / b as f64;
        let dead = vec![true; s];
        let k_aux = (d / 2).min(s);
        let aux_acts = dead_top_k(&pre, s, &dead, k_aux);
        let e_hat = decode_rows_plain(&aux_acts, &p.w_dec, d);
        let sel: Vec<u32> = act
            .iter()
            .flatten()
            .map(|e| e.0)
            .chain(aux_acts.iter().flatten().map(|e| e.0 + 1000))
            .collect();
        let scale = (s as f64 / (d / 2) as f64).min(1.0);
        let aux: f64 = e_hat
            .iter()
            .zip(r)
            .map(|(e, r)| ((e - r) as f64).powi(2))
            .sum::<f64>()
            / b as f64;
        (mse + tr.spec.aux_coef * scale * aux, sel)
    }

    #[test]
    fn auxk_gradients_match_finite_differences() {
        // Every latent dead: AuxK acts on all of them; its residual is a constant.
        let k = 2;
        let mut sp = spec(TrainArch::Topk { k });
        sp.dead_window = 0;
        let mut rng = Rng::new(5);
        let x: Vec<f32> = rng.normal_vec(sp.batch * sp.d_in, 1.0);
        let mut tr = Trainer::new(sp, &x).unwrap();
        tr.since_fired = vec![5; 10];
        let st = tr.clone().step(&x).unwrap();
        assert!(st.aux > 0.0 && st.dead == 10, "{st:?}");
        // The residual x − x̂ at the base parameters.
        let (d, s, b) = (6, 10, 5);
        let p = &tr.params;
        let u: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| row.iter().zip(&p.b_dec).map(|(a, c)| a - c))
            .collect();
        let pre = encoder_product(&u, &p.w_enc_t, &p.b_enc, b, d, s);
        let x_hat = decode_rows(&top_k_rows(&pre, s, k), &p.w_dec, &p.b_dec, d);
        let r: Vec<f32> = x.iter().zip(&x_hat).map(|(a, c)| a - c).collect();
        let base = topk_loss_fixed_residual(&tr, &x, &r, k).0;
        assert!(
            (base - st.loss).abs() < 1e-4 * base.abs().max(1.0),
            "{base} vs {}",
            st.loss
        );
        let eta = 1e-3f32;
        let mut stepped = tr.clone();
        stepped.spec.lr = LrSchedule::constant(eta as f64);
        stepped.step(&x).unwrap();
        let mut checked = 0;
        for (kk, (p0, p1)) in params_slices(&tr.params)
            .iter()
            .zip(params_slices(&stepped.params))
            .enumerate()
        {
            for i in (0..p0.len()).step_by(5) {
                let g = (p0[i] - p1[i]) / eta;
                let h = 1e-3f32;
                let (mut plus, mut minus) = (tr.clone(), tr.clone());
                params_slices_mut(&mut plus.params)[kk][i] += h;
                params_slices_mut(&mut minus.params)[kk][i] -= h;
                let (lp, sp) = topk_loss_fixed_residual(&plus, &x, &r, k);
                let (lm, sm) = topk_loss_fixed_residual(&minus, &x, &r, k);
                if sp != sm {
                    continue;
                }
                let fd = (lp - lm) / (2.0 * h as f64);
                let tol = 2e-2 * fd.abs().max(g.abs() as f64).max(1e-2);
                assert!(
                    (fd - g as f64).abs() <= tol,
                    "auxk param {kk}[{i}]: {g} vs {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 20);
    }

    #[test]
    fn same_seed_same_bits_and_bad_batches_are_refused() {
        let sp = spec(TrainArch::Topk { k: 3 });
        let mut rng = Rng::new(1);
        let x: Vec<f32> = rng.normal_vec(sp.batch * sp.d_in, 1.0);
        let mut a = Trainer::new(sp.clone(), &x).unwrap();
        let mut b = Trainer::new(sp.clone(), &x).unwrap();
        for _ in 0..3 {
            assert_eq!(a.step(&x).unwrap(), b.step(&x).unwrap());
        }
        assert_eq!(a.params, b.params);
        let e = a.step(&x[..7]).unwrap_err().to_string();
        assert!(e.contains("expected 5 rows"), "{e}");
        let mut bad = x.clone();
        bad[8] = f32::NAN;
        assert!(a.step(&bad).unwrap_err().to_string().contains("non-finite"));
        let mut k0 = sp;
        k0.arch = TrainArch::Topk { k: 11 };
        assert!(Trainer::new(k0, &x)
            .unwrap_err()
            .to_string()
            .contains("k = 11"));
    }
}
