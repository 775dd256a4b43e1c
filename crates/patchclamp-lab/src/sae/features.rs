//! Feature dashboards: for each latent, its top activating contexts (±`window` tokens), examples
//! from activation quantile groups, its density, the histogram of its activations, and its
//! logit weights `W_dec[j] · W_U` (top and bottom tokens), as SAEDashboard computes them for
//! Neuronpedia (defaults: 20 top examples, 10 quantile groups × 5, ±5 tokens, 50 bins, 10 rows).
//!
//! And `contrast`: latents ranked by how much more they fire on one prompt set than another
//! (the entity-recognition latents of "Do I know this entity?").

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use patchclamp_core::hooks::SaeSite;
use patchclamp_core::rng::Rng;
use patchclamp_core::{Hooks, Input, Model, Padding, Sae, Selector, Splice};

use crate::{Error, Result};

/// What the dashboards show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Latents to describe (all when empty).
    pub latents: Vec<usize>,
    pub top: usize,
    pub window: usize,
    pub quantile_groups: usize,
    pub per_group: usize,
    pub logit_rows: usize,
    pub bins: usize,
    pub seed: u64,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            latents: vec![],
            top: 20,
            window: 5,
            quantile_groups: 10,
            per_group: 5,
            logit_rows: 10,
            bins: 50,
            seed: 0,
        }
    }
}

/// One example: a window of tokens around a position, with the latent's activation on each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub context: usize,
    pub position: usize,
    /// Index of the example's own token within `tokens`.
    pub centre: usize,
    pub tokens: Vec<u32>,
    pub values: Vec<f32>,
    pub max_value: f32,
}

/// Examples whose activation lies in one interval (SAEDashboard's quantile groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub bin_min: f32,
    pub bin_max: f32,
    /// The fraction of the latent's activations in the interval.
    pub bin_contains: f64,
    pub examples: Vec<Example>,
}

/// One latent's dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub index: usize,
    /// Fraction of tokens it fires on.
    pub frac_nonzero: f64,
    pub max_activation: f32,
    pub top: Vec<Example>,
    pub groups: Vec<Group>,
    /// Tokens whose logit the decoder direction raises most, and by how much.
    pub pos_tokens: Vec<(u32, f32)>,
    /// … and lowers most.
    pub neg_tokens: Vec<(u32, f32)>,
    /// Histogram of its nonzero activations: bin centres and counts.
    pub freq_hist: (Vec<f32>, Vec<u64>),
    /// Histogram of its logit weights over the vocabulary.
    pub logits_hist: (Vec<f32>, Vec<u64>),
    /// The residual dimensions its decoder direction weighs most (index, value, share of L1).
    pub alignment: Vec<(usize, f32, f32)>,
    /// The input dimensions (the hook's basis: neurons for MLP points) its activation
    /// correlates with most over the tokens: (index, Pearson r).
    pub correlated_neurons: Vec<(usize, f64)>,
}

/// Sums over tokens for Pearson correlations between kept latents and input dimensions.
struct Corr {
    n: f64,
    sum_x: Vec<f64>,
    sum_xx: Vec<f64>,
    sum_a: Vec<f64>,
    sum_aa: Vec<f64>,
    /// `[kept, d_in]`.
    sum_ax: Vec<f64>,
}

impl Corr {
    /// The `top` dimensions latent `i` (a kept index) correlates with most, by |r|.
    fn top(&self, i: usize, top: usize) -> Vec<(usize, f64)> {
        let d = self.sum_x.len();
        let (n, sa, saa) = (self.n, self.sum_a[i], self.sum_aa[i]);
        let va = n * saa - sa * sa;
        if va <= 0.0 {
            return vec![];
        }
        let mut r: Vec<(usize, f64)> = (0..d)
            .filter_map(|k| {
                let vx = n * self.sum_xx[k] - self.sum_x[k] * self.sum_x[k];
                (vx > 0.0).then(|| {
                    (
                        k,
                        (n * self.sum_ax[i * d + k] - sa * self.sum_x[k]) / (va * vx).sqrt(),
                    )
                })
            })
            .collect();
        r.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
        r.truncate(top);
        r
    }
}

/// Every dashboard of one run, with the contexts they quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Features {
    pub spec: FeatureSpec,
    pub hook: String,
    pub tokens: u64,
    pub features: Vec<Feature>,
}

/// Per latent, every nonzero activation: (value, context, position).
type Hits = Vec<Vec<(f32, u32, u32)>>;

