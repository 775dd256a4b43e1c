//! Dynamic activation composition (Scalena, Sarti & Nissim 2024): the strength of each
//! property's steering is chosen anew at every generated token.
//!
//! At step `t` the next-token distributions without steering (`P⁰`) and with property `p`
//! alone at `α_max` (`Pᵖ`) are compared over the union `S` of their top-p nuclei:
//! `α_t^p = clip(KL(P⁰ ‖ Pᵖ) / |S|, 0, α_max)`, both log-softmaxed over `S` (the reference
//! code's `kl_div(…, reduction='batchmean')` on a 1-D tensor divides by `|S|`). Token `t` is
//! then computed with every property at its `α_t^p` at position `t`'s input; earlier positions
//! keep the strengths they were generated with (their keys and values are cached).

use candle_core::Tensor;
use patchclamp_core::generate::{next_token, GenerateSpec, Stop};
use patchclamp_core::model::{KvCache, Span};
use patchclamp_core::rng::Rng;
use patchclamp_core::{Hooks, Input, Intervention, Model, Op};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The settings of dynamic composition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicSpec {
    /// The largest strength, and the one each step's probe steers with (2 in the paper).
    pub alpha_max: f64,
    /// The nucleus mass of each distribution's kept set (0.95 in the paper).
    pub top_p: f64,
    pub generate: GenerateSpec,
}

/// One dynamically steered generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicRun {
    /// The generated ids.
    pub tokens: Vec<u32>,
    /// `alphas[t][p]`: property `p`'s strength when token `t` was computed.
    pub alphas: Vec<Vec<f64>>,
    pub stop: Stop,
}

/// Generates after `prompt` with each property's additive interventions (`properties[p]`,
/// written at strength 1) scaled by its per-step strength.
pub fn dynamic_composition(
    model: &Model,
    prompt: &[u32],
    properties: &[Vec<Intervention>],
    spec: &DynamicSpec,
) -> Result<DynamicRun> {
    let cfg = &model.cfg;
    check(cfg, prompt, properties, spec)?;
    let dev = model.device();
    let gen = &spec.generate;
    let n = prompt.len();
    // The prompt but its last token, unsteered: step 0 computes from the last prompt token on.
    let mut cache: Option<KvCache> = None;
    if n > 1 {
        let mut h = kv_hooks(cfg);
        model.forward_span(
            &Input::single(&prompt[..n - 1], dev)?,
            &mut h,
            Span {
                last_position_only: true,
                ..Default::default()
            },
        )?;
        cache = Some(KvCache::from_cache(cfg, h.cache(), n - 1)?);
    }
    let k = properties.len();
    let (mut seq, mut tokens, mut alphas) = (prompt.to_vec(), vec![], vec![]);
    let mut rng = Rng::new(gen.sampling.seed);
    let mut x = prompt[n - 1];
    let stop = loop {
        let pos = (seq.len() - 1) as u32;
        // The probe: row 0 unsteered, row 1 + p with property p alone at α_max.
        let mut probe = Hooks::none();
        for (p, ivs) in properties.iter().enumerate() {
            for mut iv in scaled(ivs, spec.alpha_max) {
                iv.select.rows = Some(vec![p + 1]);
                probe = probe.intervene(iv);
            }
        }
        let logits = model.forward_span(
            &Input::step(&vec![x; k + 1], &vec![pos; k + 1], dev)?,
            &mut probe,
            Span {
                prefix: cache.clone(),
                ..Default::default()
            },
        )?;
        let rows = last_rows(&logits)?;
        let a: Vec<f64> = (0..k)
            .map(|p| nucleus_kl(&rows[0], &rows[p + 1], spec.top_p).clamp(0.0, spec.alpha_max))
            .collect();
        // The step itself, every property at its strength; its keys and values are kept.
        let mut real = kv_hooks(cfg);
        for (ivs, &alpha) in properties.iter().zip(&a) {
            for iv in scaled(ivs, alpha) {
                real = real.intervene(iv);
            }
        }
        let logits = model.forward_span(
            &Input::step(&[x], &[pos], dev)?,
            &mut real,
            Span {
                prefix: cache.clone(),
                ..Default::default()
            },
        )?;
        match &mut cache {
            Some(c) => c.append(cfg, real.cache())?,
            None => cache = Some(KvCache::from_cache(cfg, real.cache(), 1)?),
        }
        alphas.push(a);
        let z = &last_rows(&logits)?[0];
        let t = next_token(z, &seq, &tokens, &gen.sampling, &mut rng)?;
        tokens.push(t);
        seq.push(t);
        if gen.stop_tokens.contains(&t) {
            break Stop::StopToken;
        }
        if tokens.len() == gen.max_new_tokens {
            break Stop::MaxNewTokens;
        }
        if seq.len() >= cfg.n_ctx {
            tracing::warn!(
                "dynamic composition stopped after {} tokens: the model's context of {} positions is full",
                tokens.len(),
                cfg.n_ctx
            );
            break Stop::Context;
        }
        x = t;
    };
    Ok(DynamicRun {
        tokens,
        alphas,
        stop,
    })
}

