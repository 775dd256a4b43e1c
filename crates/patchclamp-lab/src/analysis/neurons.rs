//! Neuron census (METHODS.md §7.1–7.6): activation frequency, dead neurons, lazy sparsity,
//! token / bigram detectors and positional neurons, streamed over batches in memory independent
//! of the token count; each neuron's output-vocabulary projection; LAPE language-specific
//! neurons; average-precision experts; the Welch-t localizer.

use candle_core::Tensor;
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model, Op, Padding, Selection};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks::Batch;
use crate::util::stats::{
    average_precision, kth_smallest, welch_t, FrequentItems, Histogram, UnitMoments,
};

/// Census settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CensusSpec {
    /// Counters kept per neuron for its triggering tokens and bigrams (counts are exact while a
    /// neuron fires on at most this many distinct items).
    pub capacity: usize,
    /// A token detector's activations are covered this much by at most `max_tokens` items.
    pub coverage: f64,
    pub max_tokens: usize,
    /// Neurons firing fewer times are not classified as detectors.
    pub min_count: u64,
    /// Fraction of activation variance explained by position for a positional neuron.
    pub positional_r2: f64,
}

impl Default for CensusSpec {
    fn default() -> Self {
        CensusSpec {
            capacity: 64,
            coverage: 0.9,
            max_tokens: 5,
            min_count: 5,
            positional_r2: 0.5,
        }
    }
}

/// Running statistics of one layer's MLP neurons (`blocks.L.mlp.hook_post`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCensus {
    pub moments: UnitMoments,
    /// Per neuron: the tokens it fired on.
    pub tokens: Vec<FrequentItems>,
    /// Per neuron: the (previous, current) bigrams it fired on, keyed `prev << 32 | cur`.
    pub bigrams: Vec<FrequentItems>,
    /// `[position][neuron]` sums of activations, and tokens seen per position.
    pub pos_sum: Vec<Vec<f64>>,
    pub pos_count: Vec<u64>,
    /// Histogram of the per-token fraction of active neurons.
    pub active_fraction: Histogram,
}

/// The streamed census of every MLP layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Census {
    pub spec: CensusSpec,
    pub layers: Vec<LayerCensus>,
    /// Tokens observed.
    pub tokens: u64,
}

impl Census {
    /// An empty census for `model` (which must have MLPs).
    pub fn new(model: &Model, spec: CensusSpec) -> Result<Census> {
        let cfg = &model.cfg;
        if !cfg.has_mlp() {
            return Err(Error::Input(
                "the neuron census needs a model with MLP layers; this one is attention-only"
                    .into(),
            ));
        }
        let m = cfg.d_mlp();
        let layer = LayerCensus {
            moments: UnitMoments::new(m),
            tokens: vec![FrequentItems::new(spec.capacity); m],
            bigrams: vec![FrequentItems::new(spec.capacity); m],
            pos_sum: vec![],
            pos_count: vec![],
            active_fraction: Histogram::new(0.0, 1.0, 20),
        };
        Ok(Census {
            spec,
            layers: vec![layer; cfg.n_layers],
            tokens: 0,
        })
    }

    /// Adds the activations of `seqs` (one forward pass; padding is skipped).
    pub fn observe(&mut self, model: &Model, seqs: &[Vec<u32>]) -> Result<()> {
        let input = Input::batch(seqs, Padding::Right, 0, model.device())?;
        self.add(&mlp_activations(model, &input)?, seqs)
    }

