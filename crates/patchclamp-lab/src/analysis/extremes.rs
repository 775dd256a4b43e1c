//! Extreme-token phenomena (METHODS.md §4.1–4.2): attention sinks on the first token, value-state
//! drains, residual-state peaks (Guo et al. 2024), massive activations (Sun et al. 2024) and
//! flip-flop read errors (attention glitches, Liu et al. 2023).

use patchclamp_core::{HookPoint, Hooks, Input, Model, Selector};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::{FlipFlop, Task};
use crate::util::stats::median;

/// One massive activation: `|x| > abs_min` and `|x| ≥ ratio × median |x|` of its hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Massive {
    pub prompt: usize,
    pub layer: usize,
    pub position: usize,
    pub dim: usize,
    pub value: f32,
    /// The median |x| of that hidden state.
    pub median: f32,
}

/// The entries `(position, dim, value)` of a `[S, D]` hidden state that are massive, and the
/// median |x| they were compared with (Sun et al.: `abs_min` 100, `ratio` 1000).
pub fn massive_entries(
    x: &[f32],
    d: usize,
    abs_min: f32,
    ratio: f32,
) -> (Vec<(usize, usize, f32)>, f32) {
    let mags: Vec<f64> = x.iter().map(|v| v.abs() as f64).collect();
    let med = median(&mags) as f32;
    let hits = x
        .iter()
        .enumerate()
        .filter(|(_, v)| v.abs() > abs_min && v.abs() >= ratio * med)
        .map(|(i, &v)| (i / d, i % d, v))
        .collect();
    (hits, med)
}

/// Per-layer, per-head extreme-token statistics averaged over prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtremeReport {
    pub prompts: usize,
    /// `[layer][head]` mean attention on position 0 from queries t ≥ 1 (non-trigger queries
    /// when triggers are given).
    pub sink: Vec<Vec<f64>>,
    /// `[layer][head]` mean `A[t, t−1]` over trigger queries (empty without triggers).
    pub prev_trigger: Vec<Vec<f64>>,
    /// `[layer][kv head]` `‖v_0‖ / mean_{t≥1} ‖v_t‖`.
    pub value_drain: Vec<Vec<f64>>,
    /// `[layer]` `‖x_l[0]‖ / median_{t≥1} ‖x_l[t]‖` of the residual leaving the block.
    pub residual_peak: Vec<f64>,
    /// Massive activations in the residual leaving each block.
    pub massive: Vec<Massive>,
}

/// Settings of [`extremes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtremeSpec {
    /// Trigger tokens of the Bigram-Backcopy task: queries on them are scored separately.
    #[serde(default)]
    pub triggers: Vec<u32>,
    /// Massive-activation magnitude floor.
    pub abs_min: f32,
    /// Massive-activation ratio to the median.
    pub ratio: f32,
}

impl Default for ExtremeSpec {
    fn default() -> Self {
        ExtremeSpec {
            triggers: vec![],
            abs_min: 100.0,
            ratio: 1000.0,
        }
    }
}

