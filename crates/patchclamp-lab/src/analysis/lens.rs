//! The logit lens: each layer's residual stream read through the final norm and the
//! unembedding, and Wendler et al.'s two-curve "which language is the latent" analysis
//! (METHODS.md §7.8).

use crate::error::{Error, Result};
use candle_core::{Tensor, D};
use patchclamp_core::{HookPoint, Hooks, Input, Model, Selector};
use serde::{Deserialize, Serialize};

/// What the lens reads at every layer of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitLens {
    /// Row labels: `embed` (the residual entering block 0), then `blocks.L.hook_resid_post`.
    pub layers: Vec<String>,
    /// The prompt's tokens.
    pub tokens: Vec<u32>,
    /// Top-k `(token, probability)` per `[layer][position]`.
    pub top: Vec<Vec<Vec<(u32, f32)>>>,
    /// Probability of each tracked token per `[layer][position][tracked]`.
    pub tracked: Vec<Vec<Vec<f32>>>,
    /// Probability of the actual next token per `[layer][position]`, for every position that
    /// has one (all but the last).
    pub next_token: Vec<Vec<f32>>,
    /// Entropy (nats) of each layer's distribution per `[layer][position]`.
    pub entropy: Vec<Vec<f32>>,
}

/// The residual entering block 0 and leaving every block, `[L+1]` tensors of `[B, S, D]`.
pub fn residuals(model: &Model, input: &Input) -> Result<Vec<Tensor>> {
    let mut hooks = Hooks::none()
        .capture(HookPoint::ResidPre(0))
        .capture(Selector::parse("blocks.*.hook_resid_post")?);
    model.forward(input, &mut hooks)?;
    let cache = hooks.cache();
    let mut out = vec![cache.get(HookPoint::ResidPre(0)).expect("captured").clone()];
    for l in 0..model.cfg.n_layers {
        out.push(
            cache
                .get(HookPoint::ResidPost(l))
                .expect("captured")
                .clone(),
        );
    }
    Ok(out)
}

/// Layer labels matching [`residuals`].
pub fn layer_labels(n_layers: usize) -> Vec<String> {
    std::iter::once("embed".to_string())
        .chain((0..n_layers).map(|l| format!("blocks.{l}.hook_resid_post")))
        .collect()
}

/// Per-layer probabilities `[L+1]` of `[B, S, V]`: the final norm (with each residual's own
/// scale) and the unembedding applied to every layer's residual.
pub fn layer_probs(model: &Model, input: &Input) -> Result<Vec<Tensor>> {
    residuals(model, input)?
        .iter()
        .map(|r| {
            Ok(candle_nn::ops::softmax_last_dim(
                &model.unembed_residual(r)?,
            )?)
        })
        .collect()
}

/// The logit lens on one prompt: top-`k` tokens (at least one), the probabilities of `tracked` tokens and of
/// the actual next token, and the entropy, at every layer and position.
pub fn logit_lens(model: &Model, tokens: &[u32], k: usize, tracked: &[u32]) -> Result<LogitLens> {
    let v = model.cfg.d_vocab;
    if let Some(&t) = tracked.iter().find(|&&t| t as usize >= v) {
        return Err(Error::OutOfRange {
            what: "tracked token id",
            index: t as i64,
            limit: format!("a vocabulary of {v} tokens"),
        });
    }
    if k == 0 {
        return Err(Error::Input(
            "the lens shows the top tokens per layer: --top-k must be at least 1".into(),
        ));
    }
    let input = Input::single(tokens, model.device())?;
    let probs = layer_probs(model, &input)?;
    let k = k.min(v);
    let mut out = LogitLens {
        layers: layer_labels(model.cfg.n_layers),
        tokens: tokens.to_vec(),
        top: vec![],
        tracked: vec![],
        next_token: vec![],
        entropy: vec![],
    };
    for p in &probs {
        let p = p.squeeze(0)?.to_vec2::<f32>()?; // [S, V]
        let mut top = vec![];
        let mut tr = vec![];
        let mut next = vec![];
        let mut ent = vec![];
        for (t, row) in p.iter().enumerate() {
            let mut idx: Vec<usize> = (0..v).collect();
            idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b].total_cmp(&row[a]));
            let mut best: Vec<(u32, f32)> = idx[..k].iter().map(|&i| (i as u32, row[i])).collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.push(best);
            tr.push(tracked.iter().map(|&i| row[i as usize]).collect());
            if let Some(&n) = tokens.get(t + 1) {
                next.push(row[n as usize]);
            }
            ent.push(
                -row.iter()
                    .filter(|&&x| x > 0.0)
                    .map(|&x| x as f64 * (x as f64).ln())
                    .sum::<f64>() as f32,
            );
        }
        out.top.push(top);
        out.tracked.push(tr);
        out.next_token.push(next);
        out.entropy.push(ent);
    }
    Ok(out)
}

