//! Sparse autoencoders and transcoders in SAELens's format: read, write, encode, decode.
//!
//! An [`Sae`] is weights plus a [`SaeConfig`]; its math follows SAELens v6 step for step:
//!
//! ```text
//! x ─reshape(hook_z)─▶ input ─normalise─▶ − b_dec·apply_b_dec_to_input ─▶ · W_enc + b_enc = pre
//! pre ─activation─▶ acts ─▶ · W_dec + b_dec = recons ─unnormalise─reshape─▶ x̂   (+ x·W_skipᵀ)
//! ```
//!
//! Splicing one into a forward pass (its `hook_sae_*` points) is [`crate::Hooks::splice`].

mod config;
mod files;

pub use config::{Architecture, Kind, Normalize, SaeConfig, ARCHITECTURES, SAELENS_FORMAT};
pub use files::{read_sparsity, SAE_CFG, SAE_SCALER, SAE_SPARSITY, SAE_WEIGHTS};

use std::path::PathBuf;

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::model::linear;

/// One SAE (or transcoder): its configuration and weights, f32.
#[derive(Debug, Clone)]
pub struct Sae {
    /// The configuration (`cfg.json`).
    pub cfg: SaeConfig,
    /// Encoder `[d_in, d_sae]`.
    pub w_enc: Tensor,
    /// Encoder bias `[d_sae]` (absent for gated SAEs).
    pub b_enc: Option<Tensor>,
    /// Decoder `[d_sae, d_out]`.
    pub w_dec: Tensor,
    /// Decoder bias `[d_out]`.
    pub b_dec: Tensor,
    /// JumpReLU thresholds `[d_sae]`.
    pub threshold: Option<Tensor>,
    /// Gated SAEs' extra parameters.
    pub gated: Option<Gated>,
    /// A skip transcoder's `W_skip` `[d_out, d_in]`.
    pub w_skip: Option<Tensor>,
    /// `sparsity.safetensors`: log10 feature density `[d_sae]`, when the folder has one.
    pub sparsity: Option<Tensor>,
    /// The folder it was read from.
    pub path: Option<PathBuf>,
}

/// A gated SAE's gate bias and magnitude path (`b_gate`, `r_mag`, `b_mag`, each `[d_sae]`).
#[derive(Debug, Clone)]
pub struct Gated {
    /// Gate bias.
    pub b_gate: Tensor,
    /// Log-scale of the magnitude path's encoder.
    pub r_mag: Tensor,
    /// Magnitude bias.
    pub b_mag: Tensor,
}

/// What input normalisation did, so the output can undo it.
#[derive(Debug, Clone)]
pub enum NormState {
    /// Nothing to undo.
    None,
    /// Divide by this per-token factor `[.., 1]`.
    Scale(Tensor),
    /// Multiply by `std`, add `mu` (each `[.., 1]`).
    Ln { mu: Tensor, std: Tensor },
}

/// One encoding: each stage SAELens hooks, in order.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `hook_sae_input`: the reshaped input `[.., d_in]`.
    pub input: Tensor,
    /// `hook_sae_acts_pre` `[.., d_sae]`.
    pub pre: Tensor,
    /// `hook_sae_acts_post`: the latents `[.., d_sae]`.
    pub acts: Tensor,
}

impl Sae {
    /// Reads a SAELens folder (`cfg.json`, `sae_weights.safetensors`, optional
    /// `sparsity.safetensors` and `activation_scaler.json`).
    pub fn load(dir: impl Into<PathBuf>, device: &candle_core::Device) -> Result<Sae> {
        files::load(dir.into(), device)
    }

