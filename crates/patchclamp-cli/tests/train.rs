//! `train` and `bench train`: resume after a kill, bad experiment files, both training paths.

mod common;

use common::{bin, fails, ok, small_experiment, tmp};

#[test]
fn train_resumes_after_a_kill_with_the_same_log() {
    let dir = tmp("train");
    // A clamp held for steps 50..1000: the steps outside it take the fused step, so the run
    // crosses both training paths.
    let clamp = "[[interventions]]\nat = \"blocks.0.attn.hook_pattern\"\nselect = { heads = [1] }\nop = { kind = \"prev_token\" }\nwhen = { from = 50, until = 1000 }\n";
    let exp = small_experiment(&dir, 1500, clamp);
    let whole = dir.join("whole");
    ok(bin()
        .args(["train"])
        .arg(&exp)
        .arg("--out")
        .arg(&whole)
        .output()
        .unwrap());
    // The same run, killed once its first checkpoints are on disk, then resumed.
    let killed = dir.join("killed");
    let mut child = bin()
        .args(["train"])
        .arg(&exp)
        .arg("--out")
        .arg(&killed)
        .spawn()
        .unwrap();
    let log = killed.join("log.jsonl");
    let t0 = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines > 100 || t0.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let cut = std::fs::read_to_string(&log).unwrap().lines().count();
    let full = std::fs::read_to_string(whole.join("log.jsonl")).unwrap();
    assert!(
        !status.success() && cut < full.lines().count(),
        "killed mid-run ({cut} lines)"
    );
    let text = ok(bin()
        .args(["train"])
        .arg(&exp)
        .arg("--out")
        .arg(&killed)
        .arg("--resume")
        .output()
        .unwrap());
    assert!(text.contains("report.html"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        full,
        "resumed log = uninterrupted log"
    );
    let a = std::fs::read(whole.join("checkpoint.safetensors")).unwrap();
    let b = std::fs::read(killed.join("checkpoint.safetensors")).unwrap();
    assert_eq!(a, b, "final checkpoints are byte-identical");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_train_times_either_training_path() {
    for (flag, path) in [(None, "fused"), (Some("--hooked"), "hooked")] {
        let mut cmd = bin();
        cmd.args([
            "bench",
            "train",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
        ])
        .arg("--json");
        cmd.args(flag);
        let row: serde_json::Value = serde_json::from_str(&ok(cmd.output().unwrap())).unwrap();
        assert_eq!(row["path"], path);
        assert_eq!(row["params"], 45_440);
        assert!(row["ms_per_step"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[test]
fn train_rejects_bad_experiment_files_at_load() {
    let dir = tmp("bad");
    let exp = small_experiment(&dir, 5, "[[interventions]]\nat = \"blocks.0.attn.hook_pattern\"\nselect = { heads = [7] }\nop = { kind = \"zero\" }\n");
    let err = fails(
        bin()
            .args(["train"])
            .arg(&exp)
            .arg("--out")
            .arg(dir.join("o"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("head 7") && err.contains("out of range"),
        "{err}"
    );
    std::fs::write(
        dir.join("task.toml"),
        std::fs::read_to_string(&exp)
            .unwrap()
            .replace("\"repeated\"", "\"sorting\""),
    )
    .unwrap();
    let err = fails(
        bin()
            .args(["train"])
            .arg(dir.join("task.toml"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("task.toml") && err.contains("sorting"),
        "{err}"
    );
    std::fs::write(dir.join("broken.toml"), "name = \"x\"\n[train\n").unwrap();
    let err = fails(
        bin()
            .args(["train"])
            .arg(dir.join("broken.toml"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("broken.toml"), "{err}");
    let err = fails(
        bin()
            .args(["train"])
            .arg(dir.join("missing.toml"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