    /// Adds recorded `blocks.L.mlp.hook_post` activations (`[B, S, M]` per layer, right-padded)
    /// of `seqs`.
    pub fn add(&mut self, acts: &[Tensor], seqs: &[Vec<u32>]) -> Result<()> {
        if acts.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "census of {} layers got activations of {}",
                self.layers.len(),
                acts.len()
            )));
        }
        for (lc, act) in self.layers.iter_mut().zip(acts) {
            let act = act.to_vec3::<f32>()?; // [B, S, M]
            for (row, seq) in seqs.iter().enumerate() {
                for (t, &tok) in seq.iter().enumerate() {
                    lc.observe(
                        &act[row][t],
                        tok,
                        if t > 0 { Some(seq[t - 1]) } else { None },
                        t,
                    );
                }
            }
        }
        self.tokens += seqs.iter().map(|s| s.len() as u64).sum::<u64>();
        Ok(())
    }

    /// The census's findings.
    pub fn report(&self) -> CensusReport {
        let spec = &self.spec;
        let layers = self
            .layers
            .iter()
            .map(|lc| {
                let freq = lc.moments.frequency();
                let m = freq.len();
                let dead: Vec<usize> = (0..m).filter(|&i| lc.moments.active[i] == 0).collect();
                let detector = |items: &FrequentItems, i: usize| -> Option<Vec<u64>> {
                    let n = lc.moments.active[i];
                    if n < spec.min_count {
                        return None;
                    }
                    let top = items.top(spec.max_tokens);
                    let mut covered = 0;
                    for (k, (_, c)) in top.iter().enumerate() {
                        covered += c;
                        if covered as f64 >= spec.coverage * n as f64 {
                            return Some(top[..=k].iter().map(|(t, _)| *t).collect());
                        }
                    }
                    None
                };
                let mut token_detectors = vec![];
                let mut bigram_detectors = vec![];
                for i in 0..m {
                    if let Some(t) = detector(&lc.tokens[i], i) {
                        token_detectors.push(Detector {
                            neuron: i,
                            items: t.into_iter().map(|x| vec![x as u32]).collect(),
                        });
                    } else if let Some(t) = detector(&lc.bigrams[i], i) {
                        bigram_detectors.push(Detector {
                            neuron: i,
                            items: t
                                .into_iter()
                                .map(|x| vec![(x >> 32) as u32, x as u32])
                                .collect(),
                        });
                    }
                }
                let r2 = lc.position_r2();
                let positional = (0..m)
                    .filter(|&i| {
                        lc.moments.active[i] >= spec.min_count && r2[i] >= spec.positional_r2
                    })
                    .map(|i| (i, r2[i]))
                    .collect();
                LayerReport {
                    frequency: freq.clone(),
                    dead_fraction: dead.len() as f64 / m as f64,
                    dead,
                    sparsity: freq.iter().sum::<f64>() / m as f64,
                    token_detectors,
                    bigram_detectors,
                    positional,
                    active_fraction: lc.active_fraction.clone(),
                }
            })
            .collect();
        CensusReport {
            tokens: self.tokens,
            layers,
        }
    }

    /// Per-layer activation probabilities `[layer][neuron]` (LAPE's `p`).
    pub fn probabilities(&self) -> Vec<Vec<f64>> {
        self.layers.iter().map(|l| l.moments.frequency()).collect()
    }
}

impl LayerCensus {
    fn observe(&mut self, act: &[f32], tok: u32, prev: Option<u32>, pos: usize) {
        self.moments.push(act);
        if self.pos_sum.len() <= pos {
            self.pos_sum.resize(pos + 1, vec![0.0; act.len()]);
            self.pos_count.resize(pos + 1, 0);
        }
        self.pos_count[pos] += 1;
        let mut active = 0usize;
        for (i, &x) in act.iter().enumerate() {
            self.pos_sum[pos][i] += x as f64;
            if x > 0.0 {
                active += 1;
                self.tokens[i].push(tok as u64);
                if let Some(p) = prev {
                    self.bigrams[i].push(((p as u64) << 32) | tok as u64);
                }
            }
        }
        self.active_fraction.push(active as f64 / act.len() as f64);
    }

    /// Per neuron, the fraction of activation variance explained by position.
    fn position_r2(&self) -> Vec<f64> {
        let n = self.moments.n as f64;
        let mean = self.moments.mean();
        (0..mean.len())
            .map(|i| {
                let total = self.moments.sumsq[i] - n * mean[i] * mean[i];
                if total <= 1e-12 * n.max(1.0) {
                    return 0.0;
                }
                let between: f64 = self
                    .pos_sum
                    .iter()
                    .zip(&self.pos_count)
                    .filter(|(_, &c)| c > 0)
                    .map(|(s, &c)| {
                        let m = s[i] / c as f64;
                        c as f64 * (m - mean[i]).powi(2)
                    })
                    .sum();
                between / total
            })
            .collect()
    }
}

/// A neuron and the tokens (or bigrams) that cover its activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub neuron: usize,
    pub items: Vec<Vec<u32>>,
}

