//! Generation: the cached decode loop equals recomputing the whole sequence every step, the
//! same seed gives the same tokens, and the stops and refusals behave as documented.

mod common;

use candle_core::Device;
use common::fixture;
use patchclamp_core::generate::{generate, GenerateSpec, Sampling, Stop};
use patchclamp_core::{load, Hooks, Input, Model};

const FAMILIES: [&str; 4] = ["gpt2", "llama", "mistral", "qwen2"];
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
    for name in FAMILIES {
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
    use patchclamp_core::generate::generate_with;
    use patchclamp_core::HookPoint;
    let n = 10;
    for name in FAMILIES {
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
                .filter_map(|iv| iv.for_window(0, len, PROMPT.len()))
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
    use patchclamp_core::generate::generate_with;
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
    use patchclamp_core::generate::generate_with;
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
