//! `patchclamp lab`: experiments that run on the embedded default, with no files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use patchclamp_core::fsutil::write_atomic;
use patchclamp_core::Intervention;
use patchclamp_lab::experiment::{presets, Experiment};
use patchclamp_lab::toy::{critical, phase};

use crate::train::{execute, RunOutput};
use crate::training_report;

/// The experiments of the lab.
const EXPERIMENTS: &[(&str, &str)] = &[
    ("induction", "train 2-layer attention-only models with and without optogenetic clamps; watch induction heads form (the flagship, ~2 min)"),
    ("singh-ih", "Singh et al. 2024: in-context classification with Gaussian exemplars, baseline and subcircuit clamps (long: ~10 min)"),
    ("toy-phase", "the three-factor toy model of the phase change, with and without clamped factors (seconds)"),
    ("critical-periods", "deficits early or late in training of deep linear networks (seconds)"),
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
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let Some(name) = a.experiment.clone() else {
        println!("experiments (patchclamp lab NAME [--seed N] [--steps N] [--out DIR] [--clamp spec.toml]):");
        for (n, what) in EXPERIMENTS {
            println!("  {n:<17} {what}");
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
        "critical-periods" => critical_periods(&a, &out),
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
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
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

/// Trains several runs side by side (one thread each; each run is deterministic on its own).
fn run_all(runs: Vec<(String, Experiment)>, out: &Path) -> anyhow::Result<Vec<RunOutput>> {
    let mp = indicatif::MultiProgress::new();
    let results: Vec<anyhow::Result<RunOutput>> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(label, exp)| {
                let dir = out.join(&exp.name);
                let mp = &mp;
                s.spawn(move || execute(label, exp, &dir, false, mp))
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
    results.into_iter().collect()
}

fn print_table(runs: &[RunOutput]) {
    println!(
        "{:<32} {:>7} {:>13} {:>11} {:>11} {:>11}",
        "run", "steps", "phase change", "ctx loss", "max IND", "max PT"
    );
    for r in runs {
        if let Some(s) = &r.summary {
            println!(
                "{:<32} {:>7} {:>13} {:>11.3} {:>11.3} {:>11.3}",
                r.label,
                s.steps,
                s.phase_change_step.map_or("none".into(), |x| x.to_string()),
                s.final_in_context_loss,
                s.final_max_induction,
                s.final_max_prev_token
            );
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
    let done = run_all(runs, out)?;
    let html = training_report::write(out, "patchclamp lab induction", &done, None)?;
    print_table(&done);
    println!(
        "finished in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        html.display()
    );
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
    let done = run_all(runs, out)?;
    let html = training_report::write(out, "patchclamp lab singh-ih", &done, None)?;
    for r in &done {
        if let Some(s) = &r.summary {
            let strength = r
                .result
                .evals
                .last()
                .and_then(|e| e.induction_strength.clone());
            println!(
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
            );
        }
    }
    if let Some(base) = done.first() {
        let abl = singh_ablations(base)?;
        println!("ablations of the trained baseline (accuracy on 1024 training-split sequences):");
        for (what, acc) in &abl {
            println!("  {what:<58} {acc:.4}");
        }
        let rows: Vec<serde_json::Value> = abl
            .iter()
            .map(|(w, a)| serde_json::json!({"ablation": w, "accuracy": a}))
            .collect();
        write_atomic(
            &out.join("ablations.json"),
            serde_json::to_string_pretty(&rows)?.as_bytes(),
        )?;
    }
    println!("report: {}", html.display());
    Ok(())
}

/// Accuracy of the trained baseline under test-time ablations (METHODS.md K4 ii, v): each
/// layer-1 head removed, and layer 0's attention removed with layer 1's patterns and values
/// preserved from the unablated run (two passes) or not.
fn singh_ablations(run: &RunOutput) -> anyhow::Result<Vec<(String, f32)>> {
    use patchclamp_core::{Hooks, Input, Padding, Selector};
    use patchclamp_lab::tasks::{Task, TaskSpec};
    let TaskSpec::Icl(task) = &run.exp.task else {
        anyhow::bail!("singh ablations need the classification task");
    };
    let m = &run.model;
    let batch = task.batch(&mut patchclamp_core::rng::Rng::new(0xAB1A7E), 1024);
    let input = Input::batch(&batch.tokens, Padding::Right, 0, m.device())?;
    let classes = task.classes().expect("classification");
    let acc = |hooks: &mut Hooks| -> anyhow::Result<f32> {
        let logits = m.forward(&input, hooks)?;
        Ok(patchclamp_lab::probes::accuracy(
            &logits,
            &batch,
            classes.clone(),
        )?)
    };
    let mut out = vec![("none".to_string(), acc(&mut Hooks::none())?)];
    let last = m.cfg.n_layers - 1;
    for h in 0..m.cfg.n_heads {
        let mut hooks = Hooks::none().intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_z'\nselect = {{ heads = [{h}] }}\nop = {{ kind = 'zero' }}"
        )));
        out.push((format!("remove head {last}.{h}"), acc(&mut hooks)?));
    }
    let mut clean = Hooks::none()
        .capture(Selector::parse(&format!(
            "blocks.{last}.attn.hook_pattern"
        ))?)
        .capture(Selector::parse(&format!("blocks.{last}.attn.hook_v"))?);
    m.forward(&input, &mut clean)?;
    let zero0 = iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }");
    out.push((
        "zero layer-0 attention".into(),
        acc(&mut Hooks::none().intervene(zero0.clone()))?,
    ));
    let mut preserved = Hooks::none()
        .source("clean", clean.take_cache())
        .intervene(zero0)
        .intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_pattern'\nop = {{ kind = 'patch', source = 'clean' }}"
        )))
        .intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_v'\nop = {{ kind = 'patch', source = 'clean' }}"
        )));
    out.push((
        "zero layer-0 attention, layer-1 patterns and values preserved".into(),
        acc(&mut preserved)?,
    ));
    Ok(out)
}

