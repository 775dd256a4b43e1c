//! Typed handles of the canonical weights: one table of what each weight is called (its
//! TransformerLens state-dict name) and what shape the config gives it. Loading, validation,
//! checkpoints and the trainer all name weights through it.

use std::fmt;

use crate::model::config::Config;

/// Which norm of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockNorm {
    /// Before attention.
    Ln1,
    /// Before the MLP.
    Ln2,
}

/// A norm's gain (`w`) or bias (`b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormPart {
    Gain,
    Bias,
}

/// A weight of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttnPart {
    WQ,
    BQ,
    WK,
    BK,
    WV,
    BV,
    WO,
    BO,
    /// Query RMSNorm gain (OLMoE, Qwen3).
    QNorm,
    /// Key RMSNorm gain.
    KNorm,
}

/// A weight of one MLP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MlpPart {
    WGate,
    BGate,
    WIn,
    BIn,
    WOut,
    BOut,
}

/// A weight of one mixture-of-experts layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoePart {
    /// `W_router` `[d_model, n_experts]`.
    Router,
    /// `router_bias` `[n_experts]`, for selection only.
    RouterBias,
    /// Routed expert `e`'s weight.
    Expert(u32, MlpPart),
    /// The shared expert's weight.
    Shared(MlpPart),
    /// `W_shared_gate` `[d_model, 1]`.
    SharedGate,
}

/// One weight of the canonical layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    /// `embed.W_E` `[d_vocab, d_model]`.
    Embed,
    /// `pos_embed.W_pos` `[n_ctx, d_model]`.
    PosEmbed,
    /// `blocks.L.ln1.w` … `[d_model]`.
    Norm {
        layer: usize,
        norm: BlockNorm,
        part: NormPart,
    },
    /// `blocks.L.attn.W_Q` … (`x @ W` orientation, heads flattened).
    Attn { layer: usize, part: AttnPart },
    /// `blocks.L.mlp.W_in` …
    Mlp { layer: usize, part: MlpPart },
    /// `blocks.L.mlp.W_router`, `blocks.L.mlp.experts.E.W_in` … (layers that route).
    Moe { layer: usize, part: MoePart },
    /// `ln_final.w` / `ln_final.b` `[d_model]`.
    FinalNorm(NormPart),
    /// `unembed.W_U` `[d_model, d_vocab]`.
    Unembed,
    /// `unembed.b_U` `[d_vocab]`.
    UnembedBias,
}

impl Param {
    /// The shape `cfg` gives this weight.
    pub fn shape(&self, cfg: &Config) -> Vec<usize> {
        let a = &cfg.attn;
        let (d, q, kv, m) = (
            cfg.d_model,
            a.n_heads * a.d_head,
            a.n_kv_heads * a.d_head,
            cfg.d_mlp(),
        );
        match self {
            Param::Embed => vec![cfg.d_vocab, d],
            Param::PosEmbed => vec![cfg.n_ctx, d],
            Param::Norm { .. } | Param::FinalNorm(_) => vec![d],
            Param::Attn { part, .. } => match part {
                AttnPart::WQ => vec![d, q],
                AttnPart::BQ => vec![q],
                AttnPart::WK | AttnPart::WV => vec![d, kv],
                AttnPart::BK | AttnPart::BV => vec![kv],
                AttnPart::WO => vec![q, d],
                AttnPart::BO => vec![d],
                AttnPart::QNorm | AttnPart::KNorm => {
                    let full = if *part == AttnPart::QNorm { q } else { kv };
                    match a.qk_norm {
                        Some(crate::model::QkNorm::Full) => vec![full],
                        _ => vec![a.d_head],
                    }
                }
            },
            Param::Mlp { part, .. } => mlp_shape(*part, d, m),
            Param::Moe { part, .. } => {
                let moe = cfg.moe();
                let e = moe.map_or(0, |m| m.n_experts);
                match part {
                    MoePart::Router => vec![d, e],
                    MoePart::RouterBias => vec![e],
                    MoePart::Expert(_, p) => mlp_shape(*p, d, moe.map_or(0, |m| m.d_expert)),
                    MoePart::Shared(p) => {
                        mlp_shape(*p, d, moe.and_then(|m| m.shared).map_or(0, |s| s.d_mlp))
                    }
                    MoePart::SharedGate => vec![d, 1],
                }
            }
            Param::Unembed => vec![d, cfg.d_vocab],
            Param::UnembedBias => vec![cfg.d_vocab],
        }
    }

