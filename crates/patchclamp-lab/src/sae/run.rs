//! The SAE training loop over a batch source, with periodic checkpoints and exact resume.
//!
//! Batch `i` (0-based) of the source trains step `i + 1`; batch 0 also initialises `b_dec`
//! and the input scale. A resume rebuilds the trainer from batch 0, restores the checkpoint,
//! and draws (and drops) the batches the run had already used, so it sees the same batches in
//! the same order as an uninterrupted run: the same bits at the end. Re-drawing costs the
//! harvest time of the steps done; nothing of the stream is stored.

use std::path::Path;
use std::time::Instant;

use crate::sae::checkpoint;
use crate::sae::train::{StepStats, TrainSpec, Trainer};
use crate::{Error, Result};

/// What the loop reports.
pub enum SaeEvent<'a> {
    /// Batches being re-drawn to resume at `step`.
    Resuming { step: u64 },
    /// One step done: its numbers and the tokens per second since the start (or resume).
    Step {
        stats: &'a StepStats,
        tokens_per_s: f64,
        /// The trainer after the step (for evaluations between steps).
        trainer: &'a Trainer,
    },
    /// A checkpoint was written after `step`.
    Checkpoint { step: u64 },
}

/// Where and how often the loop saves, and whether it resumes.
pub struct SaeRunOptions<'a> {
    pub checkpoint: Option<&'a Path>,
    /// Every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    pub resume: bool,
    /// Names what the run trains on; a checkpoint of another run is refused.
    pub identity: String,
    /// Stop after this step (for tests of resume); the full run otherwise.
    pub stop_after: Option<u64>,
}

/// Trains `spec` on batches from `next` (`rows → [rows, d_in]`, `None` when the source is
/// used up); returns the trainer and each step's numbers.
pub fn train(
    spec: TrainSpec,
    mut next: impl FnMut(usize) -> Result<Option<Vec<f32>>>,
    opts: &SaeRunOptions,
    mut on_event: impl FnMut(SaeEvent),
) -> Result<(Trainer, Vec<StepStats>)> {
    spec.validate()?;
    let short = |step: u64| {
        Error::Input(format!(
            "the activation source ran out before step {step} of {}: give a longer corpus or fewer tokens",
            spec.steps
        ))
    };
    let first = next(spec.batch)?.ok_or_else(|| short(1))?;
    let mut tr = Trainer::new(spec.clone(), &first)?;
    let mut pending = Some(first);
    if opts.resume {
        let path = opts
            .checkpoint
            .ok_or_else(|| Error::Input("a resume needs a checkpoint path".into()))?;
        checkpoint::load(&mut tr, &opts.identity, path)?;
        on_event(SaeEvent::Resuming { step: tr.step });
        // Batches 0..step were used: drop batch 0 (held) and draw 1..step.
        pending = None;
        for i in 1..tr.step {
            crate::util::interrupt::check()?;
            next(spec.batch)?.ok_or_else(|| short(i + 1))?;
        }
    }
    let end = opts.stop_after.unwrap_or(spec.steps).min(spec.steps);
    let mut stats = vec![];
    let t0 = Instant::now();
    let start_tokens = tr.tokens;
    while tr.step < end {
        crate::util::interrupt::check()?;
        let batch = match pending.take() {
            Some(b) => b,
            None => next(spec.batch)?.ok_or_else(|| short(tr.step + 1))?,
        };
        let st = tr.step(&batch)?;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        on_event(SaeEvent::Step {
            stats: &st,
            tokens_per_s: (tr.tokens - start_tokens) as f64 / secs,
            trainer: &tr,
        });
        stats.push(st);
        if let Some(path) = opts.checkpoint {
            // Always at the last step, so a folder that lists a checkpoint holds one.
            let due = opts.checkpoint_every > 0 && tr.step.is_multiple_of(opts.checkpoint_every);
            if due || tr.step == end {
                checkpoint::save(&tr, &opts.identity, path)?;
                on_event(SaeEvent::Checkpoint { step: tr.step });
            }
        }
    }
    Ok((tr, stats))
}
