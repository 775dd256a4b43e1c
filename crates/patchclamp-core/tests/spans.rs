//! Partial forwards for sweeps — rows that join at later blocks, a cached key-value prefix, the
//! last position only, a few logits — each equal to the plain forward (tolerance 1e-4 absolute,
//! f32: different batch shapes block the products differently), on every fixture family
//! (learned and rotary positions, tied and untied unembeddings, a sliding window).

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_diff};
use patchclamp_core::model::{KvCache, Span};
use patchclamp_core::{load, HookPoint, Hooks, Input, Intervention, Op, Selection, Selector};

const TOL: f32 = 1e-4;
// Every family patchclamp loads has a committed fixture.
use patchclamp_core::model::arch::FAMILIES;
const TOKENS: [u32; 9] = [3, 7, 8, 9, 10, 11, 7, 8, 12];

/// Every block's residual, keys (after rotary) and values of a batch-1 run, and its logits.
fn full_run(
    m: &patchclamp_core::Loaded,
    tokens: &[u32],
) -> (Tensor, patchclamp_core::ActivationCache) {
    let mut rec = Hooks::none()
        .capture(Selector::parse("blocks.*.hook_resid_pre").unwrap())
        .capture(Selector::parse("blocks.*.attn.hook_k").unwrap())
        .capture(Selector::parse("blocks.*.attn.hook_v").unwrap());
    if m.model.cfg.rotary().is_some() {
        rec = rec.capture(Selector::parse("blocks.*.attn.hook_rot_k").unwrap());
    }
    let logits = m
        .model
        .forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut rec)
        .unwrap();
    (logits, rec.take_cache())
}

/// `n` copies of a batch-1 input.
fn rows(tokens: &[u32], n: usize) -> Input {
    let one = Input::single(tokens, &Device::Cpu).unwrap();
    Input {
        tokens: one.tokens.repeat((n, 1)).unwrap(),
        positions: one.positions.repeat((n, 1)).unwrap(),
        mask: None,
        lengths: vec![tokens.len(); n],
        padding: Default::default(),
    }
}

#[test]
fn late_rows_equal_their_own_forwards() {
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap();
        let n = m.model.cfg.n_layers;
        let (full, cache) = full_run(&m, &TOKENS);
        let resid = |l: usize, k: usize| {
            cache
                .get(HookPoint::ResidPre(l))
                .unwrap()
                .repeat((k, 1, 1))
                .unwrap()
        };
        // Rows 0-1 start at block 0, row 2 joins at block 1, row 3 at the last block; a zero
        // ablation of row 2's attention at block 0 (before it joins) and of row 3's at the last
        // block select only rows present there.
        let zero = |l: usize, row: usize| Intervention {
            at: HookPoint::AttnOut(l),
            select: Selection {
                rows: Some(vec![row]),
                ..Default::default()
            },
            op: Op::Zero,
            when: Default::default(),
            decode: None,
        };
        let mut hooks = Hooks::none()
            .intervene(zero(0, 2))
            .intervene(zero(n - 1, 3));
        let out = m
            .model
            .forward_span(
                &rows(&TOKENS, 4),
                &mut hooks,
                Span {
                    start: Some((0, resid(0, 2))),
                    joins: vec![(1, resid(1, 1)), (n - 1, resid(n - 1, 1))],
                    ..Default::default()
                },
            )
            .unwrap();
        for row in 0..3 {
            let d = max_diff(&out.narrow(0, row, 1).unwrap(), &full);
            assert!(
                d < TOL,
                "{name}: row {row} differs from the full forward by {d:e}"
            );
        }
        let mut alone = Hooks::none().intervene(zero(n - 1, 0));
        let want = m
            .model
            .forward_span(
                &rows(&TOKENS, 1),
                &mut alone,
                Span {
                    start: Some((n - 1, resid(n - 1, 1))),
                    ..Default::default()
                },
            )
            .unwrap();
        let d = max_diff(&out.narrow(0, 3, 1).unwrap(), &want);
        assert!(d < TOL, "{name}: the ablated late row differs by {d:e}");
    }
}

