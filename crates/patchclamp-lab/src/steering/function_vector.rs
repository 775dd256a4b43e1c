//! Function vectors (Todd et al. 2024): the few attention heads whose mean output carries an
//! in-context task, summed into one vector that triggers the task where it is added.
//!
//! - `ā[l][h]`: head `h` of block `l`'s mean `hook_z` at the last token of the task's prompts;
//! - its causal indirect effect on a corrupted prompt (the same pairs, labels shuffled): the
//!   probability of the answer with that head's `hook_z` set to `ā` at the last token, minus
//!   without; the AIE is its mean over the corrupted prompts;
//! - the function vector: `Σ_{(l,h) ∈ top-k} (ā[l][h] · W_O[l][h] + b_O[l])` — each head's
//!   output through its own slice of the output projection, with the projection's bias in
//!   every term (the reference code projects each head's slice alone through `out_proj`).

use patchclamp_core::hooks::{Positions, Values};
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model, Op, Padding, Selection};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A prompt of a task and the answers whose probability measures it (one for an ICL task; a
/// set, such as every legal next token of a style, where the task is a distribution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPrompt {
    pub tokens: Vec<u32>,
    pub answers: Vec<u32>,
}

/// A function vector and the effects it was chosen by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVector {
    /// `aie[l][h]`: the average indirect effect of each head.
    pub aie: Vec<Vec<f64>>,
    /// The chosen heads `(layer, head)`, largest effect first.
    pub heads: Vec<(usize, usize)>,
    /// The vector, `d_model` wide (added to the residual stream).
    pub vector: Vec<f32>,
}

/// Finds the top-`k` heads by AIE on `corrupted` prompts, from mean head outputs on `clean`.
pub fn function_vector(
    model: &Model,
    clean: &[TaskPrompt],
    corrupted: &[TaskPrompt],
    k: usize,
) -> Result<FunctionVector> {
    let cfg = &model.cfg;
    let (nl, nh, e) = (cfg.n_layers, cfg.attn.n_heads, cfg.attn.d_head);
    if clean.is_empty() || corrupted.is_empty() {
        return Err(Error::Input(
            "a function vector needs clean and corrupted prompts".into(),
        ));
    }
    if k == 0 || k > nl * nh {
        return Err(Error::Input(format!(
            "top-k heads must be 1 to {} (the model's heads), got {k}",
            nl * nh
        )));
    }
    if let Some(p) = clean
        .iter()
        .chain(corrupted)
        .find(|p| p.answers.is_empty() || p.tokens.is_empty())
    {
        return Err(Error::Input(format!(
            "every task prompt needs tokens and at least one answer ({:?} has {} answers)",
            p.tokens,
            p.answers.len()
        )));
    }
    let dev = model.device();
    let batch = |ps: &[TaskPrompt]| -> Result<Input> {
        let seqs: Vec<Vec<u32>> = ps.iter().map(|p| p.tokens.clone()).collect();
        Ok(Input::batch(&seqs, Padding::Right, 0, dev)?)
    };
    let last = |input: &Input| -> Vec<i64> {
        (0..input.lengths.len())
            .map(|r| input.last_index(r) as i64)
            .collect()
    };
    // ā: each head's mean hook_z at the last token of the clean prompts.
    let input = batch(clean)?;
    let mut hooks = (0..nl).fold(Hooks::none(), |h, l| h.capture(HookPoint::Z(l)));
    model.forward(&input, &mut hooks)?;
    let lasts = last(&input);
    let mut mean_z = vec![vec![vec![0f64; e]; nh]; nl];
    for (l, per_layer) in mean_z.iter_mut().enumerate() {
        let z = hooks.cache().get(HookPoint::Z(l)).expect("captured");
        for (r, &t) in lasts.iter().enumerate() {
            let rows: Vec<Vec<f32>> = z.get(r)?.get(t as usize)?.to_vec2()?; // [H, E]
            for (h, row) in rows.iter().enumerate() {
                for (m, &x) in per_layer[h].iter_mut().zip(row) {
                    *m += x as f64 / clean.len() as f64;
                }
            }
        }
    }
    // P(answers | corrupted) without and with each head set to its mean.
    let input = batch(corrupted)?;
    let lasts = last(&input);
    let answer_prob = |hooks: &mut Hooks| -> Result<Vec<f64>> {
        let logits = model.forward(&input, hooks)?;
        let probs: Vec<Vec<Vec<f32>>> =
            patchclamp_core::model::softmax_last_dim(&logits)?.to_vec3()?;
        Ok(corrupted
            .iter()
            .enumerate()
            .map(|(r, p)| {
                let row = &probs[r][lasts[r] as usize];
                p.answers.iter().map(|&a| row[a as usize] as f64).sum()
            })
            .collect())
    };
    let base = answer_prob(&mut Hooks::none())?;
    let mut aie = vec![vec![0f64; nh]; nl];
    for l in 0..nl {
        for h in 0..nh {
            let set = Intervention {
                at: HookPoint::Z(l),
                select: Selection {
                    heads: Some(vec![h]),
                    positions: Some(Positions::PerRow(lasts.iter().map(|&t| vec![t]).collect())),
                    ..Default::default()
                },
                op: Op::Set {
                    value: Values::Vector(mean_z[l][h].clone()),
                },
                when: Default::default(),
                decode: None,
            };
            let patched = answer_prob(&mut Hooks::none().intervene(set))?;
            aie[l][h] =
                patched.iter().zip(&base).map(|(a, b)| a - b).sum::<f64>() / corrupted.len() as f64;
        }
    }
    let mut order: Vec<(usize, usize)> =
        (0..nl).flat_map(|l| (0..nh).map(move |h| (l, h))).collect();
    order.sort_by(|a, b| aie[b.0][b.1].total_cmp(&aie[a.0][a.1]).then(a.cmp(b)));
    order.truncate(k);
    // Σ over the chosen heads of ā · W_O[h] + b_O.
    let d = cfg.d_model;
    let mut vector = vec![0f64; d];
    for &(l, h) in &order {
        let attn = &model.weights.blocks[l].attn;
        let w_o: Vec<Vec<f32>> = attn.w_o.reshape((nh, e, d))?.get(h)?.to_vec2()?; // [E, D]
        for (i, row) in w_o.iter().enumerate() {
            let a = mean_z[l][h][i];
            for (v, &w) in vector.iter_mut().zip(row) {
                *v += a * w as f64;
            }
        }
        if let Some(b) = &attn.b_o {
            for (v, b) in vector.iter_mut().zip(b.to_vec1::<f32>()?) {
                *v += b as f64;
            }
        }
    }
    Ok(FunctionVector {
        aie,
        heads: order,
        vector: vector.into_iter().map(|x| x as f32).collect(),
    })
}

impl FunctionVector {
    /// Adding `coef ·` the vector at block `layer`'s output, at `positions` (every position
    /// when `None`; the paper adds it at the last prompt token).
    pub fn intervention(
        &self,
        layer: usize,
        coef: f64,
        positions: Option<Positions>,
    ) -> Intervention {
        Intervention {
            at: HookPoint::ResidPost(layer),
            select: Selection {
                positions,
                ..Default::default()
            },
            op: Op::Add {
                vector: Values::Vector(self.vector.iter().map(|&x| x as f64).collect()),
                coef,
            },
            when: Default::default(),
            decode: None,
        }
    }
}