/// One layer's census findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Fraction of tokens on which each neuron is > 0.
    pub frequency: Vec<f64>,
    pub dead: Vec<usize>,
    pub dead_fraction: f64,
    /// Mean fraction of neurons active per token (Li et al.'s lazy-neuron sparsity).
    pub sparsity: f64,
    pub token_detectors: Vec<Detector>,
    pub bigram_detectors: Vec<Detector>,
    /// `(neuron, R²)` of neurons whose activation is mostly explained by position.
    pub positional: Vec<(usize, f64)>,
    pub active_fraction: Histogram,
}

/// The census's findings for every layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CensusReport {
    pub tokens: u64,
    pub layers: Vec<LayerReport>,
}

/// `blocks.L.mlp.hook_post` of every layer, `[B, S, M]` each.
pub fn mlp_activations(model: &Model, input: &Input) -> Result<Vec<Tensor>> {
    let n = model.cfg.n_layers;
    let mut hooks = (0..n).fold(Hooks::none(), |h, l| h.capture(HookPoint::MlpPost(l)));
    model.forward(input, &mut hooks)?;
    Ok((0..n)
        .map(|l| {
            hooks
                .cache()
                .get(HookPoint::MlpPost(l))
                .expect("captured")
                .clone()
        })
        .collect())
}

/// A neuron's most promoted and most suppressed tokens, `(token, weight)` each.
pub type VocabProjection = (Vec<(u32, f32)>, Vec<(u32, f32)>);

/// A neuron's direct effect on the logits: `W_out[n] · W_U`, its top `k` promoted and
/// suppressed tokens with their weights.
pub fn vocab_projection(
    model: &Model,
    layer: usize,
    neuron: usize,
    k: usize,
) -> Result<VocabProjection> {
    let cfg = &model.cfg;
    let mlp = model
        .weights
        .blocks
        .get(layer)
        .and_then(|b| b.mlp.as_ref())
        .ok_or(Error::OutOfRange {
            what: "MLP layer",
            index: layer as i64,
            limit: format!(
                "{} layers with MLPs",
                if cfg.has_mlp() { cfg.n_layers } else { 0 }
            ),
        })?;
    if neuron >= cfg.d_mlp() {
        return Err(Error::OutOfRange {
            what: "neuron",
            index: neuron as i64,
            limit: format!("{} neurons per layer", cfg.d_mlp()),
        });
    }
    let row = mlp.w_out.detach().narrow(0, neuron, 1)?; // [1, D]
    let proj: Vec<f32> = row
        .matmul(&model.weights.unembed().detach())?
        .flatten_all()?
        .to_vec1()?;
    let mut idx: Vec<usize> = (0..proj.len()).collect();
    idx.sort_by(|&a, &b| proj[b].total_cmp(&proj[a]).then(a.cmp(&b)));
    let k = k.min(idx.len());
    let top = idx[..k].iter().map(|&i| (i as u32, proj[i])).collect();
    let bottom = idx
        .iter()
        .rev()
        .take(k)
        .map(|&i| (i as u32, proj[i]))
        .collect();
    Ok((top, bottom))
}

/// LAPE settings (Tang et al. 2024's official defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LapeSpec {
    /// Keep neurons whose largest `p` exceeds this quantile of all `p`.
    pub filter_rate: f64,
    /// Select this fraction of all neurons with the lowest entropy.
    pub top_rate: f64,
    /// Assign to language `l` where `p^l` exceeds this quantile of all `p`.
    pub activation_bar_ratio: f64,
}

impl Default for LapeSpec {
    fn default() -> Self {
        LapeSpec {
            filter_rate: 0.95,
            top_rate: 0.01,
            activation_bar_ratio: 0.95,
        }
    }
}

