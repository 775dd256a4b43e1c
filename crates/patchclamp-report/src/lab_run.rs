//! The lab's calibrated experiments run into one report folder: what every face does for `lab`
//! (the CLI's `patchclamp lab NAME`, Python's `patchclamp.lab.run`): several training runs side
//! by side and their comparison page, the Singh ablations, the toy protocols, the K8 battery.

use std::path::{Path, PathBuf};

use patchclamp_core::Intervention;
use patchclamp_lab::experiment::{presets, singh, Experiment, FinishedRun};
use patchclamp_lab::steering::battery::{self, BatterySpec};
use patchclamp_lab::toy::protocols;
use patchclamp_lab::train::{Event, Resume};

use crate::error::{Error, Result};
use crate::outcomes;
use crate::output::Outcome;
use crate::run_dir::{self, RunDir};
use crate::train_run::{execute, register, Prepared};

/// The lab's experiments: name and what it does.
pub const EXPERIMENTS: &[(&str, &str)] = &[
    ("induction", "train 2-layer attention-only models with and without optogenetic clamps; watch induction heads form (the flagship, ~2 min)"),
    ("singh-ih", "Singh et al. 2024: in-context classification with Gaussian exemplars, baseline and subcircuit clamps (long: ~10 min)"),
    ("toy-phase", "the three-factor toy model of the phase change, with and without clamped factors (seconds)"),
    ("critical-periods", "deficits early or late in training of deep linear networks (seconds)"),
    ("steering", "K8: a two-style toy LM, then CAA, Linear-AcT, dynamic composition, directional ablation and a function vector (~1 min)"),
    ("sae-toy", "K11: sparse autoencoders (ReLU + L1 tied and untied, TopK) on a known superposition: MMCS, FVU, L0, dead latents, loss-recovered limits (seconds)"),
];

/// One lab experiment to run into a folder.
pub struct LabRequest {
    /// One of [`EXPERIMENTS`].
    pub name: String,
    /// Seed of data and initialisation.
    pub seed: u64,
    /// Training steps per run (None: the experiment's calibrated length).
    pub steps: Option<u64>,
    pub out: PathBuf,
    /// Interventions to train one more run under (induction and singh-ih).
    pub clamp: Option<Vec<Intervention>>,
    /// Write beside files patchclamp did not write.
    pub force: bool,
    /// The command line (or call) shown in the report.
    pub command: String,
}

/// What a lab experiment reports while it runs.
pub enum LabEvent<'a> {
    /// A training run is about to start: its label and length.
    Start { label: &'a str, steps: u64 },
    /// A training run's step, evaluation or resume.
    Train { label: &'a str, event: Event<'a> },
    /// A stage of a protocol that is not a training run.
    Stage(&'a str),
}

/// A finished lab folder: its report page and the summary lines a face shows.
pub struct LabDone {
    pub dir: PathBuf,
    pub report: PathBuf,
    pub lines: Vec<String>,
}

/// `[[interventions]]` of a clamp file.
pub fn read_clamp(path: &Path) -> Result<Vec<Intervention>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Clamp {
        interventions: Vec<Intervention>,
    }
    let text = crate::read_spec(path)?;
    let c: Clamp = toml::from_str(&text).map_err(|e| {
        Error::Input(format!(
            "{}: {}",
            path.display(),
            e.to_string().trim_end().replace('\n', " ")
        ))
    })?;
    Ok(c.interventions)
}

