//! What the end-to-end tests of the `patchclamp` binary share: running it, fixtures, temporary
//! folders, and the checks every command's output gets.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchclamp"))
}

pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn fails(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "should exit 1; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "one-line cause: {err}");
    err
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pc-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A small, fast experiment file for the `train` tests.
pub fn small_experiment(dir: &std::path::Path, steps: u64, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("exp.toml");
    let text = format!(
        "name = \"small\"\n[task]\nkind = \"repeated\"\nvocab = 16\nseq_len = 16\nmin_len = 2\nmax_len = 6\n\
         [model]\nn_layers = 2\nd_model = 16\nn_heads = 2\n[train]\nsteps = {steps}\nbatch = 8\n\
         lr = {{ lr = 1e-3 }}\neval_every = 20\neval_batch = 8\ncheckpoint_every = 20\n{extra}"
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// The JSON an analysis command printed, after checking its folder holds the page and figures.
pub fn analysis(args: &[&str], out: &std::path::Path, figures: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    let o = out.to_string_lossy().into_owned();
    all.extend(["--out", &o, "--json"]);
    let text = ok(bin().args(&all).output().unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    for f in figures {
        let svg = std::fs::read_to_string(out.join(format!("{f}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{f}.svg"
        );
        assert!(page.contains("<svg"), "the page inlines its figures");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(saved, v, "stdout JSON is result.json");
    v
}
