//! Mixtures of experts: the four families against Hugging Face and TransformerBridge on the
//! committed fixtures (`tools/fixtures/moe.py`), and the expert interventions' guarantees.
//!
//! Tolerance: 1e-4 absolute in f32 for activations and logits (processed logits after removing
//! each position's mean).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, max_diff};
use patchclamp_core::{load, HookPoint, Hooks, Input, Intervention, Processing};

const TOL: f32 = 1e-4;
const FAMILIES: &[&str] = &["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"];

use common::{centered, reference, reference_tokens as tokens};

fn iv(json: &str) -> Intervention {
    serde_json::from_str(json).unwrap()
}

#[test]
fn every_family_matches_hugging_face_and_transformer_bridge() {
    let dev = Device::Cpu;
    for name in FAMILIES {
        let r = reference(name);
        let m = load(&fixture(name), &dev).unwrap().model;
        let ids = tokens(&r, 0);
        let mut hooks = Hooks::none().capture_all();
        let logits = m
            .forward(&Input::single(&ids, &dev).unwrap(), &mut hooks)
            .unwrap();
        let cache = hooks.take_cache();
        let d = max_diff(&logits.squeeze(0).unwrap(), &r["hf.logits.0"]);
        assert!(d <= TOL, "{name}: logits differ from Hugging Face by {d:e}");
        // Hidden states: the input of every block.
        for l in 0..m.cfg.n_layers {
            let got = cache
                .get(HookPoint::ResidPre(l))
                .unwrap()
                .squeeze(0)
                .unwrap();
            let d = max_diff(&got, &r[&format!("hf.hidden.{l}")]);
            assert!(d <= TOL, "{name}: block {l}'s input differs by {d:e}");
        }
        // Router logits and the chosen experts of every layer that routes.
        let moe_layers = m.cfg.moe_layers();
        assert!(!moe_layers.is_empty(), "{name} routes somewhere");
        for &l in &moe_layers {
            let got = cache.get(HookPoint::RouterLogits(l)).unwrap();
            let e = got.dim(2).unwrap();
            let got = got.reshape(((), e)).unwrap();
            let d = max_diff(&got, &r[&format!("hf.router.{l}")]);
            assert!(
                d <= TOL,
                "{name}: layer {l}'s router logits differ by {d:e}"
            );
            let mut ours: Vec<Vec<i64>> = cache
                .get(HookPoint::ExpertIndices(l))
                .unwrap()
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec2()
                .unwrap();
            ours.iter_mut().for_each(|row| row.sort_unstable());
            let theirs: Vec<Vec<i64>> = r[&format!("hf.indices.{l}")].to_vec2().unwrap();
            assert_eq!(ours, theirs, "{name}: layer {l} routes tokens differently");
        }
        // TransformerBridge's points that we name alike (same meaning, same numbers).
        let mut compared = 0;
        for (key, want) in &r {
            let Some(hook) = key.strip_prefix("tl.") else {
                continue;
            };
            let p: HookPoint = hook.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = cache
                .get(p)
                .unwrap_or_else(|| panic!("{name}: {hook} not recorded"));
            let got = match p {
                // The bridge's router sees tokens flattened, `[batch·pos, experts]`.
                HookPoint::RouterLogits(_) => got.reshape(want.dims()).unwrap(),
                _ => got.squeeze(0).unwrap(),
            };
            assert_eq!(got.dims(), want.dims(), "{name}: shape of {hook}");
            let d = max_diff(&got, want);
            assert!(
                d <= TOL,
                "{name}: {hook} differs from TransformerBridge by {d:e}"
            );
            compared += 1;
        }
        assert!(
            compared >= 20,
            "{name}: only {compared} bridge points compared"
        );
        // The second prompt, and the processed weights (fold_ln folds ln2 into every reader).
        let ids1 = tokens(&r, 1);
        let input1 = Input::single(&ids1, &dev).unwrap();
        let l1 = m.forward(&input1, &mut Hooks::none()).unwrap();
        let d = max_diff(&l1.squeeze(0).unwrap(), &r["hf.logits.1"]);
        assert!(d <= TOL, "{name}: prompt 1's logits differ by {d:e}");
        let mut p = m.clone();
        p.process(Processing::all()).unwrap();
        let lp = p.forward(&input1, &mut Hooks::none()).unwrap();
        let d = max_diff(
            &centered(&lp.squeeze(0).unwrap()),
            &centered(&r["hf.logits.1"]),
        );
        assert!(d <= TOL, "{name}: processed logits differ by {d:e}");
    }
}