/// The latents of `sae` over `contexts`, `batch` per forward (`exclude`: special tokens,
/// whose activations are not counted).
fn activations(
    model: &Model,
    sae: &Arc<Sae>,
    contexts: &[Vec<u32>],
    batch: usize,
    exclude: &[u32],
    keep: &[usize],
    mut on_batch: impl FnMut(usize, usize),
) -> Result<(Hits, u64, Corr)> {
    let splice = Splice::new(sae.clone(), true)?;
    splice.check(&model.cfg)?;
    let d_sae = sae.cfg.d_sae;
    let d_in = sae.cfg.d_in;
    let point = splice.point(SaeSite::ActsPost);
    let input_point = splice.point(SaeSite::Input);
    let mut corr = Corr {
        n: 0.0,
        sum_x: vec![0.0; d_in],
        sum_xx: vec![0.0; d_in],
        sum_a: vec![0.0; keep.len()],
        sum_aa: vec![0.0; keep.len()],
        sum_ax: vec![0.0; keep.len() * d_in],
    };
    let mut slot: Vec<Option<usize>> = vec![None; d_sae];
    for (i, &j) in keep.iter().enumerate() {
        slot[j] = Some(i);
    }
    let mut hits: Hits = vec![vec![]; keep.len()];
    let mut tokens = 0u64;
    let chunks: Vec<&[Vec<u32>]> = contexts.chunks(batch.max(1)).collect();
    for (ci, chunk) in chunks.iter().enumerate() {
        crate::util::interrupt::check()?;
        let input = Input::batch(chunk, Padding::Right, 0, model.device())?;
        let mut hooks = Hooks::none()
            .splice(splice.clone())
            .capture(Selector::Point(point))
            .capture(Selector::Point(input_point));
        let stop = splice
            .at
            .base()
            .layer()
            .map(|l| l + 1)
            .filter(|&l| l < model.cfg.n_layers);
        model.forward_span(
            &input,
            &mut hooks,
            patchclamp_core::model::Span {
                stop_at_layer: stop,
                ..Default::default()
            },
        )?;
        let cache = hooks.take_cache();
        let flat = |p| -> Result<Vec<f32>> {
            Ok(cache
                .get(p)
                .cloned()
                .expect("captured")
                .flatten_all()?
                .to_vec1()?)
        };
        let acts = flat(point)?;
        let xs = flat(input_point)?;
        for (r, ctx) in chunk.iter().enumerate() {
            let c = (ci * batch + r) as u32;
            for (pos, tok) in ctx.iter().enumerate() {
                if exclude.contains(tok) {
                    continue;
                }
                tokens += 1;
                let t = r * ctx.len() + pos;
                let row = &acts[t * d_sae..(t + 1) * d_sae];
                let x = &xs[t * d_in..(t + 1) * d_in];
                corr.n += 1.0;
                for (k, &v) in x.iter().enumerate() {
                    corr.sum_x[k] += v as f64;
                    corr.sum_xx[k] += (v as f64) * (v as f64);
                }
                for (j, &a) in row.iter().enumerate() {
                    if a != 0.0 {
                        if let Some(i) = slot[j] {
                            hits[i].push((a, c, pos as u32));
                            let a = a as f64;
                            corr.sum_a[i] += a;
                            corr.sum_aa[i] += a * a;
                            for (acc, &v) in corr.sum_ax[i * d_in..(i + 1) * d_in].iter_mut().zip(x)
                            {
                                *acc += a * v as f64;
                            }
                        }
                    }
                }
            }
        }
        on_batch(ci + 1, chunks.len());
    }
    Ok((hits, tokens, corr))
}

fn histogram(values: &[f32], bins: usize) -> (Vec<f32>, Vec<u64>) {
    if values.is_empty() || bins == 0 {
        return (vec![], vec![]);
    }
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let width = ((hi - lo) / bins as f32).max(1e-12);
    let mut counts = vec![0u64; bins];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    (
        (0..bins).map(|i| lo + width * (i as f32 + 0.5)).collect(),
        counts,
    )
}

