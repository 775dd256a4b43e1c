//! The mixture-of-experts MLP: router logits → scores → top-k selection → weights → the
//! routed experts (each runs only on the tokens routed to it) + a shared expert.
//!
//! Every family's routing is one path with its switches in [`Moe`]: softmax or sigmoid scores,
//! greedy or group-limited selection, a selection-only bias, renormalisation and scaling.
//! Switch-off and forcing arrive as ±∞ router logits (the `switch_off` / `force` ops):
//! −∞ is never chosen and weighs 0; +∞ is always chosen and weighs as a logit just above the
//! token's best, so the weights are recomputed the family's way over the new choice.
//!
//! Shapes: N = batch·pos tokens, D = d_model, E = experts, k = top_k, M = d_expert.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::{ExpertSite, HookPoint as P, Hooks};
use crate::model::config::{GroupRank, Moe, Scoring, Selection};
use crate::model::forward::Model;
use crate::model::ops::{activation, linear, softmax_last_dim};
use crate::model::weights::{MlpWeights, MoeWeights};

/// The forced experts' logit margin over the token's best (SteerMoE's `max + 0.01`).
const FORCE_MARGIN: f32 = 0.01;

/// One layer's routing decision.
struct Routing {
    /// Chosen experts per token `[N][k]`, best first.
    indices: Vec<Vec<u32>>,
    /// Their weights `[N, k]` (a tensor, so training differentiates through it).
    weights: Tensor,
}

impl Model {
    /// The mixture of experts of layer `l` on `x` `[B, S, D]`; returns `[B, S, D]`.
    pub(crate) fn moe(
        &self,
        l: usize,
        w: &MoeWeights,
        x: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let m = self.cfg.moe_at(l).ok_or_else(|| {
            Error::Input(format!(
                "layer {l} carries expert weights but does not route"
            ))
        })?;
        let (b, s, d) = x.dims3()?;
        let x = hooks.at(P::RouterIn(l), x.clone())?;
        let logits = hooks.at(P::RouterLogits(l), linear(&x, &w.w_router, None)?)?;
        let flat = x.reshape((b * s, d))?;
        let routing = route(m, l, w, &logits.reshape((b * s, m.n_experts))?, hooks)?;
        let mut out = flat.zeros_like()?;
        // Experts in ascending order, as Hugging Face's loop: each token's sum runs in the same order.
        for (e, tokens, slots) in by_expert(&routing.indices, m.n_experts) {
            let tok = Tensor::new(tokens.as_slice(), x.device())?;
            let xe = flat.index_select(&tok, 0)?; // [n_e, D]
            let ye = expert(l, e, &w.experts[e as usize], m, &xe, hooks)?;
            let slot = Tensor::new(slots.as_slice(), x.device())?;
            let we = routing.weights.flatten_all()?.index_select(&slot, 0)?; // [n_e]
            let ye = ye.broadcast_mul(&we.unsqueeze(1)?)?;
            out = out.index_add(&tok, &ye, 0)?;
        }
        let routed = out.reshape((b, s, d))?;
        let Some(sw) = &w.shared else {
            return Ok(routed);
        };
        let mut shared = gated_mlp(sw, m, &x, |_, t| Ok(t))?;
        if let Some(g) = &w.w_shared_gate {
            shared = shared.broadcast_mul(&sigmoid(&linear(&x, g, None)?)?)?;
        }
        let shared = hooks.at(P::SharedOut(l), shared)?;
        Ok((routed + shared)?)
    }
}

