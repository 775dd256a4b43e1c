//! Text generation: one forward over the prompt (the prefill), then one position per step
//! against a growing key-value cache, each next token chosen by the sampling settings.
//!
//! The sampling order is Hugging Face's: repetition penalty → frequency penalty → temperature
//! → top-k → top-p → draw. Greedy decoding takes the argmax of the (penalised) logits.
//!
//! Interventions act at every step, on that step's positions only, but their positions are
//! absolute positions in the sequence (prompt and generated): `positions = { range = { start =
//! 5, end = 1000 } }` selects the same positions with the cache as it would in a full forward
//! over the sequence. Negative positions and `last` count from the end of the prompt (`-1` is
//! its last token), so a selection names the same positions at every step. Recorded activations
//! come back joined along positions, as one forward over the sequence would have recorded
//! them (attention maps padded with what the causal mask leaves there).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, HookPoint, Hooks, Op};
use crate::input::Input;
use crate::model::{KvCache, Model, Span};
use crate::rng::Rng;
use crate::Intervention;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Softmax temperature; `None` is greedy decoding (the argmax).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Keep only the `k` most likely tokens.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Hugging Face's repetition penalty (1 is off): the logit of a token already in the
    /// sequence is divided by it when positive, multiplied by it when negative.
    #[serde(default = "one")]
    pub repetition_penalty: f64,
    /// Subtracted from a token's logit once per time it was generated (0 is off).
    #[serde(default)]
    pub frequency_penalty: f64,
    /// Seed of the draws (the same seed gives the same tokens).
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: None,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpec {
    /// The most tokens generated after the prompt.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end the generation once generated (kept in the output), usually EOS.
    #[serde(default)]
    pub stop_tokens: Vec<u32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// A stop token was generated.
    StopToken,
    /// The model's context is full.
    Context,
    /// The caller's callback asked to stop (a stop string, say).
    Callback,
}

/// The tokens generated after a prompt and why it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated ids only (the prompt excluded).
    pub tokens: Vec<u32>,
    pub stop: Stop,
}

impl GenerateSpec {
    /// Fails for settings that cannot sample (a temperature of 0 is greedy: say so instead).
    pub fn validate(&self, cfg: &crate::Config) -> Result<()> {
        let s = &self.sampling;
        let bad = |m: String| Err(Error::Input(m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if let Some(t) = s.temperature {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!(
                    "the temperature must be a positive number, got {t} (for the argmax, use greedy decoding)"
                ));
            }
        }
        if s.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = s.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if (s.top_k.is_some() || s.top_p.is_some()) && s.temperature.is_none() {
            return bad(
                "top_k and top_p shape sampling: give a temperature too (greedy decoding ignores them)".into(),
            );
        }
        if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
            return bad(format!(
                "the repetition penalty must be a positive number (1 is off), got {}",
                s.repetition_penalty
            ));
        }
        if !s.frequency_penalty.is_finite() {
            return bad(format!(
                "the frequency penalty must be finite, got {}",
                s.frequency_penalty
            ));
        }
        if let Some(&t) = self
            .stop_tokens
            .iter()
            .find(|&&t| t as usize >= cfg.d_vocab)
        {
            return bad(format!(
                "stop token {t} is outside the vocabulary of {}",
                cfg.d_vocab
            ));
        }
        Ok(())
    }
}

/// Generates after `prompt`; `on_token` sees each new token and returns `false` to stop.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    spec: &GenerateSpec,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    Ok(generate_with(model, prompt, spec, &[], &[], on_token)?.0)
}

/// [`generate`] with `interventions` held at every step (positions absolute, see the module
/// doc) and the activations at `record` returned, joined over the steps.
pub fn generate_with(
    model: &Model,
    prompt: &[u32],
    spec: &GenerateSpec,
    interventions: &[Intervention],
    record: &[HookPoint],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Generation, ActivationCache)> {
    let cfg = &model.cfg;
    spec.validate(cfg)?;
    if let Some(iv) = interventions.iter().find(|iv| {
        matches!(
            iv.op,
            Op::PrevToken { .. }
                | Op::Induction { .. }
                | Op::Patch { .. }
                | Op::SubspacePatch { .. }
        )
    }) {
        return Err(Error::Input(format!(
            "the {} intervention at {} is not supported during generation: pattern clamps and patches read whole sequences",
            op_name(&iv.op),
            iv.at
        )));
    }
    if prompt.is_empty() {
        return Err(Error::Input("the prompt has no tokens".into()));
    }
    if prompt.len() > cfg.n_ctx {
        return Err(Error::Input(format!(
            "the prompt has {} tokens; the model's context is {}",
            prompt.len(),
            cfg.n_ctx
        )));
    }
    if let Some(&t) = prompt.iter().find(|&&t| t as usize >= cfg.d_vocab) {
        return Err(Error::Input(format!(
            "prompt token {t} is outside the vocabulary of {}",
            cfg.d_vocab
        )));
    }
    let dev = model.device();
    // The hooks of a forward over positions offset..offset + len.
    let hooks = |offset: usize, len: usize| {
        let mut h = KvCache::points(cfg)
            .into_iter()
            .chain(record.iter().copied())
            .fold(Hooks::none(), |h, p| h.capture(p));
        for iv in interventions {
            if let Some(iv) = iv.for_window(offset, len, prompt.len()) {
                h = h.intervene(iv);
            }
        }
        h
    };
    let mut steps: Vec<ActivationCache> = vec![];
    let mut rng = Rng::new(spec.sampling.seed);
    let mut seq = prompt.to_vec();
    let mut out = vec![];
    // The prefill: the whole prompt once, keeping its keys and values.
    let mut rec = hooks(0, prompt.len());
    let logits = model.forward_span(
        &Input::single(prompt, dev)?,
        &mut rec,
        Span {
            last_position_only: true,
            ..Default::default()
        },
    )?;
    let mut cache = KvCache::from_cache(cfg, rec.cache(), prompt.len())?;
    steps.push(rec.take_cache());
    let mut last = last_logits(&logits)?;
    let stop = loop {
        let next = choose(&last, &seq, &out, &spec.sampling, &mut rng)?;
        out.push(next);
        seq.push(next);
        if spec.stop_tokens.contains(&next) {
            break Stop::StopToken;
        }
        if !on_token(next) {
            break Stop::Callback;
        }
        if out.len() == spec.max_new_tokens {
            break Stop::MaxNewTokens;
        }
        if seq.len() >= cfg.n_ctx {
            tracing::warn!(
                "generation stopped after {} tokens: the model's context of {} positions is full",
                out.len(),
                cfg.n_ctx
            );
            break Stop::Context;
        }
        // One step: the new token against the cache, whose keys and values grow by one.
        let mut rec = hooks(cache.len(), 1);
        let logits = model.forward_span(
            &Input::continuing(&[next], cache.len(), dev)?,
            &mut rec,
            Span {
                prefix: Some(cache.clone()),
                ..Default::default()
            },
        )?;
        cache.append(cfg, rec.cache())?;
        steps.push(rec.take_cache());
        last = last_logits(&logits)?;
    };
    let joined = join_steps(&steps, record, cache.len())?;
    Ok((Generation { tokens: out, stop }, joined))
}

