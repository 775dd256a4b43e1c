//! Attribution patching (Nanda 2023; METHODS.md §5.4): the first-order estimate
//! `(a_source − a_base) · ∂M/∂a |_base` of every patch at once, from two forwards and one
//! backward, in the same layout as an exact sweep.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, Var, D};
use patchclamp_core::{ActivationCache, HookPoint, Hooks, Input, Model};

use crate::causal::patching::{Direction, Metric, PatchingResult, Site};
use crate::error::{Error, Result};

/// The metric of a batch-1 run as a differentiable scalar.
fn metric_scalar(logits: &Tensor, metric: Metric, clean_logprobs: &Tensor) -> Result<Tensor> {
    let (_, s, _) = logits.dims3()?;
    let last = logits.narrow(1, s - 1, 1)?.squeeze(1)?.squeeze(0)?; // [V]
    let pick =
        |t: &Tensor, id: u32| -> Result<Tensor> { Ok(t.narrow(0, id as usize, 1)?.squeeze(0)?) };
    // log_softmax is composed of differentiable ops (unlike candle's fused softmax).
    let logp = || -> Result<Tensor> { Ok(candle_nn::ops::log_softmax(&last, D::Minus1)?) };
    Ok(match metric {
        Metric::LogitDiff { answer, wrong } => (pick(&last, answer)? - pick(&last, wrong)?)?,
        Metric::Prob { answer } => pick(&logp()?, answer)?.exp()?,
        Metric::LogProb { answer } => pick(&logp()?, answer)?,
        Metric::Kl => {
            let pc = clean_logprobs.squeeze(0)?;
            pc.exp()?.mul(&(&pc - logp()?)?)?.sum_all()?
        }
    })
}

/// Estimates every patch of `site` (per position, or per head over all positions) at once.
pub fn attribute(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    site: Site,
    direction: Direction,
    metric: Metric,
) -> Result<PatchingResult> {
    let points: Vec<HookPoint> = (0..model.cfg.n_layers).map(|l| site.point(l)).collect();
    let (values, _, clean_m, corrupt_m) =
        estimate(model, clean, corrupt, &points, direction, metric, |p, x| {
            reduce(site, p, x)
        })?;
    let n_layers = points.len();
    let n_cols = values.len() / n_layers;
    super::patching::check_references(clean_m, corrupt_m)?;
    let denom = clean_m - corrupt_m;
    // The estimate is of M_patched − M_base; report it like a sweep: M_base + estimate.
    let base = match direction {
        Direction::Denoise => corrupt_m,
        Direction::Noise => clean_m,
    };
    let values: Vec<f32> = values.iter().map(|d| base + d).collect();
    let normalized = values.iter().map(|v| (v - corrupt_m) / denom).collect();
    Ok(PatchingResult {
        site,
        direction,
        metric,
        values,
        normalized,
        n_layers,
        n_cols,
        clean_metric: clean_m,
        corrupt_metric: corrupt_m,
        unchanged: 0,
    })
}

/// The first-order estimate summed over all elements of each of `points`.
pub fn attribute_totals(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    points: &[HookPoint],
    direction: Direction,
    metric: Metric,
) -> Result<Vec<f32>> {
    let (_, totals, _, _) = estimate(model, clean, corrupt, points, direction, metric, |_, x| {
        Ok(vec![x.sum_all()?.to_scalar::<f32>()?])
    })?;
    Ok(totals)
}

type Estimate = (Vec<f32>, Vec<f32>, f32, f32);

/// Core of attribution: per-point element-wise estimates, reduced by `reduce`.
fn estimate(
    model: &Model,
    clean: &[u32],
    corrupt: &[u32],
    points: &[HookPoint],
    direction: Direction,
    metric: Metric,
    reduce: impl Fn(HookPoint, &Tensor) -> Result<Vec<f32>>,
) -> Result<Estimate> {
    crate::causal::patching::check_prompts(model, clean, corrupt, metric)?;
    let dev = model.device();
    let (base_ids, source_ids) = match direction {
        Direction::Denoise => (corrupt, clean),
        Direction::Noise => (clean, corrupt),
    };
    let record = |ids: &[u32]| -> Result<(Tensor, ActivationCache)> {
        let mut h = Hooks::none();
        for &p in points {
            h = h.capture(p);
        }
        let logits = model.forward(&Input::single(ids, dev)?, &mut h)?;
        Ok((logits, h.take_cache()))
    };
    let (source_logits, source) = record(source_ids)?;

    // The base run with a zero-valued variable added at each point: the gradient with respect
    // to it is ∂M/∂a, and the graph through a itself stays intact (nothing is detached).
    let probes: Arc<Mutex<Vec<(HookPoint, Var, Tensor)>>> = Arc::default();
    let mut hooks = Hooks::none();
    for &p in points {
        let probes = probes.clone();
        hooks = hooks.edit(p, move |p, x| {
            let z = Var::zeros(x.shape(), x.dtype(), x.device())?;
            probes
                .lock()
                .expect("probe lock")
                .push((p, z.clone(), x.detach()));
            Ok((x + z.as_tensor())?)
        });
    }
    let base_logits = model.forward(&Input::single(base_ids, dev)?, &mut hooks)?;
    let (clean_logits, corrupt_logits) = match direction {
        Direction::Denoise => (source_logits.clone(), base_logits.detach()),
        Direction::Noise => (base_logits.detach(), source_logits.clone()),
    };
    let lp = |l: &Tensor| -> Result<Tensor> {
        let s = l.dim(1)?;
        Ok(candle_nn::ops::log_softmax(
            &l.narrow(1, s - 1, 1)?.squeeze(1)?,
            D::Minus1,
        )?)
    };
    let clean_lp = lp(&clean_logits)?;
    let clean_m = metric_scalar(&clean_logits, metric, &clean_lp)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let corrupt_m = metric_scalar(&corrupt_logits, metric, &clean_lp)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    let m = metric_scalar(&base_logits, metric, &clean_lp)?;
    let grads = m.backward()?;

    let mut values = Vec::new();
    let mut totals = Vec::new();
    let probes = probes.lock().expect("probe lock");
    for &p in points {
        let (_, z, a_base) = probes
            .iter()
            .find(|(q, _, _)| *q == p)
            .ok_or_else(|| Error::Input(format!("{p} was not reached")))?;
        let g = grads
            .get(z.as_tensor())
            .cloned()
            .unwrap_or(z.as_tensor().zeros_like()?);
        let a_source = source
            .get(p)
            .ok_or_else(|| Error::Input(format!("{p} not recorded")))?;
        let contrib = ((a_source - a_base)? * g)?;
        values.extend(reduce(p, &contrib)?);
        totals.push(contrib.sum_all()?.to_scalar::<f32>()?);
    }
    Ok((values, totals, clean_m, corrupt_m))
}

/// Sums a per-element estimate into the sweep's columns (positions or heads).
fn reduce(site: Site, p: HookPoint, x: &Tensor) -> Result<Vec<f32>> {
    let x = x.squeeze(0)?; // drop batch
    let v = match (site.per_head(), p) {
        (false, _) => x.sum(D::Minus1)?, // [S, D] → [S]
        (true, HookPoint::Pattern(_)) => x.sum(D::Minus1)?.sum(D::Minus1)?, // [H, S, S] → [H]
        (true, _) => x.sum(D::Minus1)?.sum(0)?, // [S, H, E] → [H]
    };
    Ok(v.to_vec1()?)
}
