//! The parsers as a fuzzer reaches them: one function per `cargo fuzz` target (`fuzz/`), each
//! taking arbitrary bytes through the same path a user's file takes. They must never panic,
//! abort or hang; an error is a fine answer. The regression test replays every input kept
//! under `tests/fixtures/fuzz/` through them, so a crash once found stays fixed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use patchclamp_core::model::Checkpoint;
use patchclamp_core::{Hooks, Input, Intervention};

use crate::input::Subject;

/// A fuzz target's body: any bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// The targets, by name (as `fuzz/fuzz_targets/NAME.rs` and `tests/fixtures/fuzz/NAME/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("config_json", config_json),
    ("interventions", interventions),
    ("experiment", experiment),
    ("prompts", prompts),
    ("lab_checkpoint", lab_checkpoint),
];

/// The small GPT-2 the repository ships (config, weights, tokenizer).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt2")
}

/// A scratch folder of this process (fuzz inputs are files for the loaders).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("patchclamp-fuzz-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// The fixture loaded once, with its tokenizer.
fn subject() -> &'static Subject {
    static S: OnceLock<Subject> = OnceLock::new();
    S.get_or_init(|| {
        Subject::load(fixture().to_str().expect("utf-8 path"), false, &Device::Cpu)
            .expect("the fixture loads")
    })
}

/// `data` as a weights file: opened, every tensor read at its declared shape, and loaded as
/// the fixture's model (its config with these weights).
pub fn safetensors(data: &[u8]) {
    let dir = scratch("safetensors");
    let _ = std::fs::copy(fixture().join("config.json"), dir.join("config.json"));
    let file = dir.join("model.safetensors");
    std::fs::write(&file, data).expect("scratch write");
    if let Ok(ck) = Checkpoint::open(std::slice::from_ref(&file), &Device::Cpu) {
        let shapes: Vec<(String, Vec<usize>)> = safetensors::SafeTensors::read_metadata(data)
            .map(|(_, m)| {
                m.tensors()
                    .into_iter()
                    .map(|(n, info)| (n, info.shape.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (name, shape) in shapes {
            // A tensor far larger than the file cannot be in it; read the plausible ones.
            if shape
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .is_some_and(|n| n <= data.len())
            {
                let _ = ck.get(&name, &shape);
            }
        }
    }
    let _ = patchclamp_core::load(dir.to_str().expect("utf-8 path"), &Device::Cpu);
}

/// `data` as `config.json` beside the fixture's weights, loaded in full.
pub fn config_json(data: &[u8]) {
    let dir = scratch("config");
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        std::fs::copy(fixture().join("model.safetensors"), &weights).expect("scratch copy");
    }
    std::fs::write(dir.join("config.json"), data).expect("scratch write");
    if let Ok(m) = patchclamp_core::load(dir.to_str().expect("utf-8 path"), &Device::Cpu) {
        let _ = m.model.cfg.n_params();
    }
}

/// `data` as an interventions file (TOML and JSON), checked against the fixture and, when
/// valid, applied in a generation (three tokens, with the cache) and a forward pass.
pub fn interventions(data: &[u8]) {
    #[derive(serde::Deserialize)]
    struct File {
        interventions: Vec<Intervention>,
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lists = vec![];
    if let Ok(f) = toml::from_str::<File>(text) {
        lists.push(f.interventions);
    }
    if let Ok(l) = serde_json::from_str::<Vec<Intervention>>(text) {
        lists.push(l);
    }
    let m = &subject().model;
    let ids = [1u32, 2, 3, 4];
    let spec = patchclamp_core::generate::GenerateSpec {
        max_new_tokens: 3,
        sampling: Default::default(),
        stop_tokens: vec![],
    };
    for list in lists {
        // Generation first: it reads the positions as absolute ones at every step.
        let _ = patchclamp_core::generate::generate_with(m, &ids, &spec, &list, &[], |_| true);
        let mut hooks = Hooks::none().intervene_all(list);
        if let Ok(input) = Input::single(&ids, &Device::Cpu) {
            let _ = m.forward(&input, &mut hooks);
        }
    }
}

/// `data` as an experiment file: parsed, validated, and built into a trainer when small.
pub fn experiment(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(exp) = patchclamp_lab::experiment::Experiment::from_toml(text, Path::new("fuzz.toml"))
    else {
        return;
    };
    // Building allocates the model; a valid but large one is a legitimate request, not a bug.
    if exp.config().is_ok_and(|c| c.n_params() < 1 << 20) && exp.sources.is_empty() {
        let _ = exp.trainer();
    }
}

/// `data` as a prompt file three ways: plain text, JSONL prompts, and a latent-language file.
pub fn prompts(data: &[u8]) {
    let dir = scratch("prompts");
    let s = subject();
    for name in ["p.txt", "p.jsonl"] {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("scratch write");
        let _ = s.read_prompts(&p);
    }
    let _ = s.read_latent(&dir.join("p.jsonl"));
}

/// `data` as a training checkpoint: read as a model, and checked for resuming a small run.
pub fn lab_checkpoint(data: &[u8]) {
    let file = scratch("lab").join("checkpoint.safetensors");
    std::fs::write(&file, data).expect("scratch write");
    let _ = patchclamp_lab::train::load_model(&file);
    static TRAINER: OnceLock<std::sync::Mutex<patchclamp_lab::train::Trainer>> = OnceLock::new();
    let tr = TRAINER.get_or_init(|| {
        let exp = patchclamp_lab::experiment::presets::induction(0, 10)
            .remove(0)
            .1;
        std::sync::Mutex::new(exp.trainer().expect("the preset builds"))
    });
    if let Ok(tr) = tr.lock() {
        let _ = patchclamp_lab::train::check_checkpoint(&tr, &file);
    }
}
