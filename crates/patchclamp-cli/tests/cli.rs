//! The `patchclamp` binary end to end: inspect and run on every fixture and from an HF cache.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchclamp"))
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(out: Output) -> String {
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

#[test]
fn inspect_lists_every_hook_point_with_shapes() {
    for (name, n_points) in [("gpt2", 41), ("llama", 46), ("mistral", 46), ("qwen2", 46)] {
        let out = ok(bin()
            .args(["inspect", &fixture(name), "--json"])
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["config"]["family"], name);
        assert_eq!(
            v["hook_points"].as_array().unwrap().len(),
            n_points,
            "{name}"
        );
        assert!(v["n_params"].as_u64().unwrap() > 10_000);
        let text = ok(bin().args(["inspect", &fixture(name)]).output().unwrap());
        let line = |name: &str, shape: &str| {
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} ")) && l.ends_with(shape))
        };
        assert!(
            line("blocks.1.attn.hook_pattern", "[batch, 4, pos, pos]"),
            "{text}"
        );
        assert!(line("blocks.0.ln1.hook_scale", "[batch, pos, 1]"), "{text}");
    }
}

#[test]
fn run_predicts_and_writes_a_loadable_cache() {
    let dir = std::env::temp_dir().join(format!("pc-cli-{}", std::process::id()));
    for name in ["gpt2", "llama", "mistral", "qwen2"] {
        let out_file = dir.join(format!("{name}.safetensors"));
        let out = ok(bin()
            .args([
                "run",
                &fixture(name),
                "--prompt",
                "The cat sat",
                "--top-k",
                "3",
                "--json",
                "--cache",
                "*",
            ])
            .arg("--out")
            .arg(&out_file)
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let top = v["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(
            probs.windows(2).all(|w| w[0] >= w[1]),
            "sorted by probability"
        );
        let tensors = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
        let tokens = &tensors["tokens"];
        assert_eq!(tokens.dtype(), candle_core::DType::I64);
        let n = tokens.dims()[1];
        assert_eq!(tensors["blocks.0.attn.hook_pattern"].dims(), &[1, 4, n, n]);
        assert_eq!(tensors["logits"].dims(), &[1, n, 320]);
        assert_eq!(
            tensors.len() as u64,
            v["cache"]["points"].as_u64().unwrap() + 1
        );
    }
    // Position slicing and a glob.
    let out_file = dir.join("last.safetensors");
    ok(bin()
        .args([
            "run",
            &fixture("gpt2"),
            "--prompt",
            "hello world",
            "--cache",
            "blocks.*.hook_resid_post",
            "--positions",
            "-1",
        ])
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap());
    let t = candle_core::safetensors::load(&out_file, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t["blocks.1.hook_resid_post"].dims(), &[1, 1, 32]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn models_load_from_the_hf_cache_by_repo_id() {
    let home = std::env::temp_dir().join(format!("pc-cli-hf-{}", std::process::id()));
    let snap = home.join("hub/models--acme--tiny-gpt2/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(home.join("hub/models--acme--tiny-gpt2/refs")).unwrap();
    std::fs::write(
        home.join("hub/models--acme--tiny-gpt2/refs/main"),
        "abc123\n",
    )
    .unwrap();
    for e in std::fs::read_dir(fixture("gpt2")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    let out = ok(bin()
        .args(["inspect", "acme/tiny-gpt2"])
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap());
    assert!(out.contains("family     gpt2"), "{out}");
    let out = ok(bin()
        .args(["run", "acme/tiny-gpt2", "--prompt", "hello"])
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap());
    assert!(out.contains("next-token predictions"), "{out}");
    let err = fails(
        bin()
            .args(["inspect", "acme/absent"])
            .env("HF_HOME", &home)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("models--acme--absent") && err.contains("never downloads"),
        "{err}"
    );
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn errors_are_one_line_with_exit_code_1() {
    let err = fails(
        bin()
            .args(["run", &fixture("gpt2"), "--prompt", ""])
            .output()
            .unwrap(),
    );
    assert!(err.contains("the prompt is empty"), "{err}");
    let err = fails(
        bin()
            .args([
                "run",
                &fixture("gpt2"),
                "--prompt",
                "x",
                "--cache",
                "blocks.0.hook_z",
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("--cache needs --out"), "{err}");
    let err = fails(
        bin()
            .args([
                "run",
                &fixture("gpt2"),
                "--prompt",
                "x",
                "--cache",
                "blocks.7.hook_resid_pre",
                "--out",
                "/tmp/pc-never.st",
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("layer 7 is out of range"), "{err}");
    let long = "the cat ".repeat(40);
    let err = fails(
        bin()
            .args(["run", &fixture("gpt2"), "--prompt", &long])
            .output()
            .unwrap(),
    );
    assert!(err.contains("context is 64 tokens"), "{err}");
    let err = fails(bin().args(["lab", "nonsense"]).output().unwrap());
    assert!(err.contains("unknown experiment 'nonsense'"), "{err}");
    // Usage errors are clap's: exit code 2.
    assert_eq!(bin().args(["run"]).output().unwrap().status.code(), Some(2));
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pc-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

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

/// A small, fast experiment file for the `train` tests.
fn small_experiment(dir: &std::path::Path, steps: u64, extra: &str) -> PathBuf {
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

#[test]
fn run_applies_an_intervention_file_and_rejects_a_bad_one() {
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments/ablate-head.toml");
    let json = |extra: &[&str]| -> serde_json::Value {
        let mut cmd = bin();
        cmd.args([
            "run",
            &fixture("gpt2"),
            "--prompt",
            "The cat sat",
            "--json",
            "--top-k",
            "1",
        ])
        .args(extra);
        serde_json::from_str(&ok(cmd.output().unwrap())).unwrap()
    };
    let plain = json(&[]);
    let clamped = json(&["--intervene", spec.to_str().unwrap()]);
    let logit = |v: &serde_json::Value| v["top_k"][0]["logit"].as_f64().unwrap();
    assert!(
        (logit(&plain) - logit(&clamped)).abs() > 1e-3,
        "the interventions change the output"
    );
    let bad = std::env::temp_dir().join(format!("pc-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[[interventions]]\nat = \"blocks.1.attn.hook_z\"\nselect = { heads = [9] }\nop = { kind = \"zero\" }\n").unwrap();
    let err = fails(
        bin()
            .args(["run", &fixture("gpt2"), "--prompt", "x", "--intervene"])
            .arg(&bad)
            .output()
            .unwrap(),
    );
    assert!(err.contains("head 9 is out of range"), "{err}");
    std::fs::remove_file(bad).unwrap();
}

#[test]
fn patch_writes_json_tensors_and_heatmaps() {
    let out = std::env::temp_dir().join(format!("pc-patch-{}", std::process::id()));
    for point in ["resid_pre", "z"] {
        let stdout = ok(bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "The cat sat on the mat",
            ])
            .args(["--corrupted", "The cat sat on the cat"])
            .args([
                "--answer", ".", "--wrong", ",", "--point", point, "--batch", "7", "--json",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let (rows, cols) = (
            v["n_layers"].as_u64().unwrap() as usize,
            v["n_cols"].as_u64().unwrap() as usize,
        );
        assert_eq!(rows, 2);
        assert_eq!(
            cols,
            if point == "z" {
                4
            } else {
                v["clean_tokens"].as_array().unwrap().len()
            }
        );
        assert_eq!(v["values"].as_array().unwrap().len(), rows * cols);
        // Patching the residual where both runs hold the same values changes nothing, and those
        // variants are the corrupted run itself: at block 0 (the embeddings) every position
        // with the same token, later every position before the first changed token (causal
        // attention).
        let unchanged = v["unchanged"].as_u64().unwrap() as usize;
        if point == "resid_pre" {
            let (c, k) = (&v["clean_tokens"], &v["corrupted_tokens"]);
            let same: Vec<bool> = (0..cols).map(|i| c[i] == k[i]).collect();
            let first = same.iter().position(|s| !s).unwrap();
            let equal = same.iter().filter(|&&s| s).count();
            assert_eq!(unchanged, equal + (rows - 1) * first);
            let values = v["values"].as_array().unwrap();
            for l in 0..rows {
                assert_eq!(
                    values[l * cols],
                    v["corrupt_metric"],
                    "layer {l}, position 0"
                );
            }
        } else {
            assert_eq!(unchanged, 0);
        }
        let t = candle_core::safetensors::load(
            out.join("result.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(t["normalized"].dims(), &[rows, cols]);
        let svg = std::fs::read_to_string(out.join("heatmap.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("normalised recovery"));
        let png = std::fs::read(out.join("heatmap.png")).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }
    let err = fails(
        bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "a b c",
                "--corrupted",
                "a b",
                "--answer",
                ".",
                "--wrong",
                ",",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("same number of tokens"), "{err}");
    let err = fails(
        bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "a",
                "--corrupted",
                "b",
                "--answer",
                "Mary Mary",
                "--wrong",
                ",",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("must be exactly one"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn attribute_estimates_the_same_grid_as_patch() {
    let out = std::env::temp_dir().join(format!("pc-attr-{}", std::process::id()));
    let run = |cmd: &str| -> serde_json::Value {
        let stdout = ok(bin()
            .args([
                cmd,
                &fixture("gpt2"),
                "--clean",
                "The cat sat on the mat",
                "--corrupted",
                "The cat sat on the cat",
            ])
            .args([
                "--answer", ".", "--wrong", ",", "--point", "z", "--json", "--out",
            ])
            .arg(out.join(cmd))
            .output()
            .unwrap());
        serde_json::from_str(&stdout).unwrap()
    };
    let (exact, approx) = (run("patch"), run("attribute"));
    assert_eq!(approx["method"], "attribution patching");
    assert_eq!(
        exact["values"].as_array().unwrap().len(),
        approx["values"].as_array().unwrap().len()
    );
    // The sweep's reference runs compute the last position only, the attribution's every
    // position with gradients: equal up to rounding.
    let metric = |v: &serde_json::Value| v["clean_metric"].as_f64().unwrap();
    let (a, b) = (metric(&exact), metric(&approx));
    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
    assert!(out.join("attribute/heatmap.png").is_file());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn trace_maps_indirect_effects() {
    let out = std::env::temp_dir().join(format!("pc-trace-{}", std::process::id()));
    let stdout = ok(bin()
        .args([
            "trace",
            &fixture("gpt2"),
            "--prompt",
            "The cat sat on the mat",
            "--subject",
            "cat",
            "--answer",
            " t",
        ])
        .args([
            "--samples",
            "2",
            "--kind",
            "mlp",
            "--window",
            "2",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let n = v["n_layers"].as_u64().unwrap() * v["n_positions"].as_u64().unwrap();
    assert_eq!(v["indirect_effect"].as_array().unwrap().len() as u64, n);
    assert_eq!(
        v["config"]["subject"],
        serde_json::json!([2, 3]),
        "\" cat\" is two tokens here"
    );
    assert!(v["total_effect"].as_f64().unwrap() > 0.1);
    assert!(out.join("heatmap.png").is_file() && out.join("result.safetensors").is_file());
    let err = fails(
        bin()
            .args([
                "trace",
                &fixture("gpt2"),
                "--prompt",
                "The cat sat",
                "--subject",
                "dog",
                "--answer",
                " t",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("does not occur in the prompt"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

/// The JSON an analysis command printed, after checking its folder holds the page and figures.
fn analysis(args: &[&str], out: &std::path::Path, figures: &[&str]) -> serde_json::Value {
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

#[test]
fn analysis_commands_write_results_plots_and_pages() {
    let m = fixture("gpt2");
    let d = tmp("analysis");
    let prompt = "When Mary and John went to the store, John gave a drink to";
    let v = analysis(
        &["lens", &m, "--prompt", prompt, "--track", "id:17"],
        &d.join("lens"),
        &["lens_0"],
    );
    let lens = &v["lens"][0];
    assert_eq!(lens["layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        lens["top"][2].as_array().unwrap().len(),
        lens["tokens"].as_array().unwrap().len()
    );
    assert!(d.join("lens/lens_0.png").exists());

    let v = analysis(
        &[
            "dla",
            &m,
            "--prompt",
            prompt,
            "--prompt",
            "The cat sat on the",
            "--target",
            "id:17",
            "--baseline",
            "id:42",
        ],
        &d.join("dla"),
        &["dla"],
    );
    let dla = &v["dla"];
    for row in 0..2 {
        let sum: f64 = dla["components"][row]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum::<f64>()
            + dla["constant"][row].as_f64().unwrap();
        assert!((sum - dla["total"][row].as_f64().unwrap()).abs() < 1e-4);
    }

    let v = analysis(
        &["heads", &m, "--n", "8", "--block", "6"],
        &d.join("heads"),
        &["prev_token", "induction", "sink", "copying"],
    );
    assert_eq!(
        v["heads"]["scores"]["induction"].as_array().unwrap().len(),
        2
    );

    let v = analysis(
        &[
            "extremes",
            &m,
            "--prompt",
            prompt,
            "--prompt",
            "The cat sat on the mat",
        ],
        &d.join("extremes"),
        &["sink", "value_drain", "residual_peak"],
    );
    assert_eq!(v["extremes"]["prompts"], 2);

    let v = analysis(
        &[
            "hydra", &m, "--prompt", prompt, "--source", prompt, "--target", "id:17",
        ],
        &d.join("hydra"),
        &["effects", "compensation"],
    );
    // Patching a prompt's own outputs into itself changes nothing.
    assert!(v["hydra"]["total"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x.as_f64().unwrap().abs() < 1e-5));
    // Bad input: a token that is several tokens, an unknown hook point, no prompts.
    let err = fails(
        bin()
            .args([
                "dla",
                &m,
                "--prompt",
                prompt,
                "--target",
                "Mary and John",
                "--out",
            ])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("exactly one"), "{err}");
    let err = fails(
        bin()
            .args(["heads", &m, "--block", "0", "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("block"), "{err}");
    let err = fails(
        bin()
            .args(["extremes", &m, "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("no prompts"), "{err}");
}

#[test]
fn census_probe_and_localizer_stream_labelled_files() {
    let m = fixture("gpt2");
    let d = tmp("census");
    std::fs::create_dir_all(&d).unwrap();
    // Two "languages": token ids from disjoint ranges, given as ids.
    let mut jsonl = String::new();
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..40u32 {
        let (lab, base) = if i % 2 == 0 { ("x", 10) } else { ("y", 60) };
        let toks: Vec<u32> = (0..8).map(|k| base + (i * 7 + k * 3) % 20).collect();
        jsonl.push_str(&format!("{{\"tokens\": {toks:?}, \"label\": \"{lab}\"}}\n"));
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        s.push_str(&format!("{{\"tokens\": {toks:?}}}\n"));
    }
    std::fs::write(d.join("l.jsonl"), &jsonl).unwrap();
    std::fs::write(d.join("a.jsonl"), &a).unwrap();
    std::fs::write(d.join("b.jsonl"), &b).unwrap();
    let file = d.join("l.jsonl").to_string_lossy().into_owned();
    let v = analysis(
        &["neurons", &m, "--prompts", &file, "--batch", "7"],
        &d.join("neurons"),
        &["frequency", "sparsity"],
    );
    assert_eq!(v["census"]["tokens"], 320);
    assert_eq!(
        v["lape"].as_array().unwrap().len(),
        2,
        "two labels → LAPE per label"
    );
    let ap = v["experts"][0]["experts"][0]["ap"].as_f64().unwrap();
    assert!(
        ap > 0.9,
        "disjoint token ranges have expert neurons: AP {ap}"
    );
    let v = analysis(
        &["probe", &m, "--prompts", &file],
        &d.join("probe"),
        &["accuracy"],
    );
    let acc = v["probes"][0]["test_accuracy"].as_f64().unwrap();
    assert!(
        acc >= 0.9,
        "disjoint token ranges are linearly separable: {acc}"
    );
    let (sa, sb) = (d.join("a.jsonl"), d.join("b.jsonl"));
    let v = analysis(
        &[
            "localize",
            &m,
            "--stimuli",
            &sa.to_string_lossy(),
            "--control",
            &sb.to_string_lossy(),
            "--eval",
            &sa.to_string_lossy(),
            "--random-draws",
            "3",
        ],
        &d.join("loc"),
        &["selected_per_layer"],
    );
    assert_eq!(v["localized"]["units"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["ablation"]["random_increases"].as_array().unwrap().len(),
        3
    );
    // Probing without labels is refused with the reason.
    let err = fails(
        bin()
            .args(["probe", &m, "--prompt", "hello", "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("label"), "{err}");
    let err = fails(
        bin()
            .args([
                "probe",
                &m,
                "--prompts",
                &file,
                "--point",
                "blocks.9.hook_resid_post",
                "--out",
            ])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("out of range") || err.contains("layer"),
        "{err}"
    );
}

#[test]
fn extremes_measure_a_trained_bigram_backcopy_checkpoint_from_its_task() {
    let d = tmp("bb");
    std::fs::create_dir_all(&d).unwrap();
    let exp = d.join("bb.toml");
    std::fs::write(
        &exp,
        "name = \"bb\"\n[task]\nkind = \"bigram_backcopy\"\nvocab = 16\nseq_len = 24\ntriggers = 2\n\
         branching = 3\ntable_seed = 0\n[model]\nn_layers = 1\nd_model = 16\nn_heads = 1\nd_mlp = 32\n\
         [train]\nsteps = 6\nbatch = 4\nlr = { lr = 1e-3 }\neval_every = 3\neval_batch = 4\n",
    )
    .unwrap();
    ok(bin()
        .arg("train")
        .arg(&exp)
        .arg("--out")
        .arg(d.join("run"))
        .output()
        .unwrap());
    let ck = d
        .join("run/checkpoint.safetensors")
        .to_string_lossy()
        .into_owned();
    let e = exp.to_string_lossy().into_owned();
    let v = analysis(
        &["extremes", &ck, "--task", &e, "--n", "5"],
        &d.join("ext"),
        &["sink", "prev_trigger"],
    );
    let rep = &v["extremes"];
    assert_eq!(rep["prompts"], 5);
    assert_eq!(
        v["spec"]["triggers"].as_array().unwrap().len(),
        2,
        "the task's triggers"
    );
    assert_eq!(rep["prev_trigger"].as_array().unwrap().len(), 1);
    let sink = rep["sink"][0][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&sink));
}
