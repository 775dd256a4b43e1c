//! The trainer: clamp gradient semantics, fused kernels equal to the composed graph,
//! determinism, and resume-after-kill (METHODS.md K2 c–d).

mod common;

use candle_core::Tensor;
use patchclamp_core::{HookPoint, Hooks, Intervention, Selector};
use patchclamp_lab::experiment::Experiment;
use patchclamp_lab::tasks::{RepeatedSegments, Task, TaskSpec};
use patchclamp_lab::train::{
    check_resume, load_model, run, save_checkpoint, LrSchedule, ModelSpec, OptimSpec, Resume,
    RunOptions, TrainSpec, Trainer,
};

fn task() -> RepeatedSegments {
    RepeatedSegments {
        vocab: 24,
        seq_len: 24,
        min_len: 3,
        max_len: 8,
    }
}

fn spec(steps: u64) -> TrainSpec {
    TrainSpec {
        steps,
        batch: 8,
        seed: 3,
        optim: OptimSpec::default(),
        lr: LrSchedule::constant(3e-3),
        clip: Some(1.0),
        eval_every: 10,
        eval_batch: 16,
        checkpoint_every: 10,
    }
}

fn trainer(steps: u64, ivs: Vec<Intervention>) -> Trainer {
    let cfg = ModelSpec {
        d_model: 32,
        n_heads: 4,
        ..ModelSpec::default()
    }
    .config(24, 24)
    .unwrap();
    Trainer::new(cfg, 1, spec(steps))
        .unwrap()
        .with_interventions(ivs)
        .unwrap()
}

fn iv(text: &str) -> Intervention {
    toml::from_str(text).unwrap()
}

/// Columns of a `[d, H·E]` (or rows of `[H·E, d]`) matrix belonging to head `h`: max |g|.
fn head_grad(g: &Tensor, h: usize, e: usize, rows: bool) -> f32 {
    let part = if rows {
        g.narrow(0, h * e, e)
    } else {
        g.narrow(1, h * e, e)
    }
    .unwrap();
    part.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_clamped_pattern_cuts_query_and_key_gradients_only() {
    let tr = trainer(
        1,
        vec![iv("at = 'blocks.0.attn.hook_pattern'\nselect = { heads = [2] }\nop = { kind = 'prev_token' }")],
    );
    let t = task();
    let batch = t.batch(&mut patchclamp_core::rng::Rng::new(0), 8);
    let (_, grads) = tr.gradients(&t, &batch).unwrap();
    let g = |name: &str| {
        let i = tr.params().iter().position(|(n, _)| n == name).unwrap();
        grads[i].clone()
    };
    let e = tr.model.cfg.attn.d_head;
    for name in ["blocks.0.attn.W_Q", "blocks.0.attn.W_K"] {
        assert_eq!(
            head_grad(&g(name), 2, e, false),
            0.0,
            "{name} of the clamped head"
        );
        assert!(
            head_grad(&g(name), 1, e, false) > 0.0,
            "{name} of another head learns"
        );
    }
    assert!(
        head_grad(&g("blocks.0.attn.W_V"), 2, e, false) > 0.0,
        "W_V still learns"
    );
    assert!(
        head_grad(&g("blocks.0.attn.W_O"), 2, e, true) > 0.0,
        "W_O still learns"
    );
}

#[test]
fn fused_training_kernels_match_the_composed_graph() {
    // Recording the pattern and the norm's scale forces the composed ops; gradients agree.
    let tr = trainer(1, vec![]);
    let t = task();
    let batch = t.batch(&mut patchclamp_core::rng::Rng::new(5), 8);
    let input = patchclamp_core::Input::batch(
        &batch.tokens,
        patchclamp_core::Padding::Right,
        0,
        tr.model.device(),
    )
    .unwrap();
    let grads = |hooks: &mut Hooks| {
        let logits = tr.model.forward(&input, hooks).unwrap();
        let loss = patchclamp_lab::tasks::loss::token_nll(&logits, &batch, None)
            .unwrap()
            .nll
            .mean_all()
            .unwrap();
        let composed_loss = {
            let logp =
                patchclamp_lab::tasks::loss::log_softmax(&logits.reshape((8 * 24, 24)).unwrap())
                    .unwrap();
            let tg: Vec<u32> = batch.targets.concat();
            let tg = Tensor::from_vec(tg, (8 * 24, 1), logits.device()).unwrap();
            logp.gather(&tg, 1)
                .unwrap()
                .neg()
                .unwrap()
                .mean_all()
                .unwrap()
        };
        let diff =
            (loss.to_scalar::<f32>().unwrap() - composed_loss.to_scalar::<f32>().unwrap()).abs();
        assert!(
            diff < 1e-5,
            "fused cross-entropy equals log-softmax + gather ({diff})"
        );
        let g = loss.backward().unwrap();
        tr.params()
            .iter()
            .map(|(n, v)| (n.clone(), g.get(v.as_tensor()).cloned()))
            .collect::<Vec<_>>()
    };
    let fused = grads(&mut Hooks::none());
    let mut composed_hooks = Hooks::none()
        .capture(Selector::parse("blocks.*.attn.hook_pattern").unwrap())
        .capture(Selector::parse("blocks.*.ln1.hook_scale").unwrap())
        .capture(Selector::Point(HookPoint::FinalScale));
    let composed = grads(&mut composed_hooks);
    // Recording the masked scores as well takes candle's composed softmax instead of the
    // causal-softmax op: a third path to the same gradients.
    let mut explicit_hooks = Hooks::none()
        .capture(Selector::parse("blocks.*.attn.hook_attn_scores").unwrap())
        .capture(Selector::parse("blocks.*.ln1.hook_scale").unwrap());
    let explicit = grads(&mut explicit_hooks);
    for ((name, a), (_, b)) in fused
        .iter()
        .zip(&composed)
        .chain(composed.iter().zip(&explicit))
    {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        let d = common::max_diff(a, b);
        let scale = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d <= 1e-5 + 1e-4 * scale,
            "{name}: fused vs composed gradient differ by {d} (scale {scale})"
        );
    }
}