#[test]
fn hook_points_list_the_routing_and_every_expert() {
    let dev = Device::Cpu;
    let m = load(&fixture("qwen2_moe"), &dev).unwrap().model;
    let names: Vec<String> = HookPoint::all(&m.cfg)
        .iter()
        .map(|p| p.to_string())
        .collect();
    // Layer 0 is dense (mlp_only_layers), layer 1 routes over 6 experts with a shared one.
    assert!(names.contains(&"blocks.0.mlp.hook_post".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("blocks.0.mlp.gate")));
    for n in [
        "blocks.1.mlp.gate.hook_in",
        "blocks.1.mlp.gate.hook_out",
        "blocks.1.mlp.hook_expert_weights",
        "blocks.1.mlp.hook_expert_indices",
        "blocks.1.mlp.hook_topk_weights",
        "blocks.1.mlp.experts.5.hook_post",
        "blocks.1.mlp.shared_expert.hook_out",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing");
    }
    assert!(!names.contains(&"blocks.1.mlp.hook_post".to_string()));
    let e = HookPoint::parse_for("blocks.0.mlp.gate.hook_out", &m.cfg).unwrap_err();
    assert!(e.to_string().contains("dense MLP"), "{e}");
    let e = HookPoint::parse_for("blocks.1.mlp.experts.6.hook_pre", &m.cfg).unwrap_err();
    assert!(e.to_string().contains("6 experts"), "{e}");
}

/// Runs `name`'s prompt 0 with `ivs`, recording the routing of every MoE layer.
fn routed(
    name: &str,
    ivs: &[Intervention],
) -> (Tensor, patchclamp_core::ActivationCache, Vec<usize>) {
    let dev = Device::Cpu;
    let m = load(&fixture(name), &dev).unwrap().model;
    let r = reference(name);
    let ids = tokens(&r, 0);
    let mut hooks = Hooks::none()
        .capture(patchclamp_core::Selector::parse("blocks.*.mlp.hook_expert_indices").unwrap())
        .capture(patchclamp_core::Selector::parse("blocks.*.mlp.hook_topk_weights").unwrap())
        .capture(patchclamp_core::Selector::parse("blocks.*.mlp.gate.hook_out").unwrap())
        .intervene_all(ivs.iter().cloned());
    let logits = m
        .forward(&Input::single(&ids, &dev).unwrap(), &mut hooks)
        .unwrap();
    (logits, hooks.take_cache(), m.cfg.moe_layers())
}

