//! Activation patching (Zhang & Nanda 2023; METHODS.md §5.1): exact sweeps over
//! (layer, position) or (layer, head), many variants per forward, each variant entering the
//! forward at its patched layer from the base run's cached residual so the shared prefix is
//! computed once, and variants that change nothing skipped.

use candle_core::{DType, Tensor, D};
use patchclamp_core::model::Span;
use patchclamp_core::{
    ActivationCache, HookPoint, Hooks, Input, Intervention, Model, Op, Selection,
};
use serde::{Deserialize, Serialize};

use crate::causal::batched_variants::{
    base_points, first_change, forward_rows, plan, Group, RowPatches, Slice, Variant,
};
use crate::error::{Error, Result};

/// Which activation a sweep patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    ResidPre,
    ResidMid,
    ResidPost,
    AttnOut,
    MlpOut,
    /// Per head, all positions: `hook_z`.
    Z,
    Q,
    K,
    V,
    Pattern,
}

impl Site {
    /// The hook point of this site in block `l`.
    pub fn point(self, l: usize) -> HookPoint {
        match self {
            Site::ResidPre => HookPoint::ResidPre(l),
            Site::ResidMid => HookPoint::ResidMid(l),
            Site::ResidPost => HookPoint::ResidPost(l),
            Site::AttnOut => HookPoint::AttnOut(l),
            Site::MlpOut => HookPoint::MlpOut(l),
            Site::Z => HookPoint::Z(l),
            Site::Q => HookPoint::Q(l),
            Site::K => HookPoint::K(l),
            Site::V => HookPoint::V(l),
            Site::Pattern => HookPoint::Pattern(l),
        }
    }

    /// Whether the sweep's columns are heads (else positions).
    pub fn per_head(self) -> bool {
        matches!(self, Site::Z | Site::Q | Site::K | Site::V | Site::Pattern)
    }

    /// The slice column `c` of a sweep patches: a head at every position, or one position.
    pub fn slice(self, c: usize) -> Slice {
        match self.per_head() {
            true => Slice::Head(c),
            false => Slice::Position(c),
        }
    }
}

/// Which run is patched: denoising patches clean values into the corrupted run (sufficiency),
/// noising patches corrupted values into the clean run (necessity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Denoise,
    Noise,
}

/// What is measured at the last position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Metric {
    /// `logit(answer) − logit(wrong)`.
    LogitDiff { answer: u32, wrong: u32 },
    /// `P(answer)`.
    Prob { answer: u32 },
    /// `log P(answer)`.
    LogProb { answer: u32 },
    /// `KL(P_clean ‖ P_run)`.
    Kl,
}

/// A sweep's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchingConfig {
    pub site: Site,
    #[serde(default)]
    pub direction: Direction,
    pub metric: Metric,
    /// Variants per forward (bounds peak memory).
    pub batch: usize,
    /// Layers patched together around each layer (sliding window; 1 = that layer alone).
    #[serde(default = "one")]
    pub window: usize,
}

fn one() -> usize {
    1
}

/// Variants per forward for `seq`-token prompts: about 4096 token rows per forward, which keeps
/// the products large (weights are packed once per product) and activations small (GPT-2 small:
/// ~50 MB of MLP activations).
pub fn default_batch(seq: usize) -> usize {
    (4096 / seq.max(1)).max(1)
}

/// A sweep's result: `values[layer][col]`, plus the two reference metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchingResult {
    pub site: Site,
    pub direction: Direction,
    pub metric: Metric,
    /// Metric of each patched run, `[n_layers][n_cols]` row-major.
    pub values: Vec<f32>,
    /// `(M_patched − M_corrupt) / (M_clean − M_corrupt)`, same layout.
    pub normalized: Vec<f32>,
    pub n_layers: usize,
    /// Positions or heads.
    pub n_cols: usize,
    pub clean_metric: f32,
    pub corrupt_metric: f32,
    /// Variants whose patch changed nothing (the source equals the base run there): their
    /// metric is the base run's, computed without a forward.
    #[serde(default)]
    pub unchanged: usize,
}

impl PatchingResult {
    /// The metric of the variant patched at (layer, col).
    pub fn at(&self, layer: usize, col: usize) -> f32 {
        self.values[layer * self.n_cols + col]
    }

    /// `[n_layers, n_cols]` tensor of the metric values.
    pub fn tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.values.clone(),
            (self.n_layers, self.n_cols),
            &candle_core::Device::Cpu,
        )?)
    }
}