/// The dashboards of `spec.latents` (all when empty) of `sae` on `contexts`.
pub fn features(
    model: &Model,
    sae: &Arc<Sae>,
    contexts: &[Vec<u32>],
    batch: usize,
    exclude: &[u32],
    spec: &FeatureSpec,
    on_batch: impl FnMut(usize, usize),
) -> Result<Features> {
    let d_sae = sae.cfg.d_sae;
    if let Some(&j) = spec.latents.iter().find(|&&j| j >= d_sae) {
        return Err(Error::OutOfRange {
            what: "latent",
            index: j as i64,
            limit: format!("d_sae = {d_sae}"),
        });
    }
    if contexts.is_empty() {
        return Err(Error::Input(
            "feature dashboards need at least one context".into(),
        ));
    }
    let keep: Vec<usize> = if spec.latents.is_empty() {
        (0..d_sae).collect()
    } else {
        spec.latents.clone()
    };
    let (hits, tokens, corr) = activations(model, sae, contexts, batch, exclude, &keep, on_batch)?;
    // Logit weights: the decoder directions through the unembedding, when they live in the
    // residual stream.
    let d_model = model.cfg.d_model;
    let logits: Option<Vec<f32>> = if sae.cfg.d_out == d_model && !sae.cfg.reshape_hook_z {
        let idx = Tensor::new(
            keep.iter()
                .map(|&j| j as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            sae.device(),
        )?;
        let dirs = sae.w_dec.index_select(&idx, 0)?;
        Some(
            dirs.matmul(&model.weights.unembed().to_dtype(DType::F32)?)?
                .flatten_all()?
                .to_vec1()?,
        )
    } else {
        None
    };
    let dec: Vec<f32> = sae.w_dec.flatten_all()?.to_vec1()?;
    let d_out = sae.cfg.d_out;
    let vocab = model.cfg.d_vocab;
    let window = |c: u32, p: u32, lookup: &HashMap<(u32, u32), f32>| -> Example {
        let ctx = &contexts[c as usize];
        let (p, w) = (p as usize, spec.window);
        let (a, b) = (p.saturating_sub(w), (p + w + 1).min(ctx.len()));
        let values: Vec<f32> = (a..b)
            .map(|q| *lookup.get(&(c, q as u32)).unwrap_or(&0.0))
            .collect();
        Example {
            context: c as usize,
            position: p,
            centre: p - a,
            tokens: ctx[a..b].to_vec(),
            max_value: *lookup.get(&(c, p as u32)).unwrap_or(&0.0),
            values,
        }
    };
    let mut out = vec![];
    for (i, &j) in keep.iter().enumerate() {
        let h = &hits[i];
        let lookup: HashMap<(u32, u32), f32> = h.iter().map(|&(v, c, p)| ((c, p), v)).collect();
        let mut sorted = h.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let top: Vec<Example> = sorted
            .iter()
            .take(spec.top)
            .map(|&(_, c, p)| window(c, p, &lookup))
            .collect();
        let max = sorted.first().map_or(0.0, |x| x.0);
        let mut rng = Rng::new(spec.seed ^ j as u64);
        let mut groups = vec![];
        if max > 0.0 && spec.quantile_groups > 0 {
            let width = max / spec.quantile_groups as f32;
            for g in (0..spec.quantile_groups).rev() {
                let (lo, hi) = (width * g as f32, width * (g + 1) as f32);
                let inside: Vec<&(f32, u32, u32)> = h
                    .iter()
                    .filter(|x| x.0 > lo && (x.0 <= hi || g + 1 == spec.quantile_groups))
                    .collect();
                if inside.is_empty() {
                    continue;
                }
                let mut picks: Vec<usize> = (0..inside.len()).collect();
                for k in 0..picks.len().min(spec.per_group) {
                    let r = k + rng.below((picks.len() - k) as u64) as usize;
                    picks.swap(k, r);
                }
                picks.truncate(spec.per_group);
                picks.sort_unstable();
                groups.push(Group {
                    bin_min: lo,
                    bin_max: hi,
                    bin_contains: inside.len() as f64 / h.len() as f64,
                    examples: picks
                        .iter()
                        .map(|&k| window(inside[k].1, inside[k].2, &lookup))
                        .collect(),
                });
            }
        }
        let (pos_tokens, neg_tokens, logits_hist) = match &logits {
            Some(l) => {
                let row = &l[i * vocab..(i + 1) * vocab];
                let mut ids: Vec<u32> = (0..vocab as u32).collect();
                ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                let n = spec.logit_rows.min(vocab);
                (
                    ids[..n].iter().map(|&t| (t, row[t as usize])).collect(),
                    ids[vocab - n..]
                        .iter()
                        .rev()
                        .map(|&t| (t, row[t as usize]))
                        .collect(),
                    histogram(row, spec.bins),
                )
            }
            None => (vec![], vec![], (vec![], vec![])),
        };
        let dir = &dec[j * d_out..(j + 1) * d_out];
        let l1: f32 = dir.iter().map(|v| v.abs()).sum::<f32>().max(1e-12);
        let mut dims: Vec<usize> = (0..d_out).collect();
        dims.sort_by(|&a, &b| dir[b].abs().total_cmp(&dir[a].abs()).then(a.cmp(&b)));
        let alignment = dims
            .iter()
            .take(3)
            .map(|&k| (k, dir[k], dir[k].abs() / l1))
            .collect();
        let values: Vec<f32> = h.iter().map(|x| x.0).collect();
        out.push(Feature {
            index: j,
            frac_nonzero: h.len() as f64 / tokens.max(1) as f64,
            max_activation: max,
            top,
            groups,
            pos_tokens,
            neg_tokens,
            freq_hist: histogram(&values, spec.bins),
            logits_hist,
            alignment,
            correlated_neurons: corr.top(i, 3),
        });
    }
    Ok(Features {
        spec: spec.clone(),
        hook: Splice::new(sae.clone(), true)?.at.base().to_string(),
        tokens,
        features: out,
    })
}

/// One latent's activation on two prompt sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContrastRow {
    pub latent: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    pub freq_a: f64,
    pub freq_b: f64,
    /// `mean_a − mean_b`.
    pub difference: f64,
}