fn indices(c: &patchclamp_core::ActivationCache, l: usize) -> Vec<Vec<u32>> {
    c.get(HookPoint::ExpertIndices(l))
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn no_intervention_and_an_unrouted_switch_off_leave_the_output_bit_exact() {
    let dev = Device::Cpu;
    let m = load(&fixture("olmoe"), &dev).unwrap().model;
    let ids = tokens(&reference("olmoe"), 0);
    let input = Input::single(&ids, &dev).unwrap();
    let plain = m.forward(&input, &mut Hooks::none()).unwrap();
    let (recorded, cache, layers) = routed("olmoe", &[]);
    assert_eq!(
        max_diff(&plain, &recorded),
        0.0,
        "recording changes nothing"
    );
    let mut all = Hooks::none().capture_all();
    let everything = m.forward(&input, &mut all).unwrap();
    assert_eq!(
        max_diff(&plain, &everything),
        0.0,
        "recording every point changes nothing"
    );
    assert!(!layers.is_empty() && cache.len() == 3 * layers.len());
    // An expert no token of a layer chose: with renormalised weights (Qwen3-MoE), switching it
    // off there changes no number. (Without renormalisation, as OLMoE, removing its logit
    // moves every token's softmax mass: the family's weights, recomputed.)
    let (plain, cache, layers) = routed("qwen3_moe", &[]);
    let l = *layers.last().unwrap();
    // At token 3, an expert it did not choose.
    let chosen = &indices(&cache, l)[3];
    let idle = (0..8u32).find(|e| !chosen.contains(e)).unwrap();
    let (off, _, _) = routed(
        "qwen3_moe",
        &[iv(&format!(
            r#"{{"at": "blocks.{l}.mlp.gate.hook_out", "select": {{"positions": {{"indices": [3]}}}}, "op": {{"kind": "switch_off", "experts": [{idle}]}}}}"#
        ))],
    );
    assert_eq!(max_diff(&plain, &off), 0.0);
}

#[test]
fn switching_an_expert_off_changes_exactly_the_slots_it_held() {
    for name in ["mixtral", "olmoe", "qwen3_moe"] {
        let (plain, base, layers) = routed(name, &[]);
        let l = layers[0];
        let before = indices(&base, l);
        // The most used expert of layer l.
        let n = base
            .get(HookPoint::RouterLogits(l))
            .unwrap()
            .dim(2)
            .unwrap();
        let mut count = vec![0usize; n];
        before
            .iter()
            .flatten()
            .for_each(|&e| count[e as usize] += 1);
        let target = (0..n).max_by_key(|&e| count[e]).unwrap() as u32;
        let (off, after_c, _) = routed(
            name,
            &[iv(&format!(
                r#"{{"at": "blocks.{l}.mlp.gate.hook_out", "op": {{"kind": "switch_off", "experts": [{target}]}}}}"#
            ))],
        );
        let after = indices(&after_c, l);
        let logits: Vec<Vec<f32>> = base
            .get(HookPoint::RouterLogits(l))
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (t, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(
                !a.contains(&target),
                "{name}: token {t} still routed to {target}"
            );
            if !b.contains(&target) {
                assert_eq!(a, b, "{name}: token {t} did not use {target} but moved");
                continue;
            }
            // The other experts stay; the freed slot goes to the best expert not chosen.
            let kept: Vec<u32> = b.iter().copied().filter(|&e| e != target).collect();
            assert!(kept.iter().all(|e| a.contains(e)), "{name}: token {t}");
            let newcomer = *a.iter().find(|e| !b.contains(e)).unwrap();
            let best = (0..n as u32)
                .filter(|e| !b.contains(e))
                .max_by(|&x, &y| logits[t][x as usize].total_cmp(&logits[t][y as usize]))
                .unwrap();
            assert_eq!(
                newcomer, best,
                "{name}: token {t}'s slot went to the wrong expert"
            );
        }
        // The output moved (the expert was used), and the weights still sum as the family's.
        assert!(max_diff(&plain, &off) > 1e-4, "{name}");
        let w = after_c.get(HookPoint::TopkWeights(l)).unwrap();
        let sums: Vec<f32> = w.sum(1).unwrap().to_vec1().unwrap();
        if name != "olmoe" {
            assert!(
                sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
                "{name}: renormalised"
            );
        } else {
            assert!(
                sums.iter().all(|&s| s > 0.0 && s < 1.0),
                "olmoe keeps softmax mass"
            );
        }
    }
}

#[test]
fn forcing_an_expert_routes_every_selected_token_to_it() {
    let (_, base, layers) = routed("mixtral", &[]);
    let l = layers[1];
    let (_, forced, _) = routed(
        "mixtral",
        &[iv(&format!(
            r#"{{"at": "blocks.{l}.mlp.gate.hook_out", "select": {{"positions": {{"indices": [2, 3]}}}}, "op": {{"kind": "force", "experts": [3]}}}}"#
        ))],
    );
    let (b, f) = (indices(&base, l), indices(&forced, l));
    for t in 0..b.len() {
        if t == 2 || t == 3 {
            assert!(
                f[t].contains(&3),
                "token {t} forced to expert 3: {:?}",
                f[t]
            );
            // Mixtral renormalises: the forced expert, just above the best, weighs the most.
            assert_eq!(f[t][0], 3);
        } else {
            assert_eq!(f[t], b[t], "token {t} was not selected");
        }
    }
    // A bias on the router logits (an `add` over experts) shifts the choice the same way.
    let (_, biased, _) = routed(
        "mixtral",
        &[iv(&format!(
            r#"{{"at": "blocks.{l}.mlp.gate.hook_out", "op": {{"kind": "add", "vector": [0, 0, 0, 100]}}}}"#
        ))],
    );
    assert!(indices(&biased, l).iter().all(|r| r.contains(&3)));
}

#[test]
fn scaling_an_expert_and_zeroing_the_shared_expert_act_on_their_outputs() {
    let dev = Device::Cpu;
    let m = load(&fixture("qwen2_moe"), &dev).unwrap().model;
    let ids = tokens(&reference("qwen2_moe"), 0);
    let input = Input::single(&ids, &dev).unwrap();
    let run = |ivs: Vec<Intervention>| {
        let mut h = Hooks::none()
            .capture(HookPoint::MlpOut(1))
            .capture(HookPoint::SharedOut(1))
            .intervene_all(ivs);
        m.forward(&input, &mut h).unwrap();
        h.take_cache()
    };
    let base = run(vec![]);
    let zeroed = run(vec![iv(
        r#"{"at": "blocks.1.mlp.shared_expert.hook_out", "op": {"kind": "zero"}}"#,
    )]);
    let out = |c: &patchclamp_core::ActivationCache| c.get(HookPoint::MlpOut(1)).unwrap().clone();
    let shared = base.get(HookPoint::SharedOut(1)).unwrap();
    // mlp_out = routed + shared: zeroing the shared expert removes exactly its part.
    let d = max_diff(&(out(&base) - shared).unwrap(), &out(&zeroed));
    assert!(d < 1e-6, "{d:e}");
    // Scaling every expert's hidden activation by 0 leaves only the shared expert.
    let ivs: Vec<Intervention> = (0..6)
        .map(|e| {
            iv(&format!(
                r#"{{"at": "blocks.1.mlp.experts.{e}.hook_post", "op": {{"kind": "scale", "factor": 0}}}}"#
            ))
        })
        .collect();
    let only_shared = run(ivs);
    let d = max_diff(&out(&only_shared), shared);
    assert!(d < 1e-6, "{d:e}");
}

#[test]
fn bad_expert_interventions_are_refused_before_any_compute() {
    let dev = Device::Cpu;
    let m = load(&fixture("mixtral"), &dev).unwrap().model; // 4 experts, top-2
    let input = Input::single(&[0, 5, 6], &dev).unwrap();
    let err = |json: &str| {
        m.forward(&input, &mut Hooks::none().intervene(iv(json)))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        r#"{"at": "blocks.0.mlp.gate.hook_out", "op": {"kind": "switch_off", "experts": [4]}}"#,
    );
    assert!(e.contains("expert") && e.contains('4'), "{e}");
    let e = err(
        r#"{"at": "blocks.0.mlp.gate.hook_out", "op": {"kind": "switch_off", "experts": [0, 1, 2]}}"#,
    );
    assert!(e.contains("fewer than the 2"), "{e}");
    let e = err(
        r#"{"at": "blocks.0.mlp.gate.hook_out", "op": {"kind": "force", "experts": [0, 1, 2]}}"#,
    );
    assert!(e.contains("only 2"), "{e}");
    let e = err(r#"{"at": "blocks.0.hook_mlp_out", "op": {"kind": "switch_off", "experts": [0]}}"#);
    assert!(e.contains("router logits"), "{e}");
    let e = err(
        r#"{"at": "blocks.0.mlp.hook_expert_weights", "select": {"positions": {"indices": [0]}}, "op": {"kind": "zero"}}"#,
    );
    assert!(e.contains("gate.hook_out"), "{e}");
    // A forced expert on a dense layer: the point does not exist there.
    let q = load(&fixture("qwen2_moe"), &dev).unwrap().model;
    let e = q
        .forward(
            &input,
            &mut Hooks::none().intervene(iv(
                r#"{"at": "blocks.0.mlp.gate.hook_out", "op": {"kind": "force", "experts": [0]}}"#,
            )),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("dense MLP"), "{e}");
}
