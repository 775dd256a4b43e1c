//! Measurements taken during training: the per-head scores it records (computed by the head
//! census, [`crate::analysis::heads`]), composition scores between heads, Singh et al.'s
//! induction strength, and phase-change detection on a metric's curve (METHODS.md §1a, §2.1a).

use candle_core::{Tensor, D};
use patchclamp_core::{HookPoint, Hooks, Input, Model, Selector};
use serde::{Deserialize, Serialize};

use crate::analysis::heads::AttentionScores;
use crate::error::Result;

/// The attention scores training records per `[layer][head]` on `r r` probes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeadScores {
    /// `mean_t A[t, t−1]`.
    pub prev_token: Vec<Vec<f32>>,
    /// `mean_{t ≥ L} A[t, t−L+1]` on `r r` (the TransformerLens/ARENA induction score).
    pub induction: Vec<Vec<f32>>,
    /// `mean_{t ≥ L} A[t, t−L]`.
    pub duplicate: Vec<Vec<f32>>,
}

impl From<&AttentionScores> for HeadScores {
    /// The three scores training records, from the head census's (one implementation).
    fn from(s: &AttentionScores) -> Self {
        let f32s = |m: &[Vec<f64>]| -> Vec<Vec<f32>> {
            m.iter()
                .map(|row| row.iter().map(|&x| x as f32).collect())
                .collect()
        };
        HeadScores {
            prev_token: f32s(&s.prev_token),
            induction: f32s(&s.induction),
            duplicate: f32s(&s.duplicate),
        }
    }
}

/// How one head's output feeds another's input (Elhage et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Composition {
    Q,
    K,
    V,
}

/// A head's `d × d` circuit `U Vᵀ` kept as its `d × d_head` factors (never multiplied out).
pub struct LowRank {
    pub u: Tensor,
    pub v: Tensor,
}

impl LowRank {
    /// `W_OV = W_V W_O` of head `i` of layer `l` (x @ W orientation).
    pub fn ov(model: &Model, l: usize, i: usize) -> Result<LowRank> {
        let (e, kv) = (model.cfg.attn.d_head, i / model.cfg.kv_group());
        let a = &model.weights.blocks[l].attn;
        Ok(LowRank {
            u: a.w_v.detach().narrow(1, kv * e, e)?,
            v: a.w_o.detach().narrow(0, i * e, e)?.t()?,
        })
    }

    /// `W_QK = W_Q W_Kᵀ` of head `i` of layer `l`.
    pub fn qk(model: &Model, l: usize, i: usize) -> Result<LowRank> {
        let (e, kv) = (model.cfg.attn.d_head, i / model.cfg.kv_group());
        let a = &model.weights.blocks[l].attn;
        Ok(LowRank {
            u: a.w_q.detach().narrow(1, i * e, e)?,
            v: a.w_k.detach().narrow(1, kv * e, e)?,
        })
    }

    /// `‖U Vᵀ‖_F`.
    fn norm(&self) -> Result<f32> {
        // ‖U Vᵀ‖² = tr(UᵀU VᵀV) = Σ (UᵀU) ⊙ (VᵀV), both Grams symmetric.
        let gu = self.u.t()?.matmul(&self.u)?;
        let gv = self.v.t()?.matmul(&self.v)?;
        Ok((gu * gv)?.sum_all()?.to_scalar::<f32>()?.max(0.0).sqrt())
    }
}

/// `‖L C Rᵀ‖_F` from `d_head`-sized products: `Σ (LᵀL C) ⊙ (C RᵀR)` is its square.
fn lowrank_norm(l: &Tensor, c: &Tensor, r: &Tensor) -> Result<f32> {
    let gl = l.t()?.matmul(l)?.matmul(c)?;
    let gr = c.matmul(&r.t()?.matmul(r)?)?;
    Ok((gl * gr)?.sum_all()?.to_scalar::<f32>()?.max(0.0).sqrt())
}

/// The composition score of `first` (an OV circuit) into `second` (a QK circuit for Q and K
/// composition, an OV circuit for V): `‖M₂ · W_OV¹‖_F / (‖M₂‖_F ‖W_OV¹‖_F)`, with the product
/// taken on the side where the first head's output enters the second head.
pub fn composition_score(kind: Composition, first: &LowRank, second: &LowRank) -> Result<f32> {
    // y = x W_OV¹ enters head 2 as its query input (Q), key input (K) or value input (V):
    // Q, V: W_OV¹ M₂ = U₁ (V₁ᵀU₂) V₂ᵀ; K: M₂ W_OV¹ᵀ = U₂ (V₂ᵀV₁) U₁ᵀ.
    let prod = match kind {
        Composition::Q | Composition::V => {
            lowrank_norm(&first.u, &first.v.t()?.matmul(&second.u)?, &second.v)?
        }
        Composition::K => lowrank_norm(&second.u, &second.v.t()?.matmul(&first.v)?, &first.u)?,
    };
    Ok(prod / (first.norm()? * second.norm()?))
}

