//! Causal tracing: exact limits, causality, determinism, batching.

mod common;

use candle_core::Device;
use common::fixture;
use patchclamp_core::load;
use patchclamp_lab::causal::patching::Metric;
use patchclamp_lab::causal::tracing::{subject_noise, trace, window, TraceConfig, TraceKind};

fn config(kind: TraceKind, window: usize, noise: Option<f64>) -> TraceConfig {
    TraceConfig {
        subject: vec![3, 4],
        kind,
        window,
        samples: 3,
        noise,
        seed: 7,
        metric: Metric::Prob { answer: 40 },
        severed: false,
        batch: 16,
    }
}

/// The prompt every trace here runs on.
fn cat_sat(m: &patchclamp_core::Loaded) -> Vec<u32> {
    m.tokenizer()
        .unwrap()
        .prompt(&m.model.cfg, "The cat sat on the mat", None)
        .unwrap()
}

#[test]
fn windows_are_centred_and_clipped() {
    assert_eq!(window(0, 10, 12), 0..10);
    assert_eq!(window(6, 10, 12), 1..11);
    assert_eq!(window(11, 10, 12), 2..12);
    assert_eq!(window(5, 1, 12), 5..6);
    assert_eq!(window(1, 10, 2), 0..2);
}

#[test]
fn tracing_limits_hold_exactly() {
    let dev = Device::Cpu;
    for name in ["gpt2", "llama"] {
        let m = load(&fixture(name), &dev).unwrap();
        let tokens = cat_sat(&m);
        let (n, s) = (m.model.cfg.n_layers, tokens.len());
        // No noise: nothing to restore.
        let r = trace(
            &m.model,
            &tokens,
            &config(TraceKind::Hidden, 1, Some(0.0)),
            |_, _| {},
        )
        .unwrap();
        assert!(r.total_effect.abs() < 1e-6);
        assert!(r.indirect_effect.iter().all(|ie| ie.abs() < 1e-5), "{name}");
        // With noise: the last layer's hidden state at the last position carries everything.
        let r = trace(
            &m.model,
            &tokens,
            &config(TraceKind::Hidden, 1, None),
            |_, _| {},
        )
        .unwrap();
        assert!(r.noise > 0.0);
        let last = r.restored[(n - 1) * s + (s - 1)];
        assert!(
            (last - r.clean_metric).abs() < 1e-5,
            "{name}: restored {last} vs clean {}",
            r.clean_metric
        );
        // Positions before the subject never see the noise (causal attention): no effect.
        for l in 0..n {
            for p in 0..3 {
                let ie = r.indirect_effect[l * s + p];
                assert!(
                    ie.abs() < 1e-5,
                    "{name}: ({l}, {p}) before the subject has effect {ie}"
                );
            }
        }
    }
}

