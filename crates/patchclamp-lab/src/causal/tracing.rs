//! Causal tracing (Meng et al. 2022, ROME; METHODS.md §5.2): corrupt the subject tokens'
//! embeddings with Gaussian noise, then restore one (layer, position) state — the hidden state,
//! or the MLP or attention output over a window of layers — to its clean value and measure how
//! much of the answer's probability comes back.

use patchclamp_core::hooks::Values;
use patchclamp_core::rng::Rng;
use patchclamp_core::{HookPoint, Hooks, Intervention, Model, Op, Selection, Selector};
use serde::{Deserialize, Serialize};

use crate::causal::batched_variants::{
    base_points, first_change, plan, RowPatches, Slice, Variant,
};
use crate::causal::patching::{
    last_logits, last_logprobs, layer_window, metric_rows, variant_metrics, Metric,
};
use crate::error::{Error, Result};

/// Which state is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// The residual stream after the block (`hook_resid_post`).
    Hidden,
    /// The MLP output (`hook_mlp_out`).
    Mlp,
    /// The attention output (`hook_attn_out`).
    Attn,
}

impl TraceKind {
    fn point(self, l: usize) -> HookPoint {
        match self {
            TraceKind::Hidden => HookPoint::ResidPost(l),
            TraceKind::Mlp => HookPoint::MlpOut(l),
            TraceKind::Attn => HookPoint::AttnOut(l),
        }
    }
}

/// Settings of a trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceConfig {
    /// Positions of the subject tokens (corrupted with noise).
    pub subject: Vec<usize>,
    pub kind: TraceKind,
    /// Layers restored together around each layer (ROME: 10 for MLP/attention, 1 for hidden).
    pub window: usize,
    /// Noise samples averaged over.
    pub samples: usize,
    /// Noise standard deviation ν; `None` = 3 × the standard deviation of the token embeddings.
    pub noise: Option<f64>,
    pub seed: u64,
    /// What is measured at the last position (ROME: the answer's probability).
    pub metric: Metric,
    /// Also freeze every MLP output after the restored layer at its corrupted value.
    pub severed: bool,
    /// Variants per forward.
    pub batch: usize,
}

/// A trace: the restored metric for every (layer, position), averaged over noise samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceResult {
    pub config: TraceConfig,
    /// ν actually used.
    pub noise: f64,
    pub clean_metric: f32,
    /// Mean over samples of the corrupted run's metric.
    pub corrupt_metric: f32,
    /// Total effect `M_clean − M_corrupt`.
    pub total_effect: f32,
    /// `[n_layers][n_positions]`: mean restored metric.
    pub restored: Vec<f32>,
    /// `[n_layers][n_positions]`: indirect effect `M_restored − M_corrupt`.
    pub indirect_effect: Vec<f32>,
    pub n_layers: usize,
    pub n_positions: usize,
}

/// The layers restored for layer `l` (see [`layer_window`]).
pub fn window(l: usize, w: usize, n_layers: usize) -> std::ops::Range<usize> {
    layer_window(l, w, n_layers)
}

/// One noise draw for a `seq × d` prompt: Gaussian noise of standard deviation `nu` added to the
/// embeddings of the `subject` positions (the next `subject.len() · d` draws of `rng`).
pub fn subject_noise(
    rng: &mut Rng,
    subject: &[usize],
    seq: usize,
    d: usize,
    nu: f64,
) -> Intervention {
    let mut eps = vec![0f64; seq * d];
    for &p in subject {
        for (i, e) in rng.normal_vec(d, nu).into_iter().enumerate() {
            eps[p * d + i] = e as f64;
        }
    }
    Intervention {
        at: HookPoint::Embed,
        select: Selection::default(),
        op: Op::Add {
            vector: Values::Tensor {
                shape: vec![1, seq, d],
                data: eps,
            },
            coef: 1.0,
        },
        when: Default::default(),
        decode: None,
    }
}

