//! Steering vectors: each method computes what it says on the model's own block outputs, PCA
//! vectors are the top eigenvector with repeng's sign, and a zero coefficient changes nothing.

mod common;

use candle_core::Device;
use patchclamp_core::generate::{generate, generate_with, GenerateSpec, Sampling};
use patchclamp_core::{load, HookPoint, Hooks, Input, Model};
use patchclamp_lab::steering::{extract, steering_interventions, Method, Pair};

fn model() -> Model {
    load(&common::fixture("gpt2"), &Device::Cpu).unwrap().model
}

/// Pairs that differ in their last two tokens, over varied contexts.
fn pairs() -> Vec<Pair> {
    (0..8u32)
        .map(|i| {
            let ctx: Vec<u32> = (0..4).map(|j| 20 + (i * 7 + j * 3) % 60).collect();
            let with = |a: u32, b: u32| ctx.iter().copied().chain([a, b]).collect();
            Pair {
                positive: with(100 + i, 5),
                negative: with(150 + i, 9),
            }
        })
        .collect()
}

/// Block `l`'s output at the last token, computed here independently.
fn out(m: &Model, tokens: &[u32], l: usize) -> Vec<f64> {
    let mut h = Hooks::none().capture(HookPoint::ResidPost(l));
    m.forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut h)
        .unwrap();
    let t = h.cache().get(HookPoint::ResidPost(l)).unwrap().clone();
    t.get(0)
        .unwrap()
        .get(tokens.len() - 1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x as f64)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `Σ r rᵀ v` for rows `r`.
fn gram_times(rows: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    let mut o = vec![0.0; v.len()];
    for r in rows {
        let c = dot(r, v);
        for (a, x) in o.iter_mut().zip(r) {
            *a += c * x;
        }
    }
    o
}

fn centred(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = rows.len() as f64;
    let m: Vec<f64> = (0..rows[0].len())
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    rows.iter()
        .map(|r| r.iter().zip(&m).map(|(x, c)| x - c).collect())
        .collect()
}

/// `v` is a unit top eigenvector of `Σ r rᵀ`: the eigen-equation holds and no row direction
/// has a larger Rayleigh quotient.
fn assert_top_eigenvector(rows: &[Vec<f64>], v: &[f64], what: &str) {
    assert!((dot(v, v) - 1.0).abs() < 1e-6, "{what}: unit norm");
    let cv = gram_times(rows, v);
    let lambda = dot(v, &cv);
    let resid = cv
        .iter()
        .zip(v)
        .map(|(a, b)| (a - lambda * b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        resid < 1e-4 * lambda,
        "{what}: |Cv − λv| = {resid:e} for λ = {lambda}"
    );
    for r in rows {
        let n = dot(r, r).sqrt();
        let u: Vec<f64> = r.iter().map(|x| x / n).collect();
        assert!(
            dot(&u, &gram_times(rows, &u)) <= lambda * (1.0 + 1e-9),
            "{what}: not the top"
        );
    }
}

#[test]
fn each_method_computes_its_vector_from_the_block_outputs() {
    let m = model();
    let ps = pairs();
    let layers = [0, 1];
    for &l in &layers {
        let pos: Vec<Vec<f64>> = ps.iter().map(|p| out(&m, &p.positive, l)).collect();
        let neg: Vec<Vec<f64>> = ps.iter().map(|p| out(&m, &p.negative, l)).collect();
        let diffs: Vec<Vec<f64>> = pos
            .iter()
            .zip(&neg)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
            .collect();
        let n = ps.len() as f64;
        let mean: Vec<f64> = (0..diffs[0].len())
            .map(|j| diffs.iter().map(|d| d[j]).sum::<f64>() / n)
            .collect();
        let got = |method| {
            let v = extract(&m, &ps, &layers, method).unwrap();
            assert_eq!(v.layers, layers);
            v.vectors[l].iter().map(|&x| x as f64).collect::<Vec<f64>>()
        };
        // CAA: the mean difference, unnormalised; llama.cpp's mean: the same, unit-norm.
        let caa = got(Method::Mean);
        let err = caa
            .iter()
            .zip(&mean)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "layer {l}: mean differs by {err:e}");
        let norm = dot(&mean, &mean).sqrt();
        let lm = got(Method::LlamaMean);
        assert!(lm
            .iter()
            .zip(&mean)
            .all(|(a, b)| (a - b / norm).abs() < 1e-6));
        // The PCA methods: the top eigenvector of their data, sign by majority vote.
        let signed = |v: &[f64]| {
            let above = pos
                .iter()
                .zip(&neg)
                .filter(|(a, b)| dot(a, v) > dot(b, v))
                .count();
            assert!(
                2 * above >= ps.len(),
                "layer {l}: the sign fix holds ({above} of {})",
                ps.len()
            );
        };
        let v = got(Method::PcaDiff);
        assert_top_eigenvector(&centred(&diffs), &v, "pca_diff");
        signed(&v);
        let v = got(Method::LlamaPca);
        assert_top_eigenvector(&diffs, &v, "llama_pca");
        signed(&v);
        let halves: Vec<Vec<f64>> = pos
            .iter()
            .zip(&neg)
            .flat_map(|(a, b)| {
                let mid: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect();
                [a, b].map(|h| h.iter().zip(&mid).map(|(x, c)| x - c).collect::<Vec<f64>>())
            })
            .collect();
        let v = got(Method::PcaCenter);
        assert_top_eigenvector(&centred(&halves), &v, "pca_center");
        signed(&v);
    }
}

