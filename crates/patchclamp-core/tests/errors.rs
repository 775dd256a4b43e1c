//! Bad input gets a clear error that names the problem, never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::fixture_path as fixture;
use patchclamp_core::{load, Error, HookPoint, Hooks, Input, Selector};

/// A private copy of a fixture model that a test may break.
fn scratch(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pc-err-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match load(dir.to_str().unwrap(), &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn rewrite_weights(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut ts);
    candle_core::safetensors::save(&ts, &p).unwrap();
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} should mention {p:?}"
        );
    }
}

#[test]
fn missing_folder_and_uncached_repo() {
    let e = load_err(Path::new("/nonexistent/model/dir"));
    assert_has(&e, &["model folder not found", "/nonexistent/model/dir"]);
    let e = load("some-org/not-downloaded", &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert_has(
        &e,
        &[
            "'some-org/not-downloaded' is not on disk",
            "models--some-org--not-downloaded",
            "never downloads",
        ],
    );
}

#[test]
fn missing_config_and_weights() {
    let d = scratch("gpt2", "nocfg");
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert_has(&load_err(&d), &["config.json not found"]);
    let d = scratch("gpt2", "nowts");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert_has(
        &load_err(&d),
        &["weights file not found", "model.safetensors"],
    );
    let d = scratch("llama", "noshard");
    std::fs::remove_file(d.join("model-00002-of-00004.safetensors")).unwrap();
    assert_has(
        &load_err(&d),
        &["weights file not found", "model-00002-of-00004.safetensors"],
    );
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let d = scratch("gpt2", "trunc");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_has(
        &load_err(&d),
        &["model.safetensors is not a valid safetensors file"],
    );
    std::fs::write(&p, b"this is not a tensor file at all").unwrap();
    assert_has(&load_err(&d), &["not a valid safetensors file"]);
}

#[test]
fn wrong_shape_and_dtype() {
    let d = scratch("gpt2", "shape");
    rewrite_weights(&d, |ts| {
        ts.insert(
            "transformer.h.1.mlp.c_fc.bias".into(),
            Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_has(
        &load_err(&d),
        &[
            "transformer.h.1.mlp.c_fc.bias",
            "shape [7]",
            "expected [96]",
        ],
    );
    let d = scratch("gpt2", "dtype");
    rewrite_weights(&d, |ts| {
        ts.insert(
            "transformer.wte.weight".into(),
            Tensor::zeros((320, 32), DType::I64, &Device::Cpu).unwrap(),
        );
    });
    assert_has(
        &load_err(&d),
        &["transformer.wte.weight", "dtype I64", "floating-point"],
    );
    let d = scratch("gpt2", "missing");
    rewrite_weights(&d, |ts| {
        ts.remove("transformer.h.0.attn.c_proj.weight");
    });
    assert_has(
        &load_err(&d),
        &[
            "'transformer.h.0.attn.c_proj.weight' is missing",
            "did you mean",
        ],
    );
}

#[test]
fn tensors_the_config_does_not_use_are_refused() {
    // A 2-layer checkpoint read as 1 layer would silently lose its second block.
    let d = scratch("gpt2", "unused");
    edit_config(&d, |v| v["n_layer"] = 1.into());
    assert_has(
        &load_err(&d),
        &[
            "tensors the config does not use",
            "transformer.h.1.",
            "n_layer",
        ],
    );
    // So would a tensor of no known place.
    let d = scratch("gpt2", "stray");
    rewrite_weights(&d, |ts| {
        ts.insert(
            "transformer.h.0.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert_has(
        &load_err(&d),
        &["1 tensors", "transformer.h.0.extra.weight"],
    );
}

#[test]
fn nan_weights_are_rejected() {
    let d = scratch("gpt2", "nan");
    rewrite_weights(&d, |ts| {
        let w = &ts["transformer.h.1.mlp.c_fc.weight"];
        let nan = Tensor::full(f32::NAN, w.dims(), &Device::Cpu).unwrap();
        ts.insert("transformer.h.1.mlp.c_fc.weight".into(), nan);
    });
    assert_has(&load_err(&d), &["blocks.1.mlp.W_in contains NaN"]);
}

#[test]
fn bad_configs() {
    let d = scratch("gpt2", "field");
    edit_config(&d, |v| {
        v.as_object_mut().unwrap().remove("n_embd");
    });
    assert_has(&load_err(&d), &["config.json", "missing field 'n_embd'"]);
    let d = scratch("gpt2", "family");
    edit_config(&d, |v| v["model_type"] = "bert".into());
    assert_has(
        &load_err(&d),
        &[
            "unknown model family 'bert'",
            "supported: gpt2, llama, mistral, qwen2",
        ],
    );
    let d = scratch("gpt2", "type");
    edit_config(&d, |v| v["n_layer"] = "two".into());
    assert_has(
        &load_err(&d),
        &["field 'n_layer' should be a non-negative integer"],
    );
    let d = scratch("llama", "rope");
    edit_config(&d, |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    assert_has(&load_err(&d), &["unsupported rope scaling type 'yarn'"]);
    let d = scratch("gpt2", "json");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert_has(&load_err(&d), &["config.json", "invalid JSON"]);
}

#[test]
fn missing_tokenizer() {
    let d = scratch("gpt2", "notok");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let m = load(d.to_str().unwrap(), &Device::Cpu).unwrap();
    let e = m.tokenizer().err().unwrap().to_string();
    assert_has(&e, &["tokenizer not found", "tokenizer.json"]);
}

#[test]
fn hook_names_layers_heads_positions() {
    let dev = Device::Cpu;
    let m = load(fixture("gpt2").to_str().unwrap(), &dev).unwrap();
    let cfg = &m.model.cfg;
    let e = "blocks.0.attn.hook_patern"
        .parse::<HookPoint>()
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "unknown hook point 'blocks.0.attn.hook_patern'",
            "did you mean 'blocks.0.attn.hook_pattern'",
        ],
    );
    let e = HookPoint::parse_for("blocks.9.hook_resid_pre", cfg)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["layer 9 is out of range", "2 layers"]);
    // GPT-2 has learned positions: no rotary hooks.
    let e = HookPoint::parse_for("blocks.0.attn.hook_rot_q", cfg)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["no such point"]);
    let input = Input::single(&[0, 1, 2], &dev).unwrap();
    let mut h = Hooks::none().capture(Selector::parse("blocks.*.mlp.hook_nope").unwrap());
    let e = m.model.forward(&input, &mut h).unwrap_err().to_string();
    assert_has(&e, &["matches no hook point", "did you mean"]);
    let mut h = Hooks::none().capture(Selector::Layer(5));
    assert_has(
        &m.model.forward(&input, &mut h).unwrap_err().to_string(),
        &["layer 5 is out of range"],
    );
    let mut h = Hooks::none().capture(HookPoint::Z(0)).at_positions(vec![3]);
    assert_has(
        &m.model.forward(&input, &mut h).unwrap_err().to_string(),
        &["position 3 is out of range", "3 positions"],
    );
    let mut h = Hooks::none().capture(HookPoint::Pattern(0));
    m.model.forward(&input, &mut h).unwrap();
    assert!(h.cache().head(HookPoint::Pattern(0), 3).is_ok());
    let e = h
        .cache()
        .head(HookPoint::Pattern(0), 4)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["head 4 is out of range", "4 heads"]);
}

#[test]
fn empty_long_and_out_of_vocab_prompts() {
    let dev = Device::Cpu;
    let m = load(fixture("gpt2").to_str().unwrap(), &dev).unwrap();
    let e = m
        .tokenizer()
        .unwrap()
        .prompt(&m.model.cfg, "", None)
        .unwrap_err()
        .to_string();
    assert_has(&e, &["the prompt is empty"]);
    assert!(matches!(
        Input::batch(&[vec![]], Default::default(), 0, &dev),
        Err(Error::Input(_))
    ));
    let long: Vec<u32> = (0..65).map(|i| i % 300).collect();
    let e = m
        .model
        .forward(&Input::single(&long, &dev).unwrap(), &mut Hooks::none())
        .unwrap_err()
        .to_string();
    assert_has(&e, &["65 positions", "context is 64 tokens"]);
    let e = m
        .model
        .forward(&Input::single(&[1, 320], &dev).unwrap(), &mut Hooks::none())
        .unwrap_err()
        .to_string();
    assert_has(&e, &["token id 320 is out of range", "320 tokens"]);
}

#[test]
fn half_precision_weights_are_upcast() {
    let dev = Device::Cpu;
    let d = scratch("gpt2", "bf16");
    rewrite_weights(&d, |ts| {
        for t in ts.values_mut() {
            *t = t.to_dtype(DType::BF16).unwrap();
        }
    });
    let half = load(d.to_str().unwrap(), &dev).unwrap();
    let full = load(fixture("gpt2").to_str().unwrap(), &dev).unwrap();
    assert_eq!(
        half.model.weights.w_e.dtype(),
        DType::F32,
        "computation runs in f32"
    );
    let input = Input::single(&[0, 10, 20, 30], &dev).unwrap();
    let a = half.model.forward(&input, &mut Hooks::none()).unwrap();
    let b = full.model.forward(&input, &mut Hooks::none()).unwrap();
    let diff: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    // bf16 keeps 8 bits of mantissa: logits of order 1-10 move by a few hundredths.
    assert!(diff < 0.25, "bf16 weights moved logits by {diff}");
    assert!(diff > 0.0, "the weights really were rounded");
}