/// Language-specific neurons: `[language]` lists of `(layer, neuron)`, from activation
/// probabilities `probs[language][layer][neuron]`.
pub fn lape(probs: &[Vec<Vec<f64>>], spec: LapeSpec) -> Result<Vec<Vec<(usize, usize)>>> {
    unit_fraction("LAPE's top rate", spec.top_rate)?;
    let n_lang = probs.len();
    if n_lang < 2 {
        return Err(Error::Input("LAPE needs at least two languages".into()));
    }
    let (nl, nm) = (probs[0].len(), probs[0].first().map_or(0, |r| r.len()));
    if probs
        .iter()
        .any(|p| p.len() != nl || p.iter().any(|r| r.len() != nm))
    {
        return Err(Error::Input(
            "LAPE: every language needs the same layers and neurons".into(),
        ));
    }
    let all: Vec<f64> = probs.iter().flatten().flatten().copied().collect();
    let quantile = |rate: f64| kth_smallest(&all, (all.len() as f64 * rate).round() as usize);
    let filter = quantile(spec.filter_rate);
    let bar = quantile(spec.activation_bar_ratio);
    // Entropy over languages of the normalised probabilities; filtered neurons get +∞.
    let mut entropy = Vec::with_capacity(nl * nm);
    for l in 0..nl {
        for j in 0..nm {
            let p: Vec<f64> = probs.iter().map(|lang| lang[l][j]).collect();
            let max = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = p.iter().sum();
            let h = if max > filter && sum > 0.0 {
                -p.iter()
                    .map(|x| x / sum)
                    .filter(|&x| x > 0.0)
                    .map(|x| x * x.ln())
                    .sum::<f64>()
            } else {
                f64::INFINITY
            };
            entropy.push(h);
        }
    }
    let k = ((entropy.len() as f64) * spec.top_rate).round().max(1.0) as usize;
    let cut = kth_smallest(&entropy, k);
    let mut out = vec![vec![]; n_lang];
    for (idx, &h) in entropy.iter().enumerate() {
        if h.is_finite() && h <= cut {
            let (l, j) = (idx / nm, idx % nm);
            for (lang, p) in probs.iter().enumerate() {
                if p[l][j] > bar {
                    out[lang].push((l, j));
                }
            }
        }
    }
    Ok(out)
}

/// Units ranked by how well their pooled response separates `labels` (average precision,
/// Suau et al.'s expertise); the best `k` as `(unit, AP)`.
pub fn expert_units(pooled: &[Vec<f64>], labels: &[bool], k: usize) -> Vec<(usize, f64)> {
    let units = pooled.first().map_or(0, |r| r.len());
    let mut ap: Vec<(usize, f64)> = (0..units)
        .map(|u| {
            let s: Vec<f64> = pooled.iter().map(|r| r[u]).collect();
            (u, average_precision(&s, labels))
        })
        .collect();
    ap.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ap.truncate(k);
    ap
}

/// Each stimulus's activation at `point(layer)` for every layer (one vector per position, e.g.
/// `ResidPost` or `MlpPost`), averaged over its tokens: `[stimulus][layer · width + unit]`.
pub fn pooled_units(
    model: &Model,
    stimuli: &[Vec<u32>],
    point: fn(usize) -> HookPoint,
) -> Result<Vec<Vec<f64>>> {
    let cfg = &model.cfg;
    let input = Input::batch(stimuli, Padding::Right, 0, model.device())?;
    let points: Vec<HookPoint> = (0..cfg.n_layers).map(point).collect();
    if let Some(p) = points.iter().find(|p| !p.exists_in(cfg)) {
        return Err(Error::Input(format!("{p} does not exist in this model")));
    }
    let mut hooks = points.iter().fold(Hooks::none(), |h, &p| h.capture(p));
    model.forward(&input, &mut hooks)?;
    let mut out = vec![vec![]; stimuli.len()];
    for &p in &points {
        let x = hooks.cache().get(p).expect("captured");
        if x.rank() != 3 {
            return Err(Error::Input(format!(
                "{p} has no single vector per position"
            )));
        }
        let x = x.to_vec3::<f32>()?;
        for (row, o) in out.iter_mut().enumerate() {
            let n = input.lengths[row];
            let mut acc = vec![0.0; x[row][0].len()];
            for t in 0..n {
                for (a, &v) in acc.iter_mut().zip(&x[row][input.index_of(row, t)]) {
                    *a += v as f64 / n as f64;
                }
            }
            o.extend(acc);
        }
    }
    Ok(out)
}

/// A localizer's selection: units `(layer, unit)` with their Welch t.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Localized {
    pub units: Vec<(usize, usize)>,
    pub t: Vec<f64>,
    /// Welch t of every unit, `[layer][dim]`.
    pub all_t: Vec<Vec<f64>>,
}

