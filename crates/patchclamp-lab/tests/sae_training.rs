//! The SAE trainer's hand-derived backward against SAELens's training losses under torch
//! autograd (`tools/fixtures/sae.py` → tests/fixtures/saes/training-gradients.safetensors):
//! one batch, the same parameters, every gradient. Tolerance 1e-4 relative to each tensor's
//! largest gradient (f32 sums in different orders).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use patchclamp_lab::sae::train::{BDecInit, TrainArch, TrainSpec, Trainer};
use patchclamp_lab::train::{LrSchedule, OptimSpec};

fn reference() -> HashMap<String, Tensor> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/saes/training-gradients.safetensors"
    );
    candle_core::safetensors::load(p, &Device::Cpu).expect("regenerate with tools/fixtures/sae.py")
}

fn v(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn check(name: &str, arch: TrainArch) {
    let r = reference();
    let (d, s, b) = (6, 10, 8);
    let x = v(&r["x"]);
    let spec = TrainSpec {
        arch,
        d_in: d,
        d_sae: s,
        batch: b,
        steps: 1,
        lr: LrSchedule::constant(1.0),
        optim: OptimSpec::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        },
        unit_decoder: false,
        decoder_init_norm: 0.1,
        tied: false,
        b_dec_init: BDecInit::Zeros,
        aux_coef: 1.0,
        dead_window: 1000,
        normalize: false,
        seed: 0,
    };
    let mut tr = Trainer::new(spec, &x).unwrap();
    let get = |k: &str| v(&r[&format!("{name}.{k}")]);
    tr.params.w_enc_t = transpose(&get("W_enc"), d, s);
    tr.params.b_enc = get("b_enc");
    tr.params.w_dec = get("W_dec");
    tr.params.b_dec = get("b_dec");
    if name == "jumprelu" {
        tr.params.threshold = get("threshold");
    }
    let before = tr.params.clone();
    let st = tr.step(&x).unwrap();
    let loss = get("loss")[0] as f64;
    assert!(
        (st.loss - loss).abs() < 1e-4 * loss.abs(),
        "{name} loss {} vs SAELens {loss}",
        st.loss
    );
    // SGD at rate 1: the step is the gradient.
    let grad = |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(p, q)| p - q).collect() };
    let mut pairs = vec![
        (
            "W_enc",
            transpose(&grad(&before.w_enc_t, &tr.params.w_enc_t), s, d),
        ),
        ("b_enc", grad(&before.b_enc, &tr.params.b_enc)),
        ("W_dec", grad(&before.w_dec, &tr.params.w_dec)),
        ("b_dec", grad(&before.b_dec, &tr.params.b_dec)),
    ];
    if name == "jumprelu" {
        pairs.push(("threshold", grad(&before.threshold, &tr.params.threshold)));
    }
    for (pn, ours) in pairs {
        let want = get(&format!("grad.{pn}"));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = ours
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{name} grad {pn}: max diff {diff} (scale {scale})"
        );
    }
}

#[test]
fn standard_l1_gradients_equal_saelens_autograd() {
    check(
        "standard",
        TrainArch::Standard {
            l1: 0.7,
            l1_warm_up_steps: 0,
        },
    );
}

#[test]
fn jumprelu_gradients_equal_saelens_straight_through_estimator() {
    check(
        "jumprelu",
        TrainArch::Jumprelu {
            l0: 0.3,
            l0_warm_up_steps: 0,
            bandwidth: 0.5,
            init_threshold: 0.01,
        },
    );
}

