//! `patchclamp generate`: the JSON it prints, the same tokens from text or ids, and the same
//! tokens for the same seed.

mod common;

use common::{bin, fixture, ok};

fn generations(args: &[&str]) -> Vec<serde_json::Value> {
    let model = fixture("gpt2");
    let mut all = vec!["generate", &model];
    all.extend(args);
    all.push("--json");
    let text = ok(bin().args(&all).output().unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["generations"].as_array().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn generate_prints_prompt_tokens_and_only_the_generated_ids() {
    let g = generations(&[
        "--prompt",
        "The cat",
        "--prompt",
        "A dog",
        "--max-new-tokens",
        "6",
    ]);
    assert_eq!(g.len(), 2);
    for x in &g {
        let prompt = ids(&x["prompt_tokens"]);
        assert_eq!(
            prompt[0], 0,
            "GPT-2 prepends BOS (id 0) as TransformerLens does"
        );
        assert_eq!(ids(&x["tokens"]).len(), 6);
        assert_eq!(x["stop"], "max_new_tokens");
    }
    // The same ids given as --tokens generate the same tokens.
    let p = ids(&g[0]["prompt_tokens"]);
    let list = p
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let again = generations(&["--tokens", &list, "--max-new-tokens", "6"]);
    assert_eq!(ids(&again[0]["tokens"]), ids(&g[0]["tokens"]));
}

#[test]
fn sampling_is_deterministic_per_seed_and_stops_where_asked() {
    let run = |seed: &str| {
        generations(&[
            "--prompt",
            "The cat",
            "--max-new-tokens",
            "12",
            "--temperature",
            "5",
            "--seed",
            seed,
        ])[0]["tokens"]
            .clone()
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
    // A stop token ends the generation after it.
    let plain = ids(&generations(&["--prompt", "The cat", "--max-new-tokens", "6"])[0]["tokens"]);
    let stop = format!("id:{}", plain[1]);
    let g = generations(&[
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "6",
        "--stop-token",
        &stop,
    ]);
    let first = plain.iter().position(|&t| t == plain[1]).unwrap();
    assert_eq!(ids(&g[0]["tokens"]), plain[..=first].to_vec());
    assert_eq!(g[0]["stop"], "stop_token");
}

#[test]
fn an_intervention_file_steers_the_generation() {
    let dir = common::tmp("generate-steer");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("steer.toml");
    // Alternating signs: a constant vector would vanish in the next LayerNorm's centring.
    let v = (0..32)
        .map(|i| if i % 2 == 0 { "1.0" } else { "-1.0" })
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &f,
        format!("[[interventions]]\nat = 'blocks.0.hook_resid_post'\nop = {{ kind = 'add', vector = [{v}], coef = 30.0 }}\n"),
    )
    .unwrap();
    let plain = generations(&["--prompt", "The cat", "--max-new-tokens", "8"]);
    let steered = generations(&[
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "8",
        "--intervene",
        f.to_str().unwrap(),
    ]);
    assert_ne!(plain[0]["tokens"], steered[0]["tokens"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn steer_extract_writes_a_control_vector_that_generate_applies() {
    let dir = common::tmp("steer");
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"positive\": \"The cat sat the\", \"negative\": \"The cat sat a\"}\n\
         {\"positive\": \"A dog ran the\", \"negative\": \"A dog ran a\"}\n\
         {\"positive\": \"The mat the\", \"negative\": \"The mat a\"}\n",
    )
    .unwrap();
    let out = dir.join("v.gguf");
    ok(bin()
        .args(["steer", "extract", &fixture("gpt2"), "--pairs"])
        .arg(&pairs)
        .args(["--method", "mean", "--layers", "1-1", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    assert!(out.is_file() && dir.join("v.safetensors").is_file());
    let cv = patchclamp_report::control_vector::ControlVector::read(&out).unwrap();
    assert_eq!(cv.model_hint, "gpt2");
    assert_eq!(cv.directions[&1].len(), 32);
    let plain = generations(&["--prompt", "The cat", "--max-new-tokens", "8"]);
    let zero = format!("{}:0", out.display());
    let scaled = format!("{}:30", out.display());
    let at_zero = generations(&[
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "8",
        "--control-vector",
        &zero,
    ]);
    let steered = generations(&[
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "8",
        "--control-vector",
        &scaled,
    ]);
    assert_eq!(
        plain[0]["tokens"], at_zero[0]["tokens"],
        "scale 0 is the identity"
    );
    assert_ne!(plain[0]["tokens"], steered[0]["tokens"]);
    // Outside the layer range it does nothing.
    let outside = generations(&[
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "8",
        "--control-vector",
        &scaled,
        "--layer-range",
        "0-0",
    ]);
    assert_eq!(plain[0]["tokens"], outside[0]["tokens"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_records_what_one_forward_over_the_sequence_would() {
    let dir = common::tmp("generate-cache");
    std::fs::create_dir_all(&dir).unwrap();
    let (gen_file, run_file) = (dir.join("gen.safetensors"), dir.join("run.safetensors"));
    ok(bin()
        .args([
            "generate",
            &fixture("llama"),
            "--prompt",
            "The cat",
            "--max-new-tokens",
            "5",
        ])
        .args([
            "--cache",
            "blocks.*.hook_resid_post",
            "--cache",
            "blocks.1.attn.hook_pattern",
            "--out",
        ])
        .arg(&gen_file)
        .output()
        .unwrap());
    let load =
        |p: &std::path::Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let g = load(&gen_file);
    let ran: Vec<i64> = g["tokens"].flatten_all().unwrap().to_vec1().unwrap();
    // The same positions through `run` (one full forward) record the same activations.
    let list = ran
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    ok(bin()
        .args(["run", &fixture("llama"), "--tokens", &list])
        .args([
            "--cache",
            "blocks.*.hook_resid_post",
            "--cache",
            "blocks.1.attn.hook_pattern",
            "--out",
        ])
        .arg(&run_file)
        .output()
        .unwrap());
    let r = load(&run_file);
    for name in [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
        "blocks.1.attn.hook_pattern",
    ] {
        assert_eq!(g[name].dims(), r[name].dims(), "{name}");
        let d = patchclamp_core::testing::max_diff(&g[name], &r[name]);
        assert!(d < 1e-4, "{name}: {d:e}");
    }
    assert_eq!(g["blocks.0.hook_resid_post"].dim(1).unwrap(), ran.len());
    std::fs::remove_dir_all(&dir).unwrap();
}
