//! Declarative interventions: semantics, gradients, composition, serialisation, validation.

use std::collections::HashMap;

mod common;

use candle_core::{Device, Tensor, Var};
use common::{fixture, max_diff};
use patchclamp_core::hooks::{Positions, Schedule, Values};

use patchclamp_core::{
    load, ActivationCache, HookPoint, Hooks, Input, Intervention, Op, Selection, Selector,
};

fn iv(at: &str, select: Selection, op: Op) -> Intervention {
    Intervention {
        at: at.parse().unwrap(),
        select,
        op,
        when: Schedule::default(),
        decode: None,
    }
}

/// METHODS.md §5.3: h(x) = [x, 0, x], read-out w = [0, 2, 1]; base x = +1, source x = -1.
#[test]
fn subspace_illusion_toy_gives_the_four_published_outputs() {
    let dev = Device::Cpu;
    let at = "blocks.0.hook_resid_post";
    let base = Tensor::new(&[[[1f32, 0., 1.]]], &dev).unwrap();
    let mut src = ActivationCache::default();
    src.insert(
        at.parse().unwrap(),
        Tensor::new(&[[[-1f32, 0., -1.]]], &dev).unwrap(),
    );
    let sources = HashMap::from([("source".to_string(), src)]);
    let w = Tensor::new(&[[0f32], [2.], [1.]], &dev).unwrap();
    let s = std::f64::consts::FRAC_1_SQRT_2;
    for (basis, want) in [
        (vec![s, s, 0.0], -1.0), // dormant + disconnected: the illusion, full effect
        (vec![1.0, 0.0, 0.0], 1.0), // disconnected alone: no effect
        (vec![0.0, 1.0, 0.0], 1.0), // dormant alone: no effect
        (vec![0.0, 0.0, 1.0], -1.0), // the true feature
    ] {
        let spec = iv(
            at,
            Selection::default(),
            Op::SubspacePatch {
                basis: Values::Vector(basis.clone()),
                source: "source".into(),
            },
        );
        let h = spec.apply(&base, &sources).unwrap();
        let y: f32 = h
            .squeeze(0)
            .unwrap()
            .matmul(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (y as f64 - want).abs() < 1e-6,
            "basis {basis:?}: y' = {y}, want {want}"
        );
    }
}

#[test]
fn patching_a_whole_layer_from_clean_reproduces_clean_logits() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let tok = m.tokenizer().unwrap();
    let clean = tok
        .prompt(&m.model.cfg, "When Mary and John went to the store", None)
        .unwrap();
    let corrupt = tok
        .prompt(&m.model.cfg, "When John and Mary went to the store", None)
        .unwrap();
    assert_eq!(clean.len(), corrupt.len());
    let mut rec = Hooks::none().capture_all();
    let clean_logits = m
        .model
        .forward(&Input::single(&clean, &dev).unwrap(), &mut rec)
        .unwrap();
    let clean_cache = rec.take_cache();
    let corrupt_in = Input::single(&corrupt, &dev).unwrap();
    let corrupt_logits = m.model.forward(&corrupt_in, &mut Hooks::none()).unwrap();
    assert!(
        max_diff(&clean_logits, &corrupt_logits) > 1e-2,
        "the prompts differ in output"
    );

    for point in [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ] {
        let mut h = Hooks::none()
            .source("clean", clean_cache.clone())
            .intervene(iv(
                point,
                Selection::default(),
                Op::Patch {
                    source: "clean".into(),
                    rows: None,
                },
            ));
        let patched = m.model.forward(&corrupt_in, &mut h).unwrap();
        let d = max_diff(&patched, &clean_logits);
        assert!(
            d <= 1e-5,
            "patching {point} from clean: logits differ by {d:e}"
        );
    }
    // The residual stream is the sum of its writers: patching the embeddings, every head's z and
    // every MLP output recovers clean too (and leaving out the embeddings does not).
    let mut h = Hooks::none().source("clean", clean_cache.clone());
    for p in ["hook_embed", "hook_pos_embed"] {
        h = h.intervene(iv(
            p,
            Selection::default(),
            Op::Patch {
                source: "clean".into(),
                rows: None,
            },
        ));
    }
    for l in 0..2 {
        h = h.intervene(iv(
            &format!("blocks.{l}.attn.hook_z"),
            Selection::default(),
            Op::Patch {
                source: "clean".into(),
                rows: None,
            },
        ));
        h = h.intervene(iv(
            &format!("blocks.{l}.hook_mlp_out"),
            Selection::default(),
            Op::Patch {
                source: "clean".into(),
                rows: None,
            },
        ));
    }
    let d = max_diff(
        &m.model.forward(&corrupt_in, &mut h).unwrap(),
        &clean_logits,
    );
    assert!(d <= 1e-5, "embeddings + z + mlp_out patches: {d:e}");
    let mut without_embed = Hooks::none().source("clean", clean_cache.clone());
    for l in 0..2 {
        for p in [
            format!("blocks.{l}.attn.hook_z"),
            format!("blocks.{l}.hook_mlp_out"),
        ] {
            without_embed = without_embed.intervene(iv(
                &p,
                Selection::default(),
                Op::Patch {
                    source: "clean".into(),
                    rows: None,
                },
            ));
        }
    }
    let d = max_diff(
        &m.model.forward(&corrupt_in, &mut without_embed).unwrap(),
        &clean_logits,
    );
    assert!(d > 1e-3, "the corrupted embeddings still reach the logits");
    // Patching nothing (a record op) gives the corrupted logits exactly.
    let mut h = Hooks::none().intervene(iv(
        "blocks.0.hook_resid_pre",
        Selection::default(),
        Op::Record,
    ));
    assert_eq!(
        max_diff(
            &m.model.forward(&corrupt_in, &mut h).unwrap(),
            &corrupt_logits
        ),
        0.0
    );
    assert!(
        h.cache().get(HookPoint::ResidPre(0)).is_some(),
        "record stores the activation"
    );
}

