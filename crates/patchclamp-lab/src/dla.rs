//! Direct logit attribution: the final residual split into the embeddings, every head's output,
//! every attention bias and every MLP's output, each read on a logit direction through the final
//! norm with its scale frozen from the run. The parts sum to the logit (difference).

use candle_core::Tensor;
use patchclamp_core::model::NormKind;
use patchclamp_core::{Error, HookPoint, Hooks, Input, Model, Padding, Result};
use serde::{Deserialize, Serialize};

/// The logit (difference) attributed: `logit[target] − logit[baseline]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogitDirection {
    pub target: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<u32>,
}

/// Attribution of the last position of each prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dla {
    /// Component names: `embed`, `pos_embed`, `L{l}H{h}`, `blocks.{l}.attn.b_O`,
    /// `blocks.{l}.hook_mlp_out`.
    pub labels: Vec<String>,
    /// `[prompt][component]`.
    pub components: Vec<Vec<f64>>,
    /// Per prompt: the part no component carries (final-norm bias, unembedding bias).
    pub constant: Vec<f64>,
    /// Per prompt: the model's logit (difference), which components + constant sum to.
    pub total: Vec<f64>,
    /// Mean over prompts per `[layer][head]`.
    pub heads: Vec<Vec<f64>>,
    /// Mean over prompts per layer (empty without MLPs).
    pub mlps: Vec<f64>,
}

/// Direct logit attribution of `direction` at the last real position of each prompt.
pub fn direct_logit_attribution(
    model: &Model,
    prompts: &[Vec<u32>],
    direction: LogitDirection,
) -> Result<Dla> {
    let cfg = &model.cfg;
    let v = cfg.d_vocab;
    for t in [Some(direction.target), direction.baseline]
        .into_iter()
        .flatten()
    {
        if t as usize >= v {
            return Err(Error::OutOfRange {
                what: "token id",
                index: t as i64,
                limit: format!("a vocabulary of {v} tokens"),
            });
        }
    }
    let input = Input::batch(prompts, Padding::Right, 0, model.device())?;
    let mut hooks = Hooks::none().capture(HookPoint::Embed);
    if cfg.positions.is_learned() {
        hooks = hooks.capture(HookPoint::PosEmbed);
    }
    for l in 0..cfg.n_layers {
        hooks = hooks.capture(HookPoint::Result(l));
        if cfg.has_mlp() {
            hooks = hooks.capture(HookPoint::MlpOut(l));
        }
    }
    let norm = cfg.final_norm && cfg.norm != NormKind::None;
    if norm {
        hooks = hooks.capture(HookPoint::FinalScale);
    }
    let logits = model.forward(&input, &mut hooks)?;
    let cache = hooks.cache();

    // The read-out direction u = W_U[:, target] − W_U[:, baseline], times the final norm's gain.
    let w_u = model.weights.unembed().detach();
    let col = |t: u32| -> Result<Vec<f32>> {
        Ok(w_u.narrow(1, t as usize, 1)?.flatten_all()?.to_vec1()?)
    };
    let mut u: Vec<f64> = col(direction.target)?.iter().map(|&x| x as f64).collect();
    if let Some(b) = direction.baseline {
        for (ui, x) in u.iter_mut().zip(col(b)?) {
            *ui -= x as f64;
        }
    }
    let ln = &model.weights.ln_final;
    let gain: Option<Vec<f32>> = match (&ln.w, norm) {
        (Some(g), true) => Some(g.detach().to_vec1()?),
        _ => None,
    };
    let u_eff: Vec<f64> = match &gain {
        Some(g) => u.iter().zip(g).map(|(a, &b)| a * b as f64).collect(),
        None => u.clone(),
    };
    let mut constant = 0.0;
    if let (Some(b), true) = (&ln.b, norm) {
        constant += dot32(&b.detach().to_vec1()?, &u);
    }
    if let Some(b_u) = &model.weights.b_u {
        let b_u: Vec<f32> = b_u.detach().to_vec1()?;
        constant += b_u[direction.target as usize] as f64;
        if let Some(b) = direction.baseline {
            constant -= b_u[b as usize] as f64;
        }
    }
    let center = norm && matches!(cfg.norm, NormKind::LayerNorm | NormKind::LayerNormPre);

    let mut labels = vec!["embed".to_string()];
    if cfg.positions.is_learned() {
        labels.push("pos_embed".into());
    }
    for l in 0..cfg.n_layers {
        labels.extend((0..cfg.n_heads).map(|h| format!("L{l}H{h}")));
        if model.weights.blocks[l].attn.b_o.is_some() {
            labels.push(format!("blocks.{l}.attn.b_O"));
        }
        if cfg.has_mlp() {
            labels.push(format!("blocks.{l}.hook_mlp_out"));
        }
    }

    let vec_at =
        |t: &Tensor, row: usize, pos: usize| -> Result<Tensor> { Ok(t.get(row)?.get(pos)?) };
    let mut out = Dla {
        labels,
        components: vec![],
        constant: vec![],
        total: vec![],
        heads: vec![vec![0.0; cfg.n_heads]; cfg.n_layers],
        mlps: vec![0.0; if cfg.has_mlp() { cfg.n_layers } else { 0 }],
    };
    for row in 0..prompts.len() {
        let pos = input.last_index(row);
        let scale = match norm {
            true => vec_at(
                cache.get(HookPoint::FinalScale).expect("captured"),
                row,
                pos,
            )?
            .flatten_all()?
            .to_vec1::<f32>()?[0] as f64,
            false => 1.0,
        };
        // One component's read-out: ((c − mean c) / scale) · (g ⊙ u).
        let read = |c: Vec<f32>| -> f64 {
            let mean = if center {
                c.iter().map(|&x| x as f64).sum::<f64>() / c.len() as f64
            } else {
                0.0
            };
            c.iter()
                .zip(&u_eff)
                .map(|(&x, w)| (x as f64 - mean) * w)
                .sum::<f64>()
                / scale
        };
        let mut comps = vec![read(
            vec_at(cache.get(HookPoint::Embed).expect("captured"), row, pos)?.to_vec1()?,
        )];
        if cfg.positions.is_learned() {
            comps.push(read(
                vec_at(cache.get(HookPoint::PosEmbed).expect("captured"), row, pos)?.to_vec1()?,
            ));
        }
        for l in 0..cfg.n_layers {
            let res = vec_at(cache.get(HookPoint::Result(l)).expect("captured"), row, pos)?
                .to_vec2::<f32>()?; // [H, D]
            for (h, r) in res.into_iter().enumerate() {
                let x = read(r);
                out.heads[l][h] += x / prompts.len() as f64;
                comps.push(x);
            }
            if let Some(b_o) = &model.weights.blocks[l].attn.b_o {
                comps.push(read(b_o.detach().to_vec1()?));
            }
            if cfg.has_mlp() {
                let x = read(
                    vec_at(cache.get(HookPoint::MlpOut(l)).expect("captured"), row, pos)?
                        .to_vec1()?,
                );
                out.mlps[l] += x / prompts.len() as f64;
                comps.push(x);
            }
        }
        let lg: Vec<f32> = vec_at(&logits, row, pos)?.to_vec1()?;
        let mut total = lg[direction.target as usize] as f64;
        if let Some(b) = direction.baseline {
            total -= lg[b as usize] as f64;
        }
        out.components.push(comps);
        out.constant.push(constant);
        out.total.push(total);
    }
    Ok(out)
}

fn dot32(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, y)| x as f64 * y).sum()
}
