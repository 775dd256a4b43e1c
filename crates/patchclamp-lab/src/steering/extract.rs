//! Steering vectors from contrastive pairs, read at block outputs (`blocks.L.hook_resid_post`,
//! llama.cpp's `l_out`, repeng's `hidden_states[L + 1]`) at each prompt's last token.
//!
//! - `mean` (CAA): the mean of the positive − negative differences, unnormalised.
//! - `pca_diff` (repeng's default): the top principal component of the differences, centred
//!   as sklearn's PCA centres them.
//! - `pca_center` (repeng): the top principal component of each member minus its pair's
//!   midpoint.
//! - `llama_mean` and `llama_pca` (llama.cpp's `cvector-generator`): the mean difference
//!   normalised, and the top eigenvector of the uncentred `XᵀX` of the differences.
//!
//! Every PCA vector is unit-norm with repeng's sign fix: it points so that the positive member
//! projects above the negative one in most pairs (llama.cpp leaves the sign to chance; here it
//! is fixed, so the same pairs give the same vector).

use candle_core::Tensor;
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One contrastive pair of prompts (token ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub positive: Vec<u32>,
    pub negative: Vec<u32>,
}

/// How the vectors are computed from the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Mean,
    PcaDiff,
    PcaCenter,
    LlamaMean,
    LlamaPca,
}

impl Method {
    /// The method of its command-line name (`mean`, `pca-diff`, `pca-center`, `llama-mean`,
    /// `llama-pca`), as every face spells it.
    pub fn from_name(name: &str) -> Result<Method> {
        Ok(match name {
            "mean" => Method::Mean,
            "pca-diff" => Method::PcaDiff,
            "pca-center" => Method::PcaCenter,
            "llama-mean" => Method::LlamaMean,
            "llama-pca" => Method::LlamaPca,
            m => {
                return Err(Error::Input(format!(
                    "unknown method '{m}'; use mean, pca-diff, pca-center, llama-mean or llama-pca"
                )))
            }
        })
    }
}

/// One vector per layer, each to be added at that block's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeringVectors {
    pub method: Method,
    /// The blocks, ascending.
    pub layers: Vec<usize>,
    /// `vectors[i]` belongs to block `layers[i]` (`d_model` values).
    pub vectors: Vec<Vec<f32>>,
}

/// Extracts one vector per block in `layers` from `pairs` with `method`, at each prompt's
/// last token.
pub fn extract(
    model: &Model,
    pairs: &[Pair],
    layers: &[usize],
    method: Method,
) -> Result<SteeringVectors> {
    extract_at(model, pairs, layers, method, -1)
}

/// [`extract`] reading each prompt at `position` (negative counts from its end: −1 is the last
/// token, −2 CAA's answer letter before a closing bracket).
pub fn extract_at(
    model: &Model,
    pairs: &[Pair],
    layers: &[usize],
    method: Method,
    position: i64,
) -> Result<SteeringVectors> {
    let cfg = &model.cfg;
    for (i, p) in pairs.iter().enumerate() {
        for member in [&p.positive, &p.negative] {
            if resolve(position, member.len()).is_none() {
                return Err(Error::OutOfRange {
                    what: "position",
                    index: position,
                    limit: format!("{} tokens in pair {i}", member.len()),
                });
            }
        }
    }
    if pairs.len() < 2 && matches!(method, Method::PcaDiff | Method::PcaCenter) {
        return Err(Error::Input(format!(
            "{method:?} needs at least two pairs (a principal component of one difference is undefined)"
        )));
    }
    if pairs.is_empty() {
        return Err(Error::Input(
            "steering-vector extraction needs at least one pair".into(),
        ));
    }
    if layers.is_empty() {
        return Err(Error::Input("give at least one layer to extract at".into()));
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= cfg.n_layers) {
        return Err(Error::OutOfRange {
            what: "layer",
            index: l as i64,
            limit: format!("{} blocks", cfg.n_layers),
        });
    }
    if let Some(i) = pairs.iter().position(|p| p.positive == p.negative) {
        return Err(Error::Input(format!(
            "pair {i}'s positive and negative prompts are the same tokens: their difference is 0"
        )));
    }
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    // Last-token block outputs: [layer][pair] for each member.
    let (mut pos, mut neg) = (vec![vec![]; layers.len()], vec![vec![]; layers.len()]);
    for p in pairs {
        for (member, out) in [(&p.positive, &mut pos), (&p.negative, &mut neg)] {
            for (i, h) in outputs_at(model, member, &layers, position)?
                .into_iter()
                .enumerate()
            {
                out[i].push(h);
            }
        }
    }
    let vectors = layers
        .iter()
        .enumerate()
        .map(|(i, _)| direction(&pos[i], &neg[i], method))
        .collect::<Result<Vec<_>>>()?;
    Ok(SteeringVectors {
        method,
        layers,
        vectors: vectors
            .into_iter()
            .map(|v| v.into_iter().map(|x| x as f32).collect())
            .collect(),
    })
}