#[test]
fn steering_with_a_zero_coefficient_is_the_identity_and_a_large_one_steers() {
    let m = model();
    let v = extract(&m, &pairs(), &[0], Method::PcaDiff).unwrap();
    let spec = GenerateSpec {
        max_new_tokens: 10,
        sampling: Sampling::default(),
        stop_tokens: vec![],
    };
    let prompt = [3, 7, 8, 9];
    let plain = generate(&m, &prompt, &spec, |_| true).unwrap();
    let (zero, _) = generate_with(
        &m,
        &prompt,
        &spec,
        &steering_interventions(&v, 0.0),
        &[],
        |_| true,
    )
    .unwrap();
    assert_eq!(zero, plain, "coef 0 changes nothing");
    let (big, _) = generate_with(
        &m,
        &prompt,
        &spec,
        &steering_interventions(&v, 40.0),
        &[],
        |_| true,
    )
    .unwrap();
    assert_ne!(big.tokens, plain.tokens, "a large coefficient steers");
}

#[test]
fn pairs_that_cannot_give_a_direction_are_refused() {
    let m = model();
    let ps = pairs();
    let err = |ps: &[Pair], layers: &[usize], method| {
        extract(&m, ps, layers, method).unwrap_err().to_string()
    };
    assert!(err(&ps[..1], &[0], Method::PcaDiff).contains("at least two pairs"));
    assert!(err(&[], &[0], Method::Mean).contains("at least one pair"));
    assert!(err(&ps, &[], Method::Mean).contains("at least one layer"));
    assert!(err(&ps, &[5], Method::Mean).contains("layer 5 is out of range"));
    let same = vec![
        Pair {
            positive: vec![1, 2],
            negative: vec![1, 2]
        };
        2
    ];
    assert!(err(&same, &[0], Method::Mean).contains("same tokens"));
}

#[test]
fn directional_ablation_leaves_no_component_along_the_direction_anywhere() {
    use patchclamp_lab::steering::directional_ablation;
    for name in ["gpt2", "llama"] {
        let m = load(&common::fixture(name), &Device::Cpu).unwrap().model;
        let v = extract(&m, &pairs(), &[1], Method::PcaDiff)
            .unwrap()
            .vectors[0]
            .clone();
        let r: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let mut h = directional_ablation(&m.cfg, &v)
            .unwrap()
            .into_iter()
            .fold(Hooks::none(), |h, iv| h.intervene(iv));
        for l in 0..m.cfg.n_layers {
            h = h
                .capture(HookPoint::ResidPost(l))
                .capture(HookPoint::ResidPre(l));
        }
        let tokens = &pairs()[0].positive;
        m.forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut h)
            .unwrap();
        let mut plain = Hooks::none().capture(HookPoint::ResidPost(1));
        m.forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut plain)
            .unwrap();
        let along = |t: &candle_core::Tensor| -> f64 {
            let rows: Vec<Vec<f32>> = t.get(0).unwrap().to_vec2().unwrap();
            rows.iter()
                .map(|row| dot(&row.iter().map(|&x| x as f64).collect::<Vec<_>>(), &r).abs())
                .fold(0.0, f64::max)
        };
        let before = along(plain.cache().get(HookPoint::ResidPost(1)).unwrap());
        assert!(
            before > 1e-2,
            "{name}: the direction is present without ablation ({before})"
        );
        for l in 0..m.cfg.n_layers {
            for p in [HookPoint::ResidPre(l), HookPoint::ResidPost(l)] {
                let a = along(h.cache().get(p).unwrap());
                assert!(
                    a < 1e-4 * before.max(1.0),
                    "{name} {p}: {a:e} left along the direction"
                );
            }
        }
    }
    let m = model();
    assert!(directional_ablation(&m.cfg, &[1.0; 5]).is_err());
    assert!(directional_ablation(&m.cfg, &[0.0; 32]).is_err());
}