/// One prompt of the latent-language analysis: its tokens and, per token set (e.g. the
/// target-language answer and its English translation), the ids whose probabilities are summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentPrompt {
    pub tokens: Vec<u32>,
    /// One id list per set, in the order of the set names.
    pub sets: Vec<Vec<u32>>,
}

/// Per-set curves over layers: mean and standard error over prompts of `P_l(set)` at the last
/// position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentCurves {
    pub layers: Vec<String>,
    pub names: Vec<String>,
    /// `[set][layer]`.
    pub mean: Vec<Vec<f64>>,
    /// `[set][layer]`.
    pub stderr: Vec<Vec<f64>>,
    pub prompts: usize,
}

/// Wendler et al.'s analysis: at the last position of each prompt, the lens probability of each
/// token set (summed over its ids) at every layer, averaged over prompts.
pub fn latent_language(
    model: &Model,
    prompts: &[LatentPrompt],
    names: &[String],
) -> Result<LatentCurves> {
    let n_layers = model.cfg.n_layers + 1;
    if prompts.is_empty() {
        return Err(Error::Input(
            "latent-language analysis needs prompts".into(),
        ));
    }
    if names.is_empty() {
        return Err(Error::Input(
            "latent-language analysis needs at least one token set per prompt (\"sets\": {\"en\": [\" cat\"]})".into(),
        ));
    }
    let mut per: Vec<Vec<Vec<f64>>> = vec![vec![vec![]; n_layers]; names.len()];
    for (i, p) in prompts.iter().enumerate() {
        if p.sets.len() != names.len() {
            return Err(Error::Input(format!(
                "prompt {i} has {} token sets, expected {} ({})",
                p.sets.len(),
                names.len(),
                names.join(", ")
            )));
        }
        if let Some(k) = p.sets.iter().position(|s| s.is_empty()) {
            return Err(Error::Input(format!(
                "prompt {i}'s token set '{}' is empty: its probability would be 0 at every layer",
                names[k]
            )));
        }
        let v = model.cfg.d_vocab;
        if let Some(&t) = p.sets.iter().flatten().find(|&&t| t as usize >= v) {
            return Err(Error::OutOfRange {
                what: "token id in a set",
                index: t as i64,
                limit: format!("a vocabulary of {v} tokens"),
            });
        }
        let input = Input::single(&p.tokens, model.device())?;
        let s = p.tokens.len();
        // Only the last position is read: unembed just that row of each layer's residual.
        for (l, resid) in residuals(model, &input)?.iter().enumerate() {
            let logits = model.unembed_residual(&resid.narrow(1, s - 1, 1)?)?;
            let last = candle_nn::ops::softmax_last_dim(&logits)?.flatten_all()?;
            for (k, ids) in p.sets.iter().enumerate() {
                let idx = Tensor::new(ids.as_slice(), model.device())?;
                let sum = last.index_select(&idx, D::Minus1)?.sum_all()?;
                per[k][l].push(sum.to_scalar::<f32>()? as f64);
            }
        }
    }
    let n = prompts.len() as f64;
    let mean_se = |x: &Vec<f64>| {
        let m = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (m, (var / n).sqrt())
    };
    Ok(LatentCurves {
        layers: layer_labels(model.cfg.n_layers),
        names: names.to_vec(),
        mean: per
            .iter()
            .map(|s| s.iter().map(|x| mean_se(x).0).collect())
            .collect(),
        stderr: per
            .iter()
            .map(|s| s.iter().map(|x| mean_se(x).1).collect())
            .collect(),
        prompts: prompts.len(),
    })
}