/// Latents ranked by their activation difference between prompt sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub hook: String,
    /// `"last"`: each prompt's last token; `"mean"`: every token of each prompt, averaged.
    pub position: String,
    pub prompts_a: usize,
    pub prompts_b: usize,
    /// Most positive difference first.
    pub top_a: Vec<ContrastRow>,
    /// Most negative difference first.
    pub top_b: Vec<ContrastRow>,
}

/// Ranks `sae`'s latents by mean activation on `a` minus on `b` (at each prompt's last token
/// when `last`, else averaged over its tokens), `top` per direction.
pub fn contrast(
    model: &Model,
    sae: &Arc<Sae>,
    a: &[Vec<u32>],
    b: &[Vec<u32>],
    last: bool,
    top: usize,
) -> Result<Contrast> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::Input("contrast needs prompts in both sets".into()));
    }
    let splice = Splice::new(sae.clone(), true)?;
    splice.check(&model.cfg)?;
    let point = splice.point(SaeSite::ActsPost);
    let s = sae.cfg.d_sae;
    let stats = |set: &[Vec<u32>]| -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut sum, mut fired) = (vec![0f64; s], vec![0f64; s]);
        for p in set {
            crate::util::interrupt::check()?;
            let mut hooks = Hooks::none()
                .splice(splice.clone())
                .capture(Selector::Point(point));
            model.forward(&Input::single(p, model.device())?, &mut hooks)?;
            let acts: Vec<f32> = hooks
                .take_cache()
                .get(point)
                .cloned()
                .expect("captured")
                .flatten_all()?
                .to_vec1()?;
            let rows: Vec<&[f32]> = acts.chunks(s).collect();
            let used: Vec<&[f32]> = if last {
                vec![rows[rows.len() - 1]]
            } else {
                rows
            };
            let n = used.len() as f64;
            for row in used {
                for (j, &v) in row.iter().enumerate() {
                    sum[j] += v as f64 / n;
                    fired[j] += f64::from(u8::from(v != 0.0)) / n;
                }
            }
        }
        let k = set.len() as f64;
        Ok((
            sum.iter().map(|v| v / k).collect(),
            fired.iter().map(|v| v / k).collect(),
        ))
    };
    let (ma, fa) = stats(a)?;
    let (mb, fb) = stats(b)?;
    let mut rows: Vec<ContrastRow> = (0..s)
        .map(|j| ContrastRow {
            latent: j,
            mean_a: ma[j],
            mean_b: mb[j],
            freq_a: fa[j],
            freq_b: fb[j],
            difference: ma[j] - mb[j],
        })
        .collect();
    rows.sort_by(|x, y| {
        y.difference
            .total_cmp(&x.difference)
            .then(x.latent.cmp(&y.latent))
    });
    let n = top.min(s);
    let top_a = rows[..n].to_vec();
    let top_b = rows.iter().rev().take(n).cloned().collect();
    Ok(Contrast {
        hook: splice.at.base().to_string(),
        position: if last { "last" } else { "mean" }.into(),
        prompts_a: a.len(),
        prompts_b: b.len(),
        top_a,
        top_b,
    })
}