#[test]
fn a_cached_prefix_gives_the_later_positions_logits() {
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap();
        let (full, cache) = full_run(&m, &TOKENS);
        let s = TOKENS.len();
        for p in [1, 4, s - 1] {
            let one = Input::single(&TOKENS, &Device::Cpu).unwrap();
            let suffix = Input {
                tokens: one.tokens.narrow(1, p, s - p).unwrap(),
                positions: one.positions.narrow(1, p, s - p).unwrap(),
                mask: None,
                lengths: vec![s - p],
                padding: Default::default(),
            };
            let mut rec = Hooks::none().capture(HookPoint::Pattern(0));
            let out = m
                .model
                .forward_span(
                    &suffix,
                    &mut rec,
                    Span {
                        prefix: Some(KvCache::from_cache(&m.model.cfg, &cache, p).unwrap()),
                        ..Default::default()
                    },
                )
                .unwrap();
            let d = max_diff(&out, &full.narrow(1, p, s - p).unwrap());
            assert!(d < TOL, "{name}: prefix of {p}: logits differ by {d:e}");
            // The pattern covers the new queries and every key.
            let h = m.model.cfg.attn.n_heads;
            assert_eq!(
                rec.cache().get(HookPoint::Pattern(0)).unwrap().dims(),
                &[1, h, s - p, s]
            );
        }
    }
}

#[test]
fn last_position_only_and_chosen_logits_match_the_full_forward() {
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap();
        let n = m.model.cfg.n_layers;
        let s = TOKENS.len();
        let (full, _) = full_run(&m, &TOKENS);
        let last = full.narrow(1, s - 1, 1).unwrap();
        let span = || Span {
            last_position_only: true,
            ..Default::default()
        };
        let input = rows(&TOKENS, 1);
        let out = m
            .model
            .forward_span(&input, &mut Hooks::none(), span())
            .unwrap();
        let d = max_diff(&out, &last);
        assert!(d < TOL, "{name}: last position only differs by {d:e}");
        // A hook on the last block's outputs still sees every position.
        let mut rec = Hooks::none().capture(HookPoint::ResidPost(n - 1));
        m.model.forward_span(&input, &mut rec, span()).unwrap();
        let seen = rec.cache().get(HookPoint::ResidPost(n - 1)).unwrap().dims()[1];
        assert_eq!(seen, s, "{name}: a recorded last block keeps its positions");
        // Two logits from the final residual.
        let resid = m
            .model
            .forward_span(
                &input,
                &mut Hooks::none(),
                Span {
                    stop_at_layer: Some(n),
                    ..Default::default()
                },
            )
            .unwrap();
        let ids = [5u32, 2];
        let two = m.model.logits_of(&resid, &ids).unwrap();
        let idx = Tensor::new(&ids, &Device::Cpu).unwrap();
        let want = full.index_select(&idx, 2).unwrap();
        let d = max_diff(&two, &want);
        assert!(d < TOL, "{name}: chosen logits differ by {d:e}");
        let e = m.model.logits_of(&resid, &[u32::MAX]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}

#[test]
fn bad_spans_are_rejected() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap();
    let n = m.model.cfg.n_layers;
    let (_, cache) = full_run(&m, &TOKENS);
    let r = cache.get(HookPoint::ResidPre(0)).unwrap().clone();
    let run = |input: &Input, span: Span| {
        m.model
            .forward_span(input, &mut Hooks::none(), span)
            .unwrap_err()
            .to_string()
    };
    let e = run(
        &rows(&TOKENS, 2),
        Span {
            start: Some((0, r.clone())),
            joins: vec![(n, r.clone())],
            ..Default::default()
        },
    );
    assert!(e.contains("join layer"), "{e}");
    let e = run(
        &rows(&TOKENS, 2),
        Span {
            start: Some((0, r.clone())),
            joins: vec![(1, r.narrow(1, 0, 3).unwrap())],
            ..Default::default()
        },
    );
    assert!(e.contains("rows joining at layer 1 have shape"), "{e}");
    let e = run(
        &rows(&TOKENS, 1),
        Span {
            start: Some((0, r.clone())),
            joins: vec![(1, r.clone())],
            ..Default::default()
        },
    );
    assert!(e.contains("leave none"), "{e}");
    let mut prefix = KvCache::from_cache(&m.model.cfg, &cache, 3).unwrap();
    prefix.layers.pop();
    let e = run(
        &rows(&TOKENS[3..], 1),
        Span {
            prefix: Some(prefix),
            ..Default::default()
        },
    );
    assert!(e.contains("key-value prefix has"), "{e}");
    let e = KvCache::from_cache(&m.model.cfg, &Default::default(), 3).unwrap_err();
    assert!(e.to_string().contains("needs blocks.0.attn.hook_k"), "{e}");
}