/// Composition scores `[h1][h2]` from heads of `l1` into heads of `l2 > l1`
/// (Elhage et al. 2021), computed from the heads' `d_head`-sized factors.
pub fn composition(
    model: &Model,
    kind: Composition,
    l1: usize,
    l2: usize,
) -> Result<Vec<Vec<f32>>> {
    let h = model.cfg.attn.n_heads;
    let second: Vec<LowRank> = (0..h)
        .map(|j| match kind {
            Composition::Q | Composition::K => LowRank::qk(model, l2, j),
            Composition::V => LowRank::ov(model, l2, j),
        })
        .collect::<Result<_>>()?;
    (0..h)
        .map(|i| {
            let first = LowRank::ov(model, l1, i)?;
            second
                .iter()
                .map(|m| composition_score(kind, &first, m))
                .collect()
        })
        .collect()
}

/// Singh et al.'s induction strength of each head of layer `l` on `x1 ℓ1 x2 ℓ2 x_q` sequences:
/// attention from the query to the correct label minus to the incorrect one.
pub fn induction_strength(
    model: &Model,
    tokens: &[Vec<u32>],
    hooks: Hooks,
    l: usize,
) -> Result<Vec<f32>> {
    let mut hooks = hooks.capture(Selector::Point(HookPoint::Pattern(l)));
    let input = Input::batch(tokens, patchclamp_core::Padding::Right, 0, model.device())?;
    model.forward(&input, &mut hooks)?;
    let pat = hooks.cache().get(HookPoint::Pattern(l)).expect("captured");
    let q = pat.narrow(2, 4, 1)?.squeeze(2)?.to_vec3::<f32>()?; // [B, H, S]
    let h = model.cfg.attn.n_heads;
    let mut out = vec![0f32; h];
    for (row, toks) in q.iter().zip(tokens) {
        let (correct, wrong) = if toks[4] == toks[0] { (1, 3) } else { (3, 1) };
        for (hi, o) in out.iter_mut().enumerate() {
            *o += row[hi][correct] - row[hi][wrong];
        }
    }
    Ok(out.iter().map(|x| x / tokens.len() as f32).collect())
}

/// Accuracy of the argmax over the logits columns `classes` against the scored targets.
pub fn accuracy(
    logits: &Tensor,
    batch: &crate::tasks::Batch,
    classes: std::ops::Range<usize>,
) -> Result<f32> {
    let pred = logits
        .narrow(D::Minus1, classes.start, classes.len())?
        .argmax(D::Minus1)?
        .to_vec2::<u32>()?;
    let (mut right, mut n) = (0usize, 0usize);
    for (r, row) in pred.iter().enumerate() {
        for (t, &p) in row.iter().enumerate() {
            if batch.weights[r][t] > 0.0 {
                n += 1;
                right += (p as usize + classes.start == batch.targets[r][t] as usize) as usize;
            }
        }
    }
    Ok(right as f32 / n.max(1) as f32)
}

/// The first step at which `values` falls below `threshold`.
pub fn first_below(steps: &[u64], values: &[f32], threshold: f32) -> Option<u64> {
    steps
        .iter()
        .zip(values)
        .find(|(_, &v)| v < threshold)
        .map(|(&s, _)| s)
}

/// The first step at which `values` rises above `threshold`.
pub fn first_above(steps: &[u64], values: &[f32], threshold: f32) -> Option<u64> {
    steps
        .iter()
        .zip(values)
        .find(|(_, &v)| v > threshold)
        .map(|(&s, _)| s)
}

/// How a falling curve drops: the steps where 10%, 50% and 90% of its total drop (from the
/// start to the end value) are done, and abruptness = (t₉₀ − t₁₀) / t₉₀.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drop {
    pub t10: u64,
    pub t50: u64,
    pub t90: u64,
    pub abruptness: f64,
}

/// Locates the drop of a falling curve; `None` if it never falls.
pub fn drop(steps: &[u64], values: &[f32]) -> Option<Drop> {
    let (&start, &end) = (values.first()?, values.last()?);
    let total = start - end;
    if total <= 0.0 {
        return None;
    }
    let reach = |frac: f32| first_below(steps, values, start - frac * total + 1e-6);
    let (t10, t50, t90) = (reach(0.1)?, reach(0.5)?, reach(0.9)?);
    Some(Drop {
        t10,
        t50,
        t90,
        abruptness: (t90 - t10) as f64 / t90.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_finds_the_step_of_a_sharp_fall() {
        let steps: Vec<u64> = (0..100).map(|i| i * 10).collect();
        let vals: Vec<f32> = (0..100)
            .map(|i| {
                if i < 60 {
                    4.0
                } else if i < 65 {
                    2.0
                } else {
                    0.1
                }
            })
            .collect();
        let d = drop(&steps, &vals).unwrap();
        assert_eq!((d.t10, d.t50, d.t90), (600, 600, 650));
        assert!(d.abruptness < 0.1);
        assert_eq!(first_below(&steps, &vals, 1.0), Some(650));
        assert!(drop(&steps, &[1.0f32; 100]).is_none());
    }
}
