//! Helpers shared by the lab's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// Path of a committed fixture model, for `load`.
pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A clean prompt and its corruption: one token swapped at the id level (symmetric token
/// replacement), so both have the same length under any tokenizer.
pub fn prompts(m: &patchclamp_core::Loaded) -> (Vec<u32>, Vec<u32>) {
    let tok = m.tokenizer().unwrap();
    let clean = tok
        .prompt(
            &m.model.cfg,
            "When Mary and John went to the store, John gave a drink to",
            None,
        )
        .unwrap();
    let mut corrupt = clean.clone();
    let k = clean.len() / 2;
    corrupt[k] = if clean[k] == 77 { 78 } else { 77 };
    (clean, corrupt)
}

#[allow(unused_imports)] // not every test binary compares tensors
pub use patchclamp_core::testing::max_diff;

/// Trains a model of `spec` on `task` for `steps` Adam steps (fixed seeds) and returns it.
pub fn train(
    spec: patchclamp_lab::train::ModelSpec,
    task: &dyn patchclamp_lab::tasks::Task,
    steps: u64,
    lr: f64,
    batch: usize,
) -> patchclamp_core::Model {
    use patchclamp_lab::train::{LrSchedule, OptimSpec, TrainSpec, Trainer};
    let cfg = spec.config(task.vocab(), task.seq_len()).unwrap();
    let mut tr = Trainer::new(
        cfg,
        spec.init_seed,
        TrainSpec {
            steps,
            batch,
            seed: 7,
            optim: OptimSpec::default(),
            lr: LrSchedule::constant(lr),
            clip: Some(1.0),
            eval_every: steps,
            eval_batch: 16,
            checkpoint_every: 0,
        },
    )
    .unwrap();
    for _ in 0..steps {
        tr.train_step(task).unwrap();
    }
    tr.snapshot().unwrap()
}
