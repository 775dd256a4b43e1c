//! Next-token predictions: what the model says after a prompt, under any hooks.

use crate::error::Result;
use candle_core::D;
use patchclamp_core::{Hooks, Input, Model};
use serde::{Deserialize, Serialize};

/// One predicted token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: u32,
    pub logit: f32,
    pub prob: f32,
}

/// Runs `tokens` through `model` with `hooks` and returns the `k` likeliest next tokens, most
/// likely first (refusing non-finite logits).
pub fn next_tokens(
    model: &Model,
    tokens: &[u32],
    hooks: &mut Hooks,
    k: usize,
) -> Result<Vec<Prediction>> {
    let input = Input::single(tokens, model.device())?;
    let logits = model.forward(&input, hooks)?;
    patchclamp_core::model::ensure_finite(&logits, "the logits")?;
    let last = logits.squeeze(0)?.get(tokens.len() - 1)?; // [V]
    let probs = candle_nn::ops::softmax_last_dim(&last.unsqueeze(0)?)?.squeeze(0)?;
    let k = k.min(model.cfg.d_vocab);
    let order = last
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .to_vec1::<u32>()?;
    let (logit, prob) = (last.to_vec1::<f32>()?, probs.to_vec1::<f32>()?);
    Ok(order
        .into_iter()
        .map(|id| Prediction {
            id,
            logit: logit[id as usize],
            prob: prob[id as usize],
        })
        .collect())
}
