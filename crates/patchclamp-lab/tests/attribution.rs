//! Attribution patching: exact where the metric is linear in the activation, and ranked like
//! exact patching elsewhere.

mod common;

use candle_core::Device;
use common::{fixture, prompts};
use patchclamp_core::{load, HookPoint, Hooks, Input};
use patchclamp_lab::causal::attribution::{attribute, attribute_totals};
use patchclamp_lab::causal::patching::{
    metric_rows, patch_all, sweep, Direction, Metric, PatchingConfig, Site,
};

/// Spearman rank correlation.
fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let rank = |v: &[f32]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn attribution_is_exact_where_the_metric_is_linear() {
    let dev = Device::Cpu;
    for name in ["gpt2", "llama"] {
        let m = load(&fixture(name), &dev).unwrap();
        let (clean, corrupt) = prompts(&m);
        let metric = Metric::LogitDiff {
            answer: 40,
            wrong: 50,
        };
        // Logits are an affine function of ln_final.hook_normalized (the gain comes after it).
        let point = HookPoint::FinalNormalized;
        let est = attribute_totals(
            &m.model,
            &clean,
            &corrupt,
            &[point],
            Direction::Denoise,
            metric,
        )
        .unwrap()[0];
        let mut rec = Hooks::none().capture(point);
        m.model
            .forward(&Input::single(&clean, &dev).unwrap(), &mut rec)
            .unwrap();
        let patched = patch_all(&m.model, &corrupt, rec.cache(), &[point]).unwrap();
        let corrupt_logits = m
            .model
            .forward(&Input::single(&corrupt, &dev).unwrap(), &mut Hooks::none())
            .unwrap();
        let exact = metric_rows(&patched, metric, None).unwrap()[0]
            - metric_rows(&corrupt_logits, metric, None).unwrap()[0];
        assert!(
            (est - exact).abs() <= 1e-4 * exact.abs().max(1.0),
            "{name}: estimate {est} vs exact {exact}"
        );
    }
}

#[test]
fn attribution_ranks_heads_like_exact_patching() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let (clean, corrupt) = prompts(&m);
    let metric = Metric::LogitDiff {
        answer: 40,
        wrong: 50,
    };
    for site in [Site::Z, Site::ResidPre] {
        let exact = sweep(
            &m.model,
            &clean,
            &corrupt,
            &PatchingConfig {
                site,
                direction: Direction::Denoise,
                metric,
                batch: 8,
                window: 1,
            },
            |_, _| {},
        )
        .unwrap();
        let approx =
            attribute(&m.model, &clean, &corrupt, site, Direction::Denoise, metric).unwrap();
        assert_eq!(
            (exact.n_layers, exact.n_cols),
            (approx.n_layers, approx.n_cols)
        );
        let rho = spearman(&exact.values, &approx.values);
        eprintln!(
            "{site:?}: Spearman {rho:.3} over {} variants",
            exact.values.len()
        );
        assert!(
            rho >= 0.7,
            "{site:?}: Spearman {rho:.3} between attribution and exact patching"
        );
    }
}
