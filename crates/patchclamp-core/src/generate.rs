//! Text generation: one forward over the prompts (the prefill), then one position per step
//! against a growing key-value cache, each next token chosen by the sampling settings.
//!
//! The sampling order is Hugging Face's: repetition penalty → frequency penalty → temperature
//! → top-k → top-p → draw. Greedy decoding takes the argmax of the (penalised) logits.
//!
//! Several prompts generate as one ragged batch: left-padded, each row with its own absolute
//! position ids (rotary offsets and learned positions alike) and its own draws, so each prompt
//! gets the tokens it gets alone. A prompt that stops leaves the batch.
//!
//! Interventions act at every step, on that step's positions only, but their positions are
//! absolute positions in the row's sequence (prompt and generated): `positions = { range = {
//! start = 5, end = 1000 } }` selects the same positions with the cache as it would in a full
//! forward over the sequence. Negative positions and `last` count from the end of the prompt
//! (`-1` is its last token), `"prompt"`, `"generated"` and `"all"` split there, `rows` name
//! prompts, and a `decode = { from, until }` window picks decode steps (step `t` computes
//! generated token `t`; the prefill is step 0). Recorded activations come back per prompt,
//! joined along positions, as one forward over its sequence alone would have recorded them
//! (attention maps padded with what the causal mask leaves there).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, HookPoint, Hooks, Op, RowWindow, Splice};
use crate::input::{Input, Padding};
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
    let mut out = generate_batch(
        model,
        &[prompt.to_vec()],
        spec,
        interventions,
        record,
        |_, t| on_token(t),
    )?;
    Ok(out.pop().expect("one prompt, one generation"))
}

/// One prompt's generation and what was recorded during it.
pub type Generated = (Generation, ActivationCache);

/// Generates after every prompt at once (a ragged batch, left-padded): each prompt gets the
/// tokens it would get alone (its own draws, from the same seed), and the recording of each
/// equals its recording alone. `on_token(prompt, token)` returns `false` to stop that prompt.
/// A prompt that stops leaves the batch; the others go on without its columns.
pub fn generate_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    spec: &GenerateSpec,
    interventions: &[Intervention],
    record: &[HookPoint],
    on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Generated>> {
    generate_batches(
        model,
        prompts,
        prompts.len().max(1),
        spec,
        interventions,
        record,
        on_token,
    )
}