/// Runs the trace of `tokens` (the last position is read).
pub fn trace(
    model: &Model,
    tokens: &[u32],
    cfg: &TraceConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<TraceResult> {
    let (n_layers, seq, d) = (model.cfg.n_layers, tokens.len(), model.cfg.d_model);
    if cfg.subject.is_empty() {
        return Err(Error::Input(
            "causal tracing needs at least one subject position".into(),
        ));
    }
    if let Some(&p) = cfg.subject.iter().find(|&&p| p >= seq) {
        return Err(Error::OutOfRange {
            what: "subject position",
            index: p as i64,
            limit: format!("{seq} positions"),
        });
    }
    if cfg.samples == 0 || cfg.batch == 0 {
        return Err(Error::Input("samples and batch must be at least 1".into()));
    }
    super::patching::check_window(cfg.window, n_layers)?;
    let noise = match cfg.noise {
        // Zero noise is a valid limit (nothing to restore); NaN, infinite or negative never is.
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            return Err(Error::Input(format!(
                "the noise standard deviation must be a finite number ≥ 0, got {v}"
            )))
        }
        Some(v) => v,
        None => {
            let w = &model.weights.w_e;
            let mean = w.mean_all()?.to_scalar::<f32>()? as f64;
            let var = w.sqr()?.mean_all()?.to_scalar::<f32>()? as f64 - mean * mean;
            3.0 * var.max(0.0).sqrt()
        }
    };
    let points: Vec<HookPoint> = (0..n_layers).map(|l| cfg.kind.point(l)).collect();
    let mut rec = Hooks::none();
    for &p in &points {
        rec = rec.capture(p);
    }
    let clean_logits = last_logits(model, tokens, &mut rec)?;
    let clean = rec.take_cache();
    let clean_lp = last_logprobs(&clean_logits)?;
    let clean_metric = metric_rows(&clean_logits, cfg.metric, Some(&clean_lp))?[0];

    let variants: Vec<(usize, usize)> = (0..n_layers)
        .flat_map(|l| (0..seq).map(move |p| (l, p)))
        .collect();
    let total = variants.len() * cfg.samples;
    let mut restored = vec![0f32; variants.len()];
    let mut corrupt_sum = 0f32;
    let mut rng = Rng::new(cfg.seed);
    let mut done = 0;
    for _ in 0..cfg.samples {
        let corrupt_iv = subject_noise(&mut rng, &cfg.subject, seq, d, noise);
        // The corrupted run: its metric, what the variants start from (residuals, keys and
        // values), the restored points (where restoring changes something) and MLP outputs
        // (severing).
        let mut rec = Hooks::none().intervene(corrupt_iv.clone());
        for p in base_points(model).into_iter().chain(points.iter().copied()) {
            rec = rec.capture(p);
        }
        if cfg.severed {
            rec = rec.capture(Selector::parse("blocks.*.hook_mlp_out")?);
        }
        let corrupt_logits = last_logits(model, tokens, &mut rec)?;
        let corrupted = rec.take_cache();
        let corrupt_m = metric_rows(&corrupt_logits, cfg.metric, Some(&clean_lp))?[0];
        corrupt_sum += corrupt_m;

        let mut rows = Vec::new();
        for &(l, p) in &variants {
            let layers = window(l, cfg.window, n_layers);
            let mut changed = false;
            for layer in layers.clone() {
                let slice = Slice::Position(p);
                changed |= first_change(&clean, &corrupted, points[layer], slice)?.is_some();
            }
            match changed {
                // Restoring a state the noise never reached changes nothing.
                false => restored[l * seq + p] += corrupt_m,
                true => rows.push(Variant {
                    at: l * seq + p,
                    tail: (layers.end == n_layers && points[n_layers - 1].is_query_side())
                        || (cfg.severed && layers.end < n_layers),
                    layers,
                    from: p,
                }),
            }
        }
        done += variants.len() - rows.len();
        progress(done, total);
        crate::util::interrupt::check()?;
        for group in plan(rows, seq, cfg.batch) {
            let b = group.rows.len();
            let mut patches = RowPatches::default();
            for (row, v) in group.rows.iter().enumerate() {
                let p = v.at % seq;
                for layer in v.layers.clone() {
                    patches.add(points[layer], "clean", row, Slice::Position(p));
                }
                if cfg.severed {
                    for layer in v.layers.end..n_layers {
                        patches.add(HookPoint::MlpOut(layer), "corrupt", row, Slice::All);
                    }
                }
            }
            let mut hooks =
                patches.into_hooks(&[("clean", &clean), ("corrupt", &corrupted)], b, group.from)?;
            let m = variant_metrics(
                model, tokens, &corrupted, &group, &mut hooks, cfg.metric, &clean_lp,
            )?;
            for (row, v) in group.rows.iter().enumerate() {
                restored[v.at] += m[row];
            }
            done += b;
            progress(done, total);
            crate::util::interrupt::check()?;
        }
    }
    let s = cfg.samples as f32;
    let corrupt_metric = corrupt_sum / s;
    let restored: Vec<f32> = restored.iter().map(|v| v / s).collect();
    let indirect_effect = restored.iter().map(|v| v - corrupt_metric).collect();
    Ok(TraceResult {
        config: cfg.clone(),
        noise,
        clean_metric,
        corrupt_metric,
        total_effect: clean_metric - corrupt_metric,
        restored,
        indirect_effect,
        n_layers,
        n_positions: seq,
    })
}
