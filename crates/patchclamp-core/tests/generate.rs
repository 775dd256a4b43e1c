//! Generation: the cached decode loop equals recomputing the whole sequence every step, the
//! same seed gives the same tokens, and the stops and refusals behave as documented.

mod common;

use candle_core::Device;
use common::fixture;
use patchclamp_core::generate::{
    generate, generate_batch, generate_with, GenerateSpec, Sampling, Stop,
};
use patchclamp_core::hooks::RowWindow;
use patchclamp_core::{load, ActivationCache, HookPoint, Hooks, Input, Intervention, Model};

// Every family patchclamp loads has a committed fixture.
use patchclamp_core::model::arch::FAMILIES;
const PROMPT: [u32; 5] = [3, 7, 8, 9, 10];

fn greedy(n: usize) -> GenerateSpec {
    GenerateSpec {
        max_new_tokens: n,
        sampling: Sampling::default(),
        stop_tokens: vec![],
    }
}

fn sampled(n: usize, seed: u64) -> GenerateSpec {
    GenerateSpec {
        max_new_tokens: n,
        sampling: Sampling {
            // The fixture's logits are peaked: a high temperature makes draws differ.
            temperature: Some(5.0),
            seed,
            ..Sampling::default()
        },
        stop_tokens: vec![],
    }
}

/// The last position's logits of one full forward over `seq`.
fn last_logits(m: &Model, seq: &[u32], hooks: &mut Hooks) -> Vec<f32> {
    let logits = m
        .forward(&Input::single(seq, &Device::Cpu).unwrap(), hooks)
        .unwrap();
    logits
        .get(0)
        .unwrap()
        .get(seq.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Greedy decoding the slow way: the whole sequence through the model at every step.
fn recomputed(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let last = last_logits(m, &seq, &mut Hooks::none());
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn cached_greedy_decoding_equals_recomputing_every_step() {
    // Mistral's sliding window (4) is shorter than the sequences: the cache must mask too.
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap().model;
        let g = generate(&m, &PROMPT, &greedy(12), |_| true).unwrap();
        assert_eq!(g.stop, Stop::MaxNewTokens);
        assert_eq!(g.tokens, recomputed(&m, &PROMPT, 12), "{name}");
    }
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let a = generate(&m, &PROMPT, &sampled(24, 1), |_| true).unwrap();
    let b = generate(&m, &PROMPT, &sampled(24, 1), |_| true).unwrap();
    let c = generate(&m, &PROMPT, &sampled(24, 2), |_| true).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.tokens, c.tokens, "another seed draws other tokens");
    // top-k = 1 keeps only the argmax: sampling equals greedy decoding.
    let mut k1 = sampled(12, 5);
    k1.sampling.top_k = Some(1);
    assert_eq!(
        generate(&m, &PROMPT, &k1, |_| true).unwrap().tokens,
        generate(&m, &PROMPT, &greedy(12), |_| true).unwrap().tokens
    );
    // A tiny top-p keeps only the most likely token too.
    let mut p = sampled(12, 5);
    p.sampling.top_p = Some(1e-9);
    assert_eq!(
        generate(&m, &PROMPT, &p, |_| true).unwrap().tokens,
        generate(&m, &PROMPT, &greedy(12), |_| true).unwrap().tokens
    );
}

#[test]
fn penalties_change_what_repeats() {
    // Greedy decoding of a random model falls into loops; a strong repetition penalty never
    // picks a token already in the sequence while fresh ones remain.
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let plain = generate(&m, &PROMPT, &greedy(20), |_| true).unwrap().tokens;
    let mut seen: Vec<u32> = PROMPT.to_vec();
    let repeats = |toks: &[u32], seen: &mut Vec<u32>| {
        toks.iter()
            .filter(|t| {
                let r = seen.contains(t);
                seen.push(**t);
                r
            })
            .count()
    };
    assert!(
        repeats(&plain, &mut seen.clone()) > 0,
        "the plain run repeats: {plain:?}"
    );
    let mut spec = greedy(20);
    spec.sampling.repetition_penalty = 1e6;
    let penalised = generate(&m, &PROMPT, &spec, |_| true).unwrap().tokens;
    assert_eq!(repeats(&penalised, &mut seen), 0, "{penalised:?}");
}

#[test]
fn generation_stops_at_stop_tokens_the_callback_and_the_context() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let plain = generate(&m, &PROMPT, &greedy(8), |_| true).unwrap().tokens;
    // A stop token ends the generation and is kept.
    let mut spec = greedy(8);
    spec.stop_tokens = vec![plain[2]];
    let first = plain.iter().position(|&t| t == plain[2]).unwrap();
    let g = generate(&m, &PROMPT, &spec, |_| true).unwrap();
    assert_eq!(
        (g.tokens.as_slice(), g.stop),
        (&plain[..=first], Stop::StopToken)
    );
    // The callback sees every token and may stop.
    let mut seen = vec![];
    let g = generate(&m, &PROMPT, &greedy(8), |t| {
        seen.push(t);
        seen.len() < 3
    })
    .unwrap();
    assert_eq!(
        (g.tokens.clone(), g.stop),
        (plain[..3].to_vec(), Stop::Callback)
    );
    assert_eq!(seen, g.tokens);
    // A full context ends it with what fits, never a panic.
    let n_ctx = m.cfg.n_ctx;
    let long: Vec<u32> = (0..n_ctx - 2).map(|i| (i % 50) as u32 + 1).collect();
    let g = generate(&m, &long, &greedy(10), |_| true).unwrap();
    assert_eq!((g.tokens.len(), g.stop), (2, Stop::Context));
}

