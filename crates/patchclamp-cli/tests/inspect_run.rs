//! `inspect` and `run`: every fixture, the HF cache, intervention files.

mod common;

use std::path::PathBuf;

use common::{bin, fails, fixture, ok};

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
