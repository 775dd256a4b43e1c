//! Evaluating an SAE on a model and token contexts: reconstruction (L0, explained variance,
//! MSE, cosine, L2 ratio), the language-model loss with the SAE spliced in versus clean and
//! zero-ablated (CE-loss score, delta LM loss, KL score), and latent densities.
//!
//! Formulas (SAELens's `evals.py`): `ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_clean)`,
//! `kl_div_score = (KL_zero − KL_sae) / KL_zero` with `KL = KL(p_clean ‖ p)` per token,
//! `delta_lm_loss = CE_sae − CE_clean`, explained variance `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`
//! (x̄ over every evaluated token). Tokens in `exclude` (BOS and other special tokens) count
//! for the LM loss but not for reconstruction or density, as SAELens excludes them.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use patchclamp_core::hooks::SaeSite;
use patchclamp_core::{HookPoint, Hooks, Input, Intervention, Model, Op, Sae, Selector, Splice};

use crate::tasks::loss::log_softmax;
use crate::{Error, Result};

/// Everything [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeMetrics {
    /// Tokens whose activations were reconstructed (special tokens excluded).
    pub tokens: u64,
    /// Mean active latents per token.
    pub l0: f64,
    /// `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`.
    pub explained_variance: f64,
    /// Mean over tokens of `‖x − x̂‖²` (summed over the width).
    pub mse: f64,
    /// Mean cosine similarity of `x̂` and `x`.
    pub cossim: f64,
    /// Mean `‖x̂‖ / ‖x‖`.
    pub l2_ratio: f64,
    /// Next-token cross-entropy of the clean model.
    pub ce_clean: f64,
    /// With the SAE's reconstruction in place of the activation.
    pub ce_sae: f64,
    /// With the activation zeroed.
    pub ce_zero: f64,
    /// `(CE_zero − CE_sae) / (CE_zero − CE_clean)` ("loss recovered").
    pub ce_loss_score: f64,
    /// `CE_sae − CE_clean`.
    pub delta_lm_loss: f64,
    /// Mean `KL(p_clean ‖ p_sae)`.
    pub kl_sae: f64,
    /// Mean `KL(p_clean ‖ p_zero)`.
    pub kl_zero: f64,
    /// `(KL_zero − KL_sae) / KL_zero`.
    pub kl_div_score: f64,
    /// Latents that never fired.
    pub dead: usize,
    /// Latents that fired on more than 10% of tokens.
    pub dense: usize,
    /// Each latent's firing frequency.
    pub frequencies: Vec<f64>,
}

/// Per-latent firing counts over a token stream (the dead-latent counter).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FireCounter {
    /// Tokens each latent fired on.
    pub counts: Vec<u64>,
    /// Tokens seen.
    pub tokens: u64,
}

impl FireCounter {
    /// A counter for `d_sae` latents.
    pub fn new(d_sae: usize) -> Self {
        FireCounter {
            counts: vec![0; d_sae],
            tokens: 0,
        }
    }

    /// Counts the latents `acts` `[n, d_sae]` (row-major) fire on, skipping rows where `skip`.
    pub fn add(&mut self, acts: &[f32], skip: &[bool]) {
        let s = self.counts.len();
        for (r, row) in acts.chunks(s).enumerate() {
            if skip.get(r).copied().unwrap_or(false) {
                continue;
            }
            self.tokens += 1;
            for (c, &a) in self.counts.iter_mut().zip(row) {
                if a != 0.0 {
                    *c += 1;
                }
            }
        }
    }

    /// Latents that never fired.
    pub fn dead(&self) -> usize {
        self.counts.iter().filter(|&&c| c == 0).count()
    }

    /// Latents firing on more than `frac` of tokens.
    pub fn dense(&self, frac: f64) -> usize {
        let n = self.tokens.max(1) as f64;
        self.counts.iter().filter(|&&c| c as f64 / n > frac).count()
    }

    /// Firing frequencies.
    pub fn frequencies(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.counts.iter().map(|&c| c as f64 / n).collect()
    }
}

/// Sums that become [`SaeMetrics`].
#[derive(Default)]
struct Sums {
    n: f64,
    active: f64,
    sq_err: f64,
    sum_x: Vec<f64>,
    sum_x2: f64,
    cos: f64,
    ratio: f64,
    ce: [f64; 3],
    kl: [f64; 2],
    n_pred: f64,
}