/// Scores, selection and weights of one layer for router logits `[N, E]`.
fn route(m: &Moe, l: usize, w: &MoeWeights, logits: &Tensor, hooks: &mut Hooks) -> Result<Routing> {
    let (n, e) = logits.dims2()?;
    let raw: Vec<f32> = logits.detach().flatten_all()?.to_vec1()?;
    let marked = raw.iter().any(|x| x.is_infinite());
    // Forced experts (+∞) weigh as a logit just above the token's best finite one.
    let logits = match marked {
        false => logits.clone(),
        true => {
            let mut fix = raw.clone();
            for row in fix.chunks_mut(e) {
                let best = row
                    .iter()
                    .copied()
                    .filter(|x| x.is_finite())
                    .fold(f32::NEG_INFINITY, f32::max);
                for x in row.iter_mut().filter(|x| **x == f32::INFINITY) {
                    *x = best + FORCE_MARGIN;
                }
            }
            let forced = raw.iter().map(|&x| u8::from(x == f32::INFINITY)).collect();
            let forced = Tensor::from_vec(forced, (n, e), logits.device())?;
            let fix = Tensor::from_vec(fix, (n, e), logits.device())?;
            forced.where_cond(&fix, logits)?
        }
    };
    let scores = match m.scoring {
        Scoring::Softmax => softmax_last_dim(&logits)?,
        Scoring::Sigmoid => sigmoid(&logits)?,
    };
    let scores = hooks.at(P::ExpertWeights(l), scores)?;
    let key: Vec<f32> = scores.detach().flatten_all()?.to_vec1()?;
    let bias: Option<Vec<f32>> = match &w.router_bias {
        Some(b) if m.selection_bias => Some(b.to_vec1()?),
        _ => None,
    };
    let mut indices = Vec::with_capacity(n);
    for t in 0..n {
        let row = &raw[t * e..(t + 1) * e];
        let mut k: Vec<f32> = key[t * e..(t + 1) * e].to_vec();
        if let Some(b) = &bias {
            k.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        for (x, &r) in k.iter_mut().zip(row) {
            if r == f32::NEG_INFINITY {
                *x = f32::NEG_INFINITY;
            } else if r == f32::INFINITY {
                *x = f32::INFINITY;
            }
        }
        let forced = row.iter().filter(|&&r| r == f32::INFINITY).count();
        let open = row.iter().filter(|&&r| r != f32::NEG_INFINITY).count();
        if forced > m.top_k || open < m.top_k {
            return Err(Error::Input(format!(
                "layer {l}, token {t}: {forced} experts forced on and {} switched off leave no valid choice of {} of {e}",
                e - open,
                m.top_k
            )));
        }
        if let Selection::GroupLimited {
            n_group,
            topk_group,
            rank,
        } = m.selection
        {
            limit_groups(&mut k, n_group, topk_group, rank);
        }
        indices.push(top_k(&k, m.top_k));
    }
    // The weights of the router's choice; edited indices (below) swap experts and keep them,
    // as TransformerLens's `hook_expert_indices` does.
    let gather = Tensor::from_vec(
        indices.iter().flatten().copied().collect::<Vec<u32>>(),
        (n, m.top_k),
        logits.device(),
    )?;
    // Renormalised softmax weights are the softmax over the chosen logits: computed so, an
    // expert switched off that a token did not choose leaves its weights bit for bit.
    let direct = m.norm_topk_prob
        && m.scoring == Scoring::Softmax
        && m.norm_eps == 0.0
        && !hooks.edits(P::ExpertWeights(l));
    let mut weights = match direct {
        true => softmax_last_dim(&logits.contiguous()?.gather(&gather, 1)?)?,
        false => scores.contiguous()?.gather(&gather, 1)?,
    };
    let idx = Tensor::from_vec(
        indices
            .iter()
            .flatten()
            .map(|&i| i as f32)
            .collect::<Vec<_>>(),
        (n, m.top_k),
        logits.device(),
    )?;
    let idx_point = P::ExpertIndices(l);
    let edited = hooks.edits(idx_point);
    let idx = hooks.at(idx_point, idx)?;
    if edited {
        indices = read_indices(&idx, e, l)?;
    }
    if m.norm_topk_prob && !direct {
        let sum = weights.sum_keepdim(D::Minus1)?;
        let sum = if m.norm_eps > 0.0 {
            (sum + m.norm_eps)?
        } else {
            sum
        };
        weights = weights.broadcast_div(&sum)?;
    }
    if m.routed_scaling_factor != 1.0 {
        weights = (weights * m.routed_scaling_factor)?;
    }
    let weights = hooks.at(P::TopkWeights(l), weights)?;
    Ok(Routing { indices, weights })
}

/// Indices of the `k` largest keys, best first; ties go to the lower index.
fn top_k(key: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..key.len() as u32).collect();
    order.sort_by(|&a, &b| {
        key[b as usize]
            .partial_cmp(&key[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order.truncate(k);
    order
}

/// Masks (to −∞) every expert outside the best `topk_group` of `n_group` groups.
fn limit_groups(key: &mut [f32], n_group: usize, topk_group: usize, rank: GroupRank) {
    let per = key.len() / n_group;
    let group_score: Vec<f32> = key
        .chunks(per)
        .map(|g| match rank {
            GroupRank::Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            GroupRank::SumTop2 => {
                let best = top_k(g, 2.min(g.len()));
                best.iter().map(|&i| g[i as usize]).sum()
            }
        })
        .collect();
    let keep = top_k(&group_score, topk_group);
    for (gi, g) in key.chunks_mut(per).enumerate() {
        if !keep.contains(&(gi as u32)) {
            g.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        }
    }
}

/// Every expert that received tokens, ascending, with its tokens (ascending) and each token's
/// slot in the flattened `[N·k]` weights.
fn by_expert(indices: &[Vec<u32>], n_experts: usize) -> Vec<(u32, Vec<u32>, Vec<u32>)> {
    let mut tokens = vec![vec![]; n_experts];
    let mut slots = vec![vec![]; n_experts];
    for (t, row) in indices.iter().enumerate() {
        let k = row.len();
        for (j, &e) in row.iter().enumerate() {
            tokens[e as usize].push(t as u32);
            slots[e as usize].push((t * k + j) as u32);
        }
    }
    tokens
        .into_iter()
        .zip(slots)
        .enumerate()
        .filter(|(_, (t, _))| !t.is_empty())
        .map(|(e, (t, s))| (e as u32, t, s))
        .collect()
}

/// Edited `hook_expert_indices` back as indices, refusing what is not an expert.
fn read_indices(idx: &Tensor, e: usize, l: usize) -> Result<Vec<Vec<u32>>> {
    let v: Vec<Vec<f32>> = idx.to_dtype(DType::F32)?.to_vec2()?;
    v.into_iter()
        .map(|row| {
            let mut seen = vec![];
            row.into_iter()
                .map(|x| {
                    if x.fract() != 0.0 || x < 0.0 || x as usize >= e {
                        return Err(Error::Input(format!(
                            "blocks.{l}.mlp.hook_expert_indices was edited to {x}, not an expert index in 0..{e}"
                        )));
                    }
                    if seen.contains(&(x as u32)) {
                        return Err(Error::Input(format!(
                            "blocks.{l}.mlp.hook_expert_indices was edited to route a token to expert {x} twice"
                        )));
                    }
                    seen.push(x as u32);
                    Ok(x as u32)
                })
                .collect()
        })
        .collect()
}

/// Routed expert `e` on its tokens `x` `[n_e, D]`, through its hook points; `[n_e, D]`.
fn expert(
    l: usize,
    e: u32,
    w: &MlpWeights,
    m: &Moe,
    x: &Tensor,
    hooks: &mut Hooks,
) -> Result<Tensor> {
    gated_mlp(w, m, x, |site, t| hooks.at(P::Expert(l, e, site), t))
}

/// `W_out · (act(W_gate · x) ⊙ W_in · x)`, each inner activation passed through `at`.
fn gated_mlp(
    w: &MlpWeights,
    m: &Moe,
    x: &Tensor,
    mut at: impl FnMut(ExpertSite, Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let w_gate = w
        .w_gate
        .as_ref()
        .ok_or_else(|| Error::Input("an expert without a gate projection".into()))?;
    let pre = at(ExpertSite::Pre, linear(x, w_gate, w.b_gate.as_ref())?)?;
    let lin = at(ExpertSite::PreLinear, linear(x, &w.w_in, w.b_in.as_ref())?)?;
    let post = at(ExpertSite::Post, (activation(&pre, m.act)? * lin)?)?;
    linear(&post, &w.w_out, w.b_out.as_ref())
}

/// `1 / (1 + e^−x)`, differentiable.
fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_best_first_with_ties_to_the_lower_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 2), vec![1, 2]);
        assert_eq!(
            top_k(&[f32::NEG_INFINITY, 0.0, f32::INFINITY], 2),
            vec![2, 1]
        );
    }

    #[test]
    fn group_limits_keep_the_best_groups_only() {
        // Groups {0,1} {2,3} {4,5}: best by max are groups 2 (0.9) then 0 (0.8).
        let mut k = vec![0.8, 0.1, 0.3, 0.3, 0.9, 0.0];
        limit_groups(&mut k, 3, 2, GroupRank::Max);
        assert_eq!(top_k(&k, 3), vec![4, 0, 1]);
        // By the sum of the best two: group 0 (0.8 + 0.1) edges out group 2 (0.9 + 0.0).
        let mut k = vec![0.8, 0.1, 0.3, 0.3, 0.9, 0.0];
        limit_groups(&mut k, 3, 1, GroupRank::SumTop2);
        assert_eq!(top_k(&k, 2), vec![0, 1]);
    }

    #[test]
    fn tokens_are_grouped_by_expert_with_their_weight_slots() {
        let got = by_expert(&[vec![2, 0], vec![0, 1]], 3);
        assert_eq!(
            got,
            vec![
                (0, vec![0, 1], vec![1, 2]),
                (1, vec![1], vec![3]),
                (2, vec![0], vec![0]),
            ]
        );
    }
}