/// Adding `coef · v_l` at every selected block's output, at every position: the interventions
/// that apply `vectors` (llama.cpp's control-vector semantics).
pub fn steering_interventions(vectors: &SteeringVectors, coef: f64) -> Vec<Intervention> {
    vectors
        .layers
        .iter()
        .zip(&vectors.vectors)
        .map(|(&l, v)| Intervention {
            at: HookPoint::ResidPost(l),
            select: Default::default(),
            op: patchclamp_core::Op::Add {
                vector: patchclamp_core::hooks::Values::Vector(
                    v.iter().map(|&x| x as f64).collect(),
                ),
                coef,
            },
            when: Default::default(),
            decode: None,
        })
        .collect()
}

/// The block outputs at `tokens`' last position, one per layer.
fn outputs_at(
    model: &Model,
    tokens: &[u32],
    layers: &[usize],
    position: i64,
) -> Result<Vec<Vec<f64>>> {
    let at = resolve(position, tokens.len()).expect("checked by extract_at");
    let mut hooks = layers
        .iter()
        .fold(Hooks::none(), |h, &l| h.capture(HookPoint::ResidPost(l)));
    model.forward(&Input::single(tokens, model.device())?, &mut hooks)?;
    layers
        .iter()
        .map(|&l| {
            let t: &Tensor = hooks
                .cache()
                .get(HookPoint::ResidPost(l))
                .expect("captured");
            let last = t.get(0)?.get(at)?.to_vec1::<f32>()?;
            Ok(last.into_iter().map(|x| x as f64).collect())
        })
        .collect()
}

/// `position` (negative from the end) in a sequence of `len` tokens, when it is one of them.
fn resolve(position: i64, len: usize) -> Option<usize> {
    let p = if position < 0 {
        len as i64 + position
    } else {
        position
    };
    (p >= 0 && p < len as i64).then_some(p as usize)
}

/// CAA's norm rescaling of several behaviours' vectors: at each block, every behaviour's
/// vector is rescaled to the mean norm of the behaviours' vectors there, so no behaviour
/// steers harder than another only because its vector is longer.
pub fn normalize_norms(sets: &mut [SteeringVectors]) -> Result<()> {
    let Some(first) = sets.first() else {
        return Ok(());
    };
    let layers = first.layers.clone();
    if let Some(i) = sets.iter().position(|s| s.layers != layers) {
        return Err(Error::Input(format!(
            "vector set {i} covers blocks {:?}, set 0 covers {layers:?}: rescaling needs the same blocks",
            sets[i].layers
        )));
    }
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    for (li, block) in layers.iter().enumerate() {
        let norms: Vec<f64> = sets.iter().map(|s| norm(&s.vectors[li])).collect();
        if let Some(i) = norms.iter().position(|&n| n == 0.0) {
            return Err(Error::Input(format!(
                "vector set {i} is zero at block {block}: it has no direction to rescale"
            )));
        }
        let target = norms.iter().sum::<f64>() / norms.len() as f64;
        for (s, n) in sets.iter_mut().zip(&norms) {
            let f = (target / n) as f32;
            s.vectors[li].iter_mut().for_each(|x| *x *= f);
        }
    }
    Ok(())
}

