//! `patchclamp lab`: experiments that run on the embedded default, with no files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use patchclamp_report::lab_run::{self, LabEvent, LabRequest, EXPERIMENTS};

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
    let clamp = match &a.clamp {
        Some(p) => Some(lab_run::read_clamp(p)?),
        None => None,
    };
    if matches!(name.as_str(), "induction" | "singh-ih")
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        single_threaded_kernels();
    }
    let t0 = std::time::Instant::now();
    let progress = Progress::new()?;
    let done = lab_run::run(
        LabRequest {
            command: format!("patchclamp lab {name}"),
            name,
            seed: a.seed,
            steps: a.steps,
            out,
            clamp,
            force: a.force,
        },
        |e| progress.show(e),
    )?;
    progress.finish();
    for line in &done.lines {
        crate::print(line);
    }
    crate::print(&format!(
        "finished in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        done.report.display()
    ));
    Ok(())
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

/// One bar per training run, and a spinner for the stages of a protocol.
struct Progress {
    mp: indicatif::MultiProgress,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
    spinner: indicatif::ProgressBar,
}

impl Progress {
    fn new() -> anyhow::Result<Progress> {
        let mp = indicatif::MultiProgress::new();
        let spinner = indicatif::ProgressBar::hidden();
        spinner.set_style(indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {elapsed}",
        )?);
        Ok(Progress {
            mp,
            bars: Mutex::new(HashMap::new()),
            spinner,
        })
    }

    fn show(&self, e: LabEvent) {
        match e {
            LabEvent::Start { label, steps } => {
                let bar = crate::train::progress_bar(label, steps, &self.mp);
                if let (Ok(bar), Ok(mut bars)) = (bar, self.bars.lock()) {
                    bars.insert(label.to_string(), bar);
                }
            }
            LabEvent::Train { label, event } => {
                if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(label).cloned()) {
                    crate::train::show(&bar, label, event);
                }
            }
            LabEvent::Stage(stage) => {
                if self.spinner.is_hidden() {
                    self.spinner
                        .set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    self.spinner
                        .enable_steady_tick(std::time::Duration::from_millis(200));
                }
                self.spinner.set_message(stage.to_string());
            }
        }
    }

    fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            bars.values().for_each(|b| b.finish());
        }
        self.spinner.finish_and_clear();
    }
}
