//! The Hydra effect (McGrath et al. 2023, METHODS.md §7.10): the direct effect of a layer
//! (its output's drop through the unembedding, final-norm scale frozen from the clean run)
//! against its total effect (the logit drop when its output is resample-ablated and everything
//! downstream recomputed), and which downstream layers change their direct effect to compensate.

use patchclamp_core::model::NormKind;
use patchclamp_core::{Error, HookPoint, Hooks, Input, Intervention, Model, Op, Padding, Result};
use serde::{Deserialize, Serialize};

use crate::dla::LogitDirection;

/// Direct and total effects of ablating each layer, averaged over prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hydra {
    /// Layer outputs in forward order: `blocks.L.hook_attn_out`, `blocks.L.hook_mlp_out`.
    pub labels: Vec<String>,
    /// Clean direct logit attribution of each layer output.
    pub clean_direct: Vec<f64>,
    /// Drop of the layer's own direct effect when it is resample-ablated.
    pub direct: Vec<f64>,
    /// Drop of the logit (difference) when it is ablated and downstream recomputed.
    pub total: Vec<f64>,
    /// `[ablated][other]`: change of each other layer's direct effect when `ablated` is
    /// ablated (positive: it compensates; upstream layers read 0).
    pub compensation: Vec<Vec<f64>>,
}

/// Measures the Hydra effect at the last position of `clean` prompts, resample-ablating each
/// layer output with its value on the matching `source` prompt (same lengths).
pub fn hydra(
    model: &Model,
    clean: &[Vec<u32>],
    source: &[Vec<u32>],
    direction: LogitDirection,
) -> Result<Hydra> {
    let cfg = &model.cfg;
    if clean.len() != source.len() || clean.iter().zip(source).any(|(a, b)| a.len() != b.len()) {
        return Err(Error::Input(
            "hydra needs one source prompt per clean prompt, of the same length".into(),
        ));
    }
    let mut points = vec![];
    for l in 0..cfg.n_layers {
        points.push(HookPoint::AttnOut(l));
        if cfg.has_mlp() {
            points.push(HookPoint::MlpOut(l));
        }
    }
    let dev = model.device();
    let input = Input::batch(clean, Padding::Right, 0, dev)?;
    let src_input = Input::batch(source, Padding::Right, 0, dev)?;
    let norm = cfg.final_norm && cfg.norm != NormKind::None;
    let record =
        |input: &Input, ivs: Vec<Intervention>, src: Option<patchclamp_core::ActivationCache>| {
            let mut hooks = points
                .iter()
                .fold(Hooks::none(), |h, p| h.capture(*p))
                .intervene_all(ivs);
            if norm {
                hooks = hooks.capture(HookPoint::FinalScale);
            }
            if let Some(c) = src {
                hooks = hooks.source("src", c);
            }
            let logits = model.forward(input, &mut hooks)?;
            Ok::<_, Error>((logits, hooks.take_cache()))
        };
    let (clean_logits, clean_cache) = record(&input, vec![], None)?;
    let (_, src_cache) = record(&src_input, vec![], None)?;

    // Read-out direction through the final norm's gain; scale frozen from the clean run.
    let w_u = model.weights.unembed().detach();
    let col = |t: u32| -> Result<Vec<f32>> {
        Ok(w_u.narrow(1, t as usize, 1)?.flatten_all()?.to_vec1()?)
    };
    let mut u: Vec<f64> = col(direction.target)?.iter().map(|&x| x as f64).collect();
    if let Some(b) = direction.baseline {
        u.iter_mut().zip(col(b)?).for_each(|(a, x)| *a -= x as f64);
    }
    if let (Some(g), true) = (&model.weights.ln_final.w, norm) {
        let g: Vec<f32> = g.detach().to_vec1()?;
        u.iter_mut().zip(g).for_each(|(a, x)| *a *= x as f64);
    }
    let center = norm && matches!(cfg.norm, NormKind::LayerNorm | NormKind::LayerNormPre);
    let rows = clean.len();
    let scale: Vec<f64> = (0..rows)
        .map(|r| -> Result<f64> {
            Ok(match norm {
                true => clean_cache
                    .get(HookPoint::FinalScale)
                    .expect("captured")
                    .get(r)?
                    .get(input.last_index(r))?
                    .flatten_all()?
                    .to_vec1::<f32>()?[0] as f64,
                false => 1.0,
            })
        })
        .collect::<Result<_>>()?;
    // Mean over prompts of one layer output's direct effect in a run.
    let direct_of = |cache: &patchclamp_core::ActivationCache, p: HookPoint| -> Result<f64> {
        let x = cache.get(p).expect("captured");
        let mut total = 0.0;
        for (r, sc) in scale.iter().enumerate() {
            let v: Vec<f32> = x.get(r)?.get(input.last_index(r))?.to_vec1()?;
            let mean = if center {
                v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64
            } else {
                0.0
            };
            total += v
                .iter()
                .zip(&u)
                .map(|(&a, w)| (a as f64 - mean) * w)
                .sum::<f64>()
                / sc;
        }
        Ok(total / rows as f64)
    };
    let logit_of = |logits: &candle_core::Tensor| -> Result<f64> {
        let mut total = 0.0;
        for r in 0..rows {
            let lg: Vec<f32> = logits.get(r)?.get(input.last_index(r))?.to_vec1()?;
            total += lg[direction.target as usize] as f64
                - direction.baseline.map_or(0.0, |b| lg[b as usize] as f64);
        }
        Ok(total / rows as f64)
    };
    for t in [Some(direction.target), direction.baseline]
        .into_iter()
        .flatten()
    {
        if t as usize >= cfg.d_vocab {
            return Err(Error::OutOfRange {
                what: "token id",
                index: t as i64,
                limit: format!("a vocabulary of {} tokens", cfg.d_vocab),
            });
        }
    }
    let clean_logit = logit_of(&clean_logits)?;
    let clean_direct: Vec<f64> = points
        .iter()
        .map(|&p| direct_of(&clean_cache, p))
        .collect::<Result<_>>()?;
    let mut out = Hydra {
        labels: points.iter().map(|p| p.to_string()).collect(),
        clean_direct: clean_direct.clone(),
        direct: vec![],
        total: vec![],
        compensation: vec![],
    };
    for (i, &p) in points.iter().enumerate() {
        out.direct.push(clean_direct[i] - direct_of(&src_cache, p)?);
        let iv = Intervention {
            at: p,
            select: Default::default(),
            op: Op::Patch {
                source: "src".into(),
                rows: None,
            },
            when: Default::default(),
        };
        let (logits, cache) = record(&input, vec![iv], Some(src_cache.clone()))?;
        out.total.push(clean_logit - logit_of(&logits)?);
        out.compensation.push(
            points
                .iter()
                .enumerate()
                .map(|(j, &q)| match j > i {
                    true => direct_of(&cache, q).map(|x| x - clean_direct[j]),
                    false => Ok(0.0),
                })
                .collect::<Result<_>>()?,
        );
    }
    Ok(out)
}
