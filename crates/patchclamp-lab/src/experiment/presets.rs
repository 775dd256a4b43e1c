//! The lab's calibrated experiments, as [`Experiment`] values (the CLI writes each run's exact
//! file into its report).

use patchclamp_core::Intervention;

use super::Experiment;
use crate::tasks::{IclClassification, RepeatedSegments, TaskSpec};
use crate::train::{LrSchedule, ModelSpec, OptimSpec, TrainSpec};

fn iv(text: &str) -> Intervention {
    toml::from_str(text).expect("built-in intervention parses")
}

/// The flagship's runs: baseline, layer-0 attention ablated, one layer-0 head clamped to the
/// perfect previous-token pattern (METHODS.md K1, K2).
pub fn induction(seed: u64, steps: u64) -> Vec<(String, Experiment)> {
    let base = Experiment {
        name: "induction-baseline".into(),
        task: TaskSpec::Repeated(RepeatedSegments::default()),
        model: ModelSpec {
            init_seed: seed,
            ..ModelSpec::default()
        },
        train: TrainSpec {
            steps,
            batch: 32,
            seed,
            optim: OptimSpec::default(),
            lr: LrSchedule::constant(1e-3),
            clip: None,
            eval_every: 50,
            eval_batch: 64,
            checkpoint_every: 500,
        },
        interventions: vec![],
        sources: vec![],
    };
    let ablated = Experiment {
        name: "induction-layer0-ablated".into(),
        interventions: vec![iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }")],
        ..base.clone()
    };
    let clamped = Experiment {
        name: "induction-prev-token-clamp".into(),
        interventions: vec![iv(
            "at = 'blocks.0.attn.hook_pattern'\nselect = { heads = [0] }\nop = { kind = 'prev_token' }",
        )],
        ..base.clone()
    };
    vec![
        ("baseline".into(), base),
        ("layer-0 attention ablated".into(), ablated),
        ("head 0.0 clamped to prev-token".into(), clamped),
    ]
}

/// Singh et al. 2024 (METHODS.md §1b, K4): 2 layers × 8 heads, d 64, attention-only, RoPE,
/// Adam; baseline, a perfect previous-token pattern clamped on layer-0 head 2, and a run where
/// only layer-1 head 3 can carry values (the paper's "only head h").
pub fn singh(seed: u64, steps: u64) -> Vec<(String, Experiment)> {
    let base = Experiment {
        name: "singh-baseline".into(),
        task: TaskSpec::Icl(IclClassification::default()),
        model: ModelSpec {
            n_layers: 2,
            d_model: 64,
            n_heads: 8,
            d_mlp: 0,
            positions: "rotary".into(),
            layer_norm: true,
            init_seed: seed,
        },
        train: TrainSpec {
            steps,
            batch: 32,
            seed,
            optim: OptimSpec::default(),
            lr: LrSchedule::constant(1e-4),
            clip: None,
            eval_every: 100,
            eval_batch: 256,
            checkpoint_every: 2000,
        },
        interventions: vec![],
        sources: vec![],
    };
    let pt = Experiment {
        name: "singh-prev-token-clamp".into(),
        interventions: vec![iv(
            "at = 'blocks.0.attn.hook_pattern'\nselect = { heads = [2] }\nop = { kind = 'prev_token' }",
        )],
        ..base.clone()
    };
    let only = Experiment {
        name: "singh-only-head-1.3".into(),
        interventions: vec![iv(
            "at = 'blocks.1.attn.hook_v'\nselect = { heads = [0, 1, 2, 4, 5, 6, 7] }\nop = { kind = 'zero' }",
        )],
        ..base.clone()
    };
    vec![
        ("baseline".into(), base),
        ("head 0.2 clamped to prev-token".into(), pt),
        ("only head 1.3 (others' values zeroed)".into(), only),
    ]
}
