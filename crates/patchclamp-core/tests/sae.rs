//! SAEs in SAELens's format, spliced into the GPT-2 fixture.
//!
//! References: `tools/fixtures/sae.py` saved each SAE with the `sae-lens` package and ran
//! SAELens's own SAE on the fixture's reference activations (TransformerLens, raw weights,
//! prompt 0). Here the same SAE runs spliced into patchclamp's forward, so a match checks the
//! format, the math and the splice together. Tolerance 1e-4 absolute (the inputs agree with
//! TransformerLens's to ~1e-6).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{fixture, fixture_path, max_diff};
use patchclamp_core::hooks::SaeSite;
use patchclamp_core::{load, HookPoint, Hooks, Input, Intervention, Sae, Selector, Splice};

const TOL: f32 = 1e-4;

fn saes() -> std::path::PathBuf {
    fixture_path("../saes")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(saes().join("reference.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/saes/reference.safetensors (tools/fixtures/sae.py)")
}

fn prompt() -> Vec<u32> {
    let r = candle_core::safetensors::load(
        fixture_path("gpt2").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    r["tokens.0"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn sae(name: &str) -> Arc<Sae> {
    Arc::new(Sae::load(saes().join(name), &Device::Cpu).unwrap())
}

/// Runs the fixture with `splice`, capturing every point; returns logits and the cache.
fn run(hooks: Hooks) -> (Tensor, patchclamp_core::ActivationCache) {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap();
    let input = Input::single(&prompt(), &Device::Cpu).unwrap();
    let mut hooks = hooks.capture(Selector::All);
    let logits = m.model.forward(&input, &mut hooks).unwrap();
    (logits, hooks.take_cache())
}

const SAES: &[&str] = &[
    "standard-resid",
    "topk-resid",
    "jumprelu-mlp",
    "gated-resid",
    "standard-z",
    "pre6-topk",
    "scaled-standard",
];

#[test]
fn every_architecture_matches_saelens_hook_for_hook() {
    let r = reference();
    let mut compared = 0;
    for name in SAES {
        for error_term in [false, true] {
            let tag = if error_term { "err" } else { "plain" };
            if !r.contains_key(&format!("{name}.{tag}.hook_sae_input")) {
                continue;
            }
            let s = Splice::new(sae(name), error_term).unwrap();
            let (_, cache) = run(Hooks::none().splice(s.clone()));
            for site in SaeSite::ALL {
                let key = format!("{name}.{tag}.{}", site.name());
                let Some(want) = r.get(&key) else { continue };
                let got = cache
                    .get(s.point(site))
                    .unwrap_or_else(|| panic!("{key} not recorded"));
                assert_eq!(got.dims(), want.dims(), "{key}");
                let d = max_diff(got, want);
                assert!(d < TOL, "{key}: max diff {d}");
                compared += 1;
            }
        }
    }
    let expected = r
        .keys()
        .filter(|k| SAES.iter().any(|n| k.starts_with(&format!("{n}."))))
        .count();
    assert_eq!(compared, expected, "every reference tensor was compared");
    assert!(compared >= 60, "{compared}");
}

#[test]
fn transcoders_match_saelens_and_replace_their_output_point() {
    let r = reference();
    for name in ["transcoder-mlp", "skip-transcoder-mlp"] {
        let s = Splice::new(sae(name), false).unwrap();
        let (_, cache) = run(Hooks::none().splice(s.clone()));
        for site in [
            SaeSite::Input,
            SaeSite::ActsPre,
            SaeSite::ActsPost,
            SaeSite::Recons,
        ] {
            let key = format!("{name}.plain.{}", site.name());
            let d = max_diff(cache.get(s.point(site)).unwrap(), &r[&key]);
            assert!(d < TOL, "{key}: max diff {d}");
        }
        // What the model reads after the output point is SAELens's forward (skip path included).
        let out = cache.get(s.point(SaeSite::Output)).unwrap();
        let d = max_diff(out, &r[&format!("{name}.plain.forward")]);
        assert!(d < TOL, "{name} output: {d}");
        // The residual after the MLP adds exactly that output.
        let l = s.out.layer().unwrap();
        let mid = cache.get(HookPoint::ResidMid(l)).unwrap();
        let post = cache.get(HookPoint::ResidPost(l)).unwrap();
        let d = max_diff(&(mid + out).unwrap(), post);
        assert!(
            d < 1e-5,
            "{name}: resid_post = resid_mid + transcoder output ({d})"
        );
    }
}

#[test]
fn with_the_error_term_the_model_is_unchanged_bit_for_bit() {
    let (plain, _) = run(Hooks::none());
    let splices: Vec<Splice> = [
        "standard-resid",
        "topk-resid",
        "standard-z",
        "transcoder-mlp",
    ]
    .iter()
    .map(|n| Splice::new(sae(n), true).unwrap())
    .collect();
    // Several SAEs at once, every point recorded.
    let (spliced, cache) = run(Hooks::none().splice_all(splices.clone()));
    assert_eq!(max_diff(&plain, &spliced), 0.0, "bit for bit");
    for s in &splices {
        assert!(cache.get(s.point(SaeSite::ActsPost)).is_some());
    }
    // Without it, the reconstruction replaces the activation and the logits move.
    let (lossy, _) = run(Hooks::none().splice(Splice::new(sae("standard-resid"), false).unwrap()));
    assert!(max_diff(&plain, &lossy) > 1e-3);
}

#[test]
fn editing_a_latent_moves_the_stream_by_its_decoder_direction() {
    let sae = sae("standard-resid");
    let s = Splice::new(sae.clone(), true).unwrap();
    let (_, clean) = run(Hooks::none().splice(s.clone()));
    let acts = clean.get(s.point(SaeSite::ActsPost)).unwrap();
    // The most active latent at the last position.
    let last: Vec<f32> = acts
        .get(0)
        .unwrap()
        .get(acts.dim(1).unwrap() - 1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let (j, &a) = last
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .unwrap();
    assert!(a > 0.0, "some latent fires");
    let zero: Intervention = serde_json::from_value(serde_json::json!({
        "at": s.point(SaeSite::ActsPost).to_string(),
        "select": {"units": [j], "positions": {"indices": [-1]}},
        "op": {"kind": "zero"}
    }))
    .unwrap();
    let (_, edited) = run(Hooks::none().splice(s.clone()).intervene(zero));
    let x = clean.get(HookPoint::ResidPost(0)).unwrap();
    let out = edited.get(s.point(SaeSite::Output)).unwrap();
    let delta = (out - x).unwrap().get(0).unwrap();
    let want = (sae.direction(j).unwrap() * -(a as f64)).unwrap();
    let n = delta.dim(0).unwrap();
    assert!(
        max_diff(&delta.get(n - 1).unwrap(), &want) < 1e-5,
        "last position moves by −a·W_dec[j]"
    );
    assert!(
        max_diff(
            &delta.narrow(0, 0, n - 1).unwrap(),
            &delta.narrow(0, 0, n - 1).unwrap().zeros_like().unwrap()
        ) < 1e-5,
        "other positions keep their values"
    );
    // Steering: add a latent's decoder direction at the SAE's output.
    let steer: Intervention = serde_json::from_value(serde_json::json!({
        "at": s.point(SaeSite::ActsPost).to_string(),
        "select": {"units": [j]},
        "op": {"kind": "add", "vector": 2.0}
    }))
    .unwrap();
    let (_, steered) = run(Hooks::none().splice(s.clone()).intervene(steer));
    let moved = (steered.get(s.point(SaeSite::Output)).unwrap() - x)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap();
    assert!(max_diff(&moved, &(sae.direction(j).unwrap() * 2.0).unwrap()) < 1e-5);
}

#[test]
fn save_and_load_round_trip() {
    let dir = std::env::temp_dir().join(format!("pc-sae-rt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for name in [
        "standard-resid",
        "topk-resid",
        "jumprelu-mlp",
        "gated-resid",
        "skip-transcoder-mlp",
    ] {
        let a = sae(name);
        a.save(&dir.join(name)).unwrap();
        let b = Sae::load(dir.join(name), &Device::Cpu).unwrap();
        assert_eq!(a.cfg.architecture_name(), b.cfg.architecture_name());
        assert_eq!(a.cfg.raw, b.cfg.raw, "{name}: every cfg.json key kept");
        let x = Tensor::randn(0f32, 1.0, (3, 5, a.cfg.d_in), &Device::Cpu).unwrap();
        assert_eq!(
            max_diff(&a.encode(&x).unwrap(), &b.encode(&x).unwrap()),
            0.0,
            "{name}"
        );
        assert_eq!(
            max_diff(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()),
            0.0,
            "{name}"
        );
        assert_eq!(a.sparsity.is_some(), b.sparsity.is_some());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_saes_and_splices_fail_clearly() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let input = Input::single(&prompt(), &dev).unwrap();
    let fail = |hooks: Hooks| {
        let mut hooks = hooks;
        m.model.forward(&input, &mut hooks).unwrap_err().to_string()
    };
    // d_in 32 at a 96-wide point.
    let s = Splice::at(
        sae("standard-resid"),
        "blocks.0.mlp.hook_post".parse().unwrap(),
        true,
    )
    .unwrap();
    let e = fail(Hooks::none().splice(s));
    assert!(
        e.contains("d_in is 32 but blocks.0.mlp.hook_post has width 96"),
        "{e}"
    );
    // An SAE point with no SAE there.
    let e = fail(
        Hooks::none()
            .capture(Selector::parse("blocks.1.hook_resid_post.hook_sae_acts_post").unwrap()),
    );
    assert!(
        e.contains("no SAE is spliced at blocks.1.hook_resid_post"),
        "{e}"
    );
    // A latent index past d_sae.
    let s = Splice::new(sae("standard-resid"), true).unwrap();
    let iv: Intervention = serde_json::from_value(serde_json::json!({
        "at": "blocks.0.hook_resid_post.hook_sae_acts_post", "select": {"units": [64]}, "op": {"kind": "zero"}
    }))
    .unwrap();
    let e = fail(Hooks::none().splice(s.clone()).intervene(iv));
    assert!(
        e.contains("unit 64 is out of range") && e.contains("64 at"),
        "{e}"
    );
    // Two SAEs at one point.
    let e = fail(Hooks::none().splice(s.clone()).splice(s));
    assert!(
        e.contains("two SAEs splice at blocks.0.hook_resid_post"),
        "{e}"
    );

    // Broken folders: each names what is wrong.
    let root = std::env::temp_dir().join(format!("pc-sae-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let copy = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["cfg.json", "sae_weights.safetensors"] {
            std::fs::copy(saes().join("standard-resid").join(f), d.join(f)).unwrap();
        }
        d
    };
    let load_err = |d: &std::path::Path| Sae::load(d, &dev).unwrap_err().to_string();
    let d = copy("jump");
    let cfg = std::fs::read_to_string(d.join("cfg.json"))
        .unwrap()
        .replace("\"standard\"", "\"jumprelu\"");
    std::fs::write(d.join("cfg.json"), cfg).unwrap();
    assert!(
        load_err(&d).contains("weight 'threshold' is missing"),
        "{}",
        load_err(&d)
    );
    let d = copy("wide");
    let cfg = std::fs::read_to_string(d.join("cfg.json"))
        .unwrap()
        .replace("\"d_sae\": 64", "\"d_sae\": 65");
    std::fs::write(d.join("cfg.json"), cfg).unwrap();
    assert!(
        load_err(&d).contains("'W_enc' has shape [32, 64], expected [32, 65]"),
        "{}",
        load_err(&d)
    );
    let d = copy("nan");
    let mut w = candle_core::safetensors::load(d.join("sae_weights.safetensors"), &dev).unwrap();
    let b = w["b_dec"].to_vec1::<f32>().unwrap();
    let mut b2 = b.clone();
    b2[3] = f32::NAN;
    w.insert("b_dec".into(), Tensor::new(b2, &dev).unwrap());
    candle_core::safetensors::save(&w, d.join("sae_weights.safetensors")).unwrap();
    assert!(
        load_err(&d).contains("'b_dec' contains NaN"),
        "{}",
        load_err(&d)
    );
    assert!(load_err(&root.join("nowhere")).contains("SAE folder not found"));
    let _ = std::fs::remove_dir_all(&root);
}

/// Steering by a latent during generation: the cached decode equals recomputing the whole
/// sequence every step with the SAE spliced, token for token; untouched, the error term leaves
/// the tokens the plain model generates.
#[test]
fn latent_steering_in_generation_equals_a_full_recompute() {
    use patchclamp_core::generate::{generate_spliced, GenerateSpec, Sampling};
    use patchclamp_core::hooks::RowWindow;
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap();
    let s = Splice::new(sae("standard-resid"), true).unwrap();
    let prompt: Vec<u32> = vec![0, 84, 258, 262, 261];
    let spec = GenerateSpec {
        max_new_tokens: 8,
        sampling: Sampling::default(),
        stop_tokens: vec![],
    };
    let gen = |ivs: &[Intervention], splices: &[Splice]| {
        generate_spliced(
            &m.model,
            std::slice::from_ref(&prompt),
            1,
            &spec,
            ivs,
            &[],
            splices,
            |_, _| true,
        )
        .unwrap()[0]
            .0
            .tokens
            .clone()
    };
    let plain = gen(&[], &[]);
    assert_eq!(
        gen(&[], std::slice::from_ref(&s)),
        plain,
        "the error term leaves generation unchanged"
    );
    let steer: Intervention = serde_json::from_value(serde_json::json!({
        "at": "blocks.0.hook_resid_post.hook_sae_acts_post",
        "select": {"units": [3, 11], "positions": "generated"},
        "op": {"kind": "add", "vector": 40.0}
    }))
    .unwrap();
    let cached = gen(std::slice::from_ref(&steer), std::slice::from_ref(&s));
    assert_ne!(cached, plain, "the latents steer");
    // The slow way: the whole sequence, every step, the same splice and intervention.
    let mut seq = prompt.clone();
    for t in 0..8u64 {
        let w = [RowWindow {
            prompt: 0,
            offset: 0,
            len: seq.len(),
            pad: 0,
            anchor: prompt.len(),
        }];
        let mut hooks = Hooks::none().splice(s.clone());
        if let Some(iv) = steer.for_rows(t, &w) {
            hooks = hooks.intervene(iv);
        }
        let logits = m
            .model
            .forward(&Input::single(&seq, &Device::Cpu).unwrap(), &mut hooks)
            .unwrap();
        let last: Vec<f32> = logits
            .get(0)
            .unwrap()
            .get(seq.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        seq.push((0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
    }
    assert_eq!(cached, seq[prompt.len()..].to_vec());
}