#[test]
fn selections_touch_only_the_chosen_elements() {
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 2. * 3. * 4. * 5., &dev)
        .unwrap()
        .reshape((2, 3, 4, 5))
        .unwrap(); // z-shaped
    let none = HashMap::new();
    let sel = Selection {
        rows: Some(vec![1]),
        positions: Some(Positions::Indices(vec![-1])),
        heads: Some(vec![0, 2]),
        units: None,
    };
    let y = iv("blocks.0.attn.hook_z", sel, Op::Zero)
        .apply(&x, &none)
        .unwrap();
    let changed = x.ne(&y).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let n: f32 = changed.sum_all().unwrap().to_scalar().unwrap();
    // Row 1, position 2, heads {0, 2}, all 5 units; x is nonzero there.
    assert_eq!(n, 10.0);
    let hit: f32 = changed
        .get(1)
        .unwrap()
        .get(2)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(hit, 10.0);
    // Per-row positions and a range.
    let sel = Selection {
        positions: Some(Positions::PerRow(vec![vec![0], vec![1, 2]])),
        ..Default::default()
    };
    let y = iv("blocks.0.attn.hook_z", sel, Op::Scale { factor: 0.0 })
        .apply(&x, &none)
        .unwrap();
    let changed: f32 = x
        .ne(&y)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(changed, 20.0 * 3.0 - 1.0, "x[0,0,0,0] is 0 already");
    let pat = Tensor::ones((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
    let sel = Selection {
        positions: Some(Positions::Range { start: 1, end: 3 }),
        heads: Some(vec![1]),
        units: Some(vec![0]),
        ..Default::default()
    };
    let y = iv("blocks.0.attn.hook_pattern", sel, Op::Zero)
        .apply(&pat, &none)
        .unwrap();
    let zeros: Vec<f32> = y
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        zeros,
        vec![1.0, 0.0, 0.0, 1.0],
        "queries 1..3 of head 1 lose key 0"
    );
}

#[test]
fn replacing_ops_cut_the_gradient_only_where_they_replace() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 4, 3), &dev).unwrap()).unwrap();
    let none = HashMap::new();
    let sel = Selection {
        positions: Some(Positions::Indices(vec![1, 3])),
        ..Default::default()
    };
    let grad_of = |op: Op| -> Vec<f32> {
        let y = iv("blocks.0.hook_resid_pre", sel.clone(), op)
            .apply(x.as_tensor(), &none)
            .unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let replaced = grad_of(Op::Set {
        value: Values::Scalar(2.0),
    });
    let want_cut: Vec<f32> = (0..4)
        .flat_map(|p| [if p == 1 || p == 3 { 0.0 } else { 1.0 }; 3])
        .collect();
    assert_eq!(
        replaced, want_cut,
        "set: zero gradient at positions 1 and 3 only"
    );
    assert_eq!(grad_of(Op::Zero), want_cut);
    assert_eq!(
        grad_of(Op::Add {
            vector: Values::Vector(vec![1.0, 2.0, 3.0]),
            coef: 0.5
        }),
        vec![1.0; 12],
        "add keeps it"
    );
    let scaled = grad_of(Op::Scale { factor: 3.0 });
    let want: Vec<f32> = (0..4)
        .flat_map(|p| [if p == 1 || p == 3 { 3.0 } else { 1.0 }; 3])
        .collect();
    assert_eq!(scaled, want);
}

