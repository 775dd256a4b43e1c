//! The K8 steering battery (METHODS.md K8): a small LM trained on two bigram styles, then every
//! steering method of this folder measured by the one number the styles make observable — the
//! style-A rate, the fraction of generated bigrams legal under style A — on prompts that start
//! with the neutral token.
//!
//! - CAA: `v = mean(x | A) − mean(x | B)` at block `layer`'s output over the content positions
//!   of A- and B-started sequences, added as `α·v` at every position;
//! - Linear-AcT from B's activations to A's at the same point, strength λ;
//! - dynamic composition with `v` as its one property (α_max = 2, top-p 0.95), against a fixed
//!   α = 2 added where it adds its α (from the prompt's last token on);
//! - directional ablation of `v̂` at every write, read by a linear probe for A vs B at `layer`
//!   and by the A-rate of A-started prompts;
//! - a function vector: the top heads by AIE on A walks against the same walks shuffled (their
//!   last token kept), added at block `layer`'s output.

use candle_core::Tensor;
use patchclamp_core::generate::{generate_batch, GenerateSpec, Sampling};
use patchclamp_core::rng::Rng;
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model};
use serde::{Deserialize, Serialize};

use crate::analysis::linear_probe::{train_probe, FitSpec};
use crate::error::{Error, Result};
use crate::steering::{
    directional_ablation, dynamic_composition, function_vector, linear_act, steering_interventions,
    DynamicSpec, Method, SteeringVectors, TaskPrompt,
};
use crate::tasks::{Style, Task, TwoStyles};
use crate::train::{LrSchedule, ModelSpec, OptimSpec, TrainSpec, Trainer};

/// What the battery trains and measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatterySpec {
    pub task: TwoStyles,
    pub model: ModelSpec,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Seed of training data, prompts and draws.
    pub seed: u64,
    /// The block whose output is steered and probed.
    pub layer: usize,
    /// Prompts per measured rate.
    pub prompts: usize,
    /// Tokens generated per prompt.
    pub new_tokens: usize,
    /// Sampling temperature of every generation.
    pub temperature: f64,
    /// Heads in the function vector.
    pub fv_heads: usize,
    /// The function vector's coefficient.
    pub fv_coef: f64,
}

impl Default for BatterySpec {
    fn default() -> Self {
        BatterySpec {
            task: TwoStyles::default(),
            model: ModelSpec {
                n_layers: 2,
                d_model: 64,
                n_heads: 4,
                d_mlp: 256,
                ..ModelSpec::default()
            },
            steps: 1200,
            batch: 32,
            lr: 3e-3,
            seed: 0,
            layer: 0,
            prompts: 96,
            new_tokens: 24,
            temperature: 1.0,
            fv_heads: 6,
            fv_coef: 8.0,
        }
    }
}

/// A style-A rate at each strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub strengths: Vec<f64>,
    pub rates: Vec<f64>,
}

/// Dynamic composition's strengths and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicSummary {
    /// α_t averaged over the prompts, per step.
    pub mean_alpha: Vec<f64>,
    /// The least and largest α_t of any prompt and step.
    pub min_alpha: f64,
    pub max_alpha: f64,
    /// Mean α at the first step, and over steps 10–20.
    pub first_alpha: f64,
    pub late_alpha: f64,
    pub rate: f64,
    /// The rate at a fixed α = 2 applied where dynamic composition applies its α (from the
    /// prompt's last token on).
    pub fixed_rate: f64,
    /// The rate at a fixed α equal to dynamic composition's mean α, applied the same way.
    pub fixed_mean_rate: f64,
}

/// Directional ablation's effect on a probe and on A-started generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationSummary {
    pub probe_before: f64,
    pub probe_after: f64,
    pub a_rate_before: f64,
    pub a_rate_after: f64,
}

/// The function vector's heads and its effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FvSummary {
    pub heads: Vec<(usize, usize)>,
    /// Their average indirect effects.
    pub aie: Vec<f64>,
    pub rate_without: f64,
    pub rate_with: f64,
}

/// One of K8's checks, with the threshold this battery is calibrated to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub value: f64,
    /// What the value must satisfy, in words (`≥ 0.8`).
    pub rule: String,
    pub pass: bool,
}

/// Everything the battery measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatteryResult {
    /// The mean training loss over the last 50 steps.
    pub final_loss: f64,
    /// Unsteered A-rates of A-, B- and neutral-started prompts.
    pub a_start_rate: f64,
    pub b_start_rate: f64,
    pub neutral_rate: f64,
    pub caa: Curve,
    pub act: Curve,
    /// Linear-AcT at λ = 0 changed no logit of a forward (bit for bit).
    pub act_identity: bool,
    pub dynamic: DynamicSummary,
    pub ablation: AblationSummary,
    pub fv: FvSummary,
    pub checks: Vec<Check>,
}

