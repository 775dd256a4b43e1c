//! `patchclamp lab`: experiments that run on the embedded default, with no files.

use std::path::{Path, PathBuf};

use patchclamp_core::Intervention;
use patchclamp_lab::experiment::{presets, singh, Experiment, FinishedRun};
use patchclamp_lab::toy::protocols;
use patchclamp_report::{outcomes, RunDir};

use crate::train::execute;
use patchclamp_lab::train::Resume;
use patchclamp_report::train_run::{register, Prepared};

/// The experiments of the lab.
const EXPERIMENTS: &[(&str, &str)] = &[
    ("induction", "train 2-layer attention-only models with and without optogenetic clamps; watch induction heads form (the flagship, ~2 min)"),
    ("singh-ih", "Singh et al. 2024: in-context classification with Gaussian exemplars, baseline and subcircuit clamps (long: ~10 min)"),
    ("toy-phase", "the three-factor toy model of the phase change, with and without clamped factors (seconds)"),
    ("critical-periods", "deficits early or late in training of deep linear networks (seconds)"),
    ("steering", "K8: a two-style toy LM, then CAA, Linear-AcT, dynamic composition, directional ablation and a function vector (~1 min)"),
];

/// Arguments of `lab`.
#[derive(clap::Args)]
pub struct Args {
    /// The experiment to run; omit to list them.
    experiment: Option<String>,
    /// Seed of data and initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training steps per run (default: the experiment's calibrated length).
    #[arg(long)]
    steps: Option<u64>,
    /// Report folder (default: runs/EXPERIMENT).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file with [[interventions]] to train one more run under.
    #[arg(long)]
    clamp: Option<PathBuf>,
    /// Write into --out even if it holds files patchclamp did not write (they are kept).
    #[arg(long)]
    force: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let Some(name) = a.experiment.clone() else {
        crate::print("experiments (patchclamp lab NAME [--seed N] [--steps N] [--out DIR] [--clamp spec.toml]):");
        for (n, what) in EXPERIMENTS {
            crate::print(&format!("  {n:<17} {what}"));
        }
        return Ok(());
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&name));
    let extra = match &a.clamp {
        Some(p) => Some(read_clamp(p)?),
        None => None,
    };
    if matches!(name.as_str(), "induction" | "singh-ih")
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        single_threaded_kernels();
    }
    match name.as_str() {
        "induction" => induction(&a, &out, extra),
        "singh-ih" => singh(&a, &out, extra),
        "toy-phase" | "critical-periods" if extra.is_some() => anyhow::bail!(
            "{name} trains plain factor models without hook points; --clamp applies to induction and singh-ih (the toy clamps are built in)"
        ),
        "toy-phase" => toy_phase(&a, &out),
        "critical-periods" if a.steps.is_some() => anyhow::bail!(
            "critical-periods runs its calibrated schedules (40 000 steps, deficits at 0 and 20 000); --steps does not apply"
        ),
        "critical-periods" => critical_periods(&a, &out),
        "steering" if extra.is_some() => anyhow::bail!(
            "steering trains its model plainly and steers it afterwards; --clamp applies to induction and singh-ih"
        ),
        "steering" => steering(&a, &out),
        _ => {
            let names: Vec<&str> = EXPERIMENTS.iter().map(|(n, _)| *n).collect();
            anyhow::bail!(
                "unknown experiment '{name}'; available: {}",
                names.join(", ")
            )
        }
    }
}

/// `[[interventions]]` from a clamp file.
fn read_clamp(p: &Path) -> anyhow::Result<Vec<Intervention>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Clamp {
        interventions: Vec<Intervention>,
    }
    let text = patchclamp_report::read_spec(p)?;
    let c: Clamp = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            p.display(),
            e.to_string().trim_end().replace('\n', " ")
        )
    })?;
    Ok(c.interventions)
}

/// Runs train side by side, one single-threaded run per core: candle's kernels spend much of a
/// small model's step waking worker threads, so whole runs in parallel finish sooner (and each
/// run's numbers do not depend on the thread count).
fn single_threaded_kernels() {
    // SAFETY: called before any kernel or thread pool starts (the start of `lab`).
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// Trains several runs side by side into sub-folders of `out` (one thread each; each run is
/// deterministic on its own). Every trainer is built before the folder is touched.
fn run_all(
    runs: Vec<(String, Experiment)>,
    out: &Path,
    command: &str,
    force: bool,
) -> anyhow::Result<(RunDir, Vec<FinishedRun>)> {
    let prepared = runs
        .into_iter()
        .map(|(label, exp)| Ok(Prepared::new(&label, exp)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut run = RunDir::create(out, command, force)?;
    let all: String = prepared.iter().map(|p| p.exp.identity()).collect();
    run.set_experiment_hash(patchclamp_report::content_hash(all.as_bytes()))?;
    let mut jobs = vec![];
    for p in prepared {
        let sub = p.exp.name.clone();
        let (opts, dir) = register(&p, &mut run, &sub, Resume::No)?;
        jobs.push((p, opts, dir));
    }
    let mp = indicatif::MultiProgress::new();
    let results: Vec<anyhow::Result<FinishedRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(p, opts, dir)| {
                let mp = &mp;
                s.spawn(move || execute(p, &opts, dir, mp))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a training thread panicked")))
            })
            .collect()
    });
    Ok((run, results.into_iter().collect::<anyhow::Result<_>>()?))
}