/// Runs `req`: every argument is checked before the folder is touched; `on_event` sees the
/// progress (from several threads at once when runs train side by side).
pub fn run(req: LabRequest, on_event: impl Fn(LabEvent) + Sync) -> Result<LabDone> {
    let name = req.name.as_str();
    let refuse = |what: &str| Err(Error::Input(what.to_string()));
    match name {
        "induction" | "singh-ih" => multi_run(req, &on_event),
        "toy-phase" | "critical-periods" if req.clamp.is_some() => refuse(&format!(
            "{name} trains plain factor models without hook points; --clamp applies to induction and singh-ih (the toy clamps are built in)"
        )),
        "sae-toy" if req.clamp.is_some() => refuse(
            "sae-toy trains SAEs on synthetic data with no hook points to clamp; --clamp applies to induction and singh-ih",
        ),
        "sae-toy" => sae_toy(req, &on_event),
        "steering" if req.clamp.is_some() => refuse(
            "steering trains its model plainly and steers it afterwards; --clamp applies to induction and singh-ih",
        ),
        "toy-phase" => {
            let t = protocols::toy_phase(req.seed, req.steps.unwrap_or(1000) as usize)?;
            let mut run = RunDir::create(&req.out, &kind(&req), req.force)?;
            let lines = outcomes::write_toy_phase(&mut run, &t)?;
            finish(run, "loss.svg", lines)
        }
        "critical-periods" if req.steps.is_some() => refuse(
            "critical-periods runs its calibrated schedules (40 000 steps, deficits at 0 and 20 000); --steps does not apply",
        ),
        "critical-periods" => {
            let c = protocols::critical_periods(req.seed);
            let mut run = RunDir::create(&req.out, &kind(&req), req.force)?;
            let lines = outcomes::write_critical_periods(&mut run, &c)?;
            finish(run, "summary.json", lines)
        }
        "steering" => steering(req, &on_event),
        _ => {
            let names: Vec<&str> = EXPERIMENTS.iter().map(|(n, _)| *n).collect();
            refuse(&format!(
                "unknown experiment '{name}'; available: {}",
                names.join(", ")
            ))
        }
    }
}

/// The command a folder's manifest records (the same from every face, so a rerun from
/// Python into a CLI run's folder replaces it like a CLI rerun).
fn kind(req: &LabRequest) -> String {
    format!("lab {}", req.name)
}

/// Finishes a folder whose main page is `page`.
fn finish(run: RunDir, page: &str, lines: Vec<String>) -> Result<LabDone> {
    let dir = run.root().to_path_buf();
    run.finish()?;
    Ok(LabDone {
        report: dir.join(page),
        dir,
        lines,
    })
}

/// The training comparisons (induction, singh-ih): the preset's runs, plus one under the
/// clamp when given, trained side by side and compared on one page.
fn multi_run(mut req: LabRequest, on_event: &(impl Fn(LabEvent) + Sync)) -> Result<LabDone> {
    let singh = req.name == "singh-ih";
    let mut runs = if singh {
        presets::singh(req.seed, req.steps.unwrap_or(12_000))
    } else {
        presets::induction(req.seed, req.steps.unwrap_or(1500))
    };
    if let Some(ivs) = req.clamp.take() {
        if ivs.is_empty() {
            return Err(Error::Input(
                "the clamp holds no interventions: its run would repeat the baseline; give at least one [[interventions]]".into(),
            ));
        }
        let mut e = runs[0].1.clone();
        e.name = if singh {
            "singh-custom-clamp"
        } else {
            "induction-custom-clamp"
        }
        .into();
        e.interventions = ivs;
        runs.push(("custom clamp".into(), e));
    }
    let (mut run, done) = train_all(runs, &req.out, &kind(&req), req.force, on_event)?;
    let (report, _) = crate::training::write(&mut run, &req.command, &done, None)?;
    let mut lines = if singh {
        singh_lines(&done)
    } else {
        table(&done)
    };
    if singh {
        if let Some(base) = done.first() {
            let rows = singh::ablations(&base.model, &base.exp.task)?;
            lines.extend(outcomes::write_ablations(&mut run, &rows)?);
        }
    }
    let dir = run.root().to_path_buf();
    run.finish()?;
    Ok(LabDone { dir, report, lines })
}

/// Trains several runs side by side into sub-folders of `out` (one thread each; each run is
/// deterministic on its own). Every trainer is built before the folder is touched.
fn train_all(
    runs: Vec<(String, Experiment)>,
    out: &Path,
    command: &str,
    force: bool,
    on_event: &(impl Fn(LabEvent) + Sync),
) -> Result<(RunDir, Vec<FinishedRun>)> {
    let prepared = runs
        .into_iter()
        .map(|(label, exp)| Prepared::new(&label, exp))
        .collect::<Result<Vec<_>>>()?;
    let mut run = RunDir::create(out, command, force)?;
    let all: String = prepared.iter().map(|p| p.exp.identity()).collect();
    run.set_experiment_hash(crate::content_hash(all.as_bytes()))?;
    let mut jobs = vec![];
    for p in prepared {
        let sub = p.exp.name.clone();
        let (opts, dir) = register(&p, &mut run, &sub, Resume::No)?;
        on_event(LabEvent::Start {
            label: &p.label,
            steps: p.exp.train.steps,
        });
        jobs.push((p, opts, dir));
    }
    let results: Vec<Result<FinishedRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(p, opts, dir)| {
                s.spawn(move || {
                    execute(p, &opts, dir, |label, event| {
                        on_event(LabEvent::Train { label, event })
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Input("a training thread panicked".into())))
            })
            .collect()
    });
    Ok((run, results.into_iter().collect::<Result<_>>()?))
}

