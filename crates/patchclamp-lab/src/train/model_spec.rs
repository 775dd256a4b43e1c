//! The small models the lab trains, described in a few fields of an experiment file.

use patchclamp_core::model::{
    Activation, Attention, Config, Family, Mlp, Norm, NormKind, Positions, Rope,
};
use serde::{Deserialize, Serialize};

/// A from-scratch model: attention-only unless `d_mlp > 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// MLP width; 0 for attention-only blocks.
    #[serde(default)]
    pub d_mlp: usize,
    /// `learned` or `rotary`.
    #[serde(default = "learned")]
    pub positions: String,
    /// Pre-norm LayerNorm in every block and before the unembedding.
    #[serde(default = "yes")]
    pub layer_norm: bool,
    /// Initialisation seed.
    #[serde(default)]
    pub init_seed: u64,
}

fn learned() -> String {
    "learned".into()
}
fn yes() -> bool {
    true
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            d_mlp: 0,
            positions: learned(),
            layer_norm: true,
            init_seed: 0,
        }
    }
}

impl ModelSpec {
    /// The canonical config for a task with `vocab` tokens and `n_ctx` positions.
    pub fn config(&self, vocab: usize, n_ctx: usize) -> crate::Result<Config> {
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(crate::Error::Spec(format!(
                "d_model {} must be a positive multiple of n_heads {}",
                self.d_model, self.n_heads
            )));
        }
        let d_head = self.d_model / self.n_heads;
        let positions = match self.positions.as_str() {
            "learned" => Positions::Learned,
            "rotary" | "rope" => Positions::Rotary(Rope {
                theta: 10000.0,
                rotary_dim: d_head,
                scaling: None,
            }),
            "none" => Positions::None,
            other => {
                return Err(crate::Error::Spec(format!(
                    "unknown positions '{other}'; use learned, rotary or none"
                )))
            }
        };
        let cfg = Config {
            family: Family::Custom,
            d_model: self.d_model,
            n_layers: self.n_layers,
            d_vocab: vocab,
            n_ctx,
            attn: Attention {
                n_heads: self.n_heads,
                n_kv_heads: self.n_heads,
                d_head,
                qkv_bias: false,
                o_bias: false,
                scale: (d_head as f64).sqrt(),
                sliding_window: None,
                qk_norm: None,
            },
            mlp: if self.d_mlp == 0 {
                Mlp::None
            } else {
                Mlp::Dense {
                    act: Activation::Relu,
                    bias: true,
                    d_mlp: self.d_mlp,
                }
            },
            norm: Norm {
                kind: if self.layer_norm {
                    NormKind::LayerNorm
                } else {
                    NormKind::None
                },
                eps: 1e-5,
                final_norm: self.layer_norm,
            },
            positions,
            tied_embeddings: false,
            unembed_bias: false,
            default_prepend_bos: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            processing: Default::default(),
        };
        cfg.validate()
            .map_err(|e| crate::Error::Spec(e.to_string()))?;
        // Weights, gradients and two optimiser moments: refuse what cannot fit, before
        // anything is allocated (an `n_layers` of 10^9 would abort the process instead).
        let need = (cfg.n_params() as u64).saturating_mul(16);
        if let Some(have) = patchclamp_core::sys::total_memory() {
            if need > have {
                return Err(crate::Error::Spec(format!(
                    "the model would have {} parameters, needing {:.1} GiB to train (weights, gradients, optimiser state), more than this machine's {:.1} GiB",
                    cfg.n_params(),
                    need as f64 / (1u64 << 30) as f64,
                    have as f64 / (1u64 << 30) as f64
                )));
            }
        }
        Ok(cfg)
    }
}