#[test]
fn linear_act_fits_affine_transport_and_zero_strength_is_the_identity() {
    use patchclamp_lab::steering::{fit_transport, linear_act};
    // Target = 3·source + 2 exactly: the fit recovers the map.
    let source: Vec<Vec<f64>> = (0..50)
        .map(|i| vec![(i as f64 * 0.37).sin(), i as f64 / 10.0])
        .collect();
    let target: Vec<Vec<f64>> = source
        .iter()
        .map(|r| vec![3.0 * r[0] + 2.0, -r[1] + 1.0])
        .collect();
    let t = fit_transport(&source, &target).unwrap();
    assert!(
        (t.scale[0] - 3.0).abs() < 1e-9 && (t.shift[0] - 2.0).abs() < 1e-9,
        "{t:?}"
    );
    // Unit 1 is reversed: sorted pairing makes the best monotone map a shift (scale ≥ 0).
    assert!(t.scale[1] >= 0.0);
    // Applied as an op: inside the band the map at strength λ, outside the identity.
    let iv = t.intervention(HookPoint::ResidPre(0), 0.5);
    let x = candle_core::Tensor::new(&[[[0.5f32, 2.0], [5.0, 100.0]]], &Device::Cpu).unwrap();
    let y: Vec<Vec<f32>> = iv
        .apply(&x, &Default::default())
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let want0 = 0.5 + 0.5 * ((3.0 - 1.0) * 0.5 + 2.0);
    assert!((y[0][0] as f64 - want0).abs() < 1e-5, "{y:?}");
    assert_eq!(
        y[1][0], 5.0,
        "outside the source band (max sin = 1) nothing moves"
    );
    assert_eq!(y[1][1], 100.0);
    // On a model: λ = 0 changes no bit; λ = 1 carries the source prompts' mean toward the target's.
    let m = model();
    let at = HookPoint::MlpPost(0);
    let (src, tgt): (Vec<Vec<u32>>, Vec<Vec<u32>>) = pairs()
        .into_iter()
        .map(|p| (p.negative, p.positive))
        .unzip();
    let fit = linear_act(&m, &src, &tgt, at).unwrap();
    let tokens = &src[0];
    let logits = |ivs: Vec<patchclamp_core::Intervention>| {
        let mut h = ivs
            .into_iter()
            .fold(Hooks::none(), |h, iv| h.intervene(iv))
            .capture(at);
        let l = m
            .forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut h)
            .unwrap();
        (l, h.cache().get(at).unwrap().clone())
    };
    let (plain, _) = logits(vec![]);
    let (zero, _) = logits(vec![fit.intervention(at, 0.0)]);
    assert_eq!(
        plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        zero.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "λ = 0 is the identity bit for bit"
    );
    // Pooled over every position of every prompt (what the fit pairs by quantile): at λ = 1
    // the source prompts' mean activation becomes the target prompts' (least squares keeps
    // the mean), and at λ = 0.5 it lies halfway.
    let pooled = |prompts: &[Vec<u32>], ivs: &[patchclamp_core::Intervention]| -> Vec<f64> {
        let mut rows: Vec<Vec<f32>> = vec![];
        for p in prompts {
            let mut h = ivs
                .iter()
                .cloned()
                .fold(Hooks::none(), |h, iv| h.intervene(iv))
                .capture(at);
            m.forward(&Input::single(p, &Device::Cpu).unwrap(), &mut h)
                .unwrap();
            rows.extend(
                h.cache()
                    .get(at)
                    .unwrap()
                    .get(0)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
            );
        }
        (0..rows[0].len())
            .map(|u| rows.iter().map(|r| r[u] as f64).sum::<f64>() / rows.len() as f64)
            .collect()
    };
    let (before, target) = (pooled(&src, &[]), pooled(&tgt, &[]));
    let full = pooled(&src, &[fit.intervention(at, 1.0)]);
    let half = pooled(&src, &[fit.intervention(at, 0.5)]);
    for u in 0..before.len() {
        assert!(
            (full[u] - target[u]).abs() < 1e-4 * (1.0 + target[u].abs()),
            "unit {u}: {} vs {}",
            full[u],
            target[u]
        );
        let mid = (before[u] + target[u]) / 2.0;
        assert!(
            (half[u] - mid).abs() < 1e-4 * (1.0 + mid.abs()),
            "unit {u}: λ = 0.5 is halfway"
        );
    }
    // An empty band or a NaN strength is refused.
    let mut bad = fit.clone();
    bad.low[0] = bad.high[0] + 1.0;
    let mut h = Hooks::none().intervene(bad.intervention(at, 1.0));
    let e = m
        .forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut h)
        .unwrap_err();
    assert!(e.to_string().contains("band"), "{e}");
    let mut h = Hooks::none().intervene(fit.intervention(at, f64::NAN));
    assert!(m
        .forward(&Input::single(tokens, &Device::Cpu).unwrap(), &mut h)
        .is_err());
}