/// Metric of each row of `logits` `[B, S, V]` at the last position.
pub fn metric_rows(
    logits: &Tensor,
    metric: Metric,
    clean_logprobs: Option<&Tensor>,
) -> Result<Vec<f32>> {
    let (_, s, _) = logits.dims3()?;
    let last = logits
        .narrow(1, s - 1, 1)?
        .squeeze(1)?
        .to_dtype(DType::F32)?; // [B, V]
    let col = |t: &Tensor, id: u32| -> Result<Vec<f32>> {
        Ok(t.narrow(1, id as usize, 1)?.squeeze(1)?.to_vec1()?)
    };
    let logp = || -> Result<Tensor> { Ok(candle_nn::ops::log_softmax(&last, D::Minus1)?) };
    Ok(match metric {
        Metric::LogitDiff { answer, wrong } => col(&last, answer)?
            .iter()
            .zip(col(&last, wrong)?)
            .map(|(a, b)| a - b)
            .collect(),
        Metric::Prob { answer } => col(&logp()?.exp()?, answer)?,
        Metric::LogProb { answer } => col(&logp()?, answer)?,
        Metric::Kl => {
            let p_clean = clean_logprobs
                .ok_or_else(|| Error::Input("KL needs the clean distribution".into()))?;
            let lp = logp()?;
            // Σ p_c (log p_c − log p)
            let kl = p_clean
                .exp()?
                .broadcast_mul(&p_clean.broadcast_sub(&lp)?)?
                .sum(D::Minus1)?;
            kl.to_vec1()?
        }
    })
}

/// The few logits a metric reads, when it reads only a few: the logit difference.
fn metric_columns(metric: Metric) -> Option<[u32; 2]> {
    match metric {
        Metric::LogitDiff { answer, wrong } => Some([answer, wrong]),
        _ => None,
    }
}

/// The metric of each row of a group's forward (`forward_rows` with `metric_columns`) from the
/// base run of `tokens`.
pub(crate) fn variant_metrics(
    model: &Model,
    tokens: &[u32],
    base: &ActivationCache,
    group: &Group,
    hooks: &mut Hooks,
    metric: Metric,
    clean_lp: &Tensor,
) -> Result<Vec<f32>> {
    let columns = metric_columns(metric);
    let starts: Vec<usize> = group.rows.iter().map(|v| v.layers.start).collect();
    let logits = forward_rows(
        model,
        tokens,
        base,
        &starts,
        group.from,
        columns.as_ref().map(|c| &c[..]),
        hooks,
    )?;
    match columns {
        // Columns 0 and 1 are the answer's and the wrong token's logits.
        Some(_) => metric_rows(
            &logits,
            Metric::LogitDiff {
                answer: 0,
                wrong: 1,
            },
            None,
        ),
        None => metric_rows(&logits, metric, Some(clean_lp)),
    }
}

/// The last position's logits of a batch-1 run `[1, 1, V]`, recording `hooks`.
pub(crate) fn last_logits(model: &Model, tokens: &[u32], hooks: &mut Hooks) -> Result<Tensor> {
    let span = Span {
        last_position_only: true,
        ..Default::default()
    };
    Ok(model.forward_span(&Input::single(tokens, model.device())?, hooks, span)?)
}

/// Log-probabilities at the last position of a batch-1 run `[1, V]`.
pub(crate) fn last_logprobs(logits: &Tensor) -> Result<Tensor> {
    let (_, s, _) = logits.dims3()?;
    Ok(candle_nn::ops::log_softmax(
        &logits.narrow(1, s - 1, 1)?.squeeze(1)?,
        D::Minus1,
    )?)
}

/// Checks the two prompts can be patched into each other.
/// Checks a clean/corrupted pair and a metric can give a meaningful sweep: equal lengths,
/// prompts that differ (else every patch changes nothing and the normalised map is 0/0), and a
/// logit difference between two different tokens (else it is 0 everywhere).
pub(crate) fn check_prompts(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    metric: Metric,
) -> Result<()> {
    if clean.len() != corrupt.len() {
        return Err(Error::Input(format!(
            "clean and corrupted prompts must have the same number of tokens ({} vs {})",
            clean.len(),
            corrupt.len()
        )));
    }
    if clean == corrupt {
        return Err(Error::Input(
            "the clean and corrupted prompts are the same tokens: no patch can change anything"
                .into(),
        ));
    }
    if let Metric::LogitDiff { answer, wrong } = metric {
        if answer == wrong {
            return Err(Error::Input(format!(
                "the answer and the wrong token are both id {answer}: their logit difference is 0 everywhere"
            )));
        }
    }
    let v = model.cfg.d_vocab as u32;
    let ids: Vec<u32> = match metric {
        Metric::LogitDiff { answer, wrong } => vec![answer, wrong],
        Metric::Prob { answer } | Metric::LogProb { answer } => vec![answer],
        Metric::Kl => vec![],
    };
    if let Some(&id) = ids.iter().find(|&&i| i >= v) {
        return Err(Error::OutOfRange {
            what: "answer token id",
            index: id as i64,
            limit: format!("{v} tokens"),
        });
    }
    Ok(())
}

