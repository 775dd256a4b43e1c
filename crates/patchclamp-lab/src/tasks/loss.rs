//! Next-token cross-entropy over the scored positions of a [`Batch`].

use std::ops::Range;

use candle_core::{Device, Tensor, D};
use patchclamp_core::model::kernels::cross_entropy::cross_entropy;

use crate::error::Result;
use crate::tasks::Batch;

/// Negative log-likelihoods of the scored positions of a batch.
pub struct TokenNll {
    /// `[n]`, one per position with weight > 0.
    pub nll: Tensor,
    /// `[n]` their weights.
    pub weights: Tensor,
    /// `(row, position)` of each.
    pub at: Vec<(usize, usize)>,
}

/// Per-position negative log-likelihoods of the positions with weight > 0.
pub fn token_nll(
    logits: &Tensor,
    batch: &Batch,
    classes: Option<Range<usize>>,
) -> Result<TokenNll> {
    let (b, s) = batch.dims();
    let dev = logits.device();
    let mut rows = vec![];
    let mut where_ = vec![];
    let mut targets = vec![];
    let mut weights = vec![];
    let offset = classes.as_ref().map_or(0, |c| c.start as u32);
    for r in 0..b {
        for t in 0..s {
            if batch.weights[r][t] > 0.0 {
                rows.push((r * s + t) as u32);
                where_.push((r, t));
                targets.push(batch.targets[r][t] - offset);
                weights.push(batch.weights[r][t]);
            }
        }
    }
    let v = logits.dim(D::Minus1)?;
    let flat = logits.reshape((b * s, v))?;
    let n = rows.len();
    let picked = if n == b * s {
        flat
    } else {
        flat.index_select(&Tensor::new(rows, dev)?, 0)?
    };
    let picked = match classes {
        Some(c) => picked.narrow(1, c.start, c.len())?,
        None => picked,
    };
    let nll = if picked.device().is_cpu() {
        // One fused op each way instead of a log-softmax chain over every logit.
        cross_entropy(&picked, targets)?
    } else {
        let logp = log_softmax(&picked)?;
        let tgt = Tensor::from_vec(targets, (n, 1), dev)?;
        logp.gather(&tgt, 1)?.squeeze(1)?.neg()?
    };
    Ok(TokenNll {
        nll,
        weights: Tensor::from_vec(weights, n, dev)?,
        at: where_,
    })
}

/// The weighted mean loss of a batch (a scalar that backpropagates).
pub fn mean_loss(logits: &Tensor, batch: &Batch, classes: Option<Range<usize>>) -> Result<Tensor> {
    let t = token_nll(logits, batch, classes)?;
    let total = t.weights.sum_all()?.to_scalar::<f32>()?;
    Ok(((t.nll * t.weights)?.sum_all()? / total as f64)?)
}

/// `log softmax` over the last dimension from differentiable ops (max held constant).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// The batch's tokens as a `[B, S]` u32 tensor input.
pub fn input(batch: &Batch, dev: &Device) -> Result<patchclamp_core::Input> {
    Ok(patchclamp_core::Input::batch(
        &batch.tokens,
        patchclamp_core::Padding::Right,
        0,
        dev,
    )?)
}
