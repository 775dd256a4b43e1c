//! The training loop: steps, periodic evaluation with probes, a JSONL log, checkpoints and
//! resumption.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::evaluate::{eval_set, evaluate, EvalRecord};
use super::{check_checkpoint, load_checkpoint, save_checkpoint, Trainer};
use crate::error::{Error, Result};
use crate::tasks::TaskSpec;

/// Where a run writes and whether it resumes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Metrics, one JSON object per line.
    pub log: Option<PathBuf>,
    /// The checkpoint file (written every `checkpoint_every` steps and at the end).
    pub checkpoint: Option<PathBuf>,
    /// Whether to continue from `checkpoint`.
    pub resume: Resume,
    /// Stop after this many updates without a final checkpoint (simulates a kill in tests).
    pub stop_after: Option<u64>,
}

/// Whether a run continues from its checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resume {
    /// Start over: an earlier checkpoint at the path is removed first, so no later resume
    /// can pick up a stale one.
    #[default]
    No,
    /// Continue from the checkpoint, which must exist (and be this experiment's).
    Required,
    /// Continue from the checkpoint if there is one, else start over.
    IfPresent,
}

/// One update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
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

/// Trains `tr` on `task` to `tr.spec.steps`, evaluating every `eval_every` steps.
pub fn run(
    tr: &mut Trainer,
    task: &TaskSpec,
    opts: &RunOptions,
    mut on_event: impl FnMut(Event),
) -> Result<RunResult> {
    let mut result = RunResult::default();
    let mut kept = vec![];
    if let Some(step) = check_resume(tr, opts)? {
        let ck = opts
            .checkpoint
            .as_ref()
            .expect("a resumable run has a checkpoint");
        load_checkpoint(tr, ck)?;
        debug_assert_eq!(tr.step, step);
        (result, kept) = read_log(opts.log.as_ref(), tr.step)?;
        on_event(Event::Resumed(tr.step));
    } else if let Some(ck) = opts.checkpoint.as_ref().filter(|p| p.exists()) {
        std::fs::remove_file(ck).map_err(|e| Error::write(ck, e))?;
    }
    let mut log = match &opts.log {
        Some(p) => Some(open_log(p, &kept)?),
        None => None,
    };
    let eval_set = eval_set(tr, task);
    let mut write = |line: &Line| -> Result<()> {
        if let (Some(f), Some(p)) = (log.as_mut(), opts.log.as_ref()) {
            let s = serde_json::to_string(line).expect("plain data");
            writeln!(f, "{s}").map_err(|e| Error::write(p, e))?;
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
    // The losses since the last evaluation, which its `train_loss` averages: on resume, the
    // logged steps after it (a checkpoint need not fall on an evaluation step).
    let last_eval = result.evals.last().map_or(0, |e| e.step);
    let mut since: Vec<f32> = result
        .steps
        .iter()
        .filter(|s| s.step > last_eval)
        .map(|s| s.loss)
        .collect();
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
        if crate::util::interrupt::check().is_err() {
            // A clean stop: the checkpoint of this step, so `--resume` continues from here.
            if let Some(ck) = &opts.checkpoint {
                save_checkpoint(tr, ck)?;
            }
            return Err(Error::Interrupted);
        }
    }
    Ok(result)
}

/// Whether `opts` resume `tr` and from which step: checks the checkpoint (identity, bytes,
/// model) and that the log reaches its step, reading only. `None` starts over.
pub fn check_resume(tr: &Trainer, opts: &RunOptions) -> Result<Option<u64>> {
    let ck = opts.checkpoint.as_ref().filter(|p| p.exists());
    let ck = match (opts.resume, ck) {
        (Resume::No, _) | (Resume::IfPresent, None) => return Ok(None),
        (Resume::Required, None) => {
            let at = opts
                .checkpoint
                .as_ref()
                .map_or("(no checkpoint path)".into(), |p| p.display().to_string());
            return Err(Error::Input(format!(
                "there is no checkpoint to resume at {at} (the run stopped before its first one, written every {} steps); run without --resume to start over",
                tr.spec.checkpoint_every
            )));
        }
        (_, Some(ck)) => ck,
    };
    let step = check_checkpoint(tr, ck)?;
    let (logged, _) = read_log(opts.log.as_ref(), step)?;
    let last = logged.steps.last().map_or(0, |s| s.step);
    let contiguous = logged
        .steps
        .iter()
        .enumerate()
        .all(|(i, s)| s.step == i as u64 + 1);
    if let Some(log) = opts.log.as_ref().filter(|_| last != step || !contiguous) {
        let log = log.display();
        return Err(Error::Input(format!(
            "{log} records {} of the {step} steps the checkpoint holds (last step {last}): resuming would leave a gap in the log; run without --resume to start over",
            logged.steps.len()
        )));
    }
    Ok(Some(step))
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
        .map_err(|e| Error::write(path, e))
}
