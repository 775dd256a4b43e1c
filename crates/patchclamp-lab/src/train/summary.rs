//! What a training run showed, in a few numbers: when the phase change happened, how abrupt
//! it was, and where the heads ended up (METHODS.md K1, K2).

use serde::{Deserialize, Serialize};

use super::evaluate as probes;
use super::{EvalRecord, RunResult};

/// The headline numbers of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    /// First evaluation with in-context loss below `threshold`.
    pub phase_change_step: Option<u64>,
    /// The threshold used (`0.4 · ln V` for token tasks, `0.4 · ln 2` for classification).
    pub threshold: f32,
    /// 10% / 50% / 90% of the in-context loss's drop, and (t₉₀ − t₁₀) / t₉₀.
    pub drop: Option<probes::Drop>,
    pub initial_in_context_loss: f32,
    /// In-context loss over the first 5% of training (max).
    pub early_in_context_loss: f32,
    pub final_in_context_loss: f32,
    pub final_loss: f32,
    /// Largest last-layer induction score at the start and end, the head, and the first
    /// step it exceeded 0.5 (clamps as trained).
    pub initial_max_induction: f32,
    pub final_max_induction: f32,
    pub induction_head: Option<(usize, usize)>,
    pub induction_step: Option<u64>,
    /// Largest layer-0 previous-token score at the end and its head.
    pub final_max_prev_token: f32,
    pub prev_token_head: Option<(usize, usize)>,
    /// The layer-0 head with the largest K-composition into the induction head.
    pub k_composition_source: Option<usize>,
    /// The same scores measured with the clamps removed (runs with interventions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_final_in_context_loss: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_final_max_induction: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_final_max_prev_token: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_accuracy: Option<f32>,
}

fn argmax(rows: &[Vec<f32>], layer: usize) -> Option<(usize, usize, f32)> {
    rows.get(layer).and_then(|r| {
        r.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(h, &v)| (layer, h, v))
    })
}

impl Summary {
    /// Summarises `r`; `threshold` is the phase-change loss level.
    pub fn of(r: &RunResult, threshold: f32) -> Option<Summary> {
        let (first, last) = (r.evals.first()?, r.evals.last()?);
        let steps: Vec<u64> = r.evals.iter().map(|e| e.step).collect();
        let ctx: Vec<f32> = r.evals.iter().map(|e| e.in_context_loss).collect();
        let total = last.step.max(1);
        let early = r
            .evals
            .iter()
            .filter(|e| e.step as f64 <= 0.05 * total as f64)
            .map(|e| e.in_context_loss)
            .fold(f32::MIN, f32::max);
        let top = |e: &EvalRecord| {
            let l = e.heads.induction.len().checked_sub(1)?;
            argmax(&e.heads.induction, l)
        };
        let ih = top(last);
        let ind_curve: Vec<f32> = r
            .evals
            .iter()
            .map(|e| top(e).map_or(0.0, |t| t.2))
            .collect();
        let pt = argmax(&last.heads.prev_token, 0);
        let kc = ih.and_then(|(_, h, _)| {
            (0..last.k_composition.len())
                .max_by(|&a, &b| last.k_composition[a][h].total_cmp(&last.k_composition[b][h]))
        });
        let free = last.free.as_ref();
        Some(Summary {
            steps: last.step,
            phase_change_step: probes::first_below(&steps, &ctx, threshold),
            threshold,
            drop: probes::drop(&steps, &ctx),
            initial_in_context_loss: first.in_context_loss,
            early_in_context_loss: early,
            final_in_context_loss: last.in_context_loss,
            final_loss: last.loss,
            initial_max_induction: top(first).map_or(0.0, |t| t.2),
            final_max_induction: ih.map_or(0.0, |t| t.2),
            induction_head: ih.map(|(l, h, _)| (l, h)),
            induction_step: probes::first_above(&steps, &ind_curve, 0.5),
            final_max_prev_token: pt.map_or(0.0, |t| t.2),
            prev_token_head: pt.map(|(l, h, _)| (l, h)),
            k_composition_source: kc,
            free_final_in_context_loss: free.map(|f| f.in_context_loss),
            free_final_max_induction: free.and_then(|f| {
                let l = f.heads.induction.len().checked_sub(1)?;
                argmax(&f.heads.induction, l).map(|t| t.2)
            }),
            free_final_max_prev_token: free
                .and_then(|f| argmax(&f.heads.prev_token, 0).map(|t| t.2)),
            final_accuracy: last.accuracy,
        })
    }
}
