//! Hook-for-hook parity with Hugging Face and TransformerLens on the committed fixture models.
//!
//! Tolerance: 1e-4 absolute in f32 for every activation and for logits (processed logits are
//! compared after removing each position's mean, since `center_unembed` shifts them by a
//! per-position constant). References come from `tools/fixtures/generate.py`.

mod common;

use std::collections::BTreeSet;

use candle_core::Device;
use common::fixture_path as fixture;
use patchclamp_core::{load, HookPoint, Hooks, Input, Processing};

const TOL: f32 = 1e-4;
const FAMILIES: &[&str] = &["gpt2", "llama", "mistral", "qwen2"];

use common::{centered, reference, reference_tokens as tokens};

use patchclamp_core::testing::max_diff;

fn check_family(name: &str, mode: &str) {
    let dev = Device::Cpu;
    let r = reference(name);
    let mut loaded = load(fixture(name).to_str().unwrap(), &dev).unwrap();
    if mode == "proc" {
        loaded.model.process(Processing::all()).unwrap();
    }
    let model = &loaded.model;
    let ids = tokens(&r, 0);
    let mut hooks = Hooks::none().capture_all();
    let logits = model
        .forward(&Input::single(&ids, &dev).unwrap(), &mut hooks)
        .unwrap();
    let cache = hooks.take_cache();

    // Every hook point TransformerLens recorded matches ours, and we have no extra ones.
    let prefix = format!("{mode}.");
    let mut theirs = BTreeSet::new();
    let mut failures = Vec::new();
    for (key, want) in &r {
        let Some(hook) = key.strip_prefix(&prefix) else {
            continue;
        };
        if hook.starts_with("logits") {
            continue;
        }
        let point: HookPoint = hook.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        theirs.insert(point);
        let got = cache
            .get(point)
            .unwrap_or_else(|| panic!("{name}/{mode}: {hook} not recorded"));
        let got = got.squeeze(0).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}/{mode}: shape of {hook}");
        let d = max_diff(&got, want);
        if d > TOL {
            failures.push(format!("{hook}: max abs diff {d:e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}/{mode} activations differ (tol {TOL:e}):\n{}",
        failures.join("\n")
    );
    let ours: BTreeSet<HookPoint> = HookPoint::all(&model.cfg)
        .into_iter()
        .filter(|p| *p != HookPoint::Logits)
        .collect();
    assert_eq!(ours, theirs, "{name}/{mode}: hook point sets differ");

    // Logits for both prompts, against TransformerLens and (raw) Hugging Face.
    for i in 0..2 {
        let logits = if i == 0 {
            logits.clone()
        } else {
            model
                .forward(
                    &Input::single(&tokens(&r, 1), &dev).unwrap(),
                    &mut Hooks::none(),
                )
                .unwrap()
        };
        let logits = logits.squeeze(0).unwrap();
        let tl_key = if i == 0 {
            format!("{mode}.logits")
        } else {
            format!("{mode}.logits.1")
        };
        let d = if mode == "proc" {
            max_diff(&centered(&logits), &centered(&r[&tl_key]))
        } else {
            max_diff(&logits, &r[&tl_key])
        };
        assert!(
            d <= TOL,
            "{name}/{mode}: logits of prompt {i} differ from TransformerLens by {d:e}"
        );
        let d = max_diff(&centered(&logits), &centered(&r[&format!("hf.logits.{i}")]));
        assert!(
            d <= TOL,
            "{name}/{mode}: logits of prompt {i} differ from Hugging Face by {d:e}"
        );
    }
}

#[test]
fn raw_weights_match_transformer_lens_and_hf_hook_for_hook() {
    for name in FAMILIES {
        check_family(name, "raw");
    }
}

#[test]
fn processed_weights_match_transformer_lens_hook_for_hook() {
    for name in FAMILIES {
        check_family(name, "proc");
    }
}

#[test]
fn tokenizer_and_bos_reproduce_transformer_lens_token_ids() {
    let dev = Device::Cpu;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("../manifest.json")).unwrap())
            .unwrap();
    for name in FAMILIES {
        let r = reference(name);
        let m = load(fixture(name).to_str().unwrap(), &dev).unwrap();
        for (i, prompt) in manifest["prompts"].as_array().unwrap().iter().enumerate() {
            let ids = m
                .tokenizer()
                .unwrap()
                .prompt(&m.model.cfg, prompt.as_str().unwrap(), None)
                .unwrap();
            assert_eq!(ids, tokens(&r, i), "{name}: token ids of prompt {i}");
        }
    }
}

#[test]
fn real_gpt2_tokenizer_matches_python_tokenizers() {
    let dir = fixture("../gpt2-tokenizer");
    let tok = patchclamp_core::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let refs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    for r in refs {
        let text = r["text"].as_str().unwrap();
        let want: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "round trip of {text:?}");
    }
}