fn iv(text: &str) -> Intervention {
    toml::from_str(text).expect("built-in intervention parses")
}

fn toy_phase(a: &Args, out: &Path) -> anyhow::Result<()> {
    use crate::plot::line::{LinePlot, Series};
    std::fs::create_dir_all(out)?;
    let t = phase::ThreeFactor {
        seed: a.seed,
        iters: a.steps.unwrap_or(1000) as usize,
        ..Default::default()
    };
    let conds: [(&str, phase::Clamp); 3] = [
        ("none", [false, false, false]),
        ("c clamped", [false, false, true]),
        ("b, c clamped", [false, true, true]),
    ];
    let mut series = vec![];
    let mut rows = vec![];
    for (name, clamp) in conds {
        let l = t.run(clamp);
        let t10 = phase::time_to(&l, 0.1);
        println!(
            "{name:<14} t10 = {:>5}   L(100)/L(0) = {:.3}",
            t10.map_or("never".into(), |x| x.to_string()),
            l[100.min(l.len() - 1)] / l[0]
        );
        rows.push(serde_json::json!({"clamp": name, "t10": t10, "loss": l}));
        series.push(Series {
            name: name.into(),
            xs: (0..l.len()).map(|i| i as f64).collect(),
            ys: l.iter().map(|x| (x / l[0]).max(1e-8).log10()).collect(),
            dashed: false,
        });
    }
    let plot = LinePlot {
        title: "Three-factor toy: log10 loss / initial loss".into(),
        x_label: "gradient step".into(),
        y_label: "log10 L/L0".into(),
        series,
        markers: vec![],
        hline: Some((-1.0, "10% of initial".into())),
        y_range: None,
    };
    write_atomic(&out.join("loss.svg"), plot.svg().as_bytes())?;
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&serde_json::json!({"settings": t, "runs": rows}))?.as_bytes(),
    )?;
    println!("report: {}", out.display());
    Ok(())
}

fn critical_periods(a: &Args, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut json = serde_json::Map::new();
    println!("multi-pathway (σ = 10, deficit on pathway B for 6000 of 40000 steps): final B share");
    let mut shares = vec![];
    for depth in [2, 3, 4] {
        let p = critical::Pathways {
            depth,
            seed: a.seed,
            ..Default::default()
        };
        let none = p.run(None).0;
        let early = p.run(Some((0, 6000))).0;
        let late = p.run(Some((20_000, 26_000))).0;
        println!("  depth {depth}: no deficit {none:.3}  early {early:.3}  late {late:.3}");
        shares
            .push(serde_json::json!({"depth": depth, "none": none, "early": early, "late": late}));
    }
    json.insert("pathways".into(), shares.into());
    println!(
        "matrix completion (task 1 rank 6 for T steps, then task 2 rank 3): test MSE on task 2"
    );
    let mut mc = vec![];
    for depth in [1, 3] {
        let c = critical::Completion {
            depth,
            seed: a.seed.max(1),
            ..Default::default()
        };
        let errs: Vec<f64> = [0, 2000, 8000].iter().map(|&t| c.run(t)).collect();
        println!(
            "  depth {depth}: T=0 {:.3}  T=2000 {:.3}  T=8000 {:.3}",
            errs[0], errs[1], errs[2]
        );
        mc.push(
            serde_json::json!({"depth": depth, "t_critical": [0, 2000, 8000], "test_mse": errs}),
        );
    }
    json.insert("completion".into(), mc.into());
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("report: {}", out.display());
    Ok(())
}
