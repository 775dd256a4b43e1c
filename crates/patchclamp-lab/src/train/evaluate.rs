//! The trainer's one window on the analyses: what is measured at each evaluation (losses,
//! head scores, K-composition, induction strength, accuracy), and the curve statistics the
//! run summary reads. No other module of `train` imports `crate::analysis`.

use patchclamp_core::rng::Rng;
use patchclamp_core::Hooks;
use serde::{Deserialize, Serialize};

use super::Trainer;
use crate::analysis::heads::{attention_scores_under, HeadProbe};
use crate::analysis::probes::{self, Composition};
use crate::error::Result;
use crate::tasks::{Batch, Split, TaskSpec};

pub use crate::analysis::probes::{drop, first_above, first_below, Drop, HeadScores};

/// Probes on the model without its interventions (logged when a run has any).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreeEval {
    pub loss: f32,
    pub in_context_loss: f32,
    #[serde(flatten)]
    pub heads: HeadScores,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub induction_strength: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f32>,
}

/// One evaluation: losses and probes at a step (under the interventions active there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    /// Mean training loss since the previous evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f32>,
    pub loss: f32,
    /// Loss on targets only predictable from context.
    pub in_context_loss: f32,
    /// Late minus early loss (Olsson's in-context learning score; repeated-token task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icl_score: Option<f32>,
    #[serde(flatten)]
    pub heads: HeadScores,
    /// K-composition `[layer-0 head][layer-1 head]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k_composition: Vec<Vec<f32>>,
    /// Singh et al.'s induction strength of the last layer's heads (classification task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub induction_strength: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f32>,
    /// Accuracy on held-out label pairs (classification task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_accuracy: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<FreeEval>,
}

/// Fixed evaluation data, drawn once per run.
pub(super) struct EvalSet {
    batch: Batch,
    held_out: Option<Batch>,
    /// The head-score probe (repeated-segment tasks with room for `r r`, r ≥ 2 tokens).
    probe: Option<HeadProbe>,
}

pub(super) fn eval_set(tr: &Trainer, task: &TaskSpec) -> EvalSet {
    let mut rng = Rng::new(tr.spec.seed ^ 0xE7A1_5EED);
    let t = task.task();
    let batch = t.batch(&mut rng, tr.spec.eval_batch);
    let held_out = match task {
        TaskSpec::Icl(icl) => Some(icl.batch_split(&mut rng, tr.spec.eval_batch, Split::HeldOut)),
        _ => None,
    };
    let probe = match task {
        TaskSpec::Repeated(r) if r.seq_len / 2 >= 2 => Some(HeadProbe {
            n: 16,
            block: r.seq_len / 2,
            repeats: 2,
            seed: tr.spec.seed ^ 0x9_90BE,
            prefix: None,
            chunk: 16,
        }),
        _ => None,
    };
    EvalSet {
        batch,
        held_out,
        probe,
    }
}

/// Losses and probes at the current weights, with the interventions active at this step
/// and (if there are any) without them.
pub(super) fn evaluate(
    tr: &Trainer,
    task: &TaskSpec,
    set: &EvalSet,
    train_loss: Option<f32>,
) -> Result<EvalRecord> {
    let model = tr.detached()?;
    let step = tr.step;
    let clamped = |b: &Batch| tr.hooks(step, b);
    let (loss, ctx, icl_score, acc) = losses(&model, task, &set.batch, clamped(&set.batch)?)?;
    let held_out_accuracy = match &set.held_out {
        Some(b) => losses(&model, task, b, clamped(b)?)?.3,
        None => None,
    };
    let heads = scores(&model, &set.probe, |seqs| {
        tr.hooks(step, &probe_batch(seqs))
    })?;
    let clamped_strength = strength(&model, task, &set.batch, clamped(&set.batch)?)?;
    let active = tr.interventions.iter().any(|iv| iv.when.active(step));
    let free = if active {
        let (loss, in_context_loss, _, accuracy) = losses(&model, task, &set.batch, Hooks::none())?;
        Some(FreeEval {
            loss,
            in_context_loss,
            heads: scores(&model, &set.probe, |_| Ok(Hooks::none()))?,
            induction_strength: strength(&model, task, &set.batch, Hooks::none())?,
            accuracy,
        })
    } else {
        None
    };
    let n = model.cfg.n_layers;
    let k_composition = if n >= 2 {
        probes::composition(&model, Composition::K, 0, 1)?
    } else {
        vec![]
    };
    Ok(EvalRecord {
        step,
        train_loss,
        loss,
        in_context_loss: ctx,
        icl_score,
        heads,
        k_composition,
        induction_strength: clamped_strength,
        accuracy: acc,
        held_out_accuracy,
        free,
    })
}

