//! Replays what the fuzzer keeps (`tests/fixtures/fuzz/TARGET/`: seeds and every crash input
//! found) and the repository's own files of each kind through the fuzz targets' functions:
//! none may panic. The seeds themselves must load, so the fuzzer starts from valid files.

use std::path::{Path, PathBuf};

use patchclamp_report::fuzzing::{self, TARGETS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn every_kept_fuzz_input_runs_without_a_panic() {
    let mut n = 0;
    for (name, target) in TARGETS {
        let kept = files_in(&root().join("tests/fixtures/fuzz").join(name));
        assert!(!kept.is_empty(), "tests/fixtures/fuzz/{name} holds no seed");
        for f in kept {
            let bytes = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| target(&bytes));
            assert!(r.is_ok(), "{name} panicked on {}", f.display());
            n += 1;
        }
    }
    assert!(n >= TARGETS.len());
}

#[test]
fn the_repositorys_own_files_run_through_their_targets() {
    let models = root().join("tests/fixtures/models");
    for family in ["gpt2", "llama", "mistral", "qwen2"] {
        let dir = models.join(family);
        fuzzing::config_json(&std::fs::read(dir.join("config.json")).unwrap());
        if let Ok(b) = std::fs::read(dir.join("model.safetensors")) {
            fuzzing::safetensors(&b);
        }
    }
    for f in files_in(&root().join("experiments")) {
        let b = std::fs::read(&f).unwrap();
        fuzzing::experiment(&b);
        fuzzing::interventions(&b);
    }
}

#[test]
fn the_seeds_are_valid_files() {
    let seeds = root().join("tests/fixtures/fuzz");
    let ck = seeds.join("lab_checkpoint/seed.safetensors");
    patchclamp_lab::train::load_model(&ck).expect("the checkpoint seed loads");
    let exp = seeds.join("experiment/seed.toml");
    patchclamp_lab::experiment::Experiment::load(&exp)
        .and_then(|e| e.trainer())
        .expect("the experiment seed builds");
}