/// Runs the sweep. `progress` is called with (variants done, variants total).
pub fn sweep(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    cfg: &PatchingConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<PatchingResult> {
    check_prompts(model, clean, corrupt, cfg.metric)?;
    if cfg.batch == 0 {
        return Err(Error::Input("batch must be at least 1".into()));
    }
    check_window(cfg.window, model.cfg.n_layers)?;
    let n_layers = model.cfg.n_layers;
    let seq = clean.len();
    let (base_ids, source_ids) = match cfg.direction {
        Direction::Denoise => (corrupt, clean),
        Direction::Noise => (clean, corrupt),
    };
    let points: Vec<HookPoint> = (0..n_layers).map(|l| cfg.site.point(l)).collect();

    // The source run: every activation the sweep patches from.
    let mut rec = Hooks::none();
    for p in &points {
        rec = rec.capture(*p);
    }
    let source_logits = last_logits(model, source_ids, &mut rec)?;
    let source = rec.take_cache();
    // The base run: its residual entering each block is the shared prefix of every variant,
    // its activations at the patched points show which patches change nothing.
    let mut rec = Hooks::none();
    for p in base_points(model).into_iter().chain(points.iter().copied()) {
        rec = rec.capture(p);
    }
    let base_logits = last_logits(model, base_ids, &mut rec)?;
    let base_cache = rec.take_cache();

    let (clean_logits, corrupt_logits) = match cfg.direction {
        Direction::Denoise => (&source_logits, &base_logits),
        Direction::Noise => (&base_logits, &source_logits),
    };
    let clean_lp = last_logprobs(clean_logits)?;
    let clean_metric = metric_rows(clean_logits, cfg.metric, Some(&clean_lp))?[0];
    let corrupt_metric = metric_rows(corrupt_logits, cfg.metric, Some(&clean_lp))?[0];
    check_references(clean_metric, corrupt_metric)?;
    let base_metric = match cfg.direction {
        Direction::Denoise => corrupt_metric,
        Direction::Noise => clean_metric,
    };

    let n_cols = match cfg.site {
        Site::K | Site::V => model.cfg.attn.n_kv_heads,
        s if s.per_head() => model.cfg.attn.n_heads,
        _ => seq,
    };
    let total = n_layers * n_cols;
    let mut values = vec![0f32; total];
    // A patch changes nothing before the first position where its slices differ between the
    // two runs (causal attention), and a variant whose slices are equal everywhere is the base
    // run itself.
    let mut variants: Vec<Variant> = Vec::new();
    let mut unchanged = 0;
    for l in 0..n_layers {
        for c in 0..n_cols {
            let slice = cfg.site.slice(c);
            let layers = layer_window(l, cfg.window, n_layers);
            let mut from: Option<usize> = None;
            for layer in layers.clone() {
                if let Some(p) = first_change(&source, &base_cache, points[layer], slice)? {
                    from = Some(from.map_or(p, |f| f.min(p)));
                }
            }
            match from {
                None => {
                    values[l * n_cols + c] = base_metric;
                    unchanged += 1;
                }
                Some(from) => variants.push(Variant {
                    at: l * n_cols + c,
                    layers: layers.clone(),
                    from,
                    tail: layers.end == n_layers && points[n_layers - 1].is_query_side(),
                }),
            }
        }
    }
    let mut done = unchanged;
    progress(done, total);
    crate::util::interrupt::check()?;
    for group in plan(variants, seq, cfg.batch) {
        let b = group.rows.len();
        let mut patches = RowPatches::default();
        for (row, v) in group.rows.iter().enumerate() {
            for layer in v.layers.clone() {
                patches.add(points[layer], "source", row, cfg.site.slice(v.at % n_cols));
            }
        }
        let mut hooks = patches.into_hooks(&[("source", &source)], b, group.from)?;
        let m = variant_metrics(
            model,
            base_ids,
            &base_cache,
            &group,
            &mut hooks,
            cfg.metric,
            &clean_lp,
        )?;
        for (row, v) in group.rows.iter().enumerate() {
            values[v.at] = m[row];
        }
        done += b;
        progress(done, total);
        crate::util::interrupt::check()?;
    }
    let denom = clean_metric - corrupt_metric;
    let normalized = values
        .iter()
        .map(|v| (v - corrupt_metric) / denom)
        .collect();
    Ok(PatchingResult {
        site: cfg.site,
        direction: cfg.direction,
        metric: cfg.metric,
        values,
        normalized,
        n_layers,
        n_cols,
        clean_metric,
        corrupt_metric,
        unchanged,
    })
}

/// Fails when the two reference runs give the same metric: the normalised sweep
/// `(value − corrupt) / (clean − corrupt)` would be 0/0 everywhere.
pub fn check_references(clean: f32, corrupt: f32) -> Result<()> {
    if !(clean - corrupt).is_normal() {
        return Err(Error::Numeric(format!(
            "the clean and corrupted runs give the same metric ({clean}): nothing can be normalised; choose prompts or answer tokens the model tells apart"
        )));
    }
    Ok(())
}

/// Fails for a window the sweep could not use as given (0, or wider than the model), so the
/// window recorded in a result is always the one used.
pub fn check_window(w: usize, n_layers: usize) -> Result<()> {
    if w == 0 || w > n_layers {
        return Err(Error::Input(format!(
            "the layer window {w} must lie in 1..={n_layers} (the model's layers)"
        )));
    }
    Ok(())
}

/// The layers patched for layer `l`: `w` consecutive layers centred on it, clipped to the model
/// (ROME's convention: `l − w/2 ..`).
pub fn layer_window(l: usize, w: usize, n_layers: usize) -> std::ops::Range<usize> {
    let w = w.max(1);
    let start = l.saturating_sub(w / 2);
    let end = (start + w).min(n_layers);
    end.saturating_sub(w).min(start)..end
}

/// The intervention of one variant: patch `col` (a position, or a head at all positions) of
/// batch row `row` from row 0 of the source run.
fn variant(site: Site, point: HookPoint, row: usize, col: usize, batch: usize) -> Intervention {
    let select = if site.per_head() {
        Selection {
            rows: Some(vec![row]),
            heads: Some(vec![col]),
            ..Default::default()
        }
    } else {
        Selection {
            rows: Some(vec![row]),
            positions: Some(patchclamp_core::hooks::Positions::Indices(vec![col as i64])),
            ..Default::default()
        }
    };
    Intervention {
        at: point,
        select,
        op: Op::Patch {
            source: "source".into(),
            rows: Some(vec![0; batch]),
        },
        when: Default::default(),
        decode: None,
    }
}

/// One variant run alone with a full forward (the reference the sweep must equal).
pub fn run_variant(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    cfg: &PatchingConfig,
    layer: usize,
    col: usize,
) -> Result<f32> {
    check_prompts(model, clean, corrupt, cfg.metric)?;
    let dev = model.device();
    let (base_ids, source_ids) = match cfg.direction {
        Direction::Denoise => (corrupt, clean),
        Direction::Noise => (clean, corrupt),
    };
    let layers = layer_window(layer, cfg.window, model.cfg.n_layers);
    let mut rec = Hooks::none();
    for l in layers.clone() {
        rec = rec.capture(cfg.site.point(l));
    }
    let source_logits = model.forward(&Input::single(source_ids, dev)?, &mut rec)?;
    let clean_logits = match cfg.direction {
        Direction::Denoise => source_logits,
        Direction::Noise => model.forward(&Input::single(base_ids, dev)?, &mut Hooks::none())?,
    };
    let clean_lp = last_logprobs(&clean_logits)?;
    let mut hooks = Hooks::none().source("source", rec.take_cache());
    for l in layers {
        hooks = hooks.intervene(variant(cfg.site, cfg.site.point(l), 0, col, 1));
    }
    let logits = model.forward(&Input::single(base_ids, dev)?, &mut hooks)?;
    Ok(metric_rows(&logits, cfg.metric, Some(&clean_lp))?[0])
}

/// Patches a set of whole activations (every position and head) from `source` into a run.
pub fn patch_all(
    model: &Model,
    base: &[u32],
    source: &ActivationCache,
    points: &[HookPoint],
) -> Result<Tensor> {
    let mut hooks = Hooks::none().source("source", source.clone());
    for &p in points {
        hooks = hooks.intervene(Intervention {
            at: p,
            select: Selection::default(),
            op: Op::Patch {
                source: "source".into(),
                rows: None,
            },
            when: Default::default(),
            decode: None,
        });
    }
    Ok(model.forward(&Input::single(base, model.device())?, &mut hooks)?)
}