    /// Writes the SAE as a SAELens folder SAELens's `SAE.load_from_disk` reads.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        files::save(self, dir)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.w_enc.device()
    }

    /// The input as the SAE reads it: `[.., head, d_head]` flattened for `hook_z` SAEs.
    pub fn reshape_in(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.cfg.reshape_hook_z && x.rank() >= 2 {
            x.flatten_from(x.rank() - 2)?
        } else {
            x.clone()
        };
        let d = x.dim(D::Minus1)?;
        if d != self.cfg.d_in {
            return Err(Error::Input(format!(
                "the SAE reads width d_in = {} but the activation has {d}{}",
                self.cfg.d_in,
                if self.cfg.reshape_hook_z {
                    " (heads × d_head)"
                } else {
                    ""
                }
            )));
        }
        Ok(x.to_dtype(DType::F32)?)
    }

    /// Normalises a reshaped input; returns what undoing it needs.
    pub fn normalize_in(&self, x: &Tensor) -> Result<(Tensor, NormState)> {
        match self.cfg.normalize {
            // Folded into the weights on load (as SAELens's trainer folds it).
            Normalize::None | Normalize::ExpectedAverageOnlyIn => Ok((x.clone(), NormState::None)),
            Normalize::ConstantNormRescale => {
                let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                let coef = norm.recip()?.affine((self.cfg.d_in as f64).sqrt(), 0.0)?;
                Ok((x.broadcast_mul(&coef)?, NormState::Scale(coef)))
            }
            Normalize::LayerNorm => {
                let n = x.dim(D::Minus1)?;
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                // torch's x.std: the unbiased (n − 1) estimate.
                let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / (n.max(2) - 1) as f64)?;
                let std = var.sqrt()?;
                let xn = xc.broadcast_div(&(&std + 1e-5)?)?;
                Ok((xn, NormState::Ln { mu, std }))
            }
        }
    }

    /// The encoder's pre-activations of a normalised input, and (gated) the gate mask.
    pub fn pre_acts(&self, xn: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let sae_in = if self.cfg.apply_b_dec_to_input {
            xn.broadcast_sub(&self.b_dec)?
        } else {
            xn.clone()
        };
        match &self.gated {
            Some(g) => {
                let gate = linear(&sae_in, &self.w_enc, Some(&g.b_gate))?;
                let mask = gate.gt(0.0)?.to_dtype(DType::F32)?;
                let w_mag = self.w_enc.broadcast_mul(&g.r_mag.exp()?)?;
                Ok((linear(&sae_in, &w_mag, Some(&g.b_mag))?, Some(mask)))
            }
            None => Ok((linear(&sae_in, &self.w_enc, self.b_enc.as_ref())?, None)),
        }
    }

    /// The latents from pre-activations (and a gated SAE's gate mask).
    pub fn activate(&self, pre: &Tensor, gate: Option<&Tensor>) -> Result<Tensor> {
        let relu = pre.relu()?;
        Ok(match self.cfg.architecture {
            Architecture::Standard => relu,
            Architecture::JumpRelu => {
                let t = self.threshold.as_ref().expect("checked on load");
                (relu * pre.broadcast_gt(t)?.to_dtype(DType::F32)?)?
            }
            Architecture::Gated => (relu * gate.expect("gated SAEs have a gate"))?,
            Architecture::TopK => {
                let ranked = if self.cfg.rescale_acts_by_decoder_norm {
                    pre.broadcast_mul(&self.decoder_norms()?)?
                } else {
                    pre.clone()
                };
                top_k_relu(&ranked, self.cfg.k.expect("checked on parse"))?
            }
        })
    }

    /// `hook_sae_input` → `hook_sae_acts_post` of a raw activation, with the normalisation state.
    pub fn encode_full(&self, x: &Tensor) -> Result<(Encoded, NormState)> {
        let input = self.reshape_in(x)?;
        let (xn, state) = self.normalize_in(&input)?;
        let (pre, gate) = self.pre_acts(&xn)?;
        let acts = self.activate(&pre, gate.as_ref())?;
        Ok((Encoded { input, pre, acts }, state))
    }

    /// The latents of an activation `[.., d_in]` (or `[.., head, d_head]` for `hook_z`).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode_full(x)?.0.acts)
    }

    /// `hook_sae_recons`: latents through the decoder, before normalisation is undone.
    pub fn recons(&self, acts: &Tensor) -> Result<Tensor> {
        let acts = if self.cfg.architecture == Architecture::TopK
            && self.cfg.rescale_acts_by_decoder_norm
        {
            acts.broadcast_div(&self.decoder_norms()?)?
        } else {
            acts.clone()
        };
        linear(&acts, &self.w_dec, Some(&self.b_dec))
    }

    /// Undoes the input normalisation (not for transcoders: their output is another space)
    /// and the `hook_z` flattening, to the shape of `like` (`None`: flat).
    pub fn finish(
        &self,
        recons: &Tensor,
        state: &NormState,
        like: Option<&[usize]>,
    ) -> Result<Tensor> {
        let y = match (self.cfg.kind, state) {
            (Kind::Sae, NormState::Scale(coef)) => recons.broadcast_div(coef)?,
            (Kind::Sae, NormState::Ln { mu, std }) => {
                recons.broadcast_mul(std)?.broadcast_add(mu)?
            }
            _ => recons.clone(),
        };
        match like {
            Some(shape) if shape != y.dims() => Ok(y.reshape(shape)?),
            _ => Ok(y),
        }
    }

    /// A skip transcoder's linear path `x W_skipᵀ` of the raw input.
    pub fn skip(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.w_skip {
            Some(w) => Ok(Some(linear(&self.reshape_in(x)?, &w.t()?, None)?)),
            None => Ok(None),
        }
    }

    /// The reconstruction of a raw activation in its own shape (an SAE) or the output
    /// point's (a transcoder): SAELens's `forward` without the error term.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (enc, state) = self.encode_full(x)?;
        let like = (self.cfg.kind == Kind::Sae).then(|| x.dims().to_vec());
        let y = self.finish(&self.recons(&enc.acts)?, &state, like.as_deref())?;
        Ok(match self.skip(x)? {
            Some(s) => (y + s)?,
            None => y,
        })
    }

    /// Each decoder row's norm `[d_sae]`, clamped at 1e-8 as SAELens clamps it.
    pub fn decoder_norms(&self) -> Result<Tensor> {
        Ok(self
            .w_dec
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .clamp(1e-8f32, f32::MAX)?)
    }

    /// Latent `i`'s decoder direction `[d_out]` (what "steer with a latent" adds).
    pub fn direction(&self, i: usize) -> Result<Tensor> {
        if i >= self.cfg.d_sae {
            return Err(Error::OutOfRange {
                what: "latent",
                index: i as i64,
                limit: format!("d_sae = {}", self.cfg.d_sae),
            });
        }
        Ok(self.w_dec.get(i)?)
    }
}