#[test]
fn a_sweep_generates_each_scale_as_generate_would_and_averages_its_metric() {
    use patchclamp_lab::steering::{sweep, SweepSpec};
    let m = model();
    let v = extract(&m, &pairs(), &[1], Method::Mean).unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![3, 7, 8], vec![11, 4], vec![20, 21, 22, 23, 24]];
    let spec = SweepSpec {
        scales: vec![-6.0, 0.0, 6.0],
        generate: GenerateSpec {
            max_new_tokens: 6,
            sampling: Sampling::default(),
            stop_tokens: vec![],
        },
        batch: 2,
    };
    // The metric: the share of generated tokens that are even.
    let even = |_: usize, g: &patchclamp_core::generate::Generation| {
        g.tokens.iter().filter(|t| *t % 2 == 0).count() as f64 / g.tokens.len() as f64
    };
    let mut calls = vec![];
    let runs = sweep(
        &m,
        &prompts,
        &spec,
        |s| Ok(steering_interventions(&v, s)),
        Some(&even),
        |done, total| calls.push((done, total)),
    )
    .unwrap();
    assert_eq!(calls.last(), Some(&(9, 9)));
    for r in &runs {
        let ivs = steering_interventions(&v, r.scale);
        let mut total = 0.0;
        for (i, p) in prompts.iter().enumerate() {
            let (alone, _) = generate_with(&m, p, &spec.generate, &ivs, &[], |_| true).unwrap();
            assert_eq!(r.generations[i], alone, "scale {} prompt {i}", r.scale);
            total += even(i, &alone);
        }
        assert!((r.metric.unwrap() - total / 3.0).abs() < 1e-12);
    }
    let plain: Vec<_> = prompts
        .iter()
        .map(|p| generate(&m, p, &spec.generate, |_| true).unwrap())
        .collect();
    assert_eq!(runs[1].generations, plain, "scale 0 is plain generation");
    assert_ne!(runs[0].generations, runs[2].generations);
    // Scales that cannot make a sweep.
    for (scales, want) in [
        (vec![], "at least one scale"),
        (vec![1.0, 1.0], "given twice"),
        (vec![f64::NAN], "not a finite number"),
    ] {
        let bad = SweepSpec {
            scales,
            ..spec.clone()
        };
        let e = sweep(&m, &prompts, &bad, |_| Ok(vec![]), None, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[test]
fn dynamic_composition_of_a_zero_vector_is_plain_generation_and_alphas_follow_the_kl() {
    use patchclamp_lab::steering::dynamic::nucleus_kl;
    use patchclamp_lab::steering::{dynamic_composition, DynamicSpec};
    let m = model();
    let spec = DynamicSpec {
        alpha_max: 2.0,
        top_p: 0.95,
        generate: GenerateSpec {
            max_new_tokens: 8,
            sampling: Sampling {
                temperature: Some(2.0),
                seed: 4,
                ..Sampling::default()
            },
            stop_tokens: vec![],
        },
    };
    let prompt = [3, 7, 8, 9];
    let v = extract(&m, &pairs(), &[1], Method::Mean).unwrap();
    let zero = patchclamp_lab::steering::SteeringVectors {
        vectors: vec![vec![0.0; m.cfg.d_model]],
        ..v.clone()
    };
    // A zero vector: every α is 0 and the tokens are plain generation's, draw for draw.
    let r = dynamic_composition(&m, &prompt, &[steering_interventions(&zero, 1.0)], &spec).unwrap();
    let plain = generate(&m, &prompt, &spec.generate, |_| true).unwrap();
    assert_eq!(r.tokens, plain.tokens);
    assert!(r.alphas.iter().all(|a| a == &vec![0.0]), "{:?}", r.alphas);
    // A real vector: α_0 is the clipped nucleus KL of the prompt's next-token distributions
    // without and with the vector at α_max, computed here from two full forwards.
    let big = steering_interventions(&v, 1.0);
    let r = dynamic_composition(&m, &prompt, std::slice::from_ref(&big), &spec).unwrap();
    let last = |hooks: &mut Hooks| -> Vec<f32> {
        let l = m
            .forward(&Input::single(&prompt, &Device::Cpu).unwrap(), hooks)
            .unwrap();
        l.get(0)
            .unwrap()
            .get(prompt.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    // Steering acts at the last prompt position only (earlier ones are the unsteered prefix).
    let at_last = steering_interventions(&v, 2.0)
        .into_iter()
        .map(|mut iv| {
            iv.select.positions = Some(patchclamp_core::hooks::Positions::Indices(vec![-1]));
            iv
        })
        .fold(Hooks::none(), |h, iv| h.intervene(iv));
    let (z0, zs) = (last(&mut Hooks::none()), last(&mut { at_last }));
    let want = nucleus_kl(&z0, &zs, 0.95).clamp(0.0, 2.0);
    assert!(want > 0.0);
    assert!(
        (r.alphas[0][0] - want).abs() < 1e-4,
        "{} vs {want}",
        r.alphas[0][0]
    );
    assert!(r.alphas.iter().all(|a| (0.0..=2.0).contains(&a[0])));
    // KL of a distribution with itself is 0; an add that is not additive steering is refused.
    assert_eq!(nucleus_kl(&z0, &z0, 0.95), 0.0);
    let scale: patchclamp_core::Intervention =
        toml::from_str("at = 'blocks.0.hook_mlp_out'\nop = { kind = 'scale', factor = 2.0 }")
            .unwrap();
    let e = dynamic_composition(&m, &prompt, &[vec![scale]], &spec).unwrap_err();
    assert!(e.to_string().contains("not an add"), "{e}");
}

#[test]
fn caa_norm_rescaling_and_positions_and_head_vectors() {
    use patchclamp_lab::steering::{extract_at, head_steering, normalize_norms};
    let m = model();
    // Reading at −1 is `extract`; reading at −2 reads the second-to-last token.
    let a = extract_at(&m, &pairs(), &[0, 1], Method::Mean, -1).unwrap();
    assert_eq!(a, extract(&m, &pairs(), &[0, 1], Method::Mean).unwrap());
    let b = extract_at(&m, &pairs(), &[0, 1], Method::Mean, -2).unwrap();
    let want: Vec<f64> = {
        let (mut sum, n) = (vec![0.0; m.cfg.d_model], pairs().len() as f64);
        for p in pairs() {
            let (x, y) = (
                out(&m, &p.positive[..p.positive.len() - 1], 1),
                out(&m, &p.negative[..p.negative.len() - 1], 1),
            );
            for i in 0..sum.len() {
                sum[i] += (x[i] - y[i]) / n;
            }
        }
        sum
    };
    for (g, w) in b.vectors[1].iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-4);
    }
    let e = extract_at(&m, &pairs(), &[1], Method::Mean, -100).unwrap_err();
    assert!(e.to_string().contains("position"), "{e}");
    // Rescaled, both sets have at each block the mean of their norms, directions unchanged.
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let mut sets = vec![a.clone(), b.clone()];
    normalize_norms(&mut sets).unwrap();
    for li in 0..2 {
        let target = (norm(&a.vectors[li]) + norm(&b.vectors[li])) / 2.0;
        for (s, orig) in sets.iter().zip([&a, &b]) {
            assert!((norm(&s.vectors[li]) - target).abs() < 1e-4 * target);
            let cos: f64 = s.vectors[li]
                .iter()
                .zip(&orig.vectors[li])
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
                / (norm(&s.vectors[li]) * norm(&orig.vectors[li]));
            assert!(cos > 1.0 - 1e-6);
        }
    }
    // A per-head vector changes that head's hook_z only.
    let e = m.cfg.attn.d_head;
    let iv = head_steering(0, 1, &vec![1.0; e], 2.0);
    let mut with = Hooks::none().capture(HookPoint::Z(0)).intervene(iv);
    let mut plain = Hooks::none().capture(HookPoint::Z(0));
    let input = Input::single(&[3, 7, 8], &Device::Cpu).unwrap();
    m.forward(&input, &mut with).unwrap();
    m.forward(&input, &mut plain).unwrap();
    let d = (with.cache().get(HookPoint::Z(0)).unwrap()
        - plain.cache().get(HookPoint::Z(0)).unwrap())
    .unwrap();
    let d: Vec<Vec<Vec<f32>>> = d.get(0).unwrap().to_vec3().unwrap(); // [S, H, E]
    for pos in d {
        for (h, head) in pos.iter().enumerate() {
            let want = if h == 1 { 2.0 } else { 0.0 };
            assert!(
                head.iter().all(|&x| (x - want).abs() < 1e-5),
                "head {h}: {head:?}"
            );
        }
    }
}

#[test]
fn a_function_vector_sums_the_top_heads_mean_outputs() {
    use patchclamp_lab::steering::{function_vector, TaskPrompt};
    let m = model();
    let prompt = |t: Vec<u32>| TaskPrompt {
        answers: vec![t[0] + 1],
        tokens: t,
    };
    let clean: Vec<TaskPrompt> = (0..6u32)
        .map(|i| prompt(vec![10 + i, 20, 30 + i, 40]))
        .collect();
    let corrupted: Vec<TaskPrompt> = (0..6u32)
        .map(|i| prompt(vec![10 + i, 30 + i, 20, 40]))
        .collect();
    let fv = function_vector(&m, &clean, &corrupted, 2).unwrap();
    assert_eq!(fv.heads.len(), 2);
    let (a, b) = (fv.heads[0], fv.heads[1]);
    assert!(fv.aie[a.0][a.1] >= fv.aie[b.0][b.1]);
    let best = fv
        .aie
        .iter()
        .flatten()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(
        fv.aie[a.0][a.1], best,
        "the first head has the largest effect"
    );
    // The vector is Σ (mean z · W_O[h] + b_O) over the heads: rebuild it from the recorded
    // hook_result (z · W_O[h] without the bias) at the clean prompts' last token.
    let mut want = vec![0f64; m.cfg.d_model];
    for &(l, h) in &fv.heads {
        for p in &clean {
            let mut hooks = Hooks::none().capture(HookPoint::Result(l));
            m.forward(&Input::single(&p.tokens, &Device::Cpu).unwrap(), &mut hooks)
                .unwrap();
            let r: Vec<f32> = hooks
                .cache()
                .get(HookPoint::Result(l))
                .unwrap()
                .get(0)
                .unwrap()
                .get(p.tokens.len() - 1)
                .unwrap()
                .get(h)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (w, x) in want.iter_mut().zip(r) {
                *w += x as f64 / clean.len() as f64;
            }
        }
        if let Some(b) = &m.weights.blocks[l].attn.b_o {
            for (w, x) in want.iter_mut().zip(b.to_vec1::<f32>().unwrap()) {
                *w += x as f64;
            }
        }
    }
    for (g, w) in fv.vector.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-4, "{g} vs {w}");
    }
    assert!(function_vector(&m, &clean, &corrupted, 0).is_err());
}