#[test]
fn settings_that_cannot_sample_are_refused() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let err = |f: fn(&mut GenerateSpec)| {
        let mut s = sampled(4, 0);
        f(&mut s);
        generate(&m, &PROMPT, &s, |_| true).unwrap_err().to_string()
    };
    assert!(err(|s| s.max_new_tokens = 0).contains("at least 1"));
    assert!(err(|s| s.sampling.temperature = Some(0.0)).contains("greedy"));
    assert!(err(|s| s.sampling.temperature = Some(f64::NAN)).contains("positive"));
    assert!(err(|s| s.sampling.top_k = Some(0)).contains("top_k"));
    assert!(err(|s| s.sampling.top_p = Some(1.5)).contains("(0, 1]"));
    assert!(err(|s| s.sampling.top_p = Some(0.0)).contains("(0, 1]"));
    assert!(err(|s| s.sampling.repetition_penalty = 0.0).contains("repetition penalty"));
    assert!(err(|s| s.sampling.frequency_penalty = f64::INFINITY).contains("frequency"));
    assert!(err(|s| s.stop_tokens = vec![100_000]).contains("outside the vocabulary"));
    assert!(err(|s| {
        s.sampling.temperature = None;
        s.sampling.top_k = Some(3)
    })
    .contains("give a temperature"));
    let e = generate(&m, &[1, 99_999], &greedy(2), |_| true).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = generate(&m, &[], &greedy(2), |_| true).unwrap_err();
    assert!(e.to_string().contains("no tokens"), "{e}");
}

#[test]
fn draws_follow_the_tempered_softmax() {
    // 2000 one-token generations, one seed each: the frequency of each of the three likeliest
    // tokens matches softmax(logits / T) within 4 standard errors.
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let t = 5.0;
    let last: Vec<f64> = last_logits(&m, &PROMPT, &mut Hooks::none())
        .iter()
        .map(|&x| x as f64)
        .collect();
    let top = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = last.iter().map(|x| ((x - top) / t).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    let n = 2000;
    let mut counts = vec![0usize; w.len()];
    for seed in 0..n {
        let mut spec = sampled(1, seed);
        spec.sampling.temperature = Some(t);
        let g = generate(&m, &PROMPT, &spec, |_| true).unwrap();
        counts[g.tokens[0] as usize] += 1;
    }
    for &i in &order[..3] {
        let p = w[i] / z;
        let f = counts[i] as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (f - p).abs() < 4.0 * se,
            "token {i}: drawn {f:.4}, softmax {p:.4}"
        );
    }
}