#[test]
fn interventions_compose_in_the_order_added_and_respect_schedules() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let input = Input::single(&[0, 5, 6, 7], &dev).unwrap();
    let point = "blocks.1.hook_mlp_out";
    let run = |ivs: Vec<Intervention>, step: u64| {
        let mut h = Hooks::none()
            .intervene_all(ivs)
            .capture(Selector::parse(point).unwrap());
        h.set_step(step);
        m.model.forward(&input, &mut h).unwrap();
        h.cache().by_name(point).unwrap().clone()
    };
    let plain = run(vec![], 0);
    let scale = iv(point, Selection::default(), Op::Scale { factor: 2.0 });
    let add = iv(
        point,
        Selection::default(),
        Op::Add {
            vector: Values::Scalar(1.0),
            coef: 1.0,
        },
    );
    let scale_then_add = run(vec![scale.clone(), add.clone()], 0);
    let add_then_scale = run(vec![add.clone(), scale.clone()], 0);
    assert!(max_diff(&scale_then_add, &((&plain * 2.0).unwrap() + 1.0).unwrap()) < 1e-5);
    assert!(max_diff(&add_then_scale, &((&plain + 1.0).unwrap() * 2.0).unwrap()) < 1e-5);
    let windowed = Intervention {
        when: Schedule {
            from: Some(10),
            until: Some(20),
        },
        ..scale
    };
    assert_eq!(
        max_diff(&run(vec![windowed.clone()], 5), &plain),
        0.0,
        "before the window"
    );
    assert!(
        max_diff(&run(vec![windowed.clone()], 10), &(&plain * 2.0).unwrap()) < 1e-6,
        "inside"
    );
    assert_eq!(
        max_diff(&run(vec![windowed], 20), &plain),
        0.0,
        "after the window"
    );
}

fn every_op() -> Vec<Intervention> {
    let sel = Selection {
        rows: Some(vec![0]),
        positions: Some(Positions::Last),
        heads: Some(vec![1]),
        units: Some(vec![2, 3]),
    };
    vec![
        iv("blocks.0.attn.hook_z", sel.clone(), Op::Record),
        iv("blocks.0.attn.hook_z", sel.clone(), Op::Zero),
        iv(
            "blocks.1.mlp.hook_post",
            Selection::default(),
            Op::Mean {
                mean: Values::Vector(vec![0.5; 96]),
            },
        ),
        iv(
            "blocks.0.attn.hook_pattern",
            Selection {
                positions: Some(Positions::Range { start: 0, end: -1 }),
                ..Default::default()
            },
            Op::Set {
                value: Values::Scalar(0.25),
            },
        ),
        iv(
            "blocks.1.hook_resid_pre",
            Selection {
                positions: Some(Positions::PerRow(vec![vec![0, -1]])),
                ..Default::default()
            },
            Op::Patch {
                source: "clean".into(),
                rows: Some(vec![0]),
            },
        ),
        iv(
            "blocks.1.hook_resid_post",
            Selection::default(),
            Op::Add {
                vector: Values::Tensor {
                    shape: vec![1, 32],
                    data: vec![0.1; 32],
                },
                coef: 4.0,
            },
        ),
        iv(
            "blocks.0.hook_attn_out",
            Selection::default(),
            Op::Scale { factor: -1.0 },
        ),
        iv(
            "blocks.0.hook_resid_mid",
            Selection::default(),
            Op::ProjectOut {
                basis: Values::Vector(vec![(1.0f64 / 32.0).sqrt(); 32]),
            },
        ),
        iv(
            "blocks.0.hook_mlp_out",
            Selection::default(),
            Op::SubspacePatch {
                basis: Values::Tensor {
                    shape: vec![2, 32],
                    // e0 and e1: orthonormal rows.
                    data: (0..64)
                        .map(|i| if i == 0 || i == 33 { 1.0 } else { 0.0 })
                        .collect(),
                },
                source: "clean".into(),
            },
        ),
        Intervention {
            when: Schedule {
                from: Some(100),
                until: None,
            },
            ..iv("hook_embed", Selection::default(), Op::Zero)
        },
        iv(
            "blocks.0.attn.hook_pattern",
            Selection {
                heads: Some(vec![0]),
                ..Default::default()
            },
            Op::PrevToken { strength: 0.75 },
        ),
        iv(
            "blocks.1.attn.hook_pattern",
            Selection::default(),
            Op::Induction { strength: 1.0 },
        ),
    ]
}