/// A batch wrapper around probe tokens (for building hooks that need a batch).
fn probe_batch(probe: &[Vec<u32>]) -> Batch {
    let s = probe.first().map_or(0, |r| r.len());
    Batch {
        tokens: probe.to_vec(),
        targets: probe.to_vec(),
        weights: vec![vec![0.0; s]; probe.len()],
        in_context: vec![vec![false; s]; probe.len()],
    }
}

/// The recorded head scores on `probe` (none without one), by the head census's code.
fn scores(
    model: &patchclamp_core::Model,
    probe: &Option<HeadProbe>,
    hooks: impl FnMut(&[Vec<u32>]) -> Result<Hooks>,
) -> Result<HeadScores> {
    match probe {
        Some(p) => Ok(HeadScores::from(&attention_scores_under(model, p, hooks)?)),
        None => Ok(HeadScores::default()),
    }
}

fn strength(
    model: &patchclamp_core::Model,
    task: &TaskSpec,
    batch: &Batch,
    hooks: Hooks,
) -> Result<Option<Vec<f32>>> {
    match task {
        TaskSpec::Icl(_) => Ok(Some(probes::induction_strength(
            model,
            &batch.tokens,
            hooks,
            model.cfg.n_layers - 1,
        )?)),
        _ => Ok(None),
    }
}

/// `(loss, in-context loss, ICL score, accuracy)` on `batch`.
fn losses(
    model: &patchclamp_core::Model,
    task: &TaskSpec,
    batch: &Batch,
    mut hooks: Hooks,
) -> Result<(f32, f32, Option<f32>, Option<f32>)> {
    let t = task.task();
    let logits = model.forward(
        &crate::tasks::loss::input(batch, model.device())?,
        &mut hooks,
    )?;
    let scored = crate::tasks::loss::token_nll(&logits, batch, t.classes())?;
    let nll = scored.nll.to_vec1::<f32>()?;
    let w = scored.weights.to_vec1::<f32>()?;
    let at = scored.at;
    let mean = |pick: &dyn Fn(usize, usize) -> bool| -> f32 {
        let (mut s, mut n) = (0f64, 0f64);
        for ((&(r, p), &x), &wi) in at.iter().zip(&nll).zip(&w) {
            if pick(r, p) {
                s += (x * wi) as f64;
                n += wi as f64;
            }
        }
        if n > 0.0 {
            (s / n) as f32
        } else {
            f32::NAN
        }
    };
    let loss = mean(&|_, _| true);
    let ctx = mean(&|r, p| batch.in_context[r][p]);
    let (_, s) = batch.dims();
    let icl = match task {
        TaskSpec::Repeated(_) => {
            let band = |a: f64, b: f64| ((a * s as f64) as usize, (b * s as f64) as usize);
            let (e0, e1) = band(0.05, 0.15);
            let (l0, l1) = band(0.85, 0.95);
            Some(mean(&|_, p| p >= l0 && p < l1) - mean(&|_, p| p >= e0 && p < e1))
        }
        _ => None,
    };
    let acc = match t.classes() {
        Some(c) => Some(probes::accuracy(&logits, batch, c)?),
        None => None,
    };
    Ok((loss, ctx, icl, acc))
}
