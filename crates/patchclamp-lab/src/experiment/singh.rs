//! Test-time ablations of a model trained on Singh et al.'s in-context classification task
//! (METHODS.md K4 ii, v): each last-layer head removed, and layer 0's attention removed with
//! the last layer's patterns and values preserved from the unablated run (two passes) or not.

use patchclamp_core::{Hooks, Input, Intervention, Model, Padding, Selector};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::tasks::{Task, TaskSpec};

/// The accuracy of the trained model under one ablation.
#[derive(Debug, Clone, Serialize)]
pub struct Ablation {
    /// What was removed.
    pub ablation: String,
    /// Accuracy on the evaluation sequences.
    pub accuracy: f32,
}

/// Sequences the ablations are measured on (training split).
pub const SEQUENCES: usize = 1024;
/// Seed of those sequences.
const SEED: u64 = 0xAB1A7E;

/// Accuracy of `model`, trained on `task`, under each ablation (the first row: none).
pub fn ablations(model: &Model, task: &TaskSpec) -> Result<Vec<Ablation>> {
    let TaskSpec::Icl(task) = task else {
        return Err(Error::Input(
            "singh ablations need the classification task".into(),
        ));
    };
    let batch = task.batch(&mut patchclamp_core::rng::Rng::new(SEED), SEQUENCES);
    let input = Input::batch(&batch.tokens, Padding::Right, 0, model.device())?;
    let classes = task
        .classes()
        .ok_or_else(|| Error::Input("the classification task has no classes".into()))?;
    let acc = |hooks: &mut Hooks| -> Result<f32> {
        let logits = model.forward(&input, hooks)?;
        crate::analysis::probes::accuracy(&logits, &batch, classes.clone())
    };
    let row = |what: &str, accuracy: f32| Ablation {
        ablation: what.to_string(),
        accuracy,
    };
    let mut out = vec![row("none", acc(&mut Hooks::none())?)];
    let last = model.cfg.n_layers - 1;
    for h in 0..model.cfg.attn.n_heads {
        let mut hooks = Hooks::none().intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_z'\nselect = {{ heads = [{h}] }}\nop = {{ kind = 'zero' }}"
        ))?);
        out.push(row(&format!("remove head {last}.{h}"), acc(&mut hooks)?));
    }
    let mut clean = Hooks::none()
        .capture(Selector::parse(&format!(
            "blocks.{last}.attn.hook_pattern"
        ))?)
        .capture(Selector::parse(&format!("blocks.{last}.attn.hook_v"))?);
    model.forward(&input, &mut clean)?;
    let zero0 = iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }")?;
    out.push(row(
        "zero layer-0 attention",
        acc(&mut Hooks::none().intervene(zero0.clone()))?,
    ));
    let mut preserved = Hooks::none()
        .source("clean", clean.take_cache())
        .intervene(zero0)
        .intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_pattern'\nop = {{ kind = 'patch', source = 'clean' }}"
        ))?)
        .intervene(iv(&format!(
            "at = 'blocks.{last}.attn.hook_v'\nop = {{ kind = 'patch', source = 'clean' }}"
        ))?);
    out.push(row(
        "zero layer-0 attention, layer-1 patterns and values preserved",
        acc(&mut preserved)?,
    ));
    Ok(out)
}

fn iv(text: &str) -> Result<Intervention> {
    toml::from_str(text).map_err(|e| Error::Input(format!("built-in intervention: {e}")))
}