/// The flagship's table: one line per run.
fn table(runs: &[FinishedRun]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<32} {:>7} {:>13} {:>11} {:>11} {:>11}",
        "run", "steps", "phase change", "ctx loss", "max IND", "max PT"
    )];
    for r in runs {
        if let Some(s) = &r.summary {
            lines.push(format!(
                "{:<32} {:>7} {:>13} {:>11.3} {:>11.3} {:>11.3}",
                r.label,
                s.steps,
                s.phase_change_step.map_or("none".into(), |x| x.to_string()),
                s.final_in_context_loss,
                s.final_max_induction,
                s.final_max_prev_token
            ));
        }
    }
    lines
}

/// Singh et al.'s runs: phase change, loss, accuracy and the final induction strengths.
fn singh_lines(runs: &[FinishedRun]) -> Vec<String> {
    let mut lines = vec![];
    for r in runs {
        if let Some(s) = &r.summary {
            let strength = r
                .result
                .evals
                .last()
                .and_then(|e| e.induction_strength.clone());
            lines.push(format!(
                "{:<32} phase change {:>7} final loss {:.3} accuracy {} strengths {:?}",
                r.label,
                s.phase_change_step.map_or("none".into(), |x| x.to_string()),
                s.final_in_context_loss,
                s.final_accuracy.map_or("–".into(), |x| format!("{x:.3}")),
                strength
                    .unwrap_or_default()
                    .iter()
                    .map(|x| (x * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            ));
        }
    }
    lines
}

/// The request's `--steps` override, refusing 0 (a run that trains nothing).
fn steps(req: &LabRequest) -> Result<Option<u64>> {
    match req.steps {
        Some(0) => Err(Error::Input(
            "--steps 0 trains nothing; give at least 1".into(),
        )),
        s => Ok(s),
    }
}

/// K8: the two-style toy LM trained, then the steering battery, into one report.
fn steering(req: LabRequest, on_event: &(impl Fn(LabEvent) + Sync)) -> Result<LabDone> {
    let mut spec = BatterySpec {
        seed: req.seed,
        ..BatterySpec::default()
    };
    if let Some(steps) = steps(&req)? {
        spec.steps = steps;
    }
    run_dir::check(&req.out, &kind(&req), req.force)?;
    let result = battery::run(&spec, |stage| on_event(LabEvent::Stage(stage)))?;
    let outcome = outcomes::BatteryOutcome { spec, result };
    let mut run = RunDir::create(&req.out, &kind(&req), req.force)?;
    let vocab = crate::vocab::Vocab::new(None);
    let w = crate::write_outcome(&mut run, &outcome, &vocab, "two-style toy LM")?;
    finish(run, "report.html", vec![w.summary])
}

/// K11: SAEs on a known superposition, into one report.
fn sae_toy(req: LabRequest, on_event: &(impl Fn(LabEvent) + Sync)) -> Result<LabDone> {
    let mut spec = patchclamp_lab::sae::toy::ToySpec {
        seed: req.seed,
        ..Default::default()
    };
    if let Some(steps) = steps(&req)? {
        spec.steps = steps;
    }
    run_dir::check(&req.out, &kind(&req), req.force)?;
    let result = patchclamp_lab::sae::toy::run(&spec, |stage| on_event(LabEvent::Stage(stage)))?;
    let outcome = outcomes::SaeToyOutcome { result };
    let mut run = RunDir::create(&req.out, &kind(&req), req.force)?;
    let vocab = crate::vocab::Vocab::new(None);
    crate::write_outcome(&mut run, &outcome, &vocab, "synthetic superposition")?;
    let lines = outcome.summary_lines(&vocab);
    finish(run, "report.html", lines)
}