/// The CAA strengths and the Linear-AcT strengths.
pub const ALPHAS: [f64; 5] = [-2.0, -1.0, 0.0, 1.0, 2.0];
pub const LAMBDAS: [f64; 3] = [0.0, 0.5, 1.0];
/// How far a rate may fall from one strength to the next and still count as monotone.
pub const MONOTONE_SLACK: f64 = 0.05;

/// Trains the model and runs every measurement; `progress(stage)` names each stage.
pub fn run(spec: &BatterySpec, mut progress: impl FnMut(&str)) -> Result<BatteryResult> {
    let task = &spec.task;
    task.validate()?;
    let needed = 2 + spec.new_tokens;
    if needed > task.seq_len {
        return Err(Error::Spec(format!(
            "prompts of 2 tokens and {} new tokens need seq_len ≥ {needed} (positions past the training length are untrained)",
            spec.new_tokens
        )));
    }
    if spec.prompts < 4 || spec.new_tokens < 21 {
        return Err(Error::Spec(
            "the battery needs ≥ 4 prompts and ≥ 21 new tokens (dynamic composition reads steps 10–20)"
                .into(),
        ));
    }
    progress("training");
    let cfg = spec.model.config(task.vocab(), task.seq_len)?;
    if spec.layer >= cfg.n_layers {
        return Err(Error::OutOfRange {
            what: "layer",
            index: spec.layer as i64,
            limit: format!("{} blocks", cfg.n_layers),
        });
    }
    let train = TrainSpec {
        steps: spec.steps,
        batch: spec.batch,
        seed: spec.seed,
        optim: OptimSpec::default(),
        lr: LrSchedule::constant(spec.lr),
        clip: Some(1.0),
        eval_every: u64::MAX,
        eval_batch: 1,
        checkpoint_every: 0,
    };
    let mut tr = Trainer::new(cfg, spec.model.init_seed, train)?;
    let mut losses = vec![];
    for _ in 0..spec.steps {
        losses.push(tr.train_step(task)?.loss as f64);
    }
    let tail = &losses[losses.len().saturating_sub(50)..];
    let final_loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    let model = tr.snapshot()?;
    let m = &model;

    let mut rng = Rng::new(spec.seed ^ 0x5eed_5eed);
    let prompts = |rng: &mut Rng, style: Option<Style>| -> Vec<Vec<u32>> {
        (0..spec.prompts)
            .map(|_| vec![task.start(style), rng.below(task.vocab as u64) as u32])
            .collect()
    };
    let neutral = prompts(&mut rng, None);
    let a_started = prompts(&mut rng, Some(Style::A));
    let b_started = prompts(&mut rng, Some(Style::B));
    let gen = GenerateSpec {
        max_new_tokens: spec.new_tokens,
        sampling: Sampling {
            temperature: Some(spec.temperature),
            seed: spec.seed,
            ..Sampling::default()
        },
        stop_tokens: vec![],
    };
    let rate = |prompts: &[Vec<u32>], ivs: &[Intervention]| -> Result<f64> {
        let out = generate_batch(m, prompts, &gen, ivs, &[], |_, _| true)?;
        Ok(mean(prompts.iter().zip(&out).filter_map(|(p, (g, _))| {
            task.a_rate(*p.last().expect("non-empty"), &g.tokens)
        })))
    };
    progress("unsteered rates");
    let (a_start_rate, b_start_rate, neutral_rate) = (
        rate(&a_started, &[])?,
        rate(&b_started, &[])?,
        rate(&neutral, &[])?,
    );

    // CAA at block `layer`'s output, from A- and B-started sequences.
    progress("CAA");
    let at = HookPoint::ResidPost(spec.layer);
    let sequences = |rng: &mut Rng, style: Style| -> Vec<Vec<u32>> {
        (0..spec.prompts)
            .map(|_| {
                let mut s = vec![task.start(Some(style))];
                s.extend(task.walk(rng, style, task.seq_len - 1));
                s
            })
            .collect()
    };
    let a_seqs = sequences(&mut rng, Style::A);
    let b_seqs = sequences(&mut rng, Style::B);
    let (ma, mb) = (
        mean_content(m, &a_seqs, at, &[])?,
        mean_content(m, &b_seqs, at, &[])?,
    );
    let v: Vec<f32> = ma.iter().zip(&mb).map(|(a, b)| (a - b) as f32).collect();
    let vectors = SteeringVectors {
        method: Method::Mean,
        layers: vec![spec.layer],
        vectors: vec![v.clone()],
    };
    let mut caa = Curve {
        strengths: ALPHAS.to_vec(),
        rates: vec![],
    };
    for &alpha in &ALPHAS {
        caa.rates
            .push(rate(&neutral, &steering_interventions(&vectors, alpha))?);
    }

    // Linear-AcT from B to A at the same point.
    progress("Linear-AcT");
    let transport = linear_act(m, &b_seqs, &a_seqs, at)?;
    let mut act = Curve {
        strengths: LAMBDAS.to_vec(),
        rates: vec![],
    };
    for &lambda in &LAMBDAS {
        act.rates
            .push(rate(&neutral, &[transport.intervention(at, lambda)])?);
    }
    let act_identity = {
        let input = Input::single(&a_seqs[0], m.device())?;
        let plain = m.forward(&input, &mut Hooks::none())?;
        let zero = m.forward(
            &input,
            &mut Hooks::none().intervene(transport.intervention(at, 0.0)),
        )?;
        plain.flatten_all()?.to_vec1::<f32>()? == zero.flatten_all()?.to_vec1::<f32>()?
    };

    // Dynamic composition with v as its one property.
    progress("dynamic composition");
    let dspec = DynamicSpec {
        alpha_max: 2.0,
        top_p: 0.95,
        generate: gen.clone(),
    };
    let property = vec![steering_interventions(&vectors, 1.0)];
    let mut alphas: Vec<Vec<f64>> = vec![];
    let mut dyn_rates = vec![];
    for p in &neutral {
        let r = dynamic_composition(m, p, &property, &dspec)?;
        dyn_rates.push(task.a_rate(p[1], &r.tokens).unwrap_or(0.0));
        alphas.push(r.alphas.iter().map(|a| a[0]).collect());
    }
    let steps = spec.new_tokens;
    let mean_alpha: Vec<f64> = (0..steps)
        .map(|t| mean(alphas.iter().map(|a| a[t])))
        .collect();
    let from_last = |alpha: f64| -> Vec<Intervention> {
        steering_interventions(&vectors, alpha)
            .into_iter()
            .map(|mut iv| {
                iv.select.positions = Some(patchclamp_core::hooks::Positions::Range {
                    start: -1,
                    end: i64::MAX / 2,
                });
                iv
            })
            .collect()
    };
    let fixed_rate = rate(&neutral, &from_last(2.0))?;
    let all = alphas.iter().flatten().copied();
    let overall = mean(all.clone());
    let fixed_mean_rate = rate(&neutral, &from_last(overall))?;
    let dynamic = DynamicSummary {
        min_alpha: all.clone().fold(f64::INFINITY, f64::min),
        max_alpha: all.fold(f64::NEG_INFINITY, f64::max),
        first_alpha: mean_alpha[0],
        late_alpha: mean(mean_alpha[10..=20].iter().copied()),
        rate: mean(dyn_rates.iter().copied()),
        fixed_rate,
        fixed_mean_rate,
        mean_alpha,
    };

    // Directional ablation of v̂, read by a probe and by A-started generations.
    progress("directional ablation");
    let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let unit: Vec<f32> = v.iter().map(|&x| (x as f64 / norm) as f32).collect();
    let ablate = directional_ablation(&m.cfg, &unit)?;
    let probe = |ivs: &[Intervention]| -> Result<f64> {
        let mut x = per_sequence_content(m, &a_seqs, at, ivs)?;
        x.extend(per_sequence_content(m, &b_seqs, at, ivs)?);
        let y: Vec<usize> = (0..x.len()).map(|i| (i >= a_seqs.len()) as usize).collect();
        Ok(train_probe(&x, &y, 2, 0.5, spec.seed, FitSpec::default())?.test_accuracy)
    };
    let ablation = AblationSummary {
        probe_before: probe(&[])?,
        probe_after: probe(&ablate)?,
        a_rate_before: a_start_rate,
        a_rate_after: rate(&a_started, &ablate)?,
    };

    // A function vector from A walks against the same walks shuffled.
    progress("function vector");
    let mut clean = vec![];
    let mut corrupted = vec![];
    for _ in 0..spec.prompts {
        let walk = task.walk(&mut rng, Style::A, 12);
        let last = *walk.last().expect("non-empty");
        let answers = task.successors(Style::A, last);
        let mut shuffled = walk[..walk.len() - 1].to_vec();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        shuffled.push(last);
        clean.push(TaskPrompt {
            tokens: walk,
            answers: answers.clone(),
        });
        corrupted.push(TaskPrompt {
            tokens: shuffled,
            answers,
        });
    }
    let fv = function_vector(m, &clean, &corrupted, spec.fv_heads)?;
    let fv_summary = FvSummary {
        aie: fv.heads.iter().map(|&(l, h)| fv.aie[l][h]).collect(),
        heads: fv.heads.clone(),
        rate_without: neutral_rate,
        rate_with: rate(&neutral, &[fv.intervention(spec.layer, spec.fv_coef, None)])?,
    };

    let mut r = BatteryResult {
        final_loss,
        a_start_rate,
        b_start_rate,
        neutral_rate,
        caa,
        act,
        act_identity,
        dynamic,
        ablation,
        fv: fv_summary,
        checks: vec![],
    };
    r.checks = checks(&r);
    Ok(r)
}