/// Interventions by absolute position: a steering vector from position 2 on, the prompt's last
/// token scaled at the first block (so later positions read it through attention), a silenced
/// head everywhere.
fn steering(cfg: &patchclamp_core::Config) -> Vec<patchclamp_core::Intervention> {
    let d = cfg.d_model;
    let text = format!(
        r#"
        [[interventions]]
        at = "blocks.0.hook_resid_post"
        select = {{ positions = {{ range = {{ start = 2, end = 1000 }} }} }}
        op = {{ kind = "add", vector = [{}], coef = 4.0 }}
        [[interventions]]
        at = "blocks.0.hook_mlp_out"
        select = {{ positions = {{ indices = [-1] }} }}
        op = {{ kind = "scale", factor = 3.0 }}
        [[interventions]]
        at = "blocks.1.attn.hook_z"
        select = {{ heads = [1] }}
        op = {{ kind = "zero" }}
        "#,
        (0..d)
            .map(|i| format!("{}", ((i * 7) % 5) as f64 - 2.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    #[derive(serde::Deserialize)]
    struct F {
        interventions: Vec<patchclamp_core::Intervention>,
    }
    toml::from_str::<F>(&text).unwrap().interventions
}

#[test]
fn steering_with_the_cache_equals_steering_a_full_recompute() {
    let n = 10;
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap().model;
        let ivs = steering(&m.cfg);
        let record = [
            HookPoint::ResidPost(1),
            HookPoint::Pattern(1),
            HookPoint::AttnScores(0),
        ];
        let (g, rec) = generate_with(&m, &PROMPT, &greedy(n), &ivs, &record, |_| true).unwrap();
        // The slow way: the whole sequence each step, the same interventions over it.
        let hooks = |len: usize| {
            ivs.iter()
                .filter_map(|iv| iv.for_rows(0, &whole(len, PROMPT.len())))
                .fold(Hooks::none(), |h, iv| h.intervene(iv))
        };
        let mut seq = PROMPT.to_vec();
        for _ in 0..n {
            let logits = m
                .forward(
                    &Input::single(&seq, &Device::Cpu).unwrap(),
                    &mut hooks(seq.len()),
                )
                .unwrap();
            let last: Vec<f32> = logits
                .get(0)
                .unwrap()
                .get(seq.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            seq.push((0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
        }
        assert_eq!(
            g.tokens,
            seq[PROMPT.len()..].to_vec(),
            "{name}: token for token"
        );
        let unsteered = generate(&m, &PROMPT, &greedy(n), |_| true).unwrap().tokens;
        assert_ne!(g.tokens, unsteered, "{name}: the steering changes the text");
        // Activation for activation: one forward over every position the generation ran.
        let ran = &seq[..seq.len() - 1];
        let mut full = record.iter().fold(hooks(ran.len()), |h, &p| h.capture(p));
        m.forward(&Input::single(ran, &Device::Cpu).unwrap(), &mut full)
            .unwrap();
        for p in record {
            let (a, b) = (rec.get(p).unwrap(), full.cache().get(p).unwrap().clone());
            assert_eq!(a.dims(), b.dims(), "{name} {p}");
            if matches!(p, HookPoint::AttnScores(_)) {
                // Masked scores are −∞ on both sides: compare where they are finite.
                let (x, y): (Vec<f32>, Vec<f32>) = (
                    a.flatten_all().unwrap().to_vec1().unwrap(),
                    b.flatten_all().unwrap().to_vec1().unwrap(),
                );
                for (u, v) in x.iter().zip(&y) {
                    assert!(u == v || (u - v).abs() < 1e-4, "{name} {p}: {u} vs {v}");
                }
            } else {
                let d = common::max_diff(a, &b);
                assert!(d < 1e-4, "{name} {p}: recorded activations differ by {d:e}");
            }
        }
    }
}

#[test]
fn clamps_that_read_whole_sequences_are_refused_in_generation() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let iv: patchclamp_core::Intervention =
        toml::from_str("at = 'blocks.0.attn.hook_pattern'\nop = { kind = 'prev_token' }").unwrap();
    let e = generate_with(&m, &PROMPT, &greedy(2), &[iv], &[], |_| true).unwrap_err();
    assert!(
        e.to_string().contains("not supported during generation"),
        "{e}"
    );
}

#[test]
fn an_absolute_position_window_acts_exactly_where_it_says() {
    // Steering from absolute position P + 3 on: the tokens read from positions before it
    // (the first four generated) are the unsteered ones; later ones change.
    let m = load(&fixture("llama"), &Device::Cpu).unwrap().model;
    let p = PROMPT.len();
    let text = format!(
        "at = 'blocks.0.hook_resid_post'\nselect = {{ positions = {{ range = {{ start = {}, end = 1000 }} }} }}\nop = {{ kind = 'add', vector = [{}], coef = 20.0 }}",
        p + 3,
        vec!["1.0"; m.cfg.d_model].join(", ")
    );
    let iv: patchclamp_core::Intervention = toml::from_str(&text).unwrap();
    let plain = generate(&m, &PROMPT, &greedy(10), |_| true).unwrap().tokens;
    let (g, _) = generate_with(&m, &PROMPT, &greedy(10), &[iv], &[], |_| true).unwrap();
    assert_eq!(g.tokens[..4], plain[..4], "{:?} vs {plain:?}", g.tokens);
    assert_ne!(g.tokens[4..], plain[4..], "the window acts from its start");
}

/// One unpadded row of `len` positions from the start, after a prompt of `anchor` tokens: the
/// window of a full forward over the sequence so far.
fn whole(len: usize, anchor: usize) -> [RowWindow; 1] {
    [RowWindow {
        prompt: 0,
        offset: 0,
        len,
        pad: 0,
        anchor,
    }]
}

/// Greedy decoding with `ivs` the slow way: the whole sequence each step, the interventions
/// over its absolute positions.
fn recomputed_with(m: &Model, prompt: &[u32], n: usize, ivs: &[Intervention]) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for t in 0..n {
        let mut hooks = ivs
            .iter()
            .filter_map(|iv| iv.for_rows(t as u64, &whole(seq.len(), prompt.len())))
            .fold(Hooks::none(), |h, iv| h.intervene(iv));
        let last = last_logits(m, &seq, &mut hooks);
        seq.push((0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
    }
    seq[prompt.len()..].to_vec()
}

const RAGGED: [&[u32]; 4] = [
    &[3, 7, 8, 9, 10],
    &[5],
    &[11, 2, 4, 6, 8, 10, 12, 1],
    &[9, 9, 2],
];

fn ragged() -> Vec<Vec<u32>> {
    RAGGED.iter().map(|p| p.to_vec()).collect()
}

/// Recordings equal within 1e-4 (masked scores are −∞ on both sides).
fn assert_same_recording(
    a: &ActivationCache,
    b: &ActivationCache,
    points: &[HookPoint],
    what: &str,
) {
    for &p in points {
        let (x, y) = (a.get(p).unwrap(), b.get(p).unwrap());
        assert_eq!(x.dims(), y.dims(), "{what} {p}");
        let (x, y): (Vec<f32>, Vec<f32>) = (
            x.flatten_all().unwrap().to_vec1().unwrap(),
            y.flatten_all().unwrap().to_vec1().unwrap(),
        );
        for (u, v) in x.iter().zip(&y) {
            assert!(u == v || (u - v).abs() < 1e-4, "{what} {p}: {u} vs {v}");
        }
    }
}

#[test]
fn a_ragged_batch_generates_what_each_prompt_generates_alone() {
    // Left padding, per-row position ids (rotary and learned) and Mistral's window: each row
    // of the batch gets exactly its tokens alone, greedy and sampled (its own draws).
    let prompts = ragged();
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap().model;
        for spec in [greedy(10), sampled(10, 3)] {
            let batch = generate_batch(&m, &prompts, &spec, &[], &[], |_, _| true).unwrap();
            assert_eq!(batch.len(), prompts.len());
            for (i, (p, (g, _))) in prompts.iter().zip(&batch).enumerate() {
                let alone = generate(&m, p, &spec, |_| true).unwrap();
                assert_eq!(g, &alone, "{name} prompt {i}");
            }
            // And greedy rows equal the full recompute.
            if spec.sampling.temperature.is_none() {
                assert_eq!(batch[2].0.tokens, recomputed(&m, &prompts[2], 10), "{name}");
            }
        }
    }
}

#[test]
fn a_ragged_batch_steers_and_records_each_prompt_as_it_would_alone() {
    let prompts = ragged();
    let record = [
        HookPoint::ResidPost(1),
        HookPoint::Pattern(1),
        HookPoint::AttnScores(0),
        HookPoint::Z(0),
    ];
    for &name in FAMILIES {
        let m = load(&fixture(name), &Device::Cpu).unwrap().model;
        let mut ivs = steering(&m.cfg);
        // Generated positions of prompts 0 and 2 only.
        ivs.push(
            toml::from_str(
                "at = 'blocks.1.hook_mlp_out'\nselect = { rows = [0, 2], positions = 'generated' }\nop = { kind = 'scale', factor = 3.0 }",
            )
            .unwrap(),
        );
        let batch = generate_batch(&m, &prompts, &greedy(8), &ivs, &record, |_, _| true).unwrap();
        for (i, (p, (g, rec))) in prompts.iter().zip(&batch).enumerate() {
            // Alone, prompt i is row 0: keep the rows selections that name it.
            let mine: Vec<Intervention> = ivs
                .iter()
                .filter(|iv| iv.select.rows.as_ref().is_none_or(|r| r.contains(&i)))
                .map(|iv| {
                    let mut iv = iv.clone();
                    iv.select.rows = None;
                    iv
                })
                .collect();
            let (alone, alone_rec) =
                generate_with(&m, p, &greedy(8), &mine, &record, |_| true).unwrap();
            assert_eq!(g, &alone, "{name} prompt {i}");
            assert_eq!(
                g.tokens,
                recomputed_with(&m, p, 8, &mine),
                "{name} prompt {i}"
            );
            assert_same_recording(rec, &alone_rec, &record, &format!("{name} prompt {i}"));
            let n = p.len() + g.tokens.len() - 1;
            assert_eq!(rec.get(HookPoint::ResidPost(1)).unwrap().dims()[1], n);
        }
    }
}

#[test]
fn prompts_that_stop_leave_the_batch_without_changing_the_others() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let n_ctx = m.cfg.n_ctx;
    let long: Vec<u32> = (0..n_ctx - 3).map(|i| (i % 50) as u32 + 1).collect();
    let prompts = vec![PROMPT.to_vec(), long, vec![5], vec![11, 2, 4]];
    // Sampled (greedy decoding of the fixture repeats one token): each prompt draws its own.
    let mut spec = sampled(8, 11);
    let plain = generate(&m, &PROMPT, &spec, |_| true).unwrap().tokens;
    // A stop token prompt 0 generates early and prompt 2 never does.
    let other = generate(&m, &prompts[2], &spec, |_| true).unwrap().tokens;
    let stop = *plain[..6]
        .iter()
        .find(|t| !other.contains(t))
        .unwrap_or_else(|| panic!("{plain:?} vs {other:?}"));
    spec.stop_tokens = vec![stop];
    // Prompt 3 is stopped by the callback after two tokens.
    let mut counts = [0usize; 4];
    let batch = generate_batch(&m, &prompts, &spec, &[], &[], |i, _| {
        counts[i] += 1;
        !(i == 3 && counts[i] == 2)
    })
    .unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let mut c = 0;
        let alone = generate(&m, p, &spec, |_| {
            c += 1;
            !(i == 3 && c == 2)
        })
        .unwrap();
        assert_eq!(batch[i].0, alone, "prompt {i}");
    }
    assert_eq!(batch[0].0.stop, Stop::StopToken);
    assert_eq!(
        (batch[1].0.tokens.len(), batch[1].0.stop),
        (3, Stop::Context)
    );
    assert_eq!(batch[3].0.stop, Stop::Callback);
    // Prompt 2 went on after the others left, past the longest prompt's columns.
    assert!(batch[2].0.tokens.len() > 3, "{:?}", batch[2].0);
}

#[test]
fn prompt_generated_and_decode_windows_act_where_they_say() {
    let m = load(&fixture("llama"), &Device::Cpu).unwrap().model;
    let vector = vec!["1.0"; m.cfg.d_model].join(", ");
    let iv = |extra: &str| -> Intervention {
        toml::from_str(&format!(
            "at = 'blocks.0.hook_resid_post'\n{extra}\nop = {{ kind = 'add', vector = [{vector}], coef = 20.0 }}"
        ))
        .unwrap()
    };
    let plain = generate(&m, &PROMPT, &greedy(10), |_| true).unwrap().tokens;
    let run = |iv: Intervention| {
        generate_with(&m, &PROMPT, &greedy(10), &[iv], &[], |_| true)
            .unwrap()
            .0
            .tokens
    };
    // Generated positions start at the prompt's end: token 0 comes from the prompt alone.
    let generated = run(iv("select = { positions = 'generated' }"));
    assert_eq!(generated[0], plain[0]);
    assert_ne!(generated[1..], plain[1..]);
    assert_eq!(
        generated,
        recomputed_with(
            &m,
            &PROMPT,
            10,
            &[iv("select = { positions = 'generated' }")]
        )
    );
    // The prompt's positions only: the cache carries the change to every later token.
    let prompt = run(iv("select = { positions = 'prompt' }"));
    assert_ne!(prompt, plain);
    assert_eq!(
        prompt,
        recomputed_with(&m, &PROMPT, 10, &[iv("select = { positions = 'prompt' }")])
    );
    assert_ne!(prompt, generated);
    // All positions is no selection at all.
    assert_eq!(run(iv("select = { positions = 'all' }")), run(iv("")));
    // A decode window from step 3: the first three tokens are the unsteered ones.
    let late = run(iv("decode = { from = 3 }"));
    assert_eq!(late[..3], plain[..3]);
    assert_ne!(late[3..], plain[3..]);
    // Until step 1: only the prefill is steered, which is the prompt selection.
    assert_eq!(run(iv("decode = { until = 1 }")), prompt);
}

#[test]
fn generation_only_selections_are_refused_in_a_plain_forward() {
    let m = load(&fixture("gpt2"), &Device::Cpu).unwrap().model;
    let input = Input::single(&PROMPT, &Device::Cpu).unwrap();
    for extra in [
        "select = { positions = 'generated' }",
        "decode = { from = 2 }",
    ] {
        let iv: Intervention = toml::from_str(&format!(
            "at = 'blocks.0.hook_mlp_out'\n{extra}\nop = {{ kind = 'zero' }}"
        ))
        .unwrap();
        let e = m
            .forward(&input, &mut Hooks::none().intervene(iv))
            .unwrap_err();
        assert!(e.to_string().contains("only in generation"), "{e}");
    }
    // A decode window that holds no step, and rows past the batch, are refused up front.
    let iv: Intervention = toml::from_str(
        "at = 'blocks.0.hook_mlp_out'\ndecode = { from = 4, until = 4 }\nop = { kind = 'zero' }",
    )
    .unwrap();
    let e = generate_with(&m, &PROMPT, &greedy(2), &[iv], &[], |_| true).unwrap_err();
    assert!(e.to_string().contains("holds no step"), "{e}");
    let iv: Intervention = toml::from_str(
        "at = 'blocks.0.hook_mlp_out'\nselect = { rows = [1] }\nop = { kind = 'zero' }",
    )
    .unwrap();
    let e = generate_with(&m, &PROMPT, &greedy(2), &[iv], &[], |_| true).unwrap_err();
    assert!(e.to_string().contains("prompt"), "{e}");
}

#[test]
fn batches_of_a_longer_list_keep_rows_and_per_row_positions_naming_its_prompts() {
    // Four prompts two at a time equal all four at once, with a `rows` selection naming prompt
    // 3 and per-row positions: the second batch's prompts are still prompts 2 and 3.
    use patchclamp_core::generate::generate_batches;
    let m = load(&fixture("llama"), &Device::Cpu).unwrap().model;
    let vector = vec!["1.0"; m.cfg.d_model].join(", ");
    let ivs: Vec<Intervention> = [
        format!("at = 'blocks.0.hook_resid_post'\nselect = {{ rows = [3] }}\nop = {{ kind = 'add', vector = [{vector}], coef = 20.0 }}"),
        format!("at = 'blocks.0.hook_resid_post'\nselect = {{ positions = {{ per_row = [[], [], [0], []] }} }}\nop = {{ kind = 'add', vector = [{vector}], coef = -20.0 }}"),
    ]
    .iter()
    .map(|t| toml::from_str(t).unwrap())
    .collect();
    let prompts = ragged();
    let all = generate_batch(&m, &prompts, &greedy(6), &ivs, &[], |_, _| true).unwrap();
    let mut seen = vec![];
    let pairs = generate_batches(&m, &prompts, 2, &greedy(6), &ivs, &[], |i, _| {
        seen.push(i);
        true
    })
    .unwrap();
    assert_eq!(
        all.iter().map(|(g, _)| g).collect::<Vec<_>>(),
        pairs.iter().map(|(g, _)| g).collect::<Vec<_>>()
    );
    assert!(
        seen.contains(&3),
        "the callback names prompts of the whole list"
    );
    let plain = generate_batch(&m, &prompts, &greedy(6), &[], &[], |_, _| true).unwrap();
    assert_eq!(all[0].0, plain[0].0, "prompt 0 is not selected");
    assert_ne!(all[3].0, plain[3].0, "prompt 3 is steered");
    assert_ne!(all[2].0, plain[2].0, "prompt 2's position 0 is steered");
}
