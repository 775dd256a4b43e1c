//! Linear-AcT (Rodriguez et al. 2024): per unit, the 1-D affine map that best carries the
//! sorted source activations onto the sorted target ones (optimal transport in one dimension,
//! fitted by least squares), applied with a strength λ inside the source band only.

use patchclamp_core::hooks::Values;
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model, Op};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per-unit affine maps `x ↦ scale·x + shift`, valid on `[low, high]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
    pub low: Vec<f64>,
    pub high: Vec<f64>,
}

/// Fits one map per unit from `source` and `target` samples (`[sample][unit]`). Each unit's
/// samples are sorted and paired by quantile (the shorter set sets the count).
pub fn fit_transport(source: &[Vec<f64>], target: &[Vec<f64>]) -> Result<Transport> {
    if source.len() < 2 || target.len() < 2 {
        return Err(Error::Input(
            "Linear-AcT needs at least two source and two target samples".into(),
        ));
    }
    let units = source[0].len();
    if source.iter().chain(target).any(|r| r.len() != units) {
        return Err(Error::Input(
            "every sample must have the same number of units".into(),
        ));
    }
    let n = source.len().min(target.len());
    let column = |rows: &[Vec<f64>], u: usize| -> Vec<f64> {
        let mut c: Vec<f64> = rows.iter().map(|r| r[u]).collect();
        c.sort_by(f64::total_cmp);
        // n evenly spaced quantiles of the sorted column.
        (0..n)
            .map(|i| c[(i * (c.len() - 1)) / (n - 1).max(1)])
            .collect()
    };
    let mut t = Transport {
        scale: vec![],
        shift: vec![],
        low: vec![],
        high: vec![],
    };
    for u in 0..units {
        let (s, q) = (column(source, u), column(target, u));
        let ms = s.iter().sum::<f64>() / n as f64;
        let mq = q.iter().sum::<f64>() / n as f64;
        let var = s.iter().map(|x| (x - ms).powi(2)).sum::<f64>();
        let cov = s
            .iter()
            .zip(&q)
            .map(|(x, y)| (x - ms) * (y - mq))
            .sum::<f64>();
        // A unit that never varies in the source is moved by its mean difference alone.
        let w = if var > 0.0 { cov / var } else { 1.0 };
        t.scale.push(w);
        t.shift.push(mq - w * ms);
        t.low.push(s[0]);
        t.high.push(s[n - 1]);
    }
    Ok(t)
}

impl Transport {
    /// The intervention that applies the maps at `at` with `strength` (λ).
    pub fn intervention(&self, at: HookPoint, strength: f64) -> Intervention {
        let v = |x: &Vec<f64>| Values::Vector(x.clone());
        Intervention {
            at,
            select: Default::default(),
            op: Op::Transport {
                scale: v(&self.scale),
                shift: v(&self.shift),
                low: v(&self.low),
                high: v(&self.high),
                strength,
            },
            when: Default::default(),
            decode: None,
        }
    }
}

/// Fits Linear-AcT at `at` from the activations of `source` and `target` prompts (every
/// position of every prompt is a sample).
pub fn linear_act(
    model: &Model,
    source: &[Vec<u32>],
    target: &[Vec<u32>],
    at: HookPoint,
) -> Result<Transport> {
    if source == target {
        return Err(Error::Input(
            "the source and target prompts are the same: every map would be the identity".into(),
        ));
    }
    let samples = |prompts: &[Vec<u32>]| -> Result<Vec<Vec<f64>>> {
        let mut out = vec![];
        for p in prompts {
            let mut h = Hooks::none().capture(at);
            model.forward(&Input::single(p, model.device())?, &mut h)?;
            let t = h.cache().get(at).expect("captured").get(0)?;
            let rows: Vec<Vec<f32>> = t.flatten_to(0)?.to_vec2().map_err(|_| {
                Error::Input(format!(
                    "Linear-AcT needs a [batch, pos, units] point, not {at}"
                ))
            })?;
            out.extend(
                rows.into_iter()
                    .map(|r| r.into_iter().map(|x| x as f64).collect()),
            );
        }
        Ok(out)
    };
    fit_transport(&samples(source)?, &samples(target)?)
}
