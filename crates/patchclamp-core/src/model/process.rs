//! Weight processing, TransformerLens's way: `fold_ln`, `center_writing_weights`,
//! `center_unembed`, `fold_value_biases`, applied in that order. None changes the model's
//! predictions (logits move only by a per-position constant under `center_unembed`); they
//! make weights easier to read and let processed runs match TransformerLens hook for hook.

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::{NormKind, Processing};
use crate::model::forward::Model;
use crate::model::weights::NormWeights;

impl Processing {
    /// All four steps, TransformerLens's default.
    pub fn all() -> Self {
        Processing {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl Model {
    /// Applies the requested steps in TransformerLens's order; steps already applied are skipped.
    pub fn process(&mut self, steps: Processing) -> Result<()> {
        let done = self.cfg.processing;
        let is_ln = matches!(
            self.cfg.norm.kind,
            NormKind::LayerNorm | NormKind::LayerNormPre
        );
        if steps.fold_ln && !done.fold_ln {
            self.fold_ln()?;
            self.cfg.processing.fold_ln = true;
        }
        // Centring writes is only sound when every reader first removes the mean (LayerNorm).
        let center_writes = steps.center_writing_weights && is_ln && !done.center_writing_weights;
        if center_writes {
            self.center_writing_weights()?;
            self.cfg.processing.center_writing_weights = true;
        }
        if steps.center_unembed && !done.center_unembed {
            self.center_unembed()?;
            self.cfg.processing.center_unembed = true;
        }
        if steps.fold_value_biases && !done.fold_value_biases {
            self.fold_value_biases(center_writes || done.center_writing_weights)?;
            self.cfg.processing.fold_value_biases = true;
        }
        Ok(())
    }

    /// Folds each norm's gain (and bias) into the matrices that read its output.
    fn fold_ln(&mut self) -> Result<()> {
        let (fold_bias, center) = match self.cfg.norm.kind {
            NormKind::LayerNorm => (true, true),
            NormKind::RmsNorm => (false, false),
            _ => return Ok(()),
        };
        if fold_bias && self.cfg.moe().is_some() {
            return Err(Error::Input(
                "fold_ln would fold a LayerNorm's bias into each router, which has no bias: it is not supported for a mixture of experts with LayerNorm".into(),
            ));
        }
        let w = &mut self.weights;
        for blk in &mut w.blocks {
            let ln1 = std::mem::replace(&mut blk.ln1, NormWeights { w: None, b: None });
            let a = &mut blk.attn;
            for (mat, bias) in [
                (&mut a.w_q, &mut a.b_q),
                (&mut a.w_k, &mut a.b_k),
                (&mut a.w_v, &mut a.b_v),
            ] {
                fold_into(&ln1, mat, bias, fold_bias, center)?;
            }
            if let Some(m) = &mut blk.mlp {
                let ln2 = std::mem::replace(&mut blk.ln2, NormWeights { w: None, b: None });
                fold_into(&ln2, &mut m.w_in, &mut m.b_in, fold_bias, center)?;
                if let Some(g) = &mut m.w_gate {
                    fold_into(&ln2, g, &mut m.b_gate, fold_bias, center)?;
                }
            }
            if let Some(moe) = &mut blk.moe {
                // Every reader of ln2: the router, each expert, the shared expert and its gate.
                let ln2 = std::mem::replace(&mut blk.ln2, NormWeights { w: None, b: None });
                fold_into(&ln2, &mut moe.w_router, &mut None, fold_bias, center)?;
                if let Some(g) = &mut moe.w_shared_gate {
                    fold_into(&ln2, g, &mut None, fold_bias, center)?;
                }
                for m in moe.experts.iter_mut().chain(moe.shared.as_mut()) {
                    fold_into(&ln2, &mut m.w_in, &mut m.b_in, fold_bias, center)?;
                    if let Some(g) = &mut m.w_gate {
                        fold_into(&ln2, g, &mut m.b_gate, fold_bias, center)?;
                    }
                }
            }
        }
        if self.cfg.norm.final_norm {
            let lnf = std::mem::replace(&mut w.ln_final, NormWeights { w: None, b: None });
            let mut w_u = w.unembed().contiguous()?;
            fold_into(&lnf, &mut w_u, &mut w.b_u, fold_bias, center)?;
            w.w_u = Some(w_u);
            self.cfg.tied_embeddings = false;
            self.cfg.unembed_bias = w.b_u.is_some();
        }
        self.cfg.norm.kind = match self.cfg.norm.kind {
            NormKind::LayerNorm => NormKind::LayerNormPre,
            _ => NormKind::RmsNormPre,
        };
        Ok(())
    }

    /// Removes the mean over d_model from every weight that writes to the residual stream.
    fn center_writing_weights(&mut self) -> Result<()> {
        let w = &mut self.weights;
        w.w_e = center(&w.w_e, D::Minus1)?;
        if let Some(p) = &w.w_pos {
            w.w_pos = Some(center(p, D::Minus1)?);
        }
        for blk in &mut w.blocks {
            blk.attn.w_o = center(&blk.attn.w_o, D::Minus1)?;
            if let Some(b) = &blk.attn.b_o {
                blk.attn.b_o = Some(center(b, D::Minus1)?);
            }
            let experts = blk
                .moe
                .iter_mut()
                .flat_map(|moe| moe.experts.iter_mut().chain(moe.shared.as_mut()));
            for m in blk.mlp.iter_mut().chain(experts) {
                m.w_out = center(&m.w_out, D::Minus1)?;
                if let Some(b) = &m.b_out {
                    m.b_out = Some(center(b, D::Minus1)?);
                }
            }
        }
        Ok(())
    }

    /// Removes the mean over the vocabulary from the unembedding (logits shift per position).
    fn center_unembed(&mut self) -> Result<()> {
        let w = &mut self.weights;
        w.w_u = Some(center(&w.unembed(), D::Minus1)?);
        if let Some(b) = &w.b_u {
            w.b_u = Some(center(b, D::Minus1)?);
        }
        self.cfg.tied_embeddings = false;
        Ok(())
    }

    /// Moves the value bias into the output bias: `b_O += Σ_h b_V[h] · W_O[h]`.
    fn fold_value_biases(&mut self, recenter: bool) -> Result<()> {
        let (h, kv, e) = (
            self.cfg.attn.n_heads,
            self.cfg.attn.n_kv_heads,
            self.cfg.attn.d_head,
        );
        let mut any = false;
        for blk in &mut self.weights.blocks {
            let a = &mut blk.attn;
            let Some(b_v) = a.b_v.take() else { continue };
            any = true;
            // Each query head reads its group's kv head: repeat the kv biases per group.
            let b_v = b_v
                .reshape((kv, 1, e))?
                .broadcast_as((kv, h / kv, e))?
                .reshape((1, h * e))?;
            let folded = b_v.matmul(&a.w_o)?.squeeze(0)?; // [D]
            let b_o = match &a.b_o {
                Some(b) => (b + folded)?,
                None => folded,
            };
            a.b_o = Some(if recenter {
                center(&b_o, D::Minus1)?
            } else {
                b_o
            });
        }
        if any {
            self.cfg.attn.o_bias = true;
        }
        Ok(())
    }
}

/// `x - mean(x, dim)`.
fn center(x: &Tensor, dim: D) -> Result<Tensor> {
    Ok(x.broadcast_sub(&x.mean_keepdim(dim)?)?)
}

/// Folds `norm` into a reader `x_norm @ mat + bias` with `mat` `[d_model, out]`.
fn fold_into(
    norm: &NormWeights,
    mat: &mut Tensor,
    bias: &mut Option<Tensor>,
    fold_bias: bool,
    center_rows: bool,
) -> Result<()> {
    if fold_bias {
        if let Some(b) = &norm.b {
            let shift = b.unsqueeze(0)?.matmul(mat)?.squeeze(0)?; // [out]
            *bias = Some(match bias.take() {
                Some(old) => (old + shift)?,
                None => shift,
            });
        }
    }
    if let Some(g) = &norm.w {
        *mat = mat.broadcast_mul(&g.unsqueeze(1)?)?;
    }
    if center_rows {
        // The folded norm's output has zero mean, so the mean over d_model of each column is
        // never read: removing it changes nothing and makes the weights canonical.
        *mat = center(mat, D::Minus2)?;
    }
    *mat = mat.contiguous()?;
    Ok(())
}