#[test]
fn the_steering_battery_moves_the_style_rate_where_each_method_says() {
    // A shortened K8 (600 steps, 32 prompts): the checks that hold at this size. The full
    // battery is `patchclamp lab steering`.
    use patchclamp_lab::steering::battery::{run, BatterySpec};
    let spec = BatterySpec {
        steps: 600,
        prompts: 32,
        ..BatterySpec::default()
    };
    let mut stages = vec![];
    let r = run(&spec, |s| stages.push(s.to_string())).unwrap();
    assert_eq!(stages.len(), 7, "{stages:?}");
    // The model learned the styles: A-started prompts speak A, B-started ones B.
    assert!(r.a_start_rate > 0.9 && r.b_start_rate < 0.1, "{r:?}");
    let (lo, mid, hi) = (r.caa.rates[0], r.caa.rates[2], r.caa.rates[4]);
    assert!(lo < mid - 0.1 && hi > mid + 0.2, "CAA {:?}", r.caa);
    assert_eq!(mid, r.neutral_rate, "α = 0 is unsteered generation");
    assert!(r.act_identity);
    assert_eq!(
        r.act.rates[0], r.neutral_rate,
        "λ = 0 is unsteered generation"
    );
    assert!(r.act.rates[2] > r.act.rates[0] + 0.2, "AcT {:?}", r.act);
    let d = &r.dynamic;
    assert!(d.min_alpha >= 0.0 && d.max_alpha <= 2.0 && d.mean_alpha.len() == 24);
    assert_eq!(r.checks.len(), 11);
}