/// `relu` of the `k` largest entries of each row of `x` `[.., n]`, zeros elsewhere.
fn top_k_relu(x: &Tensor, k: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n = *dims.last().unwrap_or(&0);
    let flat: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let mut out = vec![0f32; flat.len()];
    let mut idx: Vec<usize> = Vec::with_capacity(n);
    for (row, dst) in flat.chunks(n.max(1)).zip(out.chunks_mut(n.max(1))) {
        idx.clear();
        idx.extend(0..row.len());
        if k < row.len() {
            // The k-th largest is the pivot: everything before it is at least as large.
            idx.select_nth_unstable_by(k, |&a, &b| row[b].total_cmp(&row[a]));
        }
        for &i in idx.iter().take(k) {
            dst[i] = row[i].max(0.0);
        }
    }
    Ok(Tensor::from_vec(out, dims, x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_k_largest_and_applies_relu() {
        let x = Tensor::new(
            &[[0.5f32, -1.0, 2.0, 0.1], [-3.0, -2.0, -1.0, -0.5]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let y: Vec<Vec<f32>> = top_k_relu(&x, 2).unwrap().to_vec2().unwrap();
        assert_eq!(y[0], vec![0.5, 0.0, 2.0, 0.0]);
        assert_eq!(
            y[1],
            vec![0.0, 0.0, 0.0, 0.0],
            "the top two are negative: relu zeroes them"
        );
    }
}