/// The Fedorenko-style localizer: per unit a Welch t-test of pooled responses `a > b`; the top
/// `fraction` of units by t (at least one), units numbered `layer · width + unit`.
pub fn localize(a: &[Vec<f64>], b: &[Vec<f64>], width: usize, fraction: f64) -> Result<Localized> {
    unit_fraction("the localizer's fraction of units", fraction)?;
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::Input(
            "the localizer needs at least two stimuli per set".into(),
        ));
    }
    if a == b {
        return Err(Error::Input(
            "the stimuli and control sets give the same activations (the same prompts?): no unit can be selective for one over the other".into(),
        ));
    }
    let units = a[0].len();
    if width == 0 || !units.is_multiple_of(width) || b[0].len() != units {
        return Err(Error::Input(format!(
            "the localizer's two stimulus sets must record the same units, a multiple of {width}"
        )));
    }
    let moments = |x: &[Vec<f64>], u: usize| {
        let n = x.len() as f64;
        let m = x.iter().map(|r| r[u]).sum::<f64>() / n;
        let v = x.iter().map(|r| (r[u] - m).powi(2)).sum::<f64>() / (n - 1.0);
        (n, m, v)
    };
    let t: Vec<f64> = (0..units)
        .map(|u| {
            let ((n1, m1, v1), (n2, m2, v2)) = (moments(a, u), moments(b, u));
            welch_t(n1, m1, v1, n2, m2, v2).0
        })
        .collect();
    let k = ((units as f64) * fraction).round().max(1.0) as usize;
    let mut idx: Vec<usize> = (0..units).collect();
    idx.sort_by(|&x, &y| t[y].total_cmp(&t[x]).then(x.cmp(&y)));
    idx.truncate(k);
    Ok(Localized {
        units: idx.iter().map(|&u| (u / width, u % width)).collect(),
        t: idx.iter().map(|&u| t[u]).collect(),
        all_t: t.chunks(width).map(|c| c.to_vec()).collect(),
    })
}

/// Zero-ablation interventions for `units` at the hook point `point(layer)`.
pub fn zero_units(units: &[(usize, usize)], point: fn(usize) -> HookPoint) -> Vec<Intervention> {
    let mut by_layer: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &(l, u) in units {
        by_layer.entry(l).or_default().push(u);
    }
    by_layer
        .into_iter()
        .map(|(l, units)| Intervention {
            at: point(l),
            select: Selection {
                units: Some(units),
                ..Default::default()
            },
            op: Op::Zero,
            when: Default::default(),
            decode: None,
        })
        .collect()
}

/// The mean next-token loss of `batch` under `interventions`.
pub fn loss_under(model: &Model, batch: &Batch, interventions: &[Intervention]) -> Result<f64> {
    let (_, s) = batch.dims();
    let rect = [&batch.tokens, &batch.targets]
        .iter()
        .all(|rows| rows.iter().all(|r| r.len() == s))
        && batch.weights.iter().all(|r| r.len() == s);
    if !rect || s == 0 {
        return Err(Error::Input(
            "a loss batch needs sequences of one length (group ragged prompts with sequence_loss)"
                .into(),
        ));
    }
    let mut hooks = Hooks::none().intervene_all(interventions.iter().cloned());
    let logits = model.forward(
        &crate::tasks::loss::input(batch, model.device())?,
        &mut hooks,
    )?;
    Ok(crate::tasks::loss::mean_loss(&logits, batch, None)?.to_scalar::<f32>()? as f64)
}

/// The mean next-token loss over every predicted token of `seqs` (any lengths ≥ 2) under
/// `interventions`: sequences of one length share a forward pass.
pub fn sequence_loss(
    model: &Model,
    seqs: &[Vec<u32>],
    interventions: &[Intervention],
) -> Result<f64> {
    let mut by_len: std::collections::BTreeMap<usize, Vec<Vec<u32>>> = Default::default();
    for s in seqs.iter().filter(|s| s.len() >= 2) {
        by_len.entry(s.len()).or_default().push(s.clone());
    }
    if by_len.is_empty() {
        return Err(Error::Input(
            "no sequence of two or more tokens to score".into(),
        ));
    }
    let (mut total, mut n) = (0.0, 0.0);
    for (len, group) in by_len {
        let tokens = ((len - 1) * group.len()) as f64;
        total += loss_under(model, &crate::tasks::to_batch(group), interventions)? * tokens;
        n += tokens;
    }
    Ok(total / n)
}