    /// Whether this is a matrix (not a bias, gain or norm).
    pub fn is_matrix(&self) -> bool {
        matches!(
            self,
            Param::Embed
                | Param::PosEmbed
                | Param::Unembed
                | Param::Attn {
                    part: AttnPart::WQ | AttnPart::WK | AttnPart::WV | AttnPart::WO,
                    ..
                }
                | Param::Mlp {
                    part: MlpPart::WGate | MlpPart::WIn | MlpPart::WOut,
                    ..
                }
                | Param::Moe {
                    part: MoePart::Router
                        | MoePart::SharedGate
                        | MoePart::Expert(_, MlpPart::WGate | MlpPart::WIn | MlpPart::WOut)
                        | MoePart::Shared(MlpPart::WGate | MlpPart::WIn | MlpPart::WOut),
                    ..
                }
        )
    }
}

/// A (gated) MLP weight's shape for width `m`.
fn mlp_shape(part: MlpPart, d: usize, m: usize) -> Vec<usize> {
    match part {
        MlpPart::WGate | MlpPart::WIn => vec![d, m],
        MlpPart::BGate | MlpPart::BIn => vec![m],
        MlpPart::WOut => vec![m, d],
        MlpPart::BOut => vec![d],
    }
}

/// An MLP weight's TransformerLens name within its MLP.
fn mlp_name(part: MlpPart) -> &'static str {
    match part {
        MlpPart::WGate => "W_gate",
        MlpPart::BGate => "b_gate",
        MlpPart::WIn => "W_in",
        MlpPart::BIn => "b_in",
        MlpPart::WOut => "W_out",
        MlpPart::BOut => "b_out",
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let norm_part = |p: &NormPart| match p {
            NormPart::Gain => "w",
            NormPart::Bias => "b",
        };
        match self {
            Param::Embed => f.write_str("embed.W_E"),
            Param::PosEmbed => f.write_str("pos_embed.W_pos"),
            Param::Norm { layer, norm, part } => {
                let n = match norm {
                    BlockNorm::Ln1 => "ln1",
                    BlockNorm::Ln2 => "ln2",
                };
                write!(f, "blocks.{layer}.{n}.{}", norm_part(part))
            }
            Param::Attn { layer, part } => {
                let p = match part {
                    AttnPart::WQ => "W_Q",
                    AttnPart::BQ => "b_Q",
                    AttnPart::WK => "W_K",
                    AttnPart::BK => "b_K",
                    AttnPart::WV => "W_V",
                    AttnPart::BV => "b_V",
                    AttnPart::WO => "W_O",
                    AttnPart::BO => "b_O",
                    AttnPart::QNorm => "q_norm.w",
                    AttnPart::KNorm => "k_norm.w",
                };
                write!(f, "blocks.{layer}.attn.{p}")
            }
            Param::Mlp { layer, part } => write!(f, "blocks.{layer}.mlp.{}", mlp_name(*part)),
            Param::Moe { layer, part } => match part {
                MoePart::Router => write!(f, "blocks.{layer}.mlp.W_router"),
                MoePart::RouterBias => write!(f, "blocks.{layer}.mlp.router_bias"),
                MoePart::Expert(e, p) => {
                    write!(f, "blocks.{layer}.mlp.experts.{e}.{}", mlp_name(*p))
                }
                MoePart::Shared(p) => {
                    write!(f, "blocks.{layer}.mlp.shared_expert.{}", mlp_name(*p))
                }
                MoePart::SharedGate => write!(f, "blocks.{layer}.mlp.W_shared_gate"),
            },
            Param::FinalNorm(p) => write!(f, "ln_final.{}", norm_part(p)),
            Param::Unembed => f.write_str("unembed.W_U"),
            Param::UnembedBias => f.write_str("unembed.b_U"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shapes_cover_every_weight_of_a_model() {
        let cfg = Config::gpt2_like(2, 32, 4, 100, 16);
        let w = crate::model::Weights::random(&cfg, 0, &candle_core::Device::Cpu).unwrap();
        let params = w.params();
        let names: Vec<String> = params.iter().map(|(p, _)| p.to_string()).collect();
        assert!(
            names.contains(&"blocks.1.attn.W_Q".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"blocks.0.ln2.b".to_string()));
        assert!(names.contains(&"pos_embed.W_pos".to_string()));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no two weights share a name");
        for (p, t) in &params {
            assert_eq!(t.dims(), p.shape(&cfg).as_slice(), "{p}");
        }
        // The name table is the one `Weights::map` visits.
        let mut mapped = vec![];
        w.map(|n, t| {
            mapped.push(n.to_string());
            Ok(t.clone())
        })
        .unwrap();
        assert_eq!(mapped, names);
    }
}
