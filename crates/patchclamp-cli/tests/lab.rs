//! `lab`: the flagship report.

mod common;

use std::path::PathBuf;

use common::{analysis, bin, fails, ok, tmp};

#[test]
fn lab_induction_writes_a_full_report() {
    let out = ok(bin().args(["lab"]).output().unwrap());
    for name in ["induction", "singh-ih", "toy-phase", "critical-periods"] {
        assert!(out.contains(name), "{out}");
    }
    let dir = tmp("lab");
    let clamp = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../experiments/clamp-induction-head.toml");
    let text = ok(bin()
        .args(["lab", "induction", "--steps", "20", "--seed", "3", "--out"])
        .arg(&dir)
        .arg("--clamp")
        .arg(&clamp)
        .output()
        .unwrap());
    assert!(
        text.contains("report.html") && text.contains("baseline"),
        "{text}"
    );
    for f in [
        "report.html",
        "summary.json",
        "loss.svg",
        "train_loss.svg",
        "heads_run0.svg",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let pngs = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert!(
        pngs >= 6,
        "attention patterns of two heads per run ({pngs})"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "three built-in runs and the --clamp run");
    assert!(v["git_revision"].is_string());
    for r in runs {
        assert_eq!(r["summary"]["steps"], 20);
        let folder = PathBuf::from(r["folder"].as_str().unwrap());
        for f in ["log.jsonl", "checkpoint.safetensors", "experiment.toml"] {
            assert!(folder.join(f).is_file(), "{} lacks {f}", folder.display());
        }
        assert!(r["experiment"].as_str().unwrap().contains("[train]"));
    }
    // The analysis commands read lab checkpoints (token ids, no tokenizer).
    let ck = PathBuf::from(runs[0]["folder"].as_str().unwrap()).join("checkpoint.safetensors");
    let ck = ck.to_string_lossy().into_owned();
    let v = analysis(
        &["heads", &ck, "--n", "4", "--block", "8"],
        &dir.join("heads"),
        &["induction"],
    );
    assert_eq!(
        v["heads"]["scores"]["prev_token"][0]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    analysis(
        &["lens", &ck, "--prompt", "1 2 3 4 1 2 3"],
        &dir.join("lens"),
        &["lens_0"],
    );
    let err = fails(
        bin()
            .args(["lens", &ck, "--prompt", "one two", "--out"])
            .arg(dir.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("token ids"), "{err}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("prev_token") && html.contains("phase"));
    let toy = ok(bin()
        .args(["lab", "toy-phase", "--out"])
        .arg(dir.join("toy"))
        .output()
        .unwrap());
    assert!(
        toy.contains("b, c clamped") && dir.join("toy/loss.svg").is_file(),
        "{toy}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