#[test]
fn same_seed_same_loss_curve_bit_for_bit() {
    let losses = |steps| {
        let mut tr = trainer(steps, vec![iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'scale', factor = 0.5 }\nwhen = { until = 5 }")]);
        let r = run(
            &mut tr,
            &TaskSpec::Repeated(task()),
            &RunOptions::default(),
            |_| {},
        )
        .unwrap();
        r.steps.iter().map(|s| s.loss.to_bits()).collect::<Vec<_>>()
    };
    let (a, b) = (losses(12), losses(12));
    assert_eq!(a.len(), 12);
    assert_eq!(a, b);
    assert_ne!(a[0], a[11], "it trains");
}

#[test]
fn resume_after_kill_continues_bit_identically() {
    let dir = std::env::temp_dir().join(format!("pc-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = TaskSpec::Repeated(task());
    let ivs = || {
        vec![iv("at = 'blocks.0.attn.hook_pattern'\nselect = { heads = [0] }\nop = { kind = 'prev_token' }\nwhen = { from = 7, until = 23 }")]
    };
    let opts = |name: &str, stop| RunOptions {
        log: Some(dir.join(name).join("log.jsonl")),
        checkpoint: Some(dir.join(name).join("ckpt.safetensors")),
        resume: Resume::IfPresent,
        stop_after: stop,
    };
    let mut whole = trainer(40, ivs());
    run(&mut whole, &t, &opts("whole", None), |_| {}).unwrap();
    // Killed at step 25: the last checkpoint is step 20 and the log runs ahead to 25.
    let mut killed = trainer(40, ivs());
    let part = run(&mut killed, &t, &opts("killed", Some(25)), |_| {}).unwrap();
    assert_eq!(part.steps.len(), 25);
    let mut resumed = trainer(40, ivs());
    let mut from = None;
    let r = run(&mut resumed, &t, &opts("killed", None), |e| {
        if let patchclamp_lab::train::Event::Resumed(s) = e {
            from = Some(s)
        }
    })
    .unwrap();
    assert_eq!(from, Some(20));
    assert_eq!(r.steps.len(), 40);
    let read = |n: &str| std::fs::read_to_string(dir.join(n).join("log.jsonl")).unwrap();
    assert_eq!(
        read("whole"),
        read("killed"),
        "the resumed log equals the uninterrupted one"
    );
    for ((n, a), (_, b)) in whole.params().iter().zip(resumed.params()) {
        assert_eq!(common::max_diff(a.as_tensor(), b.as_tensor()), 0.0, "{n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_from_a_checkpoint_between_evaluations_logs_the_same_train_loss() {
    // Checkpoints every 5 steps, evaluations every 10: killed at 17, resumed from 15, the
    // evaluation at 20 must average the losses of steps 11–20, five of them from before.
    let dir = std::env::temp_dir().join(format!("pc-resume-mid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = TaskSpec::Repeated(task());
    let make = || {
        let cfg = ModelSpec {
            d_model: 32,
            n_heads: 4,
            ..ModelSpec::default()
        }
        .config(24, 24)
        .unwrap();
        let mut sp = spec(30);
        sp.checkpoint_every = 5;
        Trainer::new(cfg, 1, sp).unwrap()
    };
    let opts = |name: &str, stop| RunOptions {
        log: Some(dir.join(name).join("log.jsonl")),
        checkpoint: Some(dir.join(name).join("ckpt.safetensors")),
        resume: Resume::IfPresent,
        stop_after: stop,
    };
    run(&mut make(), &t, &opts("whole", None), |_| {}).unwrap();
    run(&mut make(), &t, &opts("cut", Some(17)), |_| {}).unwrap();
    run(&mut make(), &t, &opts("cut", None), |_| {}).unwrap();
    let read = |n: &str| std::fs::read_to_string(dir.join(n).join("log.jsonl")).unwrap();
    assert_eq!(read("whole"), read("cut"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_without_interventions_logs_no_free_copy_and_a_clamped_one_does() {
    let mut tr = trainer(
        10,
        vec![iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }")],
    );
    let r = run(
        &mut tr,
        &TaskSpec::Repeated(task()),
        &RunOptions::default(),
        |_| {},
    )
    .unwrap();
    let last = r.evals.last().unwrap();
    let free = last
        .free
        .as_ref()
        .expect("clamped runs log the model without clamps too");
    assert_ne!(free.in_context_loss, last.in_context_loss);
    let mut plain = trainer(10, vec![]);
    let r = run(
        &mut plain,
        &TaskSpec::Repeated(task()),
        &RunOptions::default(),
        |_| {},
    )
    .unwrap();
    assert!(r.evals.iter().all(|e| e.free.is_none()));
    assert_eq!(r.evals.len(), 2, "evaluations at steps 0 and 10");
    assert_eq!(r.evals[0].heads.prev_token.len(), 2);
}

#[test]
fn clamps_can_read_another_checkpoint_or_the_models_own_unablated_run() {
    let dir = std::env::temp_dir().join(format!("pc-sources-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = TaskSpec::Repeated(task());
    // A "teacher" trained a little and saved.
    let mut teacher = trainer(10, vec![]);
    let opts = RunOptions {
        checkpoint: Some(dir.join("teacher.safetensors")),
        ..Default::default()
    };
    run(&mut teacher, &t, &opts, |_| {}).unwrap();
    let loaded = patchclamp_lab::train::load_model(&dir.join("teacher.safetensors")).unwrap();
    for ((n, a), (_, b)) in teacher
        .snapshot()
        .unwrap()
        .weights
        .named()
        .iter()
        .zip(loaded.weights.named())
    {
        assert_eq!(common::max_diff(a, &b), 0.0, "{n} survives the checkpoint");
    }
    let batch = task().batch(&mut patchclamp_core::rng::Rng::new(9), 4);
    let input = patchclamp_core::Input::batch(
        &batch.tokens,
        patchclamp_core::Padding::Right,
        0,
        loaded.device(),
    )
    .unwrap();
    let pattern = |m: &patchclamp_core::Model, hooks: Hooks, l: usize| {
        let mut h = hooks.capture(Selector::Point(HookPoint::Pattern(l)));
        m.forward(&input, &mut h).unwrap();
        h.cache().get(HookPoint::Pattern(l)).unwrap().clone()
    };
    // A student whose layer-0 pattern is clamped to the teacher's on every batch.
    let student = trainer(1, vec![])
        .with_source("teacher", loaded.clone())
        .with_interventions(vec![iv(
            "at = 'blocks.0.attn.hook_pattern'\nop = { kind = 'patch', source = 'teacher' }",
        )])
        .unwrap();
    let got = pattern(&student.model, student.hooks(0, &batch).unwrap(), 0);
    assert_eq!(
        common::max_diff(&got, &pattern(&loaded, Hooks::none(), 0)),
        0.0
    );
    // Two passes: layer-0 attention ablated, layer-1 patterns preserved from the same model's
    // unablated run on the same batch (the source "self").
    let two_pass = trainer(1, vec![])
        .with_interventions(vec![
            iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }"),
            iv("at = 'blocks.1.attn.hook_pattern'\nop = { kind = 'patch', source = 'self' }"),
        ])
        .unwrap();
    let snap = two_pass.snapshot().unwrap();
    let kept = pattern(&two_pass.model, two_pass.hooks(0, &batch).unwrap(), 1);
    assert_eq!(
        common::max_diff(&kept, &pattern(&snap, Hooks::none(), 1)),
        0.0
    );
    let ablated_only =
        Hooks::none().intervene(iv("at = 'blocks.0.hook_attn_out'\nop = { kind = 'zero' }"));
    assert!(
        common::max_diff(&pattern(&snap, ablated_only, 1), &kept) > 1e-4,
        "without preservation the pattern moves"
    );
    // An unknown source is refused when the run is built.
    let err = trainer(1, vec![])
        .with_interventions(vec![iv(
            "at = 'blocks.0.attn.hook_pattern'\nop = { kind = 'patch', source = 'nobody' }",
        )])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nobody") && err.contains("self"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_or_foreign_checkpoints_are_refused_with_the_file_named() {
    let dir = std::env::temp_dir().join(format!("pc-badckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("ckpt.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    // The error of resuming the test trainer from `ck`.
    let resume_error = |ck: std::path::PathBuf| {
        let opts = RunOptions {
            checkpoint: Some(ck),
            resume: Resume::Required,
            ..Default::default()
        };
        run(
            &mut trainer(3, vec![]),
            &TaskSpec::Repeated(task()),
            &opts,
            |_| {},
        )
        .err()
        .unwrap()
        .to_string()
    };
    let err = resume_error(junk.clone());
    assert!(err.contains("ckpt.safetensors"), "{err}");
    // A model file from the hub is valid safetensors but not a training checkpoint.
    let hub = std::path::PathBuf::from(common::fixture("gpt2")).join("model.safetensors");
    let err = patchclamp_lab::train::load_model(&hub)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not a patchclamp training checkpoint"),
        "{err}"
    );
    // A checkpoint of another model shape is refused on resume.
    let other = dir.join("other.safetensors");
    let mut small = Trainer::new(
        ModelSpec {
            d_model: 16,
            n_heads: 2,
            ..ModelSpec::default()
        }
        .config(24, 24)
        .unwrap(),
        0,
        spec(1),
    )
    .unwrap();
    run(
        &mut small,
        &TaskSpec::Repeated(task()),
        &RunOptions {
            checkpoint: Some(other.clone()),
            ..Default::default()
        },
        |_| {},
    )
    .unwrap();
    let err = resume_error(other);
    assert!(err.contains("different model config"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small experiment file's text, for identity tests.
const EXP: &str = r#"
name = "ident"
[task]
kind = "repeated"
vocab = 16
seq_len = 16
min_len = 2
max_len = 6
[model]
n_layers = 1
d_model = 16
n_heads = 2
[train]
steps = 6
batch = 2
seed = 1
checkpoint_every = 2
eval_every = 3
lr = { lr = 1e-3 }
"#;

fn experiment(text: &str) -> Experiment {
    Experiment::from_toml(text, std::path::Path::new("ident.toml")).unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts_in(dir: &std::path::Path, resume: Resume, stop_after: Option<u64>) -> RunOptions {
    RunOptions {
        log: Some(dir.join("log.jsonl")),
        checkpoint: Some(dir.join("ckpt.safetensors")),
        resume,
        stop_after,
    }
}

#[test]
fn a_resume_is_refused_for_another_experiment_and_says_what_differs() {
    let dir = temp("ident");
    let exp = experiment(EXP);
    let task = exp.task.clone();
    let mut tr = exp.trainer().unwrap();
    run(&mut tr, &task, &opts_in(&dir, Resume::No, Some(4)), |_| {}).unwrap();
    // The same experiment resumes at its checkpoint.
    let same = experiment(EXP).trainer().unwrap();
    assert_eq!(
        check_resume(&same, &opts_in(&dir, Resume::Required, None)).unwrap(),
        Some(4)
    );
    // Another seed, or another step count, is another experiment: refused, naming the field.
    for (from, to, field) in [
        (
            "seed = 1",
            "seed = 2",
            "train.seed: 1 in the checkpoint, 2 here",
        ),
        (
            "steps = 6",
            "steps = 9",
            "train.steps: 6 in the checkpoint, 9 here",
        ),
    ] {
        let other = experiment(&EXP.replace(from, to)).trainer().unwrap();
        let e = check_resume(&other, &opts_in(&dir, Resume::Required, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("different experiment") && e.contains(field),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resume_needs_a_checkpoint_and_a_log_that_reaches_it() {
    let dir = temp("gap");
    let exp = experiment(EXP);
    let mut tr = exp.trainer().unwrap();
    let fresh = exp.trainer().unwrap();
    let e = check_resume(&fresh, &opts_in(&dir, Resume::Required, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no checkpoint to resume"), "{e}");
    assert_eq!(
        check_resume(&fresh, &opts_in(&dir, Resume::IfPresent, None)).unwrap(),
        None,
        "asked to start fresh"
    );
    run(
        &mut tr,
        &exp.task,
        &opts_in(&dir, Resume::No, Some(4)),
        |_| {},
    )
    .unwrap();
    // Drop the log's last lines: it now ends before the checkpoint's step 4.
    let log = dir.join("log.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&log, lines[..lines.len() - 2].join("\n")).unwrap();
    let e = check_resume(&fresh, &opts_in(&dir, Resume::Required, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gap in the log") && e.contains("last step 3"),
        "{e}"
    );
    // A fresh run removes the old checkpoint first: nothing stale is left to resume.
    let mut again = exp.trainer().unwrap();
    run(
        &mut again,
        &exp.task,
        &opts_in(&dir, Resume::No, Some(1)),
        |_| {},
    )
    .unwrap();
    assert!(!dir.join("ckpt.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_or_non_finite_checkpoints_are_refused_as_such() {
    let dir = temp("damaged");
    let exp = experiment(EXP);
    let ck = dir.join("ckpt.safetensors");
    let tr = exp.trainer().unwrap();
    save_checkpoint(&tr, &ck).unwrap();
    load_model(&ck).unwrap();
    // One flipped byte in the tensor data.
    let mut bytes = std::fs::read(&ck).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&ck, &bytes).unwrap();
    let e = load_model(&ck).err().unwrap().to_string();
    assert!(
        e.contains("checksum") && e.contains("ckpt.safetensors"),
        "{e}"
    );
    // A NaN weight saved as such (a diverged run) is named when read, not trained on.
    let (name, var) = &tr.params()[0];
    let nan = Tensor::full(f32::NAN, var.dims(), &candle_core::Device::Cpu).unwrap();
    var.set(&nan).unwrap();
    save_checkpoint(&tr, &ck).unwrap();
    let e = load_model(&ck).err().unwrap().to_string();
    assert!(e.contains("NaN") && e.contains(name.as_str()), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
