//! Random weights for a config: benchmarks, synthetic experiments and training from scratch.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::config::{Config, Mlp, NormKind};
use crate::model::weights::{
    AttnWeights, BlockWeights, MlpWeights, MoeWeights, NormWeights, Weights,
};
use crate::rng::Rng;

impl Weights {
    /// GPT-2-style initialisation (normal, std 0.02; unit gains, zero biases) from `seed`.
    pub fn random(cfg: &Config, seed: u64, device: &Device) -> Result<Weights> {
        let mut rng = Rng::new(seed);
        let mut normal = |shape: (usize, usize)| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                rng.normal_vec(shape.0 * shape.1, 0.02),
                shape,
                device,
            )?)
        };
        let zeros =
            |n: usize| -> Result<Tensor> { Ok(Tensor::zeros(n, candle_core::DType::F32, device)?) };
        let ones =
            |n: usize| -> Result<Tensor> { Ok(Tensor::ones(n, candle_core::DType::F32, device)?) };
        let d = cfg.d_model;
        let norm = |kind: NormKind| -> Result<NormWeights> {
            Ok(match kind {
                NormKind::LayerNorm => NormWeights {
                    w: Some(ones(d)?),
                    b: Some(zeros(d)?),
                },
                NormKind::RmsNorm => NormWeights {
                    w: Some(ones(d)?),
                    b: None,
                },
                _ => NormWeights { w: None, b: None },
            })
        };
        let (qd, kvd) = (
            cfg.attn.n_heads * cfg.attn.d_head,
            cfg.attn.n_kv_heads * cfg.attn.d_head,
        );
        let opt = |on: bool, n: usize| -> Result<Option<Tensor>> {
            if on {
                zeros(n).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        let qk_gain = |full: usize| -> Result<Option<Tensor>> {
            match cfg.attn.qk_norm {
                None => Ok(None),
                Some(crate::model::QkNorm::PerHead) => ones(cfg.attn.d_head).map(Some),
                Some(crate::model::QkNorm::Full) => ones(full).map(Some),
            }
        };
        for l in 0..cfg.n_layers {
            let attn = AttnWeights {
                w_q: normal((d, qd))?,
                b_q: opt(cfg.attn.qkv_bias, qd)?,
                w_k: normal((d, kvd))?,
                b_k: opt(cfg.attn.qkv_bias, kvd)?,
                w_v: normal((d, kvd))?,
                b_v: opt(cfg.attn.qkv_bias, kvd)?,
                w_o: normal((qd, d))?,
                b_o: opt(cfg.attn.o_bias, d)?,
                q_norm: qk_gain(qd)?,
                k_norm: qk_gain(kvd)?,
            };
            let (mlp, moe) = match &cfg.mlp {
                Mlp::None => (None, None),
                Mlp::Dense { bias, .. } | Mlp::Gated { bias, .. } => {
                    let (bias, m, gated) = (*bias, cfg.d_mlp(), cfg.gated_mlp());
                    let mlp = MlpWeights {
                        w_gate: if gated { Some(normal((d, m))?) } else { None },
                        b_gate: opt(bias && gated, m)?,
                        w_in: normal((d, m))?,
                        b_in: opt(bias, m)?,
                        w_out: normal((m, d))?,
                        b_out: opt(bias, d)?,
                    };
                    (Some(mlp), None)
                }
                Mlp::Moe(m) => {
                    let mut gated = |width: usize| -> Result<MlpWeights> {
                        Ok(MlpWeights {
                            w_gate: Some(normal((d, width))?),
                            b_gate: None,
                            w_in: normal((d, width))?,
                            b_in: None,
                            w_out: normal((width, d))?,
                            b_out: None,
                        })
                    };
                    if !m.routes(l) {
                        (Some(gated(m.d_mlp)?), None)
                    } else {
                        let experts = (0..m.n_experts)
                            .map(|_| gated(m.d_expert))
                            .collect::<Result<Vec<_>>>()?;
                        let shared = m.shared.map(|s| gated(s.d_mlp)).transpose()?;
                        let moe = MoeWeights {
                            w_router: normal((d, m.n_experts))?,
                            router_bias: opt(m.selection_bias, m.n_experts)?,
                            experts,
                            shared,
                            w_shared_gate: match m.shared {
                                Some(s) if s.gated => Some(normal((d, 1))?),
                                _ => None,
                            },
                        };
                        (None, Some(moe))
                    }
                }
            };
            blocks.push(BlockWeights {
                ln1: norm(cfg.norm.kind)?,
                attn,
                ln2: if cfg.has_mlp() {
                    norm(cfg.norm.kind)?
                } else {
                    NormWeights { w: None, b: None }
                },
                mlp,
                moe,
            });
        }
        Ok(Weights {
            w_e: normal((cfg.d_vocab, d))?,
            w_pos: if cfg.positions.is_learned() {
                Some(normal((cfg.n_ctx, d))?)
            } else {
                None
            },
            blocks,
            ln_final: norm(if cfg.norm.final_norm {
                cfg.norm.kind
            } else {
                NormKind::None
            })?,
            w_u: if cfg.tied_embeddings {
                None
            } else {
                Some(normal((d, cfg.d_vocab))?)
            },
            b_u: opt(cfg.unembed_bias, cfg.d_vocab)?,
        })
    }
}

impl Config {
    /// GPT-2 small's shape (124M parameters): 12 layers, d_model 768, 12 heads, vocab 50257.
    pub fn gpt2_small() -> Config {
        Config::gpt2_like(12, 768, 12, 50257, 1024)
    }

    /// A GPT-2-shaped config: LayerNorm, learned positions, gelu_new MLP of width 4·d_model.
    pub fn gpt2_like(
        n_layers: usize,
        d_model: usize,
        n_heads: usize,
        d_vocab: usize,
        n_ctx: usize,
    ) -> Config {
        Config {
            family: crate::model::Family::Custom,
            d_model,
            n_layers,
            d_vocab,
            n_ctx,
            attn: crate::model::Attention {
                n_heads,
                n_kv_heads: n_heads,
                d_head: d_model / n_heads,
                qkv_bias: true,
                o_bias: true,
                scale: ((d_model / n_heads) as f64).sqrt(),
                sliding_window: None,
                qk_norm: None,
            },
            mlp: Mlp::Dense {
                act: crate::model::Activation::GeluNew,
                bias: true,
                d_mlp: 4 * d_model,
            },
            norm: crate::model::Norm {
                kind: NormKind::LayerNorm,
                eps: 1e-5,
                final_norm: true,
            },
            positions: crate::model::Positions::Learned,
            tied_embeddings: true,
            unembed_bias: false,
            default_prepend_bos: true,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            processing: Default::default(),
        }
    }
}