/// Adding `coef · vector` to one head's `hook_z` (its `d_head` output before the output
/// projection) at every position: per-head steering, as in toxification reversal.
pub fn head_steering(layer: usize, head: usize, vector: &[f32], coef: f64) -> Intervention {
    Intervention {
        at: HookPoint::Z(layer),
        select: patchclamp_core::Selection {
            heads: Some(vec![head]),
            ..Default::default()
        },
        op: patchclamp_core::Op::Add {
            vector: patchclamp_core::hooks::Values::Vector(
                vector.iter().map(|&x| x as f64).collect(),
            ),
            coef,
        },
        when: Default::default(),
        decode: None,
    }
}

/// The vector of one layer from its positive and negative outputs.
fn direction(pos: &[Vec<f64>], neg: &[Vec<f64>], method: Method) -> Result<Vec<f64>> {
    let diffs: Vec<Vec<f64>> = pos
        .iter()
        .zip(neg)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
        .collect();
    let v = match method {
        Method::Mean => mean(&diffs),
        Method::LlamaMean => unit(mean(&diffs))?,
        Method::PcaDiff => top_component(&centred(&diffs))?,
        Method::PcaCenter => {
            let rows: Vec<Vec<f64>> = pos
                .iter()
                .zip(neg)
                .flat_map(|(a, b)| {
                    let mid: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect();
                    let off = |h: &Vec<f64>| h.iter().zip(&mid).map(|(x, m)| x - m).collect();
                    [off(a), off(b)]
                })
                .collect();
            top_component(&centred(&rows))?
        }
        Method::LlamaPca => top_component(&diffs)?,
    };
    if v.iter().all(|&x| x == 0.0) {
        return Err(Error::Input(
            "the positive and negative prompts give the same block outputs: the vector is 0".into(),
        ));
    }
    Ok(match method {
        Method::Mean | Method::LlamaMean => v,
        _ => fix_sign(v, pos, neg),
    })
}

fn mean(rows: &[Vec<f64>]) -> Vec<f64> {
    let n = rows.len() as f64;
    let mut m = vec![0.0; rows[0].len()];
    for r in rows {
        for (a, x) in m.iter_mut().zip(r) {
            *a += x / n;
        }
    }
    m
}

fn centred(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let m = mean(rows);
    rows.iter()
        .map(|r| r.iter().zip(&m).map(|(x, c)| x - c).collect())
        .collect()
}

fn unit(v: Vec<f64>) -> Result<Vec<f64>> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n == 0.0 || !n.is_finite() {
        return Err(Error::Input(
            "the positive and negative prompts give the same block outputs: the vector is 0".into(),
        ));
    }
    Ok(v.into_iter().map(|x| x / n).collect())
}

/// The unit top eigenvector of `XᵀX` (the rows of `x`), by power iteration from a fixed start.
fn top_component(x: &[Vec<f64>]) -> Result<Vec<f64>> {
    let d = x[0].len();
    let apply = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; d];
        for r in x {
            let c: f64 = r.iter().zip(v).map(|(a, b)| a * b).sum();
            for (o, a) in out.iter_mut().zip(r) {
                *o += c * a;
            }
        }
        out
    };
    // Start from the row of largest norm: never orthogonal to the span, unlike a fixed vector.
    let start = x
        .iter()
        .max_by(|a, b| {
            let n = |r: &Vec<f64>| r.iter().map(|v| v * v).sum::<f64>();
            n(a).total_cmp(&n(b))
        })
        .expect("rows")
        .clone();
    let mut v = unit(start)?;
    for _ in 0..10_000 {
        let next = unit(apply(&v))?;
        let change = next
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        v = next;
        if change < 1e-12 {
            break;
        }
    }
    Ok(v)
}

/// repeng's sign fix: point `v` so the positive member projects above the negative one in at
/// least half the pairs.
fn fix_sign(v: Vec<f64>, pos: &[Vec<f64>], neg: &[Vec<f64>]) -> Vec<f64> {
    let dot = |a: &[f64]| a.iter().zip(&v).map(|(x, y)| x * y).sum::<f64>();
    let above = pos.iter().zip(neg).filter(|(a, b)| dot(a) > dot(b)).count();
    if 2 * above < pos.len() {
        v.into_iter().map(|x| -x).collect()
    } else {
        v
    }
}
