//! The analysis commands (`lens`, `dla`, `heads`, `neurons`, `extremes`, `probe`, `localize`,
//! `hydra`): what they share — the model (a folder, a cached repo id or a lab checkpoint),
//! prompts (`--prompt`, a text file or JSONL), and an output folder with result.json, tensors,
//! figures and one HTML page.

pub mod dla;
pub mod extremes;
pub mod heads;
pub mod hydra;
pub mod lens;
pub mod localize;
pub mod neurons;
pub mod probe;

use std::path::PathBuf;

use patchclamp_report::{Outcome, PromptSource, RunDir, Subject};

/// Where the model comes from and where results go (every analysis command takes these).
#[derive(clap::Args)]
pub struct Common {
    /// A model folder, a cached repo id (ORG/NAME), or a `checkpoint.safetensors` written by
    /// `patchclamp train` / `patchclamp lab` (no tokenizer: give prompts as token ids).
    pub model: String,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    pub processed: bool,
    /// Output folder (result.json, result.safetensors, figures, report.html).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the JSON result to stdout.
    #[arg(long)]
    pub json: bool,
    /// Write into --out even if it holds files patchclamp did not write (they are kept).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub sae: crate::sae::SaeArgs,
}

impl Common {
    /// Loads the model named on the command line, with its `--sae` SAEs spliced.
    pub fn subject(&self) -> anyhow::Result<Subject> {
        let mut s = Subject::load(&self.model, self.processed, &crate::device())?;
        s.model.saes = self.sae.splices(&s.model.cfg)?;
        Ok(s)
    }
}

/// Prompts from the command line or a file.
#[derive(clap::Args, Clone, Default)]
pub struct PromptArgs {
    /// A prompt (repeatable). Without a tokenizer: token ids separated by spaces.
    #[arg(long = "prompt")]
    pub prompt: Vec<String>,
    /// A text file (one prompt per line) or a .jsonl file of {"text": …} or {"tokens": […]}
    /// objects, optionally with a "label".
    #[arg(long = "prompts")]
    pub prompts: Option<PathBuf>,
    /// Draw prompts from the task of an experiment file (e.g. experiments/bigram-backcopy.toml).
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// Prompts drawn from --task.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Seed of the prompts drawn from --task.
    #[arg(long, default_value_t = 0)]
    pub task_seed: u64,
}

impl PromptArgs {
    /// The task of `--task`, if given.
    pub fn task_spec(&self) -> anyhow::Result<Option<patchclamp_lab::tasks::TaskSpec>> {
        match &self.task {
            Some(p) => Ok(Some(patchclamp_lab::experiment::Experiment::load(p)?.task)),
            None => Ok(None),
        }
    }

    /// Where the prompts come from.
    pub fn source(&self) -> anyhow::Result<PromptSource> {
        Ok(PromptSource {
            texts: self.prompt.clone(),
            file: self.prompts.clone(),
            task: self.task_spec()?.map(|t| (t, self.n, self.task_seed)),
        })
    }
}

/// Writes `outcome` into `--out` (as the run of `command`) and prints its JSON (with `--json`)
/// or its summary.
pub fn report(
    c: &Common,
    command: &str,
    s: &Subject,
    outcome: &impl Outcome,
) -> anyhow::Result<()> {
    patchclamp_report::run_dir::outside_model(&c.out, &s.home)?;
    let mut run = RunDir::create(&c.out, command, c.force)?;
    let w = patchclamp_report::write_outcome(&mut run, outcome, &s.vocab(), &c.model)?;
    run.finish()?;
    if c.json {
        crate::print(&w.json);
    } else {
        crate::print(&format!(
            "{}\nwrote {}/report.html",
            w.summary,
            c.out.display()
        ));
    }
    Ok(())
}

/// A progress bar over `len` units named `what` (hidden when not a terminal).
pub fn progress(len: u64, what: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{human_pos}}/{{human_len}} {{elapsed}} ({{per_sec}})"
    ))?);
    Ok(bar)
}
