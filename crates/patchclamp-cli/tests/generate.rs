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
    // The same pairs as two prompt files give the same vector.
    let (pos, neg) = (dir.join("pos.txt"), dir.join("neg.txt"));
    std::fs::write(&pos, "The cat sat the\nA dog ran the\nThe mat the\n").unwrap();
    std::fs::write(&neg, "The cat sat a\nA dog ran a\nThe mat a\n").unwrap();
    let two = dir.join("two.gguf");
    ok(bin()
        .args(["steer", "extract", &fixture("gpt2"), "--positives"])
        .arg(&pos)
        .arg("--negatives")
        .arg(&neg)
        .args(["--method", "mean", "--layers", "1-1", "--out"])
        .arg(&two)
        .output()
        .unwrap());
    let cv_two = patchclamp_report::control_vector::ControlVector::read(&two).unwrap();
    assert_eq!(cv_two.directions, cv.directions);
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
    // A layer range that holds none of its directions would do nothing: refused.
    let e = common::fails(
        bin()
            .args(["generate", &fixture("gpt2"), "--prompt", "The cat"])
            .args(["--control-vector", &scaled, "--layer-range", "0-0"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("no direction in these blocks"), "{e}");
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

#[test]
fn a_batch_of_prompts_prints_what_each_prints_alone() {
    let prompts = ["The cat", "A dog sat on the mat", "Hi"];
    let mut args = vec![];
    for p in prompts {
        args.extend(["--prompt", p]);
    }
    args.extend(["--max-new-tokens", "7", "--temperature", "3", "--seed", "5"]);
    let together = generations(&args);
    let mut one_by_one = args.clone();
    one_by_one.extend(["--batch", "1"]);
    let apart = generations(&one_by_one);
    assert_eq!(together.len(), 3);
    for (i, p) in prompts.iter().enumerate() {
        let alone = generations(&[
            "--prompt",
            p,
            "--max-new-tokens",
            "7",
            "--temperature",
            "3",
            "--seed",
            "5",
        ]);
        assert_eq!(together[i]["tokens"], alone[0]["tokens"], "prompt {i}");
        assert_eq!(apart[i]["tokens"], alone[0]["tokens"], "prompt {i}");
    }
    // The same prompts from a file.
    let dir = common::tmp("generate-prompts");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.txt");
    std::fs::write(&file, prompts.join("\n")).unwrap();
    let from_file = generations(&[
        "--prompts",
        file.to_str().unwrap(),
        "--max-new-tokens",
        "7",
        "--temperature",
        "3",
        "--seed",
        "5",
    ]);
    let tokens =
        |v: &[serde_json::Value]| v.iter().map(|g| g["tokens"].clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&from_file), tokens(&together));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn after_prompt_leaves_the_prompt_and_so_the_first_token_alone() {
    let cv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/control-vectors/gpt2-fixture.gguf"
    );
    let scaled = format!("{cv}:8");
    let base = [
        "--prompt",
        "The cat",
        "--prompt",
        "A dog sat on the mat",
        "--max-new-tokens",
        "5",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        generations(&args)
            .iter()
            .map(|g| ids(&g["tokens"]))
            .collect::<Vec<_>>()
    };
    let plain = run(&[]);
    let everywhere = run(&["--control-vector", &scaled]);
    let after = run(&["--control-vector", &scaled, "--after-prompt"]);
    for i in 0..2 {
        // Token 0 is read from the prompt's last position, which --after-prompt leaves alone.
        assert_eq!(after[i][0], plain[i][0], "prompt {i}");
        assert_ne!(everywhere[i], plain[i], "prompt {i}");
    }
    assert_ne!(after, plain, "the generated positions are steered");
}

#[test]
fn steer_sweep_puts_each_scale_side_by_side_and_measures_it() {
    let cv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/control-vectors/gpt2-fixture.gguf"
    );
    let dir = common::tmp("steer-sweep");
    let out = dir.join("sweep");
    let text = ok(bin()
        .args(["steer", "sweep", &fixture("gpt2"), "--vector", cv])
        .args([
            "--scales=-8,0,8",
            "--prompt",
            "The cat",
            "--prompt",
            "A dog sat",
        ])
        .args([
            "--max-new-tokens",
            "6",
            "--contains",
            "+",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cols = v["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 3);
    // Scale 0 is plain generation; each column's metric is the fraction of its texts with "+".
    let plain = generations(&[
        "--prompt",
        "The cat",
        "--prompt",
        "A dog sat",
        "--max-new-tokens",
        "6",
    ]);
    for (g, p) in cols[1]["generations"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&plain)
    {
        assert_eq!(g["tokens"], p["tokens"]);
    }
    for c in cols {
        let gens = c["generations"].as_array().unwrap();
        let rate = gens
            .iter()
            .filter(|g| g["text"].as_str().unwrap().contains('+'))
            .count() as f64
            / gens.len() as f64;
        assert_eq!(c["metric"].as_f64().unwrap(), rate);
    }
    assert_ne!(cols[0]["generations"], cols[2]["generations"]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for scale in ["scale -8", "scale 0", "scale 8"] {
        assert!(html.contains(scale), "{scale} column in the report");
    }
    assert!(out.join("metric.svg").is_file() && out.join("length.svg").is_file());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["complete"], true);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ablate_leaves_no_component_along_the_direction_in_any_residual() {
    let cv_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/control-vectors/gpt2-fixture.gguf"
    );
    let dir = common::tmp("generate-ablate");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gen.safetensors");
    ok(bin()
        .args(["generate", &fixture("gpt2"), "--prompt", "The cat sat"])
        .args(["--max-new-tokens", "4", "--ablate", &format!("{cv_file}:1")])
        .args(["--cache", "blocks.*.hook_resid_post", "--out"])
        .arg(&file)
        .output()
        .unwrap());
    let cv = patchclamp_report::control_vector::ControlVector::read(std::path::Path::new(cv_file))
        .unwrap();
    let r = &cv.directions[&1];
    let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    let acts = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    for l in 0..2 {
        let t = &acts[&format!("blocks.{l}.hook_resid_post")];
        let rows: Vec<Vec<f32>> = t.get(0).unwrap().to_vec2().unwrap();
        let scale = rows.iter().flatten().map(|x| x.abs()).fold(0f32, f32::max);
        for row in rows {
            let dot: f32 = row.iter().zip(r).map(|(a, b)| a * b).sum::<f32>() / norm;
            assert!(
                dot.abs() < 1e-4 * scale.max(1.0),
                "block {l}: component {dot}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fit_act_writes_maps_that_generate_applies_at_any_strength() {
    let dir = common::tmp("fit-act");
    std::fs::create_dir_all(&dir).unwrap();
    let (src, tgt, map) = (
        dir.join("src.txt"),
        dir.join("tgt.txt"),
        dir.join("map.safetensors"),
    );
    std::fs::write(&src, "The cat sat on the mat\nA dog ran a\nThe cat\n").unwrap();
    std::fs::write(&tgt, "a a a a\nthe the the\nmat mat mat a\n").unwrap();
    ok(bin()
        .args(["steer", "fit-act", &fixture("gpt2"), "--source"])
        .arg(&src)
        .arg("--target")
        .arg(&tgt)
        .args(["--point", "blocks.0.hook_resid_post", "--out"])
        .arg(&map)
        .output()
        .unwrap());
    let f = patchclamp_report::transport_file::read(&map).unwrap();
    let (point, t) = (f.point, f.transport);
    assert_eq!(point.to_string(), "blocks.0.hook_resid_post");
    assert_eq!(f.model_hint, "gpt2");
    assert_eq!(t.scale.len(), 32);
    assert!(t.low.iter().zip(&t.high).all(|(a, b)| a <= b));
    let run = |extra: &[&str]| {
        let mut args = vec!["--prompt", "The cat sat", "--max-new-tokens", "8"];
        args.extend(extra);
        ids(&generations(&args)[0]["tokens"])
    };
    let plain = run(&[]);
    let zero = format!("{}:0", map.display());
    let full = format!("{}:1", map.display());
    assert_eq!(run(&["--transport", &zero]), plain, "λ = 0 is the identity");
    assert_ne!(
        run(&["--transport", &full]),
        plain,
        "λ = 1 moves the activations"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