fn check(
    cfg: &patchclamp_core::Config,
    prompt: &[u32],
    properties: &[Vec<Intervention>],
    spec: &DynamicSpec,
) -> Result<()> {
    spec.generate.validate(cfg)?;
    if !(spec.alpha_max.is_finite() && spec.alpha_max > 0.0) {
        return Err(Error::Input(format!(
            "alpha_max must be a positive number, got {}",
            spec.alpha_max
        )));
    }
    if !(spec.top_p > 0.0 && spec.top_p <= 1.0) {
        return Err(Error::Input(format!(
            "top_p must be in (0, 1], got {}",
            spec.top_p
        )));
    }
    if properties.is_empty() || properties.iter().any(|p| p.is_empty()) {
        return Err(Error::Input(
            "dynamic composition needs at least one property, each with at least one intervention"
                .into(),
        ));
    }
    if let Some(iv) = properties
        .iter()
        .flatten()
        .find(|iv| !matches!(iv.op, Op::Add { .. }))
    {
        return Err(Error::Input(format!(
            "dynamic composition scales additive steering; the intervention at {} is not an add",
            iv.at
        )));
    }
    if prompt.is_empty() || prompt.len() > cfg.n_ctx {
        return Err(Error::Input(format!(
            "the prompt has {} tokens; give 1 to {} (the model's context)",
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
    Ok(())
}

/// Hooks that keep the keys and values a cache appends.
fn kv_hooks(cfg: &patchclamp_core::Config) -> Hooks {
    KvCache::points(cfg)
        .into_iter()
        .fold(Hooks::none(), |h, p| h.capture(p))
}

/// `ivs` at strength `alpha`, acting on the one position of a step.
fn scaled(ivs: &[Intervention], alpha: f64) -> Vec<Intervention> {
    ivs.iter()
        .map(|iv| {
            let mut iv = iv.clone();
            iv.select.positions = None;
            if let Op::Add { coef, .. } = &mut iv.op {
                *coef *= alpha;
            }
            iv
        })
        .collect()
}

/// The last position's logits of every row.
fn last_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let s = logits.dim(1)?;
    Ok(logits.narrow(1, s - 1, 1)?.squeeze(1)?.to_vec2::<f32>()?)
}

/// The smallest set of likeliest tokens whose probability reaches `p` (the crossing one kept).
fn nucleus(z: &[f32], p: f64) -> Vec<usize> {
    let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = z.iter().map(|&x| (x as f64 - top).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    let mut cum = 0.0;
    let keep = order
        .iter()
        .position(|&i| {
            cum += w[i] / total;
            cum >= p
        })
        .map_or(order.len(), |i| i + 1);
    order.truncate(keep);
    order
}

/// `KL(P⁰ ‖ Pˢ) / |S|` over the union `S` of both top-p nuclei, each renormalised over `S`.
pub fn nucleus_kl(z0: &[f32], zs: &[f32], top_p: f64) -> f64 {
    let mut s = nucleus(z0, top_p);
    s.extend(nucleus(zs, top_p));
    s.sort_unstable();
    s.dedup();
    let lse = |z: &[f32]| {
        let m = s
            .iter()
            .map(|&i| z[i] as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        m + s.iter().map(|&i| (z[i] as f64 - m).exp()).sum::<f64>().ln()
    };
    let (l0, ls) = (lse(z0), lse(zs));
    let kl: f64 = s
        .iter()
        .map(|&i| {
            let (a, b) = (z0[i] as f64 - l0, zs[i] as f64 - ls);
            a.exp() * (a - b)
        })
        .sum();
    kl / s.len() as f64
}
