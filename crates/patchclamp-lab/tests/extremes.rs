//! METHODS.md K14: attention sinks, value drains and residual peaks on Bigram-Backcopy models;
//! the massive-activation detector; the flip-flop generator and attention glitches.

mod common;

use candle_core::Device;
use patchclamp_core::rng::Rng;
use patchclamp_core::{Hooks, Input, Model, Padding};
use patchclamp_lab::analysis::extremes::{extremes, massive_entries, ExtremeSpec};
use patchclamp_lab::tasks::flipflop::{self, FlipFlop};
use patchclamp_lab::tasks::{BigramBackcopy, Task};
use patchclamp_lab::train::ModelSpec;

#[test]
fn massive_activation_detector_finds_exactly_the_planted_entries() {
    let (s, d) = (32, 64);
    let mut rng = Rng::new(0);
    let mut x: Vec<f32> = rng.normal_vec(s * d, 1.0);
    let (none, med) = massive_entries(&x, d, 100.0, 1000.0);
    assert!(none.is_empty(), "Gaussian noise has no massive activations");
    assert!((med - 0.674).abs() < 0.05, "median |N(0,1)| ≈ 0.674: {med}");
    let planted = [(0usize, 7usize, 2500f32), (0, 40, -1800.0), (5, 7, 900.0)];
    for &(t, j, v) in &planted {
        x[t * d + j] = v;
    }
    // Large but below 1000 × median: not massive; above 100 but not 1000 × median: neither.
    x[3 * d + 3] = 99.0;
    x[9 * d + 1] = 300.0;
    let (hits, _) = massive_entries(&x, d, 100.0, 1000.0);
    let mut want: Vec<(usize, usize, f32)> = planted.to_vec();
    want.sort_by_key(|h| (h.0, h.1));
    assert_eq!(hits, want);
}

#[test]
fn flip_flop_sequences_obey_the_reference_interpreter() {
    let mut rng = Rng::new(1);
    for p in [0.1, 0.8, 0.98] {
        let t = FlipFlop {
            length: 128,
            p_ignore: p,
            reads_only: true,
        };
        let mut ignores = 0usize;
        let mut instr = 0usize;
        for _ in 0..200 {
            let x = t.sequence(&mut rng);
            assert_eq!(x.len(), 128);
            assert!(flipflop::valid(&x), "every read returns the last write");
            assert_eq!(
                (x[0], *x.iter().rev().nth(1).unwrap()),
                (flipflop::WRITE, flipflop::READ)
            );
            ignores += x[2..126]
                .iter()
                .step_by(2)
                .filter(|&&o| o == flipflop::IGNORE)
                .count();
            instr += 62;
        }
        let f = ignores as f64 / instr as f64;
        assert!((f - p).abs() < 0.02, "FFL({p}): ignore rate {f}");
    }
    // The interpreter rejects a wrong read.
    assert!(!flipflop::valid(&[0, 3, 1, 4]));
    assert!(flipflop::valid(&[0, 3, 2, 4, 1, 3]));
    // Batches weight exactly the read bits.
    let t = FlipFlop::default();
    let b = t.batch(&mut rng, 4);
    for r in 0..4 {
        for (p, &w) in b.weights[r].iter().enumerate() {
            assert_eq!(w > 0.0, b.tokens[r][p] == flipflop::READ && p % 2 == 0);
        }
    }
}

#[test]
fn bigram_backcopy_copies_after_triggers() {
    let t = BigramBackcopy::default();
    let trig = t.trigger_tokens();
    assert_eq!(trig.len(), 3);
    eprintln!("default triggers {trig:?}");
    let pi = t.table().stationary();
    let min_trigger = trig.iter().map(|&i| pi[i as usize]).fold(1.0, f64::min);
    assert!((0..t.vocab)
        .filter(|i| !trig.contains(&(*i as u32)))
        .all(|i| pi[i] <= min_trigger));
    let b = t.batch(&mut Rng::new(2), 16);
    let mut copies = 0;
    for r in 0..16 {
        assert_eq!(b.tokens[r][0], t.bos());
        for p in 1..t.seq_len {
            if trig.contains(&b.tokens[r][p]) {
                assert_eq!(b.targets[r][p], b.tokens[r][p - 1], "back-copy");
                assert!(b.in_context[r][p]);
                copies += 1;
            } else {
                let (prev, next) = (b.tokens[r][p] as usize, b.targets[r][p] as usize);
                assert!(t.table().probs[prev][next] > 0.0, "a bigram transition");
            }
        }
    }
    assert!(copies > 16, "triggers are frequent");
}