/// K8's checks at the thresholds this battery is calibrated to (README, "lab steering").
pub fn checks(r: &BatteryResult) -> Vec<Check> {
    // Non-decreasing up to 0.05, about 1.5 standard errors of a rate from 96 prompts (one
    // prompt's bigrams are one sample: a generation keeps the style it falls into).
    let monotone = |c: &Curve| c.rates.windows(2).all(|w| w[1] >= w[0] - MONOTONE_SLACK);
    let check = |name: &str, value: f64, rule: &str, pass: bool| Check {
        name: name.into(),
        value,
        rule: rule.into(),
        pass,
    };
    let n = r.caa.rates.len();
    let d = &r.dynamic;
    let a = &r.ablation;
    vec![
        check(
            "CAA: style-A rate monotone in α (slack 0.05)",
            monotone(&r.caa) as u8 as f64,
            "1 (monotone)",
            monotone(&r.caa),
        ),
        check(
            "CAA: rate at α = 2",
            r.caa.rates[n - 1],
            "≥ 0.8",
            r.caa.rates[n - 1] >= 0.8,
        ),
        check(
            "CAA: rate at α = −2",
            r.caa.rates[0],
            "≤ 0.2",
            r.caa.rates[0] <= 0.2,
        ),
        check(
            "Linear-AcT: rate monotone in λ (slack 0.05)",
            monotone(&r.act) as u8 as f64,
            "1 (monotone)",
            monotone(&r.act),
        ),
        check(
            "Linear-AcT: λ = 0 is the identity",
            r.act_identity as u8 as f64,
            "1 (bit for bit)",
            r.act_identity,
        ),
        check(
            "Dyn: every α_t within [0, 2]",
            d.max_alpha,
            "min ≥ 0, max ≤ 2",
            d.min_alpha >= 0.0 && d.max_alpha <= 2.0,
        ),
        check(
            "Dyn: α at step 1 minus mean α over steps 10–20",
            d.first_alpha - d.late_alpha,
            "> 0",
            d.first_alpha > d.late_alpha,
        ),
        check(
            "Dyn: |rate − rate at fixed α = 2|",
            (d.rate - d.fixed_rate).abs(),
            "≤ 0.1",
            (d.rate - d.fixed_rate).abs() <= 0.1,
        ),
        check(
            "Ablation: probe accuracy after",
            a.probe_after,
            "≤ 0.6",
            a.probe_after <= 0.6,
        ),
        check(
            "Ablation: share of the A-start rate above chance that is lost",
            lost_share(a),
            "≥ 0.5",
            lost_share(a) >= 0.5,
        ),
        check(
            "FV: rise in the neutral rate",
            r.fv.rate_with - r.fv.rate_without,
            "≥ 0.3",
            r.fv.rate_with - r.fv.rate_without >= 0.3,
        ),
    ]
}

