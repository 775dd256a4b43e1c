//! Experiment files: one TOML file fully describes a training run — task, model, optimiser,
//! interventions with step windows, patch sources and seeds.
//!
//! ```toml
//! name = "induction-prev-token-clamp"
//! [task]
//! kind = "repeated"
//! vocab = 64
//! seq_len = 64
//! min_len = 8
//! max_len = 32
//! [model]
//! n_layers = 2
//! d_model = 64
//! n_heads = 4
//! [train]
//! steps = 1500
//! batch = 32
//! lr = { lr = 1e-3 }
//! [[interventions]]
//! at = "blocks.0.attn.hook_pattern"
//! select = { heads = [0] }
//! op = { kind = "prev_token" }
//! when = { until = 1000 }
//! ```

pub mod presets;
mod run;
pub mod singh;

pub use run::{train_experiment, FinishedRun};

use std::path::{Path, PathBuf};

use patchclamp_core::Intervention;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::TaskSpec;
use crate::train::{load_model, ModelSpec, TrainSpec, Trainer};

/// A model whose activations `patch` interventions read during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// A training checkpoint written by patchclamp (relative to the experiment file).
    pub checkpoint: PathBuf,
}

/// A complete training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    pub task: TaskSpec,
    #[serde(default)]
    pub model: ModelSpec,
    pub train: TrainSpec,
    #[serde(default)]
    pub interventions: Vec<Intervention>,
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