/// Trains a BB model with `layers` layers and measures its extreme tokens.
fn bb_model(layers: usize, steps: u64) -> (Model, BigramBackcopy) {
    let task = BigramBackcopy::default();
    let spec = ModelSpec {
        n_layers: layers,
        d_model: 64,
        n_heads: 1,
        d_mlp: 256,
        init_seed: 2,
        ..ModelSpec::default()
    };
    (
        common::train(spec, &task, steps, env("PATCHCLAMP_BB_LR", 3e-3), 32),
        task,
    )
}

/// A calibration knob from the environment.
fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bb_steps() -> u64 {
    env("PATCHCLAMP_BB_STEPS", 6000)
}

#[test]
#[ignore = "trains two Bigram-Backcopy models (~20 min on one core); run with --ignored"]
fn k14_bigram_backcopy_models_grow_attention_sinks() {
    let layers_to_run: Vec<usize> = match env("PATCHCLAMP_BB_LAYERS", 0usize) {
        0 => vec![1, 2],
        n => vec![n],
    };
    for layers in layers_to_run {
        let (model, task) = bb_model(layers, bb_steps());
        let prompts = task.batch(&mut Rng::new(5), 32).tokens;
        let spec = ExtremeSpec {
            triggers: task.trigger_tokens(),
            ..ExtremeSpec::default()
        };
        let rep = extremes(&model, &prompts, &spec).unwrap();
        let input = Input::batch(&prompts, Padding::Right, 0, &Device::Cpu).unwrap();
        let logits = model.forward(&input, &mut Hooks::none()).unwrap();
        let b = task.batch(&mut Rng::new(5), 32);
        let loss = patchclamp_lab::tasks::loss::mean_loss(&logits, &b, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "{layers} layer(s): loss {loss:.3}; sink {:?}, prev_trigger {:?}, value drain {:?}, residual peak {:?}, massive {}",
            rep.sink, rep.prev_trigger, rep.value_drain, rep.residual_peak, rep.massive.len()
        );
        // The back-copying head (the most previous-token-like on trigger queries) is the
        // active-dormant one: previous token on triggers, <s> otherwise, with a drained value.
        let (l, h, prev) = patchclamp_lab::analysis::heads::best_head(&rep.prev_trigger);
        let kv = h / model.cfg.kv_group();
        eprintln!("back-copy head L{l}H{h}");
        assert!(
            prev >= 0.6,
            "trigger queries attend to the previous token: {prev}"
        );
        assert!(
            rep.sink[l][h] >= 0.6,
            "sink on <s> from non-trigger queries: {}",
            rep.sink[l][h]
        );
        assert!(
            rep.value_drain[l][kv] <= 0.3,
            "<s> carries a small value: {}",
            rep.value_drain[l][kv]
        );
    }
}

#[test]
#[ignore = "trains a flip-flop transformer (~50 min on one core); run with --ignored"]
fn k14_flip_flop_glitches_are_out_of_distribution() {
    let train = FlipFlop {
        length: 128,
        p_ignore: 0.8,
        reads_only: true,
    };
    let spec = ModelSpec {
        n_layers: 2,
        d_model: 64,
        n_heads: 4,
        d_mlp: 256,
        init_seed: 0,
        ..ModelSpec::default()
    };
    let steps = env("PATCHCLAMP_FF_STEPS", 7000);
    let model = common::train(spec, &train, steps, env("PATCHCLAMP_FF_LR", 1e-3), 32);
    let err = |p: f64| {
        let t = FlipFlop {
            p_ignore: p,
            ..train.clone()
        };
        patchclamp_lab::analysis::extremes::read_error(&model, &t, 512, 9).unwrap()
    };
    let (e8, e98) = (err(0.8), err(0.98));
    eprintln!("read error: FFL(0.8) {e8:.4}, FFL(0.98) {e98:.4}");
    assert!(e8 <= 0.01, "in-distribution read error {e8}");
    assert!(
        e98 >= e8,
        "sparse sequences glitch at least as often: {e98} vs {e8}"
    );
}