#[test]
fn pattern_clamps_write_the_perfect_patterns() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    // Tokens 5 6 7 5 6 9: the second 5 and 6 have earlier occurrences.
    let toks = [5u32, 6, 7, 5, 6, 9];
    let input = Input::single(&toks, &dev).unwrap();
    let ivs = [
        iv(
            "blocks.0.attn.hook_pattern",
            Selection {
                heads: Some(vec![1]),
                ..Default::default()
            },
            Op::PrevToken { strength: 0.75 },
        ),
        iv(
            "blocks.1.attn.hook_pattern",
            Selection::default(),
            Op::Induction { strength: 1.0 },
        ),
    ];
    let mut h = Hooks::none()
        .intervene_all(ivs)
        .capture(Selector::parse("blocks.*.attn.hook_pattern").unwrap());
    m.model.forward(&input, &mut h).unwrap();
    let p0 = h
        .cache()
        .head(HookPoint::Pattern(0), 1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (t, row) in p0.iter().enumerate() {
        let mut want = vec![0f32; 6];
        if t == 0 {
            want[0] = 1.0;
        } else {
            want[t - 1] = 0.75;
            want[t] = 0.25;
        }
        assert_eq!(row, &want, "previous-token row {t}");
    }
    let other = h
        .cache()
        .head(HookPoint::Pattern(0), 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(
        other[3][2] != 1.0 && other[3][2] > 0.0,
        "unselected heads keep their own pattern"
    );
    let p1 = h
        .cache()
        .head(HookPoint::Pattern(1), 2)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Query 3 (token 5) attends to the token after the earlier 5 (position 1), query 4 (token 6)
    // to position 2; tokens without an earlier occurrence attend to themselves.
    let argmax: Vec<usize> = p1
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(argmax, vec![0, 1, 2, 1, 2, 5]);
    assert!(p1
        .iter()
        .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-6));
    // Outside a pattern point the rule clamps are rejected before compute.
    let bad = iv(
        "blocks.0.attn.hook_z",
        Selection::default(),
        Op::PrevToken { strength: 1.0 },
    );
    let err = m
        .model
        .forward(&input, &mut Hooks::none().intervene(bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention patterns"), "{err}");
}

#[test]
fn every_op_round_trips_through_json_and_toml() {
    for spec in every_op() {
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<Intervention>(&json).unwrap(),
            spec,
            "json: {json}"
        );
        let toml_text = toml::to_string(&spec).unwrap();
        assert_eq!(
            toml::from_str::<Intervention>(&toml_text).unwrap(),
            spec,
            "toml:\n{toml_text}"
        );
    }
    // A hand-written TOML file reads as expected.
    let text = r#"
        at = "blocks.1.attn.hook_z"
        select = { heads = [0, 3], positions = { indices = [-1] } }
        op = { kind = "add", vector = 0.5 }
        when = { from = 0, until = 50 }
    "#;
    let spec: Intervention = toml::from_str(text).unwrap();
    assert_eq!(spec.at, HookPoint::Z(1));
    assert_eq!(
        spec.op,
        Op::Add {
            vector: Values::Scalar(0.5),
            coef: 1.0
        }
    );
}

#[test]
fn every_op_validates_and_runs_on_a_real_model() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let input = Input::single(&[0, 5, 6, 7, 8], &dev).unwrap();
    let mut rec = Hooks::none().capture_all();
    m.model.forward(&input, &mut rec).unwrap();
    let clean = rec.take_cache();
    for spec in every_op() {
        let mut h = Hooks::none()
            .source("clean", clean.clone())
            .intervene(spec.clone());
        let out = m.model.forward(&input, &mut h);
        assert!(out.is_ok(), "{spec:?}: {:?}", out.err());
    }
}