impl Experiment {
    /// Parses and checks an experiment file's text (`path` names it in errors and anchors
    /// relative source paths).
    pub fn from_toml(text: &str, path: &Path) -> Result<Experiment> {
        let mut exp: Experiment = toml::from_str(text)
            .map_err(|e| Error::config(path, e.to_string().trim_end().replace('\n', " ")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for s in &mut exp.sources {
            if s.checkpoint.is_relative() {
                s.checkpoint = base.join(&s.checkpoint);
            }
        }
        exp.validate()
            .map_err(|e| Error::config(path, e.to_string()))?;
        Ok(exp)
    }

    /// Reads an experiment file.
    pub fn load(path: &Path) -> Result<Experiment> {
        let text = patchclamp_core::fsutil::read_text(
            path,
            patchclamp_core::fsutil::SPEC_LIMIT,
            "experiment files",
        )?;
        Self::from_toml(&text, path)
    }

    /// Checks everything that can be checked without building the model.
    pub fn validate(&self) -> crate::Result<()> {
        check_name(&self.name)?;
        self.task.validate()?;
        self.train.validate()?;
        let cfg = self.config()?;
        check_fits(&cfg, &self.train, self.task.task().seq_len())
    }

    /// The model config for this task.
    pub fn config(&self) -> crate::Result<patchclamp_core::Config> {
        let t = self.task.task();
        self.model.config(t.vocab(), t.seq_len())
    }

    /// A trainer ready to run: weights initialised, exemplars fixed, sources loaded, and
    /// interventions checked against the model (a head that does not exist fails here).
    pub fn trainer(&self) -> Result<Trainer> {
        let cfg = self.config()?;
        let mut tr = Trainer::new(cfg.clone(), self.model.init_seed, self.train.clone())?;
        if let TaskSpec::Icl(icl) = &self.task {
            // Fixed Gaussian exemplar vectors stand in for image features: not trained.
            let embed = patchclamp_core::model::Param::Embed.to_string();
            tr.freeze_rows(&embed, 0..icl.classes, &icl.exemplars(cfg.d_model))?;
        }
        for s in &self.sources {
            let model = load_model(&s.checkpoint)?;
            tr = tr.with_source(&s.name, model);
        }
        tr.identity = Some(self.identity());
        tr.with_interventions(self.interventions.clone())
    }

    /// The run's identity: the full resolved experiment (overrides and seeds included) as JSON.
    /// A checkpoint carries it, and a resume is refused when it differs.
    pub fn identity(&self) -> String {
        serde_json::to_string(self).expect("an experiment serialises")
    }

    /// A short hash of [`Experiment::identity`] (for manifests).
    pub fn identity_hash(&self) -> String {
        patchclamp_core::fsutil::content_hash(self.identity().as_bytes())
    }
}

/// Fails when a training step's activations (batch × sequence × width per layer, attention
/// maps and logits; the saved ones kept for the backward pass) cannot fit in this machine's
/// memory: an absurd batch is refused here instead of aborting the process mid-allocation.
/// A lower estimate (the weights' own share is checked by `ModelSpec::config`).
fn check_fits(cfg: &patchclamp_core::Config, train: &TrainSpec, seq: usize) -> crate::Result<()> {
    let Some(have) = patchclamp_core::sys::total_memory() else {
        return Ok(());
    };
    let batch = train.batch.max(train.eval_batch) as u64;
    let (s, d, h) = (seq as u64, cfg.d_model as u64, cfg.attn.n_heads as u64);
    let per_layer = s
        .saturating_mul(d.saturating_mul(8).saturating_add(2 * cfg.d_mlp() as u64))
        .saturating_add(h.saturating_mul(s).saturating_mul(s).saturating_mul(2));
    let floats = batch.saturating_mul(
        per_layer
            .saturating_mul(cfg.n_layers as u64)
            .saturating_add(s.saturating_mul(cfg.d_vocab as u64).saturating_mul(2)),
    );
    let need = floats.saturating_mul(4);
    if need > have {
        return Err(crate::Error::Spec(format!(
            "a batch of {batch} sequences of {seq} tokens needs at least {:.1} GiB of activations per step, more than this machine's {:.1} GiB; lower batch or eval_batch",
            need as f64 / (1u64 << 30) as f64,
            have as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// Fails unless `name` can name a folder under the output root and nothing else: letters,
/// digits, `-`, `_`, `.` and `+`, not starting with a dot (`"../../x"` would escape the root).
fn check_name(name: &str) -> crate::Result<()> {
    if name.is_empty() {
        return Err(crate::Error::Spec("'name' must not be empty".into()));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.+".contains(c);
    if name.starts_with('.') || !name.chars().all(ok) || name.len() > 200 {
        return Err(crate::Error::Spec(format!(
            "'name' {name:?} must be a plain folder name: letters, digits, '-', '_', '.', '+', not starting with '.', at most 200 characters (it names runs/NAME)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
[task]
kind = "repeated"
vocab = 16
seq_len = 16
min_len = 2
max_len = 6
[model]
n_layers = 2
d_model = 16
n_heads = 2
[train]
steps = 3
batch = 2
lr = { lr = 1e-3 }
[[interventions]]
at = "blocks.0.attn.hook_pattern"
select = { heads = [1] }
op = { kind = "prev_token" }
when = { until = 2 }
"#;

    #[test]
    fn parses_round_trips_and_builds() {
        let e = Experiment::from_toml(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(e.interventions.len(), 1);
        let again: Experiment = toml::from_str(&toml::to_string(&e).unwrap()).unwrap();
        assert_eq!(again, e);
        e.trainer().unwrap();
    }

    #[test]
    fn the_example_experiment_files_build() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            // Experiment files have a [train] table; the others are intervention lists.
            if p.extension().is_some_and(|e| e == "toml") && text.contains("[train]") {
                Experiment::from_toml(&text, &p).unwrap().trainer().unwrap();
                n += 1;
            }
        }
        assert!(n >= 3, "found {n} experiment files");
    }

    #[test]
    fn bad_files_fail_at_load_with_clear_messages() {
        let p = Path::new("exp.toml");
        let err = |t: &str| Experiment::from_toml(t, p).unwrap_err().to_string();
        let e = err(&GOOD.replace("kind = \"repeated\"", "kind = \"sorting\""));
        assert!(
            e.contains("exp.toml") && e.contains("sorting") && e.contains("repeated"),
            "{e}"
        );
        let e = err(&GOOD.replace("steps = 3", "stepz = 3"));
        assert!(e.contains("stepz"), "{e}");
        let e = err(&GOOD.replace("max_len = 6", "max_len = 12"));
        assert!(e.contains("do not fit"), "{e}");
        let e = err(&GOOD.replace("n_heads = 2", "n_heads = 3"));
        assert!(e.contains("multiple of n_heads"), "{e}");
        let e = err("name = [");
        assert!(e.contains("exp.toml"), "{e}");
        // A clamp on a head that does not exist fails when the run is built, before training.
        let ex = Experiment::from_toml(&GOOD.replace("heads = [1]", "heads = [5]"), p).unwrap();
        let e = ex.trainer().err().unwrap().to_string();
        assert!(e.contains("head 5") && e.contains("out of range"), "{e}");
        let ex = Experiment::from_toml(&GOOD.replace("hook_pattern", "hook_patern"), p);
        let e = ex.err().unwrap().to_string();
        assert!(e.contains("hook_pattern"), "suggests the nearest name: {e}");
    }
}