#[test]
fn recording_a_norms_inside_changes_no_number() {
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap();
        let input = Input::single(&TOKENS, &Device::Cpu).unwrap();
        let plain = m.model.forward(&input, &mut Hooks::none()).unwrap();
        let mut rec = Hooks::none()
            .capture(Selector::parse("blocks.*.ln1.hook_scale").unwrap())
            .capture(Selector::parse("blocks.*.ln2.hook_normalized").unwrap())
            .capture(HookPoint::FinalScale);
        let recorded = m.model.forward(&input, &mut rec).unwrap();
        assert_eq!(
            max_diff(&plain, &recorded),
            0.0,
            "{name}: recording hook_scale / hook_normalized changed the logits"
        );
        // The recorded inside is the norm's: x̂ · scale = x − μ (RMSNorm: x).
        let scale = rec.cache().get(HookPoint::FinalScale).unwrap();
        assert_eq!(scale.dims(), &[1, TOKENS.len(), 1], "{name}");
        let s: Vec<f32> = scale.flatten_all().unwrap().to_vec1().unwrap();
        assert!(s.iter().all(|&v| v.is_finite() && v > 0.0), "{name}: {s:?}");
    }
}

#[test]
fn decoding_with_a_growing_cache_equals_recomputing_every_step() {
    // Greedy decoding one token at a time: each step runs only the new token against the
    // cache, then appends its keys and values. Its logits must be the full forward's.
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap();
        let cfg = &m.model.cfg;
        let record = || {
            KvCache::points(cfg)
                .into_iter()
                .fold(Hooks::none(), |h, p| h.capture(p))
        };
        let mut tokens = TOKENS[..3].to_vec();
        let mut rec = record();
        m.model
            .forward(&Input::single(&tokens, &Device::Cpu).unwrap(), &mut rec)
            .unwrap();
        let mut cache = KvCache::from_cache(cfg, rec.cache(), tokens.len()).unwrap();
        for step in 0..4 {
            let full = m
                .model
                .forward(
                    &Input::single(&tokens, &Device::Cpu).unwrap(),
                    &mut Hooks::none(),
                )
                .unwrap();
            let next = full
                .narrow(1, tokens.len() - 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            tokens.push(next);
            let mut rec = record();
            let input = Input::continuing(&[next], cache.len(), &Device::Cpu).unwrap();
            let out = m
                .model
                .forward_span(
                    &input,
                    &mut rec,
                    Span {
                        prefix: Some(cache.clone()),
                        ..Default::default()
                    },
                )
                .unwrap();
            cache.append(cfg, rec.cache()).unwrap();
            assert_eq!(cache.len(), tokens.len());
            let want = m
                .model
                .forward(
                    &Input::single(&tokens, &Device::Cpu).unwrap(),
                    &mut Hooks::none(),
                )
                .unwrap();
            let d = max_diff(&out, &want.narrow(1, tokens.len() - 1, 1).unwrap());
            assert!(
                d < TOL,
                "{name}: step {step}: cached logits differ by {d:e}"
            );
        }
    }
}