fn print_table(runs: &[FinishedRun]) {
    crate::print(&format!(
        "{:<32} {:>7} {:>13} {:>11} {:>11} {:>11}",
        "run", "steps", "phase change", "ctx loss", "max IND", "max PT"
    ));
    for r in runs {
        if let Some(s) = &r.summary {
            crate::print(&format!(
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
}

fn induction(a: &Args, out: &Path, extra: Option<Vec<Intervention>>) -> anyhow::Result<()> {
    let mut runs = presets::induction(a.seed, a.steps.unwrap_or(1500));
    if let Some(ivs) = extra {
        let mut e = runs[0].1.clone();
        e.name = "induction-custom-clamp".into();
        e.interventions = ivs;
        runs.push(("custom clamp".into(), e));
    }
    let t0 = std::time::Instant::now();
    let (mut run, done) = run_all(runs, out, "lab induction", a.force)?;
    let (html, _) =
        patchclamp_report::training::write(&mut run, "patchclamp lab induction", &done, None)?;
    run.finish()?;
    print_table(&done);
    crate::print(&format!(
        "finished in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        html.display()
    ));
    Ok(())
}

fn singh(a: &Args, out: &Path, extra: Option<Vec<Intervention>>) -> anyhow::Result<()> {
    let mut runs = presets::singh(a.seed, a.steps.unwrap_or(12_000));
    if let Some(ivs) = extra {
        let mut e = runs[0].1.clone();
        e.name = "singh-custom-clamp".into();
        e.interventions = ivs;
        runs.push(("custom clamp".into(), e));
    }
    let (mut run, done) = run_all(runs, out, "lab singh-ih", a.force)?;
    let (html, _) =
        patchclamp_report::training::write(&mut run, "patchclamp lab singh-ih", &done, None)?;
    for r in &done {
        if let Some(s) = &r.summary {
            let strength = r
                .result
                .evals
                .last()
                .and_then(|e| e.induction_strength.clone());
            crate::print(&format!(
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
    if let Some(base) = done.first() {
        let rows = singh::ablations(&base.model, &base.exp.task)?;
        for line in outcomes::write_ablations(&mut run, &rows)? {
            crate::print(&line);
        }
    }
    run.finish()?;
    crate::print(&format!("report: {}", html.display()));
    Ok(())
}

fn toy_phase(a: &Args, out: &Path) -> anyhow::Result<()> {
    let t = protocols::toy_phase(a.seed, a.steps.unwrap_or(1000) as usize)?;
    let mut run = RunDir::create(out, "lab toy-phase", a.force)?;
    let lines = outcomes::write_toy_phase(&mut run, &t)?;
    run.finish()?;
    for line in lines {
        crate::print(&line);
    }
    crate::print(&format!("report: {}", out.display()));
    Ok(())
}

fn steering(a: &Args, out: &Path) -> anyhow::Result<()> {
    use patchclamp_lab::steering::battery::{run, BatterySpec};
    let mut spec = BatterySpec {
        seed: a.seed,
        ..BatterySpec::default()
    };
    if let Some(steps) = a.steps {
        if steps == 0 {
            anyhow::bail!("--steps 0 trains nothing; give at least 1");
        }
        spec.steps = steps;
    }
    patchclamp_report::run_dir::check(out, "lab steering", a.force)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {elapsed}",
    )?);
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let result = run(&spec, |stage| bar.set_message(stage.to_string()))?;
    bar.finish_and_clear();
    let outcome = outcomes::BatteryOutcome { spec, result };
    let mut run_dir = RunDir::create(out, "lab steering", a.force)?;
    let vocab = patchclamp_report::vocab::Vocab::new(None);
    let w = patchclamp_report::write_outcome(&mut run_dir, &outcome, &vocab, "two-style toy LM")?;
    run_dir.finish()?;
    crate::print(&w.summary);
    crate::print(&format!("report: {}/report.html", out.display()));
    Ok(())
}

fn critical_periods(a: &Args, out: &Path) -> anyhow::Result<()> {
    let c = protocols::critical_periods(a.seed);
    let mut run = RunDir::create(out, "lab critical-periods", a.force)?;
    let lines = outcomes::write_critical_periods(&mut run, &c)?;
    run.finish()?;
    for line in lines {
        crate::print(&line);
    }
    crate::print(&format!("report: {}", out.display()));
    Ok(())
}
