//! Head detectors (METHODS.md §2.1a): previous-token, duplicate-token, induction and
//! prefix-matching scores on repeated random tokens; attention-sink score; copying score from
//! the OV circuit's eigenvalues; Q/K/V composition between head pairs against random matrices.

use candle_core::Tensor;
use patchclamp_core::rng::Rng;
use patchclamp_core::{HookPoint, Hooks, Input, Model, Padding, Selector};
use serde::{Deserialize, Serialize};

use crate::analysis::probes::{composition, composition_score, Composition, LowRank};
use crate::error::{Error, Result};
use crate::util::linalg::eigenvalues;

/// How the probe sequences are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadProbe {
    /// Sequences.
    pub n: usize,
    /// Length of the random block.
    pub block: usize,
    /// How many times the block occurs (≥ 2).
    pub repeats: usize,
    pub seed: u64,
    /// A token put before the blocks (BOS), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u32>,
    /// Sequences per forward pass.
    #[serde(default = "thirty_two")]
    pub chunk: usize,
}

fn thirty_two() -> usize {
    32
}

impl HeadProbe {
    /// The default probe for `model`: 64 sequences of a `block`-token block repeated twice, BOS
    /// first when the model expects one (a probe longer than the context is refused when run).
    pub fn for_model(model: &Model, block: usize) -> Self {
        let cfg = &model.cfg;
        let prefix = cfg.bos_token_id.filter(|_| cfg.default_prepend_bos);
        HeadProbe {
            n: 64,
            block,
            repeats: 2,
            seed: 0,
            prefix,
            chunk: 32,
        }
    }

    /// The sequences: `[prefix] r r …`, `r` uniform over the vocabulary (the prefix excluded).
    pub fn sequences(&self, vocab: usize) -> Vec<Vec<u32>> {
        let mut rng = Rng::new(self.seed);
        (0..self.n).map(|_| self.draw(&mut rng, vocab)).collect()
    }

    /// The next sequence of the seeded stream [`HeadProbe::sequences`] lists.
    fn draw(&self, rng: &mut Rng, vocab: usize) -> Vec<u32> {
        let r: Vec<u32> = (0..self.block)
            .map(|_| loop {
                let t = rng.below(vocab as u64) as u32;
                if Some(t) != self.prefix {
                    break t;
                }
            })
            .collect();
        self.prefix
            .into_iter()
            .chain(std::iter::repeat_n(r, self.repeats).flatten())
            .collect()
    }

    /// Tokens per sequence (saturating: an absurd probe is refused by the context check).
    fn len(&self) -> usize {
        self.block
            .saturating_mul(self.repeats)
            .saturating_add(self.prefix.is_some() as usize)
    }
}

/// Scores per `[layer][head]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionScores {
    /// `mean_t A[t, t−1]` over t ≥ 1.
    pub prev_token: Vec<Vec<f64>>,
    /// `mean A[t, t−L]` over positions of the repeats.
    pub duplicate: Vec<Vec<f64>>,
    /// `mean A[t, t−L+1]` over positions of the repeats (TransformerLens/ARENA).
    pub induction: Vec<Vec<f64>>,
    /// `mean_t Σ_{j<t: x_{j−1} = x_t} A[t, j]` over positions of the repeats.
    pub prefix_matching: Vec<Vec<f64>>,
    /// `mean_{t ≥ 1} A[t, 0]`: attention parked on the first token.
    pub sink: Vec<Vec<f64>>,
}

/// The attention-pattern scores of every head on `probe`'s sequences, streamed in chunks.
pub fn attention_scores(model: &Model, probe: &HeadProbe) -> Result<AttentionScores> {
    attention_scores_under(model, probe, |_| Ok(Hooks::none()))
}