/// The recorded points of every step joined along positions: what one forward over the
/// `total` positions run would have recorded (attention maps padded to every key with the
/// causal mask's values: 0 in patterns, −∞ in scores).
fn join_steps(
    steps: &[ActivationCache],
    record: &[HookPoint],
    total: usize,
) -> Result<ActivationCache> {
    let mut out = ActivationCache::default();
    for &p in record {
        let mut parts = vec![];
        for step in steps {
            let Some(t) = step.get(p) else {
                continue;
            };
            let t = match p {
                HookPoint::Pattern(_) | HookPoint::AttnScores(_) => {
                    let keys = t.dim(3)?;
                    if keys < total {
                        let fill = if matches!(p, HookPoint::Pattern(_)) {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        };
                        let mut shape = t.dims().to_vec();
                        shape[3] = total - keys;
                        let pad = Tensor::full(fill, shape.as_slice(), t.device())?
                            .to_dtype(t.dtype())?;
                        Tensor::cat(&[t, &pad], 3)?
                    } else {
                        t.clone()
                    }
                }
                _ => t.clone(),
            };
            parts.push(t);
        }
        if !parts.is_empty() {
            out.insert(p, Tensor::cat(&parts, p.pos_dim())?);
        }
    }
    Ok(out)
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::PrevToken { .. } => "prev_token",
        Op::Induction { .. } => "induction",
        Op::Patch { .. } => "patch",
        Op::SubspacePatch { .. } => "subspace_patch",
        _ => "this",
    }
}

/// The last position's logits of row 0, as f32.
fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let s = logits.dim(1)?;
    Ok(logits.get(0)?.get(s - 1)?.to_vec1::<f32>()?)
}

/// The next token from `logits`, given the sequence so far and the tokens generated.
fn choose(
    logits: &[f32],
    seq: &[u32],
    generated: &[u32],
    s: &Sampling,
    rng: &mut Rng,
) -> Result<u32> {
    let mut z: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    if let Some(i) = z.iter().position(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!(
            "the model's logit for token {i} is {}: nothing can be sampled",
            z[i]
        )));
    }
    if s.repetition_penalty != 1.0 {
        let mut seen = vec![false; z.len()];
        for &t in seq {
            seen[t as usize] = true;
        }
        for (x, _) in z.iter_mut().zip(&seen).filter(|(_, &s)| s) {
            *x = if *x > 0.0 {
                *x / s.repetition_penalty
            } else {
                *x * s.repetition_penalty
            };
        }
    }
    if s.frequency_penalty != 0.0 {
        for &t in generated {
            z[t as usize] -= s.frequency_penalty;
        }
    }
    let argmax = |z: &[f64]| {
        // The first of equal maxima, as torch's argmax.
        z.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    let Some(t) = s.temperature else {
        return Ok(argmax(&z));
    };
    // Candidates by descending logit (ties by id), cut by top-k, then softmax and top-p.
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    if let Some(k) = s.top_k {
        order.truncate(k.min(order.len()));
    }
    let top = z[order[0]];
    let mut p: Vec<f64> = order.iter().map(|&i| ((z[i] - top) / t).exp()).collect();
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    if let Some(top_p) = s.top_p {
        let mut cum = 0.0;
        let keep = p
            .iter()
            .position(|&x| {
                cum += x;
                cum >= top_p
            })
            .map_or(p.len(), |i| i + 1);
        order.truncate(keep);
        p.truncate(keep);
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
    }
    let u = rng.uniform();
    let mut cum = 0.0;
    for (&i, &q) in order.iter().zip(&p) {
        cum += q;
        if u < cum {
            return Ok(i as u32);
        }
    }
    Ok(*order.last().expect("at least one candidate") as u32)
}
