//! Activation-patching sweeps: batched, prefix-reusing sweeps equal one forward per variant,
//! and the exact limits (patch everything → clean, nothing → corrupted) hold.

mod common;

use candle_core::Device;
use common::{fixture, max_diff, prompts};
use patchclamp_core::{load, HookPoint, Hooks, Input};
use patchclamp_lab::causal::patching::{
    metric_rows, patch_all, run_variant, sweep, Direction, Metric, PatchingConfig, Site,
};

#[test]
fn sweeps_equal_one_forward_per_variant() {
    let dev = Device::Cpu;
    for (name, sites) in [
        (
            "gpt2",
            vec![Site::ResidPre, Site::AttnOut, Site::Z, Site::Pattern],
        ),
        (
            "llama",
            vec![Site::ResidMid, Site::MlpOut, Site::K, Site::Q],
        ),
    ] {
        let m = load(&fixture(name), &dev).unwrap();
        let (clean, corrupt) = prompts(&m);
        for site in sites {
            for (direction, metric, window) in [
                (
                    Direction::Denoise,
                    Metric::LogitDiff {
                        answer: 40,
                        wrong: 50,
                    },
                    1,
                ),
                (Direction::Noise, Metric::Kl, 1),
                (Direction::Denoise, Metric::Prob { answer: 40 }, 2),
            ] {
                let cfg = PatchingConfig {
                    site,
                    direction,
                    metric,
                    batch: 5,
                    window,
                };
                let r = sweep(&m.model, &clean, &corrupt, &cfg, |_, _| {}).unwrap();
                assert_eq!(r.values.len(), r.n_layers * r.n_cols);
                for l in 0..r.n_layers {
                    for c in 0..r.n_cols {
                        let alone = run_variant(&m.model, &clean, &corrupt, &cfg, l, c).unwrap();
                        let d = (alone - r.at(l, c)).abs();
                        assert!(
                            d <= 1e-4,
                            "{name} {site:?} {direction:?} ({l}, {c}): sweep {} vs alone {alone}",
                            r.at(l, c)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn patching_everything_recovers_clean_and_nothing_leaves_corrupt() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let (clean, corrupt) = prompts(&m);
    let metric = Metric::LogitDiff {
        answer: 40,
        wrong: 50,
    };
    let mut rec = Hooks::none().capture_all();
    let clean_logits = m
        .model
        .forward(&Input::single(&clean, &dev).unwrap(), &mut rec)
        .unwrap();
    let clean_cache = rec.take_cache();
    let corrupt_logits = m
        .model
        .forward(&Input::single(&corrupt, &dev).unwrap(), &mut Hooks::none())
        .unwrap();
    for l in 0..2 {
        for p in [
            HookPoint::ResidPre(l),
            HookPoint::ResidMid(l),
            HookPoint::ResidPost(l),
        ] {
            let patched = patch_all(&m.model, &corrupt, &clean_cache, &[p]).unwrap();
            let d = max_diff(&patched, &clean_logits);
            assert!(d <= 1e-5, "patching all of {p} leaves {d:e}");
        }
    }
    let nothing = patch_all(&m.model, &corrupt, &clean_cache, &[]).unwrap();
    let d = max_diff(&nothing, &corrupt_logits);
    assert_eq!(d, 0.0);

    // Layer 0's residual differs only at the swapped name: patching that position recovers
    // everything (normalised 1), patching any other position nothing (normalised 0).
    let cfg = PatchingConfig {
        site: Site::ResidPre,
        direction: Direction::Denoise,
        metric,
        batch: 8,
        window: 1,
    };
    let r = sweep(&m.model, &clean, &corrupt, &cfg, |_, _| {}).unwrap();
    let clean_m = metric_rows(&clean_logits, metric, None).unwrap()[0];
    let corrupt_m = metric_rows(&corrupt_logits, metric, None).unwrap()[0];
    assert!((r.clean_metric - clean_m).abs() < 1e-5 && (r.corrupt_metric - corrupt_m).abs() < 1e-5);
    let diff_pos: Vec<usize> = (0..clean.len())
        .filter(|&i| clean[i] != corrupt[i])
        .collect();
    for c in 0..r.n_cols {
        let want = if diff_pos.contains(&c) && diff_pos.len() == 1 {
            1.0
        } else if diff_pos.contains(&c) {
            f32::NAN
        } else {
            0.0
        };
        if want.is_nan() {
            continue;
        }
        let got = r.normalized[c];
        assert!(
            (got - want).abs() < 1e-4,
            "position {c}: normalised {got}, want {want}"
        );
    }
}

#[test]
fn bad_sweeps_are_rejected() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let metric = Metric::LogitDiff {
        answer: 40,
        wrong: 50,
    };
    let cfg = PatchingConfig {
        site: Site::ResidPre,
        direction: Direction::Denoise,
        metric,
        batch: 4,
        window: 1,
    };
    let e = sweep(&m.model, &[0, 1, 2], &[0, 1], &cfg, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("same number of tokens (3 vs 2)"), "{e}");
    let cfg = PatchingConfig {
        metric: Metric::Prob { answer: 999 },
        ..cfg
    };
    let e = sweep(&m.model, &[0, 1], &[0, 2], &cfg, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("answer token id 999 is out of range"), "{e}");
}

/// TransformerLens's `get_act_patch_resid_pre` and `get_act_patch_attn_head_out_all_pos` on the
/// fixtures (committed by tools/fixtures/generate.py); tolerance 1e-4 absolute.
#[test]
fn sweeps_equal_transformer_lens_patching_matrices() {
    let dev = Device::Cpu;
    for name in ["gpt2", "llama"] {
        let m = load(&fixture(name), &dev).unwrap();
        let path = std::path::Path::new(&fixture(name)).join("patching.safetensors");
        let r = candle_core::safetensors::load(path, &dev).unwrap();
        let ids = |k: &str| -> Vec<u32> {
            r[k].to_dtype(candle_core::DType::U32)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (clean, corrupt, metric_ids) = (
            ids("clean_tokens"),
            ids("corrupt_tokens"),
            ids("metric_ids"),
        );
        let metric = Metric::LogitDiff {
            answer: metric_ids[0],
            wrong: metric_ids[1],
        };
        for (site, key) in [(Site::ResidPre, "resid_pre"), (Site::Z, "z")] {
            let cfg = PatchingConfig {
                site,
                direction: Direction::Denoise,
                metric,
                batch: 6,
                window: 1,
            };
            let ours = sweep(&m.model, &clean, &corrupt, &cfg, |_, _| {})
                .unwrap()
                .tensor()
                .unwrap();
            let theirs = &r[key];
            assert_eq!(ours.dims(), theirs.dims(), "{name} {key}");
            let d = max_diff(&ours, theirs);
            assert!(
                d <= 1e-4,
                "{name} {key}: max abs diff {d:e} from TransformerLens"
            );
        }
    }
}

#[test]
fn equal_reference_metrics_are_refused_not_normalised_to_nan() {
    use patchclamp_lab::causal::patching::check_references;
    assert!(check_references(1.5, 1.5).is_err());
    assert!(check_references(f32::NAN, 0.0).is_err());
    assert!(check_references(1.5, 0.5).is_ok());
}