/// A census streamed over labelled prompts: the whole stream's census, one per label, and each
/// labelled prompt's mean MLP response (`[layer · d_mlp + neuron]`, for the AP experts).
pub struct LabelledCensus {
    /// Over every prompt.
    pub all: Census,
    /// Per label, over that label's prompts.
    pub by_label: std::collections::BTreeMap<String, Census>,
    /// Each labelled prompt's label and mean response, in prompt order.
    pub pooled: Vec<(String, Vec<f64>)>,
}

/// Streams the census over `prompts` (tokens and optional label), `batch` prompts per forward;
/// `on_tokens` is told how many tokens each batch held.
pub fn stream_census(
    model: &Model,
    prompts: &[(Vec<u32>, Option<String>)],
    batch: usize,
    spec: CensusSpec,
    mut on_tokens: impl FnMut(u64),
) -> Result<LabelledCensus> {
    if batch == 0 {
        return Err(Error::Input(
            "the census needs a batch of at least one prompt".into(),
        ));
    }
    let mut out = LabelledCensus {
        all: Census::new(model, spec.clone())?,
        by_label: Default::default(),
        pooled: vec![],
    };
    for chunk in prompts.chunks(batch) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|p| p.0.clone()).collect();
        let input = Input::batch(&seqs, Padding::Right, 0, model.device())?;
        let acts = mlp_activations(model, &input)?;
        out.all.add(&acts, &seqs)?;
        // Per-label censuses and the per-prompt mean responses reuse the same activations,
        // one row at a time.
        for (row, (tokens, label)) in chunk.iter().enumerate() {
            let Some(label) = label else { continue };
            let one: Vec<Tensor> = acts
                .iter()
                .map(|t| t.narrow(0, row, 1))
                .collect::<candle_core::Result<_>>()?;
            let mut mean = Vec::with_capacity(acts.len() * model.cfg.d_mlp());
            for t in &one {
                // Right padding: the real tokens are the first `len` positions.
                let m = t.narrow(1, 0, tokens.len())?.mean(1)?.flatten_all()?;
                mean.extend(m.to_vec1::<f32>()?.into_iter().map(|x| x as f64));
            }
            out.pooled.push((label.clone(), mean));
            if !out.by_label.contains_key(label) {
                out.by_label
                    .insert(label.clone(), Census::new(model, spec.clone())?);
            }
            let c = out.by_label.get_mut(label).expect("inserted above");
            c.add(&one, std::slice::from_ref(tokens))?;
        }
        on_tokens(seqs.iter().map(|s| s.len() as u64).sum());
        crate::util::interrupt::check()?;
    }
    Ok(out)
}

/// The loss increase from ablating `selected` units, and from each of `draws` random unit sets
/// of the same size (drawn with `seed`), over `seqs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitAblation {
    pub base_loss: f64,
    pub selected_increase: f64,
    pub random_increases: Vec<f64>,
    pub random_mean: f64,
}

/// Ablates the localized units and `draws` random sets of as many units (`width` per layer).
pub fn ablate_against_random(
    model: &Model,
    seqs: &[Vec<u32>],
    selected: &[(usize, usize)],
    point: fn(usize) -> HookPoint,
    width: usize,
    (draws, seed): (usize, u64),
    mut on_draw: impl FnMut(),
) -> Result<UnitAblation> {
    if draws == 0 {
        return Err(Error::Input(
            "comparing with random units needs at least one random draw".into(),
        ));
    }
    let base = sequence_loss(model, seqs, &[])?;
    let sel = sequence_loss(model, seqs, &zero_units(selected, point))? - base;
    let mut rng = patchclamp_core::rng::Rng::new(seed);
    let n = model.cfg.n_layers * width;
    let mut random = vec![];
    for _ in 0..draws {
        let mut units = vec![];
        while units.len() < selected.len().min(n) {
            let u = rng.below(n as u64) as usize;
            if !units.contains(&(u / width, u % width)) {
                units.push((u / width, u % width));
            }
        }
        random.push(sequence_loss(model, seqs, &zero_units(&units, point))? - base);
        on_draw();
    }
    let random_mean = random.iter().sum::<f64>() / random.len().max(1) as f64;
    Ok(UnitAblation {
        base_loss: base,
        selected_increase: sel,
        random_increases: random,
        random_mean,
    })
}

/// A detector neuron with what it fires on and what it writes to the output vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorRow {
    pub layer: usize,
    pub neuron: usize,
    pub fires_on: Vec<Vec<u32>>,
    /// The tokens its output direction promotes most, with their logit weights.
    pub promotes: Vec<(u32, f32)>,
    pub suppresses: Vec<(u32, f32)>,
}