/// Evaluates `sae` on `contexts` (each a token list of one common length), `batch` per forward;
/// `exclude` lists special tokens; `on_batch(done, total)` reports progress.
pub fn evaluate(
    model: &Model,
    sae: &Arc<Sae>,
    contexts: &[Vec<u32>],
    batch: usize,
    exclude: &[u32],
    mut on_batch: impl FnMut(usize, usize),
) -> Result<SaeMetrics> {
    let splice = Splice::new(sae.clone(), false)?;
    splice.check(&model.cfg)?;
    if contexts.is_empty() || batch == 0 {
        return Err(Error::Input(
            "evaluation needs at least one context and a batch of one".into(),
        ));
    }
    let len = contexts[0].len();
    if len < 2 || contexts.iter().any(|c| c.len() != len) {
        return Err(Error::Input(
            "evaluation contexts must share one length of at least 2 tokens".into(),
        ));
    }
    let d_sae = sae.cfg.d_sae;
    // What is reconstructed: the SAE's input, or a transcoder's output point.
    let mut sums = Sums {
        sum_x: vec![0.0; sae.cfg.d_out],
        ..Default::default()
    };
    let mut fires = FireCounter::new(d_sae);
    let input_point = splice.point(SaeSite::Input);
    let acts_point = splice.point(SaeSite::ActsPost);
    let out_point = splice.point(SaeSite::Output);
    // The clean value the SAE reconstructs: its input (an SAE) or its output point (a transcoder).
    let target = splice.out;
    let chunks: Vec<&[Vec<u32>]> = contexts.chunks(batch).collect();
    for (ci, chunk) in chunks.iter().enumerate() {
        crate::util::interrupt::check()?;
        let input = Input::batch(chunk, patchclamp_core::Padding::Right, 0, model.device())?;
        let mut clean_hooks = Hooks::none().capture(Selector::Point(target));
        let clean = model.forward(&input, &mut clean_hooks)?;
        let x = clean_hooks
            .take_cache()
            .get(target)
            .cloned()
            .expect("captured");
        let mut sae_hooks = Hooks::none()
            .splice(splice.clone())
            .capture(Selector::Point(acts_point))
            .capture(Selector::Point(out_point))
            .capture(Selector::Point(input_point));
        let with_sae = model.forward(&input, &mut sae_hooks)?;
        let cache = sae_hooks.take_cache();
        let zero = Intervention {
            at: target,
            select: Default::default(),
            op: Op::Zero,
            when: Default::default(),
            decode: None,
        };
        let zeroed = model.forward(&input, &mut Hooks::none().intervene(zero))?;

        // Reconstruction, token by token (flattened as the SAE reads it).
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.contiguous()?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let w_out = sae.cfg.d_out;
        let xs = flat(&x)?;
        let xh = flat(cache.get(out_point).expect("captured"))?;
        let acts = flat(cache.get(acts_point).expect("captured"))?;
        let toks: Vec<u32> = chunk.iter().flatten().copied().collect();
        let skip: Vec<bool> = toks.iter().map(|t| exclude.contains(t)).collect();
        fires.add(&acts, &skip);
        for (r, (xr, hr)) in xs.chunks(w_out).zip(xh.chunks(w_out)).enumerate() {
            if skip[r] {
                continue;
            }
            let (mut e2, mut xx, mut hh, mut xh_) = (0f64, 0f64, 0f64, 0f64);
            for (a, b) in xr.iter().zip(hr) {
                let (a, b) = (*a as f64, *b as f64);
                e2 += (a - b) * (a - b);
                xx += a * a;
                hh += b * b;
                xh_ += a * b;
            }
            for (s, a) in sums.sum_x.iter_mut().zip(xr) {
                *s += *a as f64;
            }
            sums.n += 1.0;
            sums.sq_err += e2;
            sums.sum_x2 += xx;
            sums.cos += if xx > 0.0 && hh > 0.0 {
                xh_ / (xx.sqrt() * hh.sqrt())
            } else {
                0.0
            };
            sums.ratio += if xx > 0.0 { (hh / xx).sqrt() } else { 0.0 };
            sums.active += acts[r * d_sae..(r + 1) * d_sae]
                .iter()
                .filter(|&&a| a != 0.0)
                .count() as f64;
        }

        // The LM loss of the three runs, and their KL from the clean one.
        let (b, s) = (chunk.len(), len);
        let lp: Vec<Tensor> = [&clean, &with_sae, &zeroed]
            .iter()
            .map(|l| log_softmax(&l.narrow(1, 0, s - 1)?.to_dtype(DType::F32)?))
            .collect::<Result<_>>()?;
        let targets: Vec<u32> = chunk.iter().flat_map(|c| c[1..].to_vec()).collect();
        let idx = Tensor::from_vec(targets, (b, s - 1, 1), model.device())?;
        for (k, l) in lp.iter().enumerate() {
            let nll = l.gather(&idx, D::Minus1)?.sum_all()?.to_scalar::<f32>()?;
            sums.ce[k] -= nll as f64;
        }
        let p_clean = lp[0].exp()?;
        for k in 0..2 {
            let kl = (&p_clean * (&lp[0] - &lp[k + 1])?)?
                .sum_all()?
                .to_scalar::<f32>()?;
            sums.kl[k] += kl as f64;
        }
        sums.n_pred += (b * (s - 1)) as f64;
        on_batch(ci + 1, chunks.len());
    }
    if sums.n == 0.0 {
        return Err(Error::Input(
            "every evaluated token is a special token: nothing to reconstruct".into(),
        ));
    }
    let n = sums.n;
    let mean_sq: f64 = sums.sum_x.iter().map(|s| s * s).sum::<f64>() / n;
    let var = sums.sum_x2 - mean_sq;
    let ce: Vec<f64> = sums.ce.iter().map(|c| c / sums.n_pred).collect();
    let kl: Vec<f64> = sums.kl.iter().map(|c| c / sums.n_pred).collect();
    let ratio = |num: f64, den: f64| {
        if den.abs() > 1e-12 {
            num / den
        } else {
            f64::NAN
        }
    };
    Ok(SaeMetrics {
        tokens: n as u64,
        l0: sums.active / n,
        explained_variance: 1.0 - ratio(sums.sq_err, var),
        mse: sums.sq_err / n,
        cossim: sums.cos / n,
        l2_ratio: sums.ratio / n,
        ce_clean: ce[0],
        ce_sae: ce[1],
        ce_zero: ce[2],
        ce_loss_score: ratio(ce[2] - ce[1], ce[2] - ce[0]),
        delta_lm_loss: ce[1] - ce[0],
        kl_sae: kl[0],
        kl_zero: kl[1],
        kl_div_score: ratio(kl[1] - kl[0], kl[1]),
        dead: fires.dead(),
        dense: fires.dense(0.1),
        frequencies: fires.frequencies(),
    })
}

