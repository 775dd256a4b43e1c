//! The fused training step against the hooked forward with candle's backward: the same loss
//! and gradients, thread-count-independent numbers, and the steps it must leave alone.

use patchclamp_core::rng::Rng;
use patchclamp_core::Intervention;
use patchclamp_lab::tasks::{IclClassification, RepeatedSegments, Task};
use patchclamp_lab::train::{LrSchedule, ModelSpec, OptimSpec, TrainSpec, Trainer};

fn spec(steps: u64, batch: usize) -> TrainSpec {
    TrainSpec {
        steps,
        batch,
        seed: 5,
        optim: OptimSpec::default(),
        lr: LrSchedule::constant(3e-3),
        clip: Some(1.0),
        eval_every: 10,
        eval_batch: 8,
        checkpoint_every: 0,
    }
}

fn trainer(model: ModelSpec, task: &dyn Task, steps: u64, batch: usize) -> Trainer {
    let cfg = model.config(task.vocab(), task.seq_len()).unwrap();
    Trainer::new(cfg, 2, spec(steps, batch)).unwrap()
}

/// `(max |fused − hooked|, max |hooked|)` over one parameter's gradient.
fn gap(fused: &[f32], hooked: &[f32]) -> (f32, f32) {
    let diff = fused
        .iter()
        .zip(hooked)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (diff, hooked.iter().map(|x| x.abs()).fold(0f32, f32::max))
}

/// Checks loss and every gradient of one batch; tolerance: 1e-5 relative on the loss, and per
/// tensor 2e-5 of its largest hooked gradient (+1e-7), float rounding of different orders (the
/// largest seen: 3.4e-6).
fn assert_same_gradients(tr: &mut Trainer, task: &dyn Task, rows: usize, seed: u64) {
    let batch = task.batch(&mut Rng::new(seed), rows);
    let (loss_h, grads_h) = tr.gradients(task, &batch).unwrap();
    let (loss_f, grads_f) = tr.fused_gradients(task, &batch).unwrap();
    assert!(
        (loss_h - loss_f).abs() <= 1e-5 * loss_h.abs(),
        "loss {loss_f} vs {loss_h}"
    );
    assert_eq!(grads_f.len(), grads_h.len());
    for ((name, _), (gf, gh)) in tr.params().iter().zip(grads_f.iter().zip(&grads_h)) {
        let gh = gh.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gf.len(), gh.len(), "{name}");
        let (diff, scale) = gap(gf, &gh);
        assert!(
            diff <= 2e-5 * scale + 1e-7,
            "{name}: max diff {diff:e} vs max |g| {scale:e}"
        );
    }
}

#[test]
fn fused_gradients_equal_the_hooked_path() {
    // The lab's repeated-segment task (every position scored), three layers, uneven chunks
    // (20 rows of 64 tokens: chunks of 8, 8 and 4 rows).
    let task = RepeatedSegments::default();
    let model = ModelSpec {
        n_layers: 3,
        d_model: 48,
        n_heads: 3,
        ..ModelSpec::default()
    };
    let mut tr = trainer(model, &task, 10, 20);
    assert!(tr.fused_at(0));
    assert_same_gradients(&mut tr, &task, 20, 1);
    // After some training the weights are no longer at their initial scale.
    for _ in 0..10 {
        tr.train_step(&task).unwrap();
    }
    assert_same_gradients(&mut tr, &task, 20, 2);

    // Head width 12 (not a multiple of the 16-lane attention tiles: the library products).
    let narrow = ModelSpec {
        d_model: 36,
        n_heads: 3,
        ..ModelSpec::default()
    };
    let mut tr = trainer(narrow, &task, 10, 8);
    assert_same_gradients(&mut tr, &task, 8, 4);

    // Classification: loss on the query only, over the label columns.
    let icl = IclClassification::default();
    let mut tr = trainer(ModelSpec::default(), &icl, 10, 12);
    assert!(tr.fused_at(0));
    assert_same_gradients(&mut tr, &icl, 12, 3);
}

#[test]
fn fused_training_follows_the_hooked_path() {
    let task = RepeatedSegments::default();
    let weights = |tr: &Trainer| -> Vec<f32> {
        tr.params()
            .iter()
            .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let initial = weights(&trainer(ModelSpec::default(), &task, 40, 16));
    let train = |fused: bool| {
        let mut tr = trainer(ModelSpec::default(), &task, 40, 16);
        tr.set_fused(fused);
        let losses: Vec<f32> = (0..40)
            .map(|_| tr.train_step(&task).unwrap().loss)
            .collect();
        (losses, weights(&tr))
    };
    let ((lf, wf), (lh, wh)) = (train(true), train(false));
    for (i, (a, b)) in lf.iter().zip(&lh).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b,
            "step {i}: fused {a} vs hooked {b}"
        );
    }
    // After 40 Adam steps the two runs' weights differ by far less than training moved them.
    let max_gap = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let (apart, moved) = (max_gap(&wf, &wh), max_gap(&wh, &initial));
    eprintln!("weights: fused vs hooked {apart:e}, moved {moved:e}");
    assert!(
        apart <= 1e-3 * moved,
        "weights {apart:e} apart, moved {moved:e}"
    );
}

#[test]
fn fused_numbers_do_not_depend_on_the_thread_count() {
    let task = RepeatedSegments::default();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut tr = trainer(ModelSpec::default(), &task, 5, 32);
            let losses: Vec<f32> = (0..5).map(|_| tr.train_step(&task).unwrap().loss).collect();
            let w: Vec<Vec<f32>> = tr
                .params()
                .iter()
                .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (losses, w)
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0, "loss curves bit for bit");
    assert!(one.1 == two.1, "weights bit for bit");
}

#[test]
fn interventions_and_other_models_take_the_hooked_path() {
    let task = RepeatedSegments::default();
    // A zero-ablation held for steps 2..4 only.
    let iv: Intervention = toml::from_str(
        "at = 'blocks.0.attn.hook_z'\nop = { kind = 'zero' }\nwhen = { from = 2, until = 4 }",
    )
    .unwrap();
    let tr = trainer(ModelSpec::default(), &task, 10, 4)
        .with_interventions(vec![iv])
        .unwrap();
    let on: Vec<bool> = (0..6).map(|s| tr.fused_at(s)).collect();
    assert_eq!(on, [true, true, false, false, true, true]);

    // MLPs, rotary positions and no LayerNorm are outside the fused family.
    for model in [
        ModelSpec {
            d_mlp: 64,
            ..ModelSpec::default()
        },
        ModelSpec {
            positions: "rotary".into(),
            ..ModelSpec::default()
        },
        ModelSpec {
            layer_norm: false,
            ..ModelSpec::default()
        },
    ] {
        let mut tr = trainer(model, &task, 2, 4);
        assert!(!tr.fused_at(0));
        let batch = task.batch(&mut Rng::new(0), 4);
        let err = tr.fused_gradients(&task, &batch).unwrap_err().to_string();
        assert!(err.contains("does not support this model"), "{err}");
        tr.train_step(&task).unwrap();
    }
}