#[test]
fn dynamic_composition_equals_its_replay_without_the_cache() {
    // Replays a dynamic run the slow way: at step t, one full forward over the sequence with
    // α_i added at each earlier position i, and the probe's two full forwards (α = 0 and α_max
    // at position t): the same α_t and the same tokens.
    use patchclamp_core::generate::next_token;
    use patchclamp_core::hooks::{Positions, Values};
    use patchclamp_core::rng::Rng;
    use patchclamp_lab::steering::dynamic::nucleus_kl;
    use patchclamp_lab::steering::{dynamic_composition, DynamicSpec};
    let m = model();
    let v = extract(&m, &pairs(), &[1], Method::Mean).unwrap();
    let spec = DynamicSpec {
        alpha_max: 2.0,
        top_p: 0.95,
        generate: GenerateSpec {
            max_new_tokens: 6,
            sampling: Sampling {
                temperature: Some(1.5),
                seed: 9,
                ..Sampling::default()
            },
            stop_tokens: vec![],
        },
    };
    let prompt = [5u32, 11, 12];
    let r = dynamic_composition(&m, &prompt, &[steering_interventions(&v, 1.0)], &spec).unwrap();
    let add = |pos: usize, coef: f64| patchclamp_core::Intervention {
        at: HookPoint::ResidPost(1),
        select: patchclamp_core::Selection {
            positions: Some(Positions::Indices(vec![pos as i64])),
            ..Default::default()
        },
        op: patchclamp_core::Op::Add {
            vector: Values::Vector(v.vectors[0].iter().map(|&x| x as f64).collect()),
            coef,
        },
        when: Default::default(),
        decode: None,
    };
    let n = prompt.len();
    let mut seq = prompt.to_vec();
    let mut out = vec![];
    let mut rng = Rng::new(9);
    for t in 0..r.tokens.len() {
        let last = |alpha_now: f64| -> Vec<f32> {
            let mut h = (0..t).fold(Hooks::none(), |h, i| {
                h.intervene(add(n - 1 + i, r.alphas[i][0]))
            });
            h = h.intervene(add(n - 1 + t, alpha_now));
            let l = m
                .forward(&Input::single(&seq, &Device::Cpu).unwrap(), &mut h)
                .unwrap();
            l.get(0)
                .unwrap()
                .get(seq.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let want = nucleus_kl(&last(0.0), &last(2.0), 0.95).clamp(0.0, 2.0);
        assert!(
            (r.alphas[t][0] - want).abs() < 1e-4,
            "step {t}: {} vs {want}",
            r.alphas[t][0]
        );
        let z = last(r.alphas[t][0]);
        let tok = next_token(&z, &seq, &out, &spec.generate.sampling, &mut rng).unwrap();
        assert_eq!(tok, r.tokens[t], "step {t}");
        out.push(tok);
        seq.push(tok);
    }
}

#[test]
fn linear_act_from_prompts_to_themselves_is_refused() {
    use patchclamp_lab::steering::linear_act;
    let m = model();
    let p = vec![vec![3u32, 7, 8], vec![9, 10, 11]];
    let e = linear_act(&m, &p, &p, HookPoint::ResidPost(0)).unwrap_err();
    assert!(e.to_string().contains("the same"), "{e}");
}
