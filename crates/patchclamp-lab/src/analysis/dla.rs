//! Direct logit attribution: the final residual split into the embeddings, every head's output,
//! every attention bias and every MLP's output, each read on a logit direction through the final
//! norm with its scale frozen from the run. The parts sum to the logit (difference).

use crate::error::{Error, Result};
use candle_core::Tensor;
use patchclamp_core::model::NormKind;
use patchclamp_core::{ActivationCache, HookPoint, Hooks, Input, Model, Padding};
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

/// How a residual-stream vector moves a logit (difference) once the final norm's scale is
/// frozen: `((x − mean x) / scale) · (g ⊙ u)` with `u = W_U[:, target] − W_U[:, baseline]`.
#[derive(Debug, Clone)]
pub struct Readout {
    pub direction: LogitDirection,
    /// `g ⊙ u` (just `u` without a final norm or gain).
    weights: Vec<f64>,
    /// Whether the final norm centres its input (LayerNorm).
    center: bool,
    /// Whether the final norm divides by a scale (read from `ln_final.hook_scale`).
    pub norm: bool,
    /// The part no residual vector carries: the final norm's bias and the unembedding bias.
    pub constant: f64,
}

impl Readout {
    /// The read-out of `direction` through `model`'s final norm and unembedding.
    pub fn new(model: &Model, direction: LogitDirection) -> Result<Readout> {
        let cfg = &model.cfg;
        if direction.baseline == Some(direction.target) {
            return Err(Error::Input(format!(
                "the target and the baseline are both token {}: their logit difference is 0 everywhere",
                direction.target
            )));
        }
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
        let w_u = model.weights.unembed().detach();
        let col = |t: u32| -> Result<Vec<f64>> {
            let c: Vec<f32> = w_u.narrow(1, t as usize, 1)?.flatten_all()?.to_vec1()?;
            Ok(c.into_iter().map(|x| x as f64).collect())
        };
        let mut u = col(direction.target)?;
        if let Some(b) = direction.baseline {
            u.iter_mut().zip(col(b)?).for_each(|(a, x)| *a -= x);
        }
        let norm = cfg.norm.final_norm && cfg.norm.kind != NormKind::None;
        let ln = &model.weights.ln_final;
        let mut weights = u.clone();
        let mut constant = 0.0;
        if norm {
            if let Some(g) = &ln.w {
                let g: Vec<f32> = g.detach().to_vec1()?;
                weights.iter_mut().zip(g).for_each(|(a, x)| *a *= x as f64);
            }
            if let Some(b) = &ln.b {
                let b: Vec<f32> = b.detach().to_vec1()?;
                constant += b.iter().zip(&u).map(|(&x, y)| x as f64 * y).sum::<f64>();
            }
        }
        if let Some(b_u) = &model.weights.b_u {
            let b_u: Vec<f32> = b_u.detach().to_vec1()?;
            constant += b_u[direction.target as usize] as f64;
            if let Some(b) = direction.baseline {
                constant -= b_u[b as usize] as f64;
            }
        }
        Ok(Readout {
            direction,
            weights,
            center: norm && matches!(cfg.norm.kind, NormKind::LayerNorm | NormKind::LayerNormPre),
            norm,
            constant,
        })
    }

    /// The contribution of residual vector `x` under the frozen `scale`.
    pub fn read(&self, x: &[f32], scale: f64) -> f64 {
        let mean = if self.center {
            x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64
        } else {
            0.0
        };
        x.iter()
            .zip(&self.weights)
            .map(|(&v, w)| (v as f64 - mean) * w)
            .sum::<f64>()
            / scale
    }

    /// The logit (difference) in a row of logits.
    pub fn logit(&self, logits: &[f32]) -> f64 {
        let d = &self.direction;
        logits[d.target as usize] as f64 - d.baseline.map_or(0.0, |b| logits[b as usize] as f64)
    }

    /// The frozen final-norm scale of `(row, pos)` from a cache holding `ln_final.hook_scale`
    /// (1 without a final norm).
    pub fn scale(&self, cache: &ActivationCache, row: usize, pos: usize) -> Result<f64> {
        if !self.norm {
            return Ok(1.0);
        }
        let s = cache.get(HookPoint::FinalScale).ok_or_else(|| {
            Error::Input("the read-out needs ln_final.hook_scale in the cache".into())
        })?;
        Ok(s.get(row)?.get(pos)?.flatten_all()?.to_vec1::<f32>()?[0] as f64)
    }
}

/// Direct logit attribution of `direction` at the last real position of each prompt.
pub fn direct_logit_attribution(
    model: &Model,
    prompts: &[Vec<u32>],
    direction: LogitDirection,
) -> Result<Dla> {
    let cfg = &model.cfg;
    let ro = Readout::new(model, direction)?;
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
    if ro.norm {
        hooks = hooks.capture(HookPoint::FinalScale);
    }
    let logits = model.forward(&input, &mut hooks)?;
    let cache = hooks.cache();

    let mut labels = vec!["embed".to_string()];
    if cfg.positions.is_learned() {
        labels.push("pos_embed".into());
    }
    for l in 0..cfg.n_layers {
        labels.extend((0..cfg.attn.n_heads).map(|h| format!("L{l}H{h}")));
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
        heads: vec![vec![0.0; cfg.attn.n_heads]; cfg.n_layers],
        mlps: vec![0.0; if cfg.has_mlp() { cfg.n_layers } else { 0 }],
    };
    for row in 0..prompts.len() {
        let pos = input.last_index(row);
        let scale = ro.scale(cache, row, pos)?;
        let read = |c: Vec<f32>| ro.read(&c, scale);
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
        out.components.push(comps);
        out.constant.push(ro.constant);
        out.total.push(ro.logit(&lg));
    }
    Ok(out)
}