#[test]
fn tracing_is_deterministic_and_batch_independent() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let tokens = cat_sat(&m);
    let cfg = config(TraceKind::Mlp, 2, None);
    let a = trace(&m.model, &tokens, &cfg, |_, _| {}).unwrap();
    let b = trace(
        &m.model,
        &tokens,
        &TraceConfig {
            batch: 1,
            ..cfg.clone()
        },
        |_, _| {},
    )
    .unwrap();
    for (x, y) in a.restored.iter().zip(&b.restored) {
        assert!((x - y).abs() < 1e-5, "batched {x} vs one at a time {y}");
    }
    let again = trace(&m.model, &tokens, &cfg, |_, _| {}).unwrap();
    assert_eq!(a.restored, again.restored, "same seed, same numbers");
    let other = trace(
        &m.model,
        &tokens,
        &TraceConfig {
            seed: 8,
            ..cfg.clone()
        },
        |_, _| {},
    )
    .unwrap();
    assert_ne!(
        a.corrupt_metric, other.corrupt_metric,
        "another seed draws other noise"
    );
    let severed = trace(
        &m.model,
        &tokens,
        &TraceConfig {
            kind: TraceKind::Hidden,
            window: 1,
            severed: true,
            ..cfg
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(
        severed.corrupt_metric, a.corrupt_metric,
        "severing changes restorations, not the corrupted run"
    );
    let e = trace(
        &m.model,
        &tokens,
        &TraceConfig {
            subject: vec![99],
            ..config(TraceKind::Hidden, 1, None)
        },
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("subject position 99 is out of range"),
        "{e}"
    );
}

/// The trace's restored metric for every (layer, position) equals a plain forward of the noised
/// prompt with the clean states patched in (and, severed, the later MLP outputs frozen at their
/// noised values): the sweep's shortcuts (rows entering at their first restored block, earlier
/// positions reused, unreached states skipped) change nothing beyond rounding (1e-5 absolute).
#[test]
fn traces_equal_one_full_forward_per_restoration() {
    use patchclamp_core::hooks::Positions;
    use patchclamp_core::rng::Rng;
    use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Op, Selection};
    let dev = Device::Cpu;
    for (name, kind, w, severed) in [
        ("gpt2", TraceKind::Hidden, 1, false),
        ("gpt2", TraceKind::Mlp, 2, true),
        ("llama", TraceKind::Attn, 2, false),
        ("mistral", TraceKind::Mlp, 1, true),
    ] {
        let m = load(&fixture(name), &dev).unwrap();
        let tokens = cat_sat(&m);
        let (n, s, d) = (m.model.cfg.n_layers, tokens.len(), m.model.cfg.d_model);
        let cfg = TraceConfig {
            samples: 1,
            severed,
            batch: 4,
            ..config(kind, w, Some(0.7))
        };
        let r = trace(&m.model, &tokens, &cfg, |_, _| {}).unwrap();
        // The trace's one noise draw (the first of its seeded stream).
        let noise = subject_noise(&mut Rng::new(cfg.seed), &cfg.subject, s, d, 0.7);
        let input = Input::single(&tokens, &dev).unwrap();
        let point = |l: usize| match kind {
            TraceKind::Hidden => HookPoint::ResidPost(l),
            TraceKind::Mlp => HookPoint::MlpOut(l),
            TraceKind::Attn => HookPoint::AttnOut(l),
        };
        let mut rec = Hooks::none();
        let mut noised = Hooks::none().intervene(noise.clone());
        for l in 0..n {
            rec = rec.capture(point(l));
            noised = noised.capture(HookPoint::MlpOut(l));
        }
        m.model.forward(&input, &mut rec).unwrap();
        m.model.forward(&input, &mut noised).unwrap();
        let patch = |at: HookPoint, source: &str, positions: Option<Positions>| Intervention {
            at,
            select: Selection {
                positions,
                ..Default::default()
            },
            op: Op::Patch {
                source: source.into(),
                rows: None,
            },
            when: Default::default(),
            decode: None,
        };
        for l in 0..n {
            for p in 0..s {
                let layers = window(l, w, n);
                let mut hooks = Hooks::none()
                    .source("clean", rec.cache().clone())
                    .source("noised", noised.cache().clone())
                    .intervene(noise.clone());
                for layer in layers.clone() {
                    let at = Some(Positions::Indices(vec![p as i64]));
                    hooks = hooks.intervene(patch(point(layer), "clean", at));
                }
                if severed {
                    for layer in layers.end..n {
                        hooks = hooks.intervene(patch(HookPoint::MlpOut(layer), "noised", None));
                    }
                }
                let logits = m.model.forward(&input, &mut hooks).unwrap();
                let probs = candle_nn::ops::softmax_last_dim(&logits.narrow(1, s - 1, 1).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap();
                let want: f32 = probs.get(40).unwrap().to_scalar().unwrap();
                let got = r.restored[l * s + p];
                assert!(
                    (got - want).abs() < 1e-5,
                    "{name} {kind:?} w{w} severed {severed} ({l}, {p}): trace {got} vs forward {want}"
                );
            }
        }
    }
}
