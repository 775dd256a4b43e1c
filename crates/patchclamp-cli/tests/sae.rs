//! `patchclamp sae …` and `--sae`: training into a SAELens folder, resuming bit for bit,
//! evaluation, splicing into `run`, and the refusals.

mod common;

use common::{bin, fails, fixture, ok, tmp};

fn corpus() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/corpus.txt"
    )
    .to_string()
}

fn sae_fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/saes/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn train_args(out: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sae",
        "train",
        &fixture("gpt2"),
        "--hook",
        "blocks.0.hook_resid_post",
        "--corpus",
        &corpus(),
        "--arch",
        "topk",
        "--k",
        "4",
        "--d-sae",
        "64",
        "--tokens",
        "12000",
        "--batch",
        "200",
        "--context-size",
        "32",
        "--checkpoint-every",
        "20",
        "--log-every",
        "10",
        "--dead-window",
        "5",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn train_writes_a_saelens_folder_deterministically_and_resume_checks_the_run() {
    let whole = tmp("sae-whole");
    let out = ok(bin()
        .args(train_args(whole.to_str().unwrap(), &["--json"]))
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["last"]["step"], 60);
    for f in [
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "sae/sparsity.safetensors",
        "log.jsonl",
        "report.html",
        "checkpoint.safetensors",
        "manifest.json",
    ] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("sae/cfg.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], 4);
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.0.hook_resid_post");

    // Interrupt-equivalent: a run whose folder holds the step-20 checkpoint, resumed.
    let part = tmp("sae-part");
    let mut short = train_args(part.to_str().unwrap(), &[]);
    let i = short.iter().position(|a| a == "--tokens").unwrap();
    short[i + 1] = "4000".into(); // 20 steps: a different run (its schedule differs) …
    ok(bin().args(&short).output().unwrap());
    // … so its checkpoint is refused for the 60-step run, naming why, and nothing changes.
    let before = std::fs::read(part.join("checkpoint.safetensors")).unwrap();
    let e = fails(
        bin()
            .args(train_args(part.to_str().unwrap(), &["--resume"]))
            .output()
            .unwrap(),
    );
    assert!(e.contains("other training settings"), "{e}");
    assert_eq!(
        std::fs::read(part.join("checkpoint.safetensors")).unwrap(),
        before
    );

    // The same settings give the same bits (the resume itself is tested bit for bit in
    // patchclamp-lab's sae_training.rs, stopping a run at a checkpoint).
    let again = tmp("sae-again");
    ok(bin()
        .args(train_args(again.to_str().unwrap(), &[]))
        .output()
        .unwrap());
    let w = std::fs::read(whole.join("sae/sae_weights.safetensors")).unwrap();
    assert_eq!(
        w,
        std::fs::read(again.join("sae/sae_weights.safetensors")).unwrap(),
        "same seed, same bits"
    );
    // Resuming a finished run (checkpoint at step 60) changes nothing.
    ok(bin()
        .args(train_args(again.to_str().unwrap(), &["--resume"]))
        .output()
        .unwrap());
    assert_eq!(
        w,
        std::fs::read(again.join("sae/sae_weights.safetensors")).unwrap()
    );
    for d in [whole, part, again] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn eval_and_splice_a_saelens_folder() {
    let out = tmp("sae-eval");
    let text = ok(bin()
        .args([
            "sae",
            "eval",
            &sae_fixture("standard-resid"),
            &fixture("gpt2"),
            "--corpus",
            &corpus(),
            "--contexts",
            "8",
            "--context-size",
            "32",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let m = &v["metrics"];
    assert!(m["tokens"].as_u64().unwrap() > 200);
    for k in [
        "l0",
        "explained_variance",
        "ce_loss_score",
        "kl_div_score",
        "delta_lm_loss",
    ] {
        assert!(m[k].as_f64().unwrap().is_finite(), "{k}: {}", m[k]);
    }
    assert!(out.join("log_density.svg").is_file() && out.join("report.html").is_file());
    let _ = std::fs::remove_dir_all(&out);

    // Spliced with its error term, `run` predicts exactly what the plain model does.
    let run = |extra: &[&str]| {
        let mut a = vec![
            "run".to_string(),
            fixture("gpt2"),
            "--prompt".into(),
            "the cat sat".into(),
            "--json".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let v: serde_json::Value =
            serde_json::from_str(&ok(bin().args(&a).output().unwrap())).unwrap();
        v["top_k"].clone()
    };
    let sae = sae_fixture("standard-resid");
    assert_eq!(run(&[]), run(&["--sae", &sae, "--error-term"]));
    assert_ne!(run(&[]), run(&["--sae", &sae]));
    // Its points are cached like any other.
    let cache = tmp("sae-cache").with_extension("safetensors");
    ok(bin()
        .args([
            "run",
            &fixture("gpt2"),
            "--prompt",
            "the cat",
            "--sae",
            &sae,
            "--cache",
            "blocks.0.hook_resid_post.hook_sae_*",
            "--out",
            cache.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let t = candle_core::safetensors::load(&cache, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        t["blocks.0.hook_resid_post.hook_sae_acts_post"].dims()[2],
        64
    );
    let _ = std::fs::remove_file(&cache);
}

#[test]
fn bad_sae_inputs_get_one_line_and_exit_1() {
    let gpt2 = fixture("gpt2");
    let out = tmp("sae-bad");
    let o = out.to_str().unwrap();
    // d_in 32 named for a 96-wide point.
    let wide = tmp("sae-wide");
    std::fs::create_dir_all(&wide).unwrap();
    let src = sae_fixture("standard-resid");
    std::fs::copy(
        format!("{src}/sae_weights.safetensors"),
        wide.join("sae_weights.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(format!("{src}/cfg.json"))
        .unwrap()
        .replace("blocks.0.hook_resid_post", "blocks.0.mlp.hook_post");
    std::fs::write(wide.join("cfg.json"), cfg).unwrap();
    let e = fails(
        bin()
            .args([
                "run",
                &gpt2,
                "--prompt",
                "hi",
                "--sae",
                wide.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("d_in is 32 but blocks.0.mlp.hook_post has width 96"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&wide);
    let e = fails(
        bin()
            .args(["inspect", &gpt2, "--sae", "/nonexistent/sae"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("SAE folder not found"), "{e}");
    // --k larger than --d-sae; unknown architecture; a hook the model lacks.
    let mut a = train_args(o, &[]);
    let i = a.iter().position(|x| x == "--k").unwrap();
    a[i + 1] = "65".into();
    let e = fails(bin().args(&a).output().unwrap());
    assert!(e.contains("--k 65 must lie in 1..=--d-sae (64)"), "{e}");
    let mut a = train_args(o, &[]);
    let i = a.iter().position(|x| x == "topk").unwrap();
    a[i] = "magic".into();
    assert!(fails(bin().args(&a).output().unwrap()).contains("unknown --arch 'magic'"));
    let mut a = train_args(o, &[]);
    let i = a
        .iter()
        .position(|x| x == "blocks.0.hook_resid_post")
        .unwrap();
    a[i] = "blocks.0.hook_resid_pots".into();
    let e = fails(bin().args(&a).output().unwrap());
    assert!(
        e.contains("did you mean") && e.contains("blocks.0.hook_resid_post"),
        "{e}"
    );
    // A corpus shorter than one context, and one shorter than the token budget.
    let tiny = tmp("sae-tiny").with_extension("txt");
    std::fs::write(&tiny, "the cat\n").unwrap();
    let mut a = train_args(o, &[]);
    let i = a.iter().position(|x| x.ends_with("corpus.txt")).unwrap();
    a[i] = tiny.to_str().unwrap().into();
    assert!(
        fails(bin().args(&a).output().unwrap()).contains("shorter than one context of 32 tokens")
    );
    let mut a = train_args(o, &[]);
    let i = a.iter().position(|x| x == "--tokens").unwrap();
    a[i + 1] = "100000000".into();
    assert!(fails(bin().args(&a).output().unwrap()).contains("fewer than the"));
    assert!(!out.exists(), "nothing was written for refused runs");
    let _ = std::fs::remove_file(&tiny);
}

#[test]
fn features_and_contrast_write_their_pages() {
    let out = tmp("sae-feat");
    let text = ok(bin()
        .args([
            "sae",
            "features",
            &sae_fixture("topk-resid"),
            &fixture("gpt2"),
            "--corpus",
            &corpus(),
            "--latents",
            "0-3",
            "--contexts",
            "8",
            "--context-size",
            "32",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["index"].as_str().unwrap().ends_with("index.html"));
    for f in [
        "index.html",
        "features/0.html",
        "features/3.html",
        "neuronpedia.json",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let np: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("neuronpedia.json")).unwrap())
            .unwrap();
    assert_eq!(np["features"].as_array().unwrap().len(), 4);
    assert_eq!(np["layer"], 1);
    let e = fails(
        bin()
            .args([
                "sae",
                "features",
                &sae_fixture("topk-resid"),
                &fixture("gpt2"),
                "--corpus",
                &corpus(),
                "--latents",
                "70",
                "--context-size",
                "32",
                "--out",
                tmp("sae-feat-bad").to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert!(e.contains("latent 70 is out of range"), "{e}");
    let a = tmp("sae-a").with_extension("txt");
    let b = tmp("sae-b").with_extension("txt");
    std::fs::write(&a, "Mary went to\nJohn saw the\n").unwrap();
    std::fs::write(&b, "0123 + - *\n( ) [ ]\n").unwrap();
    let text = ok(bin()
        .args([
            "sae",
            "contrast",
            &sae_fixture("topk-resid"),
            &fixture("gpt2"),
            "--prompts",
            a.to_str().unwrap(),
            "--control",
            b.to_str().unwrap(),
            "--top",
            "2",
            "--json",
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["contrast"]["top_a"].as_array().unwrap().len(), 2);
    for p in [a, b] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(out);
}

/// `--sae` on the analysis commands: with the error term the analysis is the plain model's to
/// the bit; without it the SAE's reconstruction is what the analysis sees.
#[test]
fn analyses_run_on_the_model_with_saes_spliced() {
    let sae = sae_fixture("standard-resid");
    for cmd in [vec!["lens"], vec!["dla", "--answer", " the"]] {
        let run = |extra: &[&str]| {
            let out = tmp(&format!("sae-an-{}-{}", cmd[0], extra.len()));
            let mut a: Vec<String> = vec![
                cmd[0].into(),
                fixture("gpt2"),
                "--prompt".into(),
                "the cat sat on".into(),
            ];
            a.extend(cmd[1..].iter().map(|s| s.to_string()));
            a.extend([
                "--out".to_string(),
                out.to_str().unwrap().into(),
                "--json".into(),
            ]);
            a.extend(extra.iter().map(|s| s.to_string()));
            let text = ok(bin().args(&a).output().unwrap());
            let _ = std::fs::remove_dir_all(&out);
            text
        };
        let plain = run(&[]);
        assert_eq!(plain, run(&["--sae", &sae, "--error-term"]), "{}", cmd[0]);
        assert_ne!(plain, run(&["--sae", &sae]), "{}", cmd[0]);
    }
}

/// Every file the manifest lists is there: `--checkpoint-every 0` still checkpoints the end.
#[test]
fn a_run_without_periodic_checkpoints_still_holds_its_final_one() {
    let out = tmp("sae-ck0");
    let mut a = train_args(out.to_str().unwrap(), &[]);
    let i = a.iter().position(|x| x == "--checkpoint-every").unwrap();
    a[i + 1] = "0".into();
    ok(bin().args(&a).output().unwrap());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for f in m["files"].as_array().unwrap() {
        assert!(
            out.join(f.as_str().unwrap()).is_file(),
            "{f} listed but missing"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
