//! The Hydra effect (McGrath et al. 2023, METHODS.md §7.10): the direct effect of a layer
//! (its output's drop through the unembedding, final-norm scale frozen from the clean run)
//! against its total effect (the logit drop when its output is resample-ablated and everything
//! downstream recomputed), and which downstream layers change their direct effect to compensate.

use patchclamp_core::{ActivationCache, HookPoint, Hooks, Input, Intervention, Model, Op, Padding};
use serde::{Deserialize, Serialize};

use crate::analysis::dla::{LogitDirection, Readout};
use crate::error::{Error, Result};

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
    let ro = Readout::new(model, direction)?;
    if clean.len() != source.len() || clean.iter().zip(source).any(|(a, b)| a.len() != b.len()) {
        return Err(Error::Input(
            "hydra needs one source prompt per clean prompt, of the same length".into(),
        ));
    }
    if let Some(i) = clean.iter().zip(source).position(|(a, b)| a == b) {
        return Err(Error::Input(format!(
            "clean prompt {i} and its source are the same tokens: resampling from it ablates nothing, so every effect would be 0"
        )));
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
    let record = |input: &Input, ivs: Vec<Intervention>, src: Option<ActivationCache>| {
        let mut hooks = points
            .iter()
            .fold(Hooks::none(), |h, p| h.capture(*p))
            .intervene_all(ivs);
        if ro.norm {
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

    let rows = clean.len();
    // Every run is read through the clean run's final-norm scale.
    let scale: Vec<f64> = (0..rows)
        .map(|r| ro.scale(&clean_cache, r, input.last_index(r)))
        .collect::<Result<_>>()?;
    // Mean over prompts of one layer output's direct effect in a run.
    let direct_of = |cache: &ActivationCache, p: HookPoint| -> Result<f64> {
        let x = cache.get(p).expect("captured");
        let mut total = 0.0;
        for (r, sc) in scale.iter().enumerate() {
            let v: Vec<f32> = x.get(r)?.get(input.last_index(r))?.to_vec1()?;
            total += ro.read(&v, *sc);
        }
        Ok(total / rows as f64)
    };
    let logit_of = |logits: &candle_core::Tensor| -> Result<f64> {
        let mut total = 0.0;
        for r in 0..rows {
            total += ro.logit(&logits.get(r)?.get(input.last_index(r))?.to_vec1::<f32>()?);
        }
        Ok(total / rows as f64)
    };
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
            decode: None,
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