/// An SAE that reconstructs `d`-wide inputs exactly (`relu(x) − relu(−x)`), for checking
/// the loss-recovered limits, at `hook`.
pub fn identity_sae(d: usize, hook: HookPoint, device: &candle_core::Device) -> Result<Sae> {
    let mut enc = vec![0f32; d * 2 * d];
    let mut dec = vec![0f32; 2 * d * d];
    for i in 0..d {
        enc[i * 2 * d + i] = 1.0;
        enc[i * 2 * d + d + i] = -1.0;
        dec[i * d + i] = 1.0;
        dec[(d + i) * d + i] = -1.0;
    }
    linear_sae(d, 2 * d, enc, dec, hook, device)
}

/// An SAE whose output is zero everywhere, at `hook`.
pub fn zero_sae(d: usize, hook: HookPoint, device: &candle_core::Device) -> Result<Sae> {
    linear_sae(d, d, vec![0.0; d * d], vec![0.0; d * d], hook, device)
}

fn linear_sae(
    d: usize,
    s: usize,
    enc: Vec<f32>,
    dec: Vec<f32>,
    hook: HookPoint,
    device: &candle_core::Device,
) -> Result<Sae> {
    use patchclamp_core::sae::{Architecture, SaeConfig};
    let mut cfg = SaeConfig::new(
        Architecture::Standard,
        d,
        s,
        &hook.to_string(),
        Default::default(),
    );
    cfg.apply_b_dec_to_input = false;
    cfg.raw.insert("apply_b_dec_to_input".into(), false.into());
    Ok(Sae {
        cfg,
        w_enc: Tensor::from_vec(enc, (d, s), device)?,
        b_enc: Some(Tensor::zeros(s, DType::F32, device)?),
        w_dec: Tensor::from_vec(dec, (s, d), device)?,
        b_dec: Tensor::zeros(d, DType::F32, device)?,
        threshold: None,
        gated: None,
        w_skip: None,
        sparsity: None,
        path: None,
    })
}