/// How much of the A-started prompts' rate above the neutral half the ablation removes.
fn lost_share(a: &AblationSummary) -> f64 {
    let above = a.a_rate_before - 0.5;
    if above <= 0.0 {
        return 0.0;
    }
    ((a.a_rate_before - a.a_rate_after) / above).clamp(-1.0, 2.0)
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// Each sequence's mean activation at `at` over its content positions (the start token
/// excluded), under `ivs`.
fn per_sequence_content(
    m: &Model,
    seqs: &[Vec<u32>],
    at: HookPoint,
    ivs: &[Intervention],
) -> Result<Vec<Vec<f64>>> {
    let input = Input::batch(seqs, patchclamp_core::Padding::Right, 0, m.device())?;
    if input.mask.is_some() {
        return Err(Error::Input("the sequences must share one length".into()));
    }
    let mut hooks = ivs
        .iter()
        .fold(Hooks::none().capture(at), |h, iv| h.intervene(iv.clone()));
    m.forward(&input, &mut hooks)?;
    let t: &Tensor = hooks.cache().get(at).expect("captured");
    let s = t.dim(1)?;
    let means = t.narrow(1, 1, s - 1)?.mean(1)?.to_vec2::<f32>()?;
    Ok(means
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as f64).collect())
        .collect())
}

/// The mean over sequences of [`per_sequence_content`].
fn mean_content(
    m: &Model,
    seqs: &[Vec<u32>],
    at: HookPoint,
    ivs: &[Intervention],
) -> Result<Vec<f64>> {
    let rows = per_sequence_content(m, seqs, at, ivs)?;
    let d = rows[0].len();
    Ok((0..d)
        .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64)
        .collect())
}