/// Measures sinks, drains, peaks and massive activations over `prompts`, one at a time.
pub fn extremes(model: &Model, prompts: &[Vec<u32>], spec: &ExtremeSpec) -> Result<ExtremeReport> {
    let cfg = &model.cfg;
    let (nl, nh, nk) = (cfg.n_layers, cfg.attn.n_heads, cfg.attn.n_kv_heads);
    if prompts.is_empty() {
        return Err(Error::Input("no prompts to measure".into()));
    }
    for (name, v) in [("abs_min", spec.abs_min), ("ratio", spec.ratio)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::Input(format!(
                "the massive-activation threshold {name} must be a positive number, got {v}"
            )));
        }
    }
    let mut rep = ExtremeReport {
        prompts: prompts.len(),
        sink: vec![vec![0.0; nh]; nl],
        prev_trigger: if spec.triggers.is_empty() {
            vec![]
        } else {
            vec![vec![0.0; nh]; nl]
        },
        value_drain: vec![vec![0.0; nk]; nl],
        residual_peak: vec![0.0; nl],
        massive: vec![],
    };
    // Prompts without the measured kind of query do not count towards that mean.
    let mut n_sink = vec![0usize; nl];
    let mut n_trig = vec![0usize; nl];
    let mut n_peak = 0usize;
    for (i, p) in prompts.iter().enumerate() {
        let s = p.len();
        if s < 2 {
            return Err(Error::Input(format!(
                "prompt {i} has {s} token(s); extreme-token metrics need at least 2"
            )));
        }
        let input = Input::single(p, model.device())?;
        let mut hooks = Hooks::none()
            .capture(Selector::parse("blocks.*.attn.hook_pattern")?)
            .capture(Selector::parse("blocks.*.attn.hook_v")?)
            .capture(Selector::parse("blocks.*.hook_resid_post")?);
        model.forward(&input, &mut hooks)?;
        let cache = hooks.cache();
        let trig: Vec<bool> = p.iter().map(|t| spec.triggers.contains(t)).collect();
        n_peak += 1;
        for l in 0..nl {
            let pat = cache
                .get(HookPoint::Pattern(l))
                .expect("captured")
                .squeeze(0)?
                .to_vec3::<f32>()?; // [H, S, S]
            let queries: Vec<usize> = (1..s).filter(|&t| !trig[t]).collect();
            let triggers: Vec<usize> = (1..s).filter(|&t| trig[t]).collect();
            if !queries.is_empty() {
                n_sink[l] += 1;
            }
            if !triggers.is_empty() {
                n_trig[l] += 1;
            }
            for (h, a) in pat.iter().enumerate() {
                if !queries.is_empty() {
                    rep.sink[l][h] +=
                        queries.iter().map(|&t| a[t][0] as f64).sum::<f64>() / queries.len() as f64;
                }
                if !triggers.is_empty() {
                    rep.prev_trigger[l][h] +=
                        triggers.iter().map(|&t| a[t][t - 1] as f64).sum::<f64>()
                            / triggers.len() as f64;
                }
            }
            let v = cache
                .get(HookPoint::V(l))
                .expect("captured")
                .squeeze(0)?
                .to_vec3::<f32>()?; // [S, K, E]
            for (k, drain) in rep.value_drain[l].iter_mut().enumerate() {
                let norm = |t: usize| v[t][k].iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
                let rest = (1..s).map(norm).sum::<f64>() / (s - 1) as f64;
                *drain += norm(0) / rest.max(f64::MIN_POSITIVE);
            }
            let x = cache
                .get(HookPoint::ResidPost(l))
                .expect("captured")
                .squeeze(0)?;
            let rows = x.to_vec2::<f32>()?; // [S, D]
            let norms: Vec<f64> = rows
                .iter()
                .map(|r| r.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt())
                .collect();
            rep.residual_peak[l] += norms[0] / median(&norms[1..]).max(f64::MIN_POSITIVE);
            let flat: Vec<f32> = rows.concat();
            let (hits, med) = massive_entries(&flat, cfg.d_model, spec.abs_min, spec.ratio);
            rep.massive
                .extend(hits.into_iter().map(|(position, dim, value)| Massive {
                    prompt: i,
                    layer: l,
                    position,
                    dim,
                    value,
                    median: med,
                }));
        }
    }
    for l in 0..nl {
        for h in 0..nh {
            rep.sink[l][h] /= n_sink[l].max(1) as f64;
            if !rep.prev_trigger.is_empty() {
                rep.prev_trigger[l][h] /= n_trig[l].max(1) as f64;
            }
        }
        for k in 0..nk {
            rep.value_drain[l][k] /= n_peak as f64;
        }
        rep.residual_peak[l] /= n_peak as f64;
    }
    Ok(rep)
}

/// Flip-flop read error (Liu et al. 2023): the fraction of read bits, over `n` sequences of
/// `task` (seeded), where the model's most likely next token is not the remembered bit.
pub fn read_error(model: &Model, task: &FlipFlop, n: usize, seed: u64) -> Result<f64> {
    let mut rng = patchclamp_core::rng::Rng::new(seed);
    let (mut wrong, mut reads) = (0usize, 0usize);
    let mut left = n;
    while left > 0 {
        let b = task.batch(&mut rng, left.min(32));
        left -= b.tokens.len();
        let input = crate::tasks::loss::input(&b, model.device())?;
        let logits = model.forward(&input, &mut Hooks::none())?;
        let pred = logits.argmax(candle_core::D::Minus1)?.to_vec2::<u32>()?;
        for (r, row) in b.in_context.iter().enumerate() {
            for (p, &is_read) in row.iter().enumerate() {
                if is_read {
                    reads += 1;
                    wrong += (pred[r][p] != b.targets[r][p]) as usize;
                }
            }
        }
    }
    Ok(wrong as f64 / reads.max(1) as f64)
}