/// [`attention_scores`] under the hooks `hooks(chunk)` builds for each chunk of sequences (a
/// trainer's clamps, which may need the chunk's tokens).
pub fn attention_scores_under(
    model: &Model,
    probe: &HeadProbe,
    mut hooks: impl FnMut(&[Vec<u32>]) -> Result<Hooks>,
) -> Result<AttentionScores> {
    let cfg = &model.cfg;
    if probe.repeats < 2 || probe.block < 2 || probe.n == 0 {
        return Err(Error::Input(
            "the head probe needs n ≥ 1 sequences and a block of ≥ 2 tokens repeated ≥ 2 times"
                .into(),
        ));
    }
    let s = probe.len();
    if s > cfg.n_ctx {
        return Err(Error::Input(format!(
            "probe sequences have {s} tokens but the context is {}",
            cfg.n_ctx
        )));
    }
    let off = probe.prefix.is_some() as usize;
    let l_blk = probe.block;
    let (nl, nh) = (cfg.n_layers, cfg.attn.n_heads);
    let zeros = || vec![vec![0.0; nh]; nl];
    let mut out = AttentionScores {
        prev_token: zeros(),
        duplicate: zeros(),
        induction: zeros(),
        prefix_matching: zeros(),
        sink: zeros(),
    };
    let repeat_ts: Vec<usize> = (off + l_blk..s).collect();
    // Drawn chunk by chunk from one stream: the same sequences as `sequences()`, without
    // holding all of them (a probe of 10^9 sequences is slow, not an allocation failure).
    let mut rng = Rng::new(probe.seed);
    let per = probe.chunk.max(1);
    for start in (0..probe.n).step_by(per) {
        let chunk: Vec<Vec<u32>> = (start..probe.n.min(start + per))
            .map(|_| probe.draw(&mut rng, cfg.d_vocab))
            .collect();
        let chunk = chunk.as_slice();
        let input = Input::batch(chunk, Padding::Right, 0, model.device())?;
        let mut hooks = hooks(chunk)?.capture(Selector::parse("blocks.*.attn.hook_pattern")?);
        model.forward(&input, &mut hooks)?;
        for l in 0..nl {
            let pat = hooks.cache().get(HookPoint::Pattern(l)).expect("captured");
            let pat: Vec<Vec<Vec<Vec<f32>>>> = (0..chunk.len())
                .map(|b| pat.get(b)?.to_vec3::<f32>())
                .collect::<candle_core::Result<_>>()?;
            for (b, seq) in chunk.iter().enumerate() {
                for (h, a) in pat[b].iter().enumerate() {
                    let w = 1.0 / (probe.n as f64);
                    let mean =
                        |ts: &mut dyn Iterator<Item = f64>, n: usize| ts.sum::<f64>() / n as f64;
                    out.prev_token[l][h] +=
                        w * mean(&mut (1..s).map(|t| a[t][t - 1] as f64), s - 1);
                    out.sink[l][h] += w * mean(&mut (1..s).map(|t| a[t][0] as f64), s - 1);
                    let n = repeat_ts.len();
                    out.duplicate[l][h] +=
                        w * mean(&mut repeat_ts.iter().map(|&t| a[t][t - l_blk] as f64), n);
                    out.induction[l][h] += w * mean(
                        &mut repeat_ts.iter().map(|&t| a[t][t - l_blk + 1] as f64),
                        n,
                    );
                    out.prefix_matching[l][h] += w * mean(
                        &mut repeat_ts.iter().map(|&t| {
                            (1..t)
                                .filter(|&j| seq[j - 1] == seq[t])
                                .map(|j| a[t][j] as f64)
                                .sum::<f64>()
                        }),
                        n,
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Copying score per `[layer][head]`: `Σ Re λ / Σ |λ|` over the eigenvalues of the full OV
/// circuit `W_E W_V^h W_O^h W_U` (norms ignored), computed on the `d_head × d_head` matrix
/// `W_O^h W_U W_E W_V^h`, which has the same non-zero eigenvalues.
pub fn copying_scores(model: &Model) -> Result<Vec<Vec<f64>>> {
    let cfg = &model.cfg;
    let e = cfg.attn.d_head;
    let w_e = model.weights.w_e.detach();
    let w_u = model.weights.unembed().detach();
    let ue = w_u.matmul(&w_e)?; // [D, D]: W_U W_E
    let mut out = vec![];
    for blk in &model.weights.blocks {
        let mut row = vec![];
        for h in 0..cfg.attn.n_heads {
            let kv = h / cfg.kv_group();
            let w_v = blk.attn.w_v.detach().narrow(1, kv * e, e)?; // [D, E]
            let w_o = blk.attn.w_o.detach().narrow(0, h * e, e)?; // [E, D]
            let m = w_o.matmul(&ue)?.matmul(&w_v)?; // [E, E]
            let m: Vec<f64> = m
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|x| x as f64)
                .collect();
            let eig = eigenvalues(&m, e)
                .ok_or_else(|| Error::Numeric("eigenvalue iteration did not converge".into()))?;
            let abs: f64 = eig.iter().map(|z| z.abs()).sum();
            let re: f64 = eig.iter().map(|z| z.re).sum();
            row.push(if abs > 0.0 { re / abs } else { 0.0 });
        }
        out.push(row);
    }
    Ok(out)
}

/// Composition scores from layer `l1`'s heads into layer `l2`'s, with the same score for random
/// Gaussian matrices of the same shapes as the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositionScores {
    pub kind: Composition,
    pub l1: usize,
    pub l2: usize,
    /// `[h1][h2]`.
    pub scores: Vec<Vec<f32>>,
    /// Mean score of random matrices.
    pub baseline: f64,
}

/// Every (l1 < l2) pair's Q, K and V composition scores with a random baseline.
pub fn composition_scores(model: &Model, seed: u64) -> Result<Vec<CompositionScores>> {
    let cfg = &model.cfg;
    let mut out = vec![];
    for kind in [Composition::Q, Composition::K, Composition::V] {
        let baseline = random_composition(cfg.d_model, cfg.attn.d_head, kind, 16, seed)?;
        for l2 in 0..cfg.n_layers {
            for l1 in 0..l2 {
                out.push(CompositionScores {
                    kind,
                    l1,
                    l2,
                    scores: composition(model, kind, l1, l2)?,
                    baseline,
                });
            }
        }
    }
    Ok(out)
}

/// Mean composition score of `draws` pairs of random heads (Gaussian `W_Q, W_K, W_V, W_O`).
fn random_composition(
    d: usize,
    e: usize,
    kind: Composition,
    draws: usize,
    seed: u64,
) -> Result<f64> {
    let mut rng = Rng::new(seed ^ 0xC0FF_EE00);
    let dev = candle_core::Device::Cpu;
    let mut mat = |r: usize, c: usize| -> Result<Tensor> {
        Ok(Tensor::from_vec(rng.normal_vec(r * c, 1.0), (r, c), &dev)?)
    };
    let mut head = || -> Result<LowRank> {
        Ok(LowRank {
            u: mat(d, e)?,
            v: mat(d, e)?,
        })
    };
    let mut total = 0.0;
    for _ in 0..draws {
        // Both circuits are d×d of rank e, whether QK or OV.
        let (first, second) = (head()?, head()?);
        total += composition_score(kind, &first, &second)? as f64;
    }
    Ok(total / draws as f64)
}

/// Everything the head census reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadReport {
    pub probe: HeadProbe,
    pub scores: AttentionScores,
    pub copying: Vec<Vec<f64>>,
    pub composition: Vec<CompositionScores>,
}

/// Runs every head detector.
pub fn head_report(model: &Model, probe: &HeadProbe) -> Result<HeadReport> {
    Ok(HeadReport {
        probe: probe.clone(),
        scores: attention_scores(model, probe)?,
        copying: copying_scores(model)?,
        composition: composition_scores(model, probe.seed)?,
    })
}

/// The `(layer, head)` with the highest score, and the score.
pub fn best_head(scores: &[Vec<f64>]) -> (usize, usize, f64) {
    let mut best = (0, 0, f64::NEG_INFINITY);
    for (l, row) in scores.iter().enumerate() {
        for (h, &x) in row.iter().enumerate() {
            if x > best.2 {
                best = (l, h, x);
            }
        }
    }
    best
}