/// The LAPE neurons specific to one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelNeurons {
    pub label: String,
    pub neurons: Vec<(usize, usize)>,
}

/// A neuron ranking one label's prompts above the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expert {
    pub layer: usize,
    pub neuron: usize,
    /// Average precision of its mean response as a detector of the label.
    pub ap: f64,
}

/// The best average-precision experts of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelExperts {
    pub label: String,
    pub experts: Vec<Expert>,
}

/// Everything the neuron census finds over a labelled prompt stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CensusStudy {
    pub census: CensusReport,
    /// The first `top` token and bigram detectors per layer, with vocabulary projections.
    pub detectors: Vec<DetectorRow>,
    /// LAPE neurons per label (with two or more labels).
    pub lape: Option<Vec<LabelNeurons>>,
    /// Average-precision experts per label (with two or more labels).
    pub experts: Option<Vec<LabelExperts>>,
}

/// Settings of [`census_study`].
#[derive(Debug, Clone)]
pub struct StudySpec {
    /// Prompts per forward pass.
    pub batch: usize,
    /// Detectors and experts listed per layer / label.
    pub top: usize,
    /// LAPE's fraction of neurons selected.
    pub lape_top_rate: f64,
}

/// The census over `prompts` (tokens, optional label), detectors with their vocabulary
/// projections, and with two or more labels LAPE neurons and AP experts per label.
pub fn census_study(
    model: &Model,
    prompts: &[(Vec<u32>, Option<String>)],
    spec: &StudySpec,
    on_tokens: impl FnMut(u64),
) -> Result<CensusStudy> {
    // Checked before the stream, not only when two labels make LAPE run.
    unit_fraction("LAPE's top rate", spec.lape_top_rate)?;
    if spec.top == 0 {
        return Err(Error::Input(
            "the census lists the top units per detector: --top must be at least 1".into(),
        ));
    }
    let LabelledCensus {
        all,
        by_label,
        pooled,
    } = stream_census(model, prompts, spec.batch, CensusSpec::default(), on_tokens)?;
    let census = all.report();
    let mut detectors = vec![];
    for (l, lr) in census.layers.iter().enumerate() {
        for d in lr
            .token_detectors
            .iter()
            .chain(&lr.bigram_detectors)
            .take(spec.top)
        {
            let (promotes, suppresses) = vocab_projection(model, l, d.neuron, 5)?;
            detectors.push(DetectorRow {
                layer: l,
                neuron: d.neuron,
                fires_on: d.items.clone(),
                promotes,
                suppresses,
            });
        }
    }
    let (mut lape_rows, mut experts) = (None, None);
    if by_label.len() >= 2 {
        let probs: Vec<Vec<Vec<f64>>> = by_label.values().map(|c| c.probabilities()).collect();
        let sel = lape(
            &probs,
            LapeSpec {
                top_rate: spec.lape_top_rate,
                ..LapeSpec::default()
            },
        )?;
        lape_rows = Some(
            by_label
                .keys()
                .zip(sel)
                .map(|(label, neurons)| LabelNeurons {
                    label: label.clone(),
                    neurons,
                })
                .collect(),
        );
        // Each neuron's mean response per prompt ranks that label's prompts against the rest.
        let m = model.cfg.d_mlp();
        let responses: Vec<Vec<f64>> = pooled.iter().map(|(_, r)| r.clone()).collect();
        experts = Some(
            by_label
                .keys()
                .map(|name| {
                    let labels: Vec<bool> = pooled.iter().map(|(l, _)| l == name).collect();
                    LabelExperts {
                        label: name.clone(),
                        experts: expert_units(&responses, &labels, spec.top)
                            .into_iter()
                            .map(|(u, ap)| Expert {
                                layer: u / m,
                                neuron: u % m,
                                ap,
                            })
                            .collect(),
                    }
                })
                .collect(),
        );
    }
    Ok(CensusStudy {
        census,
        detectors,
        lape: lape_rows,
        experts,
    })
}

/// Refuses a fraction outside (0, 1] (NaN included), naming what it is.
fn unit_fraction(what: &str, f: f64) -> Result<()> {
    if f > 0.0 && f <= 1.0 {
        Ok(())
    } else {
        Err(Error::Input(format!("{what} must be in (0, 1], got {f}")))
    }
}