/// [`generate_batch`] `batch` prompts at a time (the tokens do not depend on `batch`):
/// `rows` selections and per-row positions keep naming prompts of the whole list.
pub fn generate_batches(
    model: &Model,
    prompts: &[Vec<u32>],
    batch: usize,
    spec: &GenerateSpec,
    interventions: &[Intervention],
    record: &[HookPoint],
    on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Generated>> {
    generate_spliced(
        model,
        prompts,
        batch,
        spec,
        interventions,
        record,
        &[],
        on_token,
    )
}

/// [`generate_batches`] with SAEs spliced into every step's forward: their `hook_sae_*`
/// points take interventions (steering by latents) and recordings like any other point.
#[allow(clippy::too_many_arguments)]
pub fn generate_spliced(
    model: &Model,
    prompts: &[Vec<u32>],
    batch: usize,
    spec: &GenerateSpec,
    interventions: &[Intervention],
    record: &[HookPoint],
    splices: &[Splice],
    mut on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Generated>> {
    for s in splices {
        s.check(&model.cfg)?;
    }
    check(model, prompts, spec, interventions)?;
    if batch == 0 {
        return Err(Error::Input(
            "the batch must hold at least one prompt".into(),
        ));
    }
    let mut acted = vec![false; interventions.len()];
    let mut out = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(batch).enumerate() {
        let start = c * batch;
        let (which, local): (Vec<usize>, Vec<Intervention>) = interventions
            .iter()
            .enumerate()
            .filter_map(|(k, iv)| Some((k, iv.for_prompts(start, chunk.len())?)))
            .unzip();
        let (done, local_acted) =
            one_batch(model, chunk, spec, &local, record, splices, |i, t| {
                on_token(start + i, t)
            })?;
        for (k, a) in which.into_iter().zip(local_acted) {
            acted[k] |= a;
        }
        out.extend(done);
    }
    for (iv, acted) in interventions.iter().zip(&acted) {
        if !acted {
            tracing::warn!(
                "the intervention at {} never acted: it selects no position of any step",
                iv.at
            );
        }
    }
    Ok(out)
}

/// One batch of checked prompts; also says which interventions acted somewhere.
fn one_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    spec: &GenerateSpec,
    interventions: &[Intervention],
    record: &[HookPoint],
    splices: &[Splice],
    mut on_token: impl FnMut(usize, u32) -> bool,
) -> Result<(Vec<Generated>, Vec<bool>)> {
    let cfg = &model.cfg;
    let dev = model.device();
    let n = prompts.len();
    let mut acted = vec![false; interventions.len()];
    // The hooks of one forward: keys and values kept, `record` captured, and each
    // intervention narrowed to the positions of this forward it selects.
    let mut hooks = |step: u64, rows: &[RowWindow]| {
        let mut h = KvCache::points(cfg)
            .into_iter()
            .chain(record.iter().copied())
            .fold(Hooks::none().splice_all(splices.iter().cloned()), |h, p| {
                h.capture(p)
            });
        for (iv, acted) in interventions.iter().zip(acted.iter_mut()) {
            if let Some(iv) = iv.for_rows(step, rows) {
                *acted = true;
                h = h.intervene(iv);
            }
        }
        h
    };
    let mut parts: Vec<Vec<ActivationCache>> = vec![vec![]; n];
    let mut rngs: Vec<Rng> = (0..n).map(|_| Rng::new(spec.sampling.seed)).collect();
    let mut seqs = prompts.to_vec();
    let mut outs: Vec<Vec<u32>> = vec![vec![]; n];
    let mut stops: Vec<Option<Stop>> = vec![None; n];

    // The prefill: every prompt once, left-padded so that all end at the last column.
    let input = Input::batch(prompts, Padding::Left, 0, dev)?;
    let (_, s) = input.dims()?;
    let rows: Vec<RowWindow> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| RowWindow {
            prompt: i,
            offset: 0,
            len: p.len(),
            pad: s - p.len(),
            anchor: p.len(),
        })
        .collect();
    let mut rec = hooks(0, &rows);
    let logits = model.forward_span(
        &input,
        &mut rec,
        Span {
            last_position_only: true,
            ..Default::default()
        },
    )?;
    let mut cache = KvCache::from_batch(cfg, rec.cache(), &input)?;
    let step_cache = rec.take_cache();
    for (j, w) in rows.iter().enumerate() {
        parts[w.prompt].push(row_of(&step_cache, record, j, w.pad, w.pad)?);
    }
    let mut last = last_logits(&logits)?;
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        // Each active prompt draws its next token; those that stop leave the batch.
        let mut keep = vec![];
        let mut next = vec![];
        for (j, &i) in active.iter().enumerate() {
            let t = next_token(&last[j], &seqs[i], &outs[i], &spec.sampling, &mut rngs[i])?;
            outs[i].push(t);
            seqs[i].push(t);
            stops[i] = if spec.stop_tokens.contains(&t) {
                Some(Stop::StopToken)
            } else if !on_token(i, t) {
                Some(Stop::Callback)
            } else if outs[i].len() == spec.max_new_tokens {
                Some(Stop::MaxNewTokens)
            } else if seqs[i].len() >= cfg.n_ctx {
                let which = if n > 1 {
                    format!(" for prompt {i}")
                } else {
                    String::new()
                };
                tracing::warn!(
                    "generation{which} stopped after {} tokens: the model's context of {} positions is full",
                    outs[i].len(),
                    cfg.n_ctx
                );
                Some(Stop::Context)
            } else {
                None
            };
            if stops[i].is_none() {
                keep.push(j);
                next.push(t);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|&j| active[j]).collect();
        }
        // One step: each row's new token at its own absolute position, against the cache.
        let rows: Vec<RowWindow> = active
            .iter()
            .enumerate()
            .map(|(j, &i)| RowWindow {
                prompt: i,
                offset: cache.length_of(j),
                len: 1,
                pad: 0,
                anchor: prompts[i].len(),
            })
            .collect();
        let positions: Vec<u32> = rows.iter().map(|w| w.offset as u32).collect();
        let step = outs[active[0]].len() as u64;
        let mut rec = hooks(step, &rows);
        let logits = model.forward_span(
            &Input::step(&next, &positions, dev)?,
            &mut rec,
            Span {
                prefix: Some(cache.clone()),
                ..Default::default()
            },
        )?;
        let step_cache = rec.take_cache();
        for (j, w) in rows.iter().enumerate() {
            parts[w.prompt].push(row_of(&step_cache, record, j, 0, cache.pad_of(j))?);
        }
        cache.append(cfg, &step_cache)?;
        last = last_logits(&logits)?;
    }
    let done = outs
        .into_iter()
        .zip(stops)
        .zip(parts)
        .map(|((tokens, stop), steps)| {
            let joined = join_steps(&steps, record)?;
            Ok((
                Generation {
                    tokens,
                    stop: stop.expect("every prompt stops"),
                },
                joined,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((done, acted))
}

/// Refuses what cannot generate, before any compute: bad settings, empty or too long prompts,
/// out-of-vocabulary tokens, and interventions that are wrong at every position.
fn check(
    model: &Model,
    prompts: &[Vec<u32>],
    spec: &GenerateSpec,
    interventions: &[Intervention],
) -> Result<()> {
    let cfg = &model.cfg;
    spec.validate(cfg)?;
    if prompts.is_empty() {
        return Err(Error::Input("no prompt to generate from".into()));
    }
    let name = |i: usize| match prompts.len() {
        1 => "the prompt".to_string(),
        _ => format!("prompt {i}"),
    };
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(Error::Input(format!("{} has no tokens", name(i))));
        }
        if prompt.len() > cfg.n_ctx {
            return Err(Error::Input(format!(
                "{} has {} tokens; the model's context is {}",
                name(i),
                prompt.len(),
                cfg.n_ctx
            )));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= cfg.d_vocab) {
            return Err(Error::Input(format!(
                "{} token {t} is outside the vocabulary of {}",
                name(i),
                cfg.d_vocab
            )));
        }
    }
    for iv in interventions {
        if matches!(
            iv.op,
            Op::PrevToken { .. }
                | Op::Induction { .. }
                | Op::Patch { .. }
                | Op::SubspacePatch { .. }
        ) {
            return Err(Error::Input(format!(
                "the {} intervention at {} is not supported during generation: pattern clamps and patches read whole sequences",
                op_name(&iv.op),
                iv.at
            )));
        }
        if let Some(d) = &iv.decode {
            d.validate()
                .map_err(|e| Error::Input(format!("decode window at {}: {e}", iv.at)))?;
        }
        if let Some(&r) = iv
            .select
            .rows
            .iter()
            .flatten()
            .find(|&&r| r >= prompts.len())
        {
            return Err(Error::OutOfRange {
                what: "prompt",
                index: r as i64,
                limit: format!(
                    "{} prompts (rows of the intervention at {})",
                    prompts.len(),
                    iv.at
                ),
            });
        }
        // Everything but its positions (absolute, checked step by step) is checked now.
        let mut whole = iv.clone();
        whole.select.positions = None;
        whole.select.rows = None;
        whole.decode = None;
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        whole.validate(cfg, prompts.len(), longest, &Default::default())?;
    }
    Ok(())
}

/// Row `j` of one forward's recording, without its padding: `pad` query columns and
/// `key_pad` key columns (attention maps) belong to other rows' longer prompts.
fn row_of(
    cache: &ActivationCache,
    record: &[HookPoint],
    j: usize,
    pad: usize,
    key_pad: usize,
) -> Result<ActivationCache> {
    let mut out = ActivationCache::default();
    for &p in record {
        let Some(t) = cache.get(p) else { continue };
        let t = t.narrow(0, j, 1)?;
        let d = p.pos_dim();
        let t = t.narrow(d, pad, t.dim(d)? - pad)?;
        let t = match p {
            HookPoint::Pattern(_) | HookPoint::AttnScores(_) => {
                t.narrow(3, key_pad, t.dim(3)? - key_pad)?
            }
            _ => t,
        };
        out.insert(p, t.contiguous()?);
    }
    Ok(out)
}

/// The recorded points of every step joined along positions: what one forward over the
/// whole sequence would have recorded (attention maps padded to every key with the causal
/// mask's values: 0 in patterns, −∞ in scores).
fn join_steps(steps: &[ActivationCache], record: &[HookPoint]) -> Result<ActivationCache> {
    let mut out = ActivationCache::default();
    for &p in record {
        let parts: Vec<&Tensor> = steps.iter().filter_map(|s| s.get(p)).collect();
        if parts.is_empty() {
            continue;
        }
        let total: usize = parts
            .iter()
            .map(|t| t.dim(p.pos_dim()))
            .sum::<candle_core::Result<usize>>()?;
        let mut padded = vec![];
        for t in parts {
            let t = match p {
                HookPoint::Pattern(_) | HookPoint::AttnScores(_) if t.dim(3)? < total => {
                    let fill = if matches!(p, HookPoint::Pattern(_)) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    };
                    let mut shape = t.dims().to_vec();
                    shape[3] = total - shape[3];
                    let pad =
                        Tensor::full(fill, shape.as_slice(), t.device())?.to_dtype(t.dtype())?;
                    Tensor::cat(&[t, &pad], 3)?
                }
                _ => t.clone(),
            };
            padded.push(t);
        }
        out.insert(p, Tensor::cat(&padded, p.pos_dim())?);
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

/// The last position's logits of every row, as f32.
fn last_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let s = logits.dim(1)?;
    Ok(logits
        .narrow(1, s - 1, 1)?
        .squeeze(1)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?)
}

/// The next token from `logits`, given the sequence so far and the tokens generated (the
/// sampling rule every generation here uses; methods with their own decode loop call it too).
pub fn next_token(
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