#[test]
fn invalid_specs_fail_before_compute_with_a_message() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let input = Input::single(&[0, 5, 6, 7], &dev).unwrap();
    let err = |spec: Intervention| {
        let mut h = Hooks::none().intervene(spec);
        m.model.forward(&input, &mut h).unwrap_err().to_string()
    };
    let cases: Vec<(Intervention, &str)> = vec![
        (
            iv(
                "blocks.0.attn.hook_z",
                Selection {
                    heads: Some(vec![4]),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "head 4 is out of range",
        ),
        (
            iv(
                "blocks.0.attn.hook_z",
                Selection {
                    positions: Some(Positions::Indices(vec![9])),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "position 9 is out of range",
        ),
        (
            iv(
                "blocks.0.attn.hook_z",
                Selection {
                    positions: Some(Positions::Indices(vec![-5])),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "position -5 is out of range",
        ),
        (
            iv(
                "blocks.0.mlp.hook_post",
                Selection {
                    units: Some(vec![96]),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "unit 96 is out of range",
        ),
        (
            iv(
                "blocks.0.mlp.hook_post",
                Selection {
                    rows: Some(vec![1]),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "batch row 1 is out of range",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection {
                    heads: Some(vec![0]),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "has no head dimension",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::Set {
                    value: Values::Vector(vec![1.0; 7]),
                },
            ),
            "does not broadcast",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::Patch {
                    source: "nope".into(),
                    rows: None,
                },
            ),
            "patch source 'nope' is not registered",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::ProjectOut {
                    basis: Values::Vector(vec![1.0; 5]),
                },
            ),
            "basis of shape [5]",
        ),
        (
            iv("blocks.5.hook_resid_pre", Selection::default(), Op::Zero),
            "layer 5 is out of range",
        ),
        // Specs that could never act, or would act wrongly, are refused before any compute.
        (
            Intervention {
                when: Schedule {
                    from: Some(4),
                    until: Some(4),
                },
                ..iv("blocks.0.hook_resid_pre", Selection::default(), Op::Zero)
            },
            "holds no step",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::ProjectOut {
                    basis: Values::Vector(vec![0.0; 32]),
                },
            ),
            "all zeros",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::ProjectOut {
                    basis: Values::Tensor {
                        shape: vec![2, 32],
                        data: (0..64)
                            .map(|i| if i % 32 == 0 { 1.0 } else { 0.0 })
                            .collect(),
                    },
                },
            ),
            "rows 0 and 1 have dot product 1.000000",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::Add {
                    vector: Values::Scalar(1.0),
                    coef: f64::NAN,
                },
            ),
            "steering coefficient at blocks.0.hook_resid_pre must be finite, got NaN",
        ),
        (
            iv(
                "blocks.0.hook_resid_pre",
                Selection::default(),
                Op::Set {
                    value: Values::Vector(vec![0.0, f64::INFINITY]),
                },
            ),
            "non-finite number (inf at index 1)",
        ),
        (
            iv(
                "blocks.0.attn.hook_z",
                Selection {
                    positions: Some(Positions::PerRow(vec![vec![0], vec![1]])),
                    ..Default::default()
                },
                Op::Zero,
            ),
            "give 2 rows for a batch of 1",
        ),
        (
            iv("blocks.0.attn.hook_rot_q", Selection::default(), Op::Zero),
            "no such point",
        ),
    ];
    for (spec, want) in cases {
        let e = err(spec.clone());
        assert!(e.contains(want), "{spec:?}: {e:?} should mention {want:?}");
    }
    // Ranges: end is exclusive and may be the length; reversed ranges are refused.
    let e = err(iv(
        "blocks.0.hook_resid_pre",
        Selection {
            positions: Some(Positions::Range { start: 3, end: 1 }),
            ..Default::default()
        },
        Op::Zero,
    ));
    assert!(e.contains("empty or reversed"), "{e}");
    let e = err(iv(
        "blocks.0.hook_resid_pre",
        Selection {
            positions: Some(Positions::Range { start: 0, end: 5 }),
            ..Default::default()
        },
        Op::Zero,
    ));
    assert!(e.contains("position 5 is out of range"), "{e}");
    let mut h = Hooks::none()
        .intervene(iv(
            "blocks.0.hook_resid_pre",
            Selection {
                positions: Some(Positions::Range { start: 2, end: 4 }),
                ..Default::default()
            },
            Op::Zero,
        ))
        .capture(HookPoint::ResidPre(0));
    m.model.forward(&input, &mut h).unwrap();
    let zeroed: Vec<f32> = h
        .cache()
        .get(HookPoint::ResidPre(0))
        .unwrap()
        .abs()
        .unwrap()
        .sum(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        zeroed[0] > 0.0 && zeroed[1] > 0.0 && zeroed[2] == 0.0 && zeroed[3] == 0.0,
        "{zeroed:?}"
    );
    // Bad files: an unknown hook name suggests the nearest; unknown fields and ops are named.
    let e = serde_json::from_str::<Intervention>(
        r#"{"at": "blocks.0.attn.hook_zz", "op": {"kind": "zero"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean 'blocks.0.attn.hook_z'"), "{e}");
    let e = serde_json::from_str::<Intervention>(
        r#"{"at": "blocks.0.attn.hook_z", "op": {"kind": "explode"}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown variant `explode`"), "{e}");
    let e = toml::from_str::<Intervention>(
        "at = \"hook_embed\"\nop = { kind = \"zero\" }\nselekt = {}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `selekt`"), "{e}");
}
