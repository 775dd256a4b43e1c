//! The training loop: steps, periodic evaluation with probes, a JSONL log, checkpoints and
//! resumption.

use std::io::Write;
use std::path::PathBuf;

use patchclamp_core::rng::Rng;
use patchclamp_core::{Error, Hooks, Result};
use serde::{Deserialize, Serialize};

use super::{load_checkpoint, loss, save_checkpoint, Trainer};
use crate::probes::{self, Composition, HeadScores};
use crate::tasks::{Batch, Split, TaskSpec};

/// Where a run writes and whether it resumes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Metrics, one JSON object per line.
    pub log: Option<PathBuf>,
    /// The checkpoint file (written every `checkpoint_every` steps and at the end).
    pub checkpoint: Option<PathBuf>,
    /// Continue from `checkpoint` if it exists.
    pub resume: bool,
    /// Stop after this many updates without a final checkpoint (simulates a kill in tests).
    pub stop_after: Option<u64>,
}

/// One update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
}

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

/// A log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Step(StepRecord),
    Eval(Box<EvalRecord>),
}

/// What the loop reports as it goes (progress bars, logs).
pub enum Event<'a> {
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
    Resumed(u64),
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
}

/// Fixed evaluation data, drawn once per run.
struct EvalSet {
    batch: Batch,
    held_out: Option<Batch>,
    probe: Vec<Vec<u32>>,
}

/// Trains `tr` on `task` to `tr.spec.steps`, evaluating every `eval_every` steps.
pub fn run(
    tr: &mut Trainer,
    task: &TaskSpec,
    opts: &RunOptions,
    mut on_event: impl FnMut(Event),
) -> Result<RunResult> {
    let mut result = RunResult::default();
    let mut kept = vec![];
    if opts.resume {
        if let Some(ck) = opts.checkpoint.as_ref().filter(|p| p.is_file()) {
            load_checkpoint(tr, ck)?;
            (result, kept) = read_log(opts.log.as_ref(), tr.step)?;
            on_event(Event::Resumed(tr.step));
        }
    }
    let mut log = match &opts.log {
        Some(p) => Some(open_log(p, &kept)?),
        None => None,
    };
    let eval_set = eval_set(tr, task);
    let mut write = |line: &Line| -> Result<()> {
        if let (Some(f), Some(p)) = (log.as_mut(), opts.log.as_ref()) {
            let s = serde_json::to_string(line).expect("plain data");
            writeln!(f, "{s}").map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    };
    if tr.step == 0 {
        let ev = evaluate(tr, task, &eval_set, None)?;
        write(&Line::Eval(Box::new(ev.clone())))?;
        on_event(Event::Eval(&ev));
        result.evals.push(ev);
    }
    let t = task.task();
    let mut since = vec![];
    while tr.step < tr.spec.steps {
        if opts.stop_after.is_some_and(|n| tr.step >= n) {
            return Ok(result);
        }
        let st = tr.train_step(t)?;
        let rec = StepRecord {
            step: tr.step,
            loss: st.loss,
            lr: st.lr,
            grad_norm: st.grad_norm,
        };
        since.push(st.loss);
        write(&Line::Step(rec.clone()))?;
        on_event(Event::Step(&rec));
        result.steps.push(rec);
        if tr.step.is_multiple_of(tr.spec.eval_every) || tr.step == tr.spec.steps {
            let train_loss = since.iter().sum::<f32>() / since.len() as f32;
            since.clear();
            let ev = evaluate(tr, task, &eval_set, Some(train_loss))?;
            write(&Line::Eval(Box::new(ev.clone())))?;
            on_event(Event::Eval(&ev));
            result.evals.push(ev);
        }
        let every = tr.spec.checkpoint_every;
        if let Some(ck) = &opts.checkpoint {
            if (every > 0 && tr.step.is_multiple_of(every)) || tr.step == tr.spec.steps {
                save_checkpoint(tr, ck)?;
            }
        }
    }
    Ok(result)
}

fn eval_set(tr: &Trainer, task: &TaskSpec) -> EvalSet {
    let mut rng = Rng::new(tr.spec.seed ^ 0xE7A1_5EED);
    let t = task.task();
    let batch = t.batch(&mut rng, tr.spec.eval_batch);
    let held_out = match task {
        TaskSpec::Icl(icl) => Some(icl.batch_split(&mut rng, tr.spec.eval_batch, Split::HeldOut)),
        _ => None,
    };
    let probe = match task {
        TaskSpec::Repeated(r) => {
            probes::repeated_probe(r.vocab, r.seq_len / 2, 16, tr.spec.seed ^ 0x9_90BE)
        }
        _ => vec![],
    };
    EvalSet {
        batch,
        held_out,
        probe,
    }
}

/// Losses and probes at the current weights, with the interventions active at this step
/// and (if there are any) without them.
fn evaluate(
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
    let heads = scores(&model, task, &set.probe, || {
        tr.hooks(step, &probe_batch(&set.probe))
    })?;
    let clamped_strength = strength(&model, task, &set.batch, clamped(&set.batch)?)?;
    let active = tr.interventions.iter().any(|iv| iv.when.active(step));
    let free = if active {
        let (loss, in_context_loss, _, accuracy) = losses(&model, task, &set.batch, Hooks::none())?;
        Some(FreeEval {
            loss,
            in_context_loss,
            heads: scores(&model, task, &set.probe, || Ok(Hooks::none()))?,
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

fn scores(
    model: &patchclamp_core::Model,
    task: &TaskSpec,
    probe: &[Vec<u32>],
    hooks: impl FnOnce() -> Result<Hooks>,
) -> Result<HeadScores> {
    match task {
        TaskSpec::Repeated(_) => probes::head_scores(model, probe, hooks()?),
        _ => Ok(HeadScores::default()),
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
    let logits = model.forward(&loss::input(batch, model.device())?, &mut hooks)?;
    let scored = loss::token_nll(&logits, batch, t.classes())?;
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

/// Records already in the log up to `step`, and their lines verbatim (a resumed run keeps
/// them and drops the rest).
fn read_log(path: Option<&PathBuf>, step: u64) -> Result<(RunResult, Vec<String>)> {
    let mut out = RunResult::default();
    let mut lines = vec![];
    let Some(p) = path.filter(|p| p.is_file()) else {
        return Ok((out, lines));
    };
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short by a kill is dropped like the steps after the checkpoint.
        let Ok(l) = serde_json::from_str::<Line>(line) else {
            continue;
        };
        match l {
            Line::Step(s) if s.step <= step => out.steps.push(s),
            Line::Eval(e) if e.step <= step => out.evals.push(*e),
            _ => continue,
        }
        lines.push(line.to_string());
    }
    Ok((out, lines))
}

/// Opens the log for appending after rewriting it to hold exactly `kept`.
fn open_log(path: &PathBuf, kept: &[String]) -> Result<std::fs::File> {
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    patchclamp_core::fsutil::write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