/// A run stopped at a checkpoint and resumed ends with the same bits as one run straight
/// through (TopK with AuxK active, BatchTopK's threshold, Adam moments, dead counters).
#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    use patchclamp_lab::sae::run::{train, SaeRunOptions};
    use patchclamp_lab::sae::toy::Superposition;
    for arch in [
        TrainArch::Topk { k: 2 },
        TrainArch::Batchtopk {
            k: 2,
            threshold_lr: 0.05,
        },
    ] {
        let spec = TrainSpec {
            arch,
            d_in: 16,
            d_sae: 200,
            batch: 16,
            steps: 60,
            lr: LrSchedule::constant(3e-3),
            optim: OptimSpec::default(),
            unit_decoder: true,
            decoder_init_norm: 0.1,
            tied: false,
            b_dec_init: BDecInit::GeometricMedian,
            aux_coef: 1.0,
            dead_window: 2,
            normalize: true,
            seed: 9,
        };
        let source = || {
            let mut data = Superposition::new(64, 16, 0.05, 1);
            move |rows: usize| Ok(Some(data.sample(rows).0))
        };
        let dir = std::env::temp_dir().join(format!("pc-sae-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = dir.join("ck.safetensors");
        let opts = |resume, stop_after| SaeRunOptions {
            checkpoint: Some(&ck),
            checkpoint_every: 10,
            resume,
            identity: "toy".into(),
            stop_after,
        };
        let (whole, stats) = train(spec.clone(), source(), &opts(false, None), |_| {}).unwrap();
        assert!(
            stats.iter().any(|s| s.dead > 0 && s.aux > 0.0),
            "AuxK acted at some step"
        );
        let _ = train(spec.clone(), source(), &opts(false, Some(30)), |_| {}).unwrap();
        let (resumed, rest) = train(spec.clone(), source(), &opts(true, None), |_| {}).unwrap();
        assert_eq!(rest.len(), 30);
        assert_eq!(rest.last(), stats.last());
        assert_eq!(resumed.params, whole.params, "{arch:?}");
        assert_eq!(
            resumed.topk_threshold.to_bits(),
            whole.topk_threshold.to_bits()
        );
        assert_eq!(resumed.fired, whole.fired);
        // Another run's checkpoint is refused, naming why.
        let other = SaeRunOptions {
            identity: "other".into(),
            ..opts(true, None)
        };
        let e = train(spec.clone(), source(), &other, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("written by another run"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Feature dashboards: each latent's correlated input dimensions are the Pearson correlations
/// a brute-force pass over the same tokens gives, and its top examples are its largest
/// activations.
#[test]
fn dashboards_agree_with_a_brute_force_pass() {
    use patchclamp_core::hooks::SaeSite;
    use patchclamp_core::{Hooks, Input, Padding, Sae, Selector, Splice};
    use patchclamp_lab::sae::features::{features, FeatureSpec};
    use std::sync::Arc;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let m = patchclamp_core::load(&format!("{root}/models/gpt2"), &Device::Cpu).unwrap();
    let sae = Arc::new(Sae::load(format!("{root}/saes/standard-resid"), &Device::Cpu).unwrap());
    let contexts: Vec<Vec<u32>> = (0..6u32)
        .map(|c| (0..16u32).map(|i| 1 + (c * 37 + i * 11) % 300).collect())
        .collect();
    let spec = FeatureSpec {
        latents: vec![0, 1, 2, 3],
        ..Default::default()
    };
    let f = features(&m.model, &sae, &contexts, 4, &[], &spec, |_, _| {}).unwrap();
    assert_eq!(f.tokens, 96);
    // Brute force: every token's input and latents.
    let s = Splice::new(sae.clone(), true).unwrap();
    let mut hooks = Hooks::none()
        .splice(s.clone())
        .capture(Selector::Point(s.point(SaeSite::Input)))
        .capture(Selector::Point(s.point(SaeSite::ActsPost)));
    m.model
        .forward(
            &Input::batch(&contexts, Padding::Right, 0, &Device::Cpu).unwrap(),
            &mut hooks,
        )
        .unwrap();
    let c = hooks.take_cache();
    let x: Vec<f32> = c
        .get(s.point(SaeSite::Input))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let a: Vec<f32> = c
        .get(s.point(SaeSite::ActsPost))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (n, d, k) = (96usize, 32usize, 64usize);
    for feat in &f.features {
        let j = feat.index;
        let aj: Vec<f64> = (0..n).map(|t| a[t * k + j] as f64).collect();
        let max = aj.iter().copied().fold(0.0, f64::max);
        assert!((feat.max_activation as f64 - max).abs() < 1e-6);
        if let Some(e) = feat.top.first() {
            assert!(
                (e.max_value as f64 - max).abs() < 1e-6,
                "the top example is the largest activation"
            );
        }
        let pearson = |i: usize| {
            let xi: Vec<f64> = (0..n).map(|t| x[t * d + i] as f64).collect();
            let (ma, mx) = (
                aj.iter().sum::<f64>() / n as f64,
                xi.iter().sum::<f64>() / n as f64,
            );
            let cov: f64 = aj.iter().zip(&xi).map(|(p, q)| (p - ma) * (q - mx)).sum();
            let va: f64 = aj.iter().map(|p| (p - ma).powi(2)).sum();
            let vx: f64 = xi.iter().map(|q| (q - mx).powi(2)).sum();
            cov / (va * vx).sqrt()
        };
        if feat.frac_nonzero > 0.0 {
            let (best, r) = feat.correlated_neurons[0];
            assert!(
                (r - pearson(best)).abs() < 1e-6,
                "latent {j}: {r} vs {}",
                pearson(best)
            );
            let strongest = (0..d).map(pearson).fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                (r.abs() - strongest).abs() < 1e-9,
                "latent {j}: the strongest correlation is listed first"
            );
        }
    }
}
