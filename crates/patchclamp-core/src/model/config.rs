//! The canonical model config: every family maps its `config.json` onto this one description.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which normalisation a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// Centre, scale to unit RMS, then `* w + b`.
    LayerNorm,
    /// Centre and scale only (LayerNorm whose affine part was folded away).
    LayerNormPre,
    /// Scale to unit RMS, then `* w`.
    RmsNorm,
    /// Scale to unit RMS only (RMSNorm whose gain was folded away).
    RmsNormPre,
    /// No normalisation.
    None,
}

/// How positions enter the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Positions {
    /// A learned table added to the token embedding.
    Learned,
    /// Rotary embeddings on queries and keys.
    Rotary(Rope),
    /// No positional information (causal mask only).
    None,
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// Base of the inverse frequencies.
    pub theta: f64,
    /// How many dimensions of each head rotate (the rest pass through).
    pub rotary_dim: usize,
    /// Optional frequency rescaling.
    pub scaling: Option<RopeScaling>,
}

/// Rotary frequency rescaling schemes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.x's piecewise rescaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Element-wise activation functions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// GELU with the tanh approximation (GPT-2's "gelu_new").
    GeluNew,
    /// max(0, x).
    Relu,
    /// x · sigmoid(x).
    Silu,
}

/// The feed-forward half of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mlp {
    /// Attention-only blocks.
    None,
    /// `W_out · act(W_in · x + b_in) + b_out`, hidden width `d_mlp`.
    Dense {
        act: Activation,
        bias: bool,
        d_mlp: usize,
    },
    /// `W_out · (act(W_gate · x) ⊙ (W_in · x)) (+ biases)`, hidden width `d_mlp`.
    Gated {
        act: Activation,
        bias: bool,
        d_mlp: usize,
    },
    /// A mixture of gated experts chosen per token by a router (see [`Moe`]); layers listed
    /// in `dense_layers` carry a plain gated MLP of width `d_mlp` instead.
    Moe(Moe),
}

/// How router logits become per-expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// Softmax over all experts (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2).
    Softmax,
    /// An independent sigmoid per expert (DeepSeek-V3).
    Sigmoid,
}

/// Which experts a token may choose from before its top-k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Selection {
    /// Top-k over every expert.
    Greedy,
    /// Experts split into `n_group` groups; only the best `topk_group` groups compete
    /// (DeepSeek's group-limited routing).
    GroupLimited {
        n_group: usize,
        topk_group: usize,
        /// How a group ranks: by its best score (V2) or the sum of its best two (V3).
        rank: GroupRank,
    },
}

/// How DeepSeek ranks an expert group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRank {
    Max,
    SumTop2,
}

/// A shared expert every token passes through besides its routed ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SharedExpert {
    /// Hidden width of the shared (gated) MLP.
    pub d_mlp: usize,
    /// Scaled by `sigmoid(x · w_gate)` per token (Qwen2-MoE); DeepSeek's are ungated.
    pub gated: bool,
}

/// A mixture-of-experts MLP: router, top-k selection, routed gated experts, shared experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moe {
    /// Every expert's activation (experts are gated MLPs: `W_out · (act(W_gate·x) ⊙ W_in·x)`).
    pub act: Activation,
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Hidden width of each routed expert.
    pub d_expert: usize,
    pub scoring: Scoring,
    pub selection: Selection,
    /// A per-expert bias added to the scores for selection only (DeepSeek-V3's
    /// `e_score_correction_bias`); the weights use the unbiased scores.
    pub selection_bias: bool,
    /// Renormalise the chosen experts' scores to sum to one (`norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Added to the renormalising sum (DeepSeek's 1e-20; 0 elsewhere).
    pub norm_eps: f64,
    /// The routed weights are multiplied by this (`routed_scaling_factor`, 1 elsewhere).
    pub routed_scaling_factor: f64,
    pub shared: Option<SharedExpert>,
    /// Layers whose MLP is a plain gated MLP of width `d_mlp` (DeepSeek's
    /// `first_k_dense_replace`, Qwen's `decoder_sparse_step` / `mlp_only_layers`).
    #[serde(default)]
    pub dense_layers: Vec<usize>,
    /// Width of the dense layers' MLP (0 when there are none).
    #[serde(default)]
    pub d_mlp: usize,
}

impl Moe {
    /// Whether layer `l` routes (is not one of the dense layers).
    pub fn routes(&self, l: usize) -> bool {
        !self.dense_layers.contains(&l)
    }
}

/// A norm on queries and keys before the rotary embedding (RMSNorm with its own gain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    /// Over each head's `d_head` values (Qwen3): gains `[d_head]`.
    PerHead,
    /// Over the whole projection, all heads at once (OLMoE): gains `[heads·d_head]`.
    Full,
}

/// The attention half of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub n_heads: usize,
    /// Key/value heads; fewer than `n_heads` means grouped-query attention.
    pub n_kv_heads: usize,
    pub d_head: usize,
    /// Biases on the q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Attention scores are divided by this (usually sqrt(d_head)).
    pub scale: f64,
    /// Keys further back than this are masked (Mistral); `None` is full causal attention.
    pub sliding_window: Option<usize>,
    /// RMSNorm of queries and keys before rotation (OLMoE, Qwen3); `None` for most models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_norm: Option<QkNorm>,
}

/// The normalisation of every block and before the unembedding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    pub kind: NormKind,
    pub eps: f64,
    /// Whether a final norm precedes the unembedding.
    pub final_norm: bool,
}

/// The family a model's weights came from: which `config.json` and weight names it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Gpt2,
    Llama,
    Mistral,
    Qwen2,
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    /// Built in code (the lab's models, random test models).
    Custom,
}

impl Family {
    /// The `model_type` name (`gpt2`, `llama`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Olmoe => "olmoe",
            Family::Custom => "custom",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq<&str> for Family {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// Which weight-processing steps have been applied (see `model::process`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

/// The canonical description of a decoder-only transformer: sizes, then one part per
/// mechanism. A new family maps onto these; a new mechanism is a new variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The family the weights came from.
    pub family: Family,
    pub d_model: usize,
    pub n_layers: usize,
    pub d_vocab: usize,
    /// Longest sequence the model accepts.
    pub n_ctx: usize,
    pub attn: Attention,
    pub mlp: Mlp,
    pub norm: Norm,
    pub positions: Positions,
    /// Unembedding shares the token embedding matrix.
    pub tied_embeddings: bool,
    /// Whether the unembedding has a bias (TransformerLens's `b_U`).
    pub unembed_bias: bool,
    /// Whether TransformerLens prepends a BOS token by default for this model.
    pub default_prepend_bos: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Weight processing applied so far.
    #[serde(default)]
    pub processing: Processing,
}

impl Config {
    /// Heads that share one key/value head.
    pub fn kv_group(&self) -> usize {
        self.attn.n_heads / self.attn.n_kv_heads
    }

    /// Hidden width of the (dense) MLP: 0 for attention-only models; for a mixture of
    /// experts, its dense layers' width.
    pub fn d_mlp(&self) -> usize {
        match &self.mlp {
            Mlp::None => 0,
            Mlp::Dense { d_mlp, .. } | Mlp::Gated { d_mlp, .. } => *d_mlp,
            Mlp::Moe(m) => m.d_mlp,
        }
    }

    /// Whether blocks have an MLP.
    pub fn has_mlp(&self) -> bool {
        !matches!(self.mlp, Mlp::None)
    }

    /// Whether the MLP is gated (has `hook_pre_linear`).
    pub fn gated_mlp(&self) -> bool {
        matches!(self.mlp, Mlp::Gated { .. } | Mlp::Moe(_))
    }

    /// The mixture of experts, if the model has one.
    pub fn moe(&self) -> Option<&Moe> {
        match &self.mlp {
            Mlp::Moe(m) => Some(m),
            _ => None,
        }
    }

    /// The mixture of experts of layer `l`, if that layer routes.
    pub fn moe_at(&self, l: usize) -> Option<&Moe> {
        self.moe().filter(|m| m.routes(l))
    }

    /// Whether layer `l` has a plain (dense or gated) MLP with `blocks.L.mlp.hook_pre/post`.
    pub fn dense_mlp_at(&self, l: usize) -> bool {
        match &self.mlp {
            Mlp::None => false,
            Mlp::Dense { .. } | Mlp::Gated { .. } => true,
            Mlp::Moe(m) => !m.routes(l),
        }
    }

    /// The layers whose MLP routes tokens to experts.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.n_layers)
            .filter(|&l| self.moe_at(l).is_some())
            .collect()
    }

    /// Whether the model has rotary embeddings (and so `hook_rot_q/k`).
    pub fn rotary(&self) -> Option<&Rope> {
        match &self.positions {
            Positions::Rotary(r) => Some(r),
            _ => None,
        }
    }

    /// Whether norms exist (and so `hook_scale` / `hook_normalized`).
    pub fn has_norm(&self) -> bool {
        self.norm.kind != NormKind::None
    }

    /// Checks the numbers fit together; every family's mapping ends with this.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("model config", msg));
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.attn.n_heads),
            ("n_kv_heads", self.attn.n_kv_heads),
            ("d_head", self.attn.d_head),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.attn.n_heads.is_multiple_of(self.attn.n_kv_heads) {
            return bad(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.attn.n_heads, self.attn.n_kv_heads
            ));
        }
        if let Some(m) = self.moe() {
            self.validate_moe(m)?;
        } else if self.has_mlp() && self.d_mlp() == 0 {
            return bad("d_mlp must be positive for a model with an MLP".into());
        }
        if let Some(r) = self.rotary() {
            if r.rotary_dim == 0 || r.rotary_dim > self.attn.d_head || r.rotary_dim % 2 != 0 {
                return bad(format!(
                    "rotary_dim {} must be even and in 2..={}",
                    r.rotary_dim, self.attn.d_head
                ));
            }
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.attn.scale) {
            return bad(format!(
                "attn_scale must be positive, got {}",
                self.attn.scale
            ));
        }
        if self.has_norm() && !positive(self.norm.eps) {
            return bad(format!(
                "the norm epsilon must be positive, got {}",
                self.norm.eps
            ));
        }
        if self.attn.sliding_window == Some(0) {
            return bad("sliding_window must be positive (or absent)".into());
        }
        if let Some(r) = self.rotary() {
            if !positive(r.theta) {
                return bad(format!("rope_theta must be positive, got {}", r.theta));
            }
            let factors = match r.scaling {
                None => vec![],
                Some(RopeScaling::Linear { factor }) => vec![factor],
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    ..
                }) => vec![factor, low_freq_factor, high_freq_factor],
            };
            if let Some(x) = factors.iter().find(|&&x| !positive(x)) {
                return bad(format!("rope scaling factors must be positive, got {x}"));
            }
        }
        if self.n_params() == usize::MAX {
            return bad(
                "the sizes overflow: the model would have more than 2^64 parameters".into(),
            );
        }
        Ok(())
    }

    /// The mixture-of-experts part of [`Config::validate`].
    fn validate_moe(&self, m: &Moe) -> Result<()> {
        let bad = |msg: String| Err(Error::config("model config", msg));
        if m.n_experts == 0 || m.d_expert == 0 {
            return bad(format!(
                "a mixture of experts needs experts (num_experts {}) of positive width (moe_intermediate_size {})",
                m.n_experts, m.d_expert
            ));
        }
        if m.top_k == 0 || m.top_k > m.n_experts {
            return bad(format!(
                "num_experts_per_tok {} must be in 1..={} (the experts per layer)",
                m.top_k, m.n_experts
            ));
        }
        if let Selection::GroupLimited {
            n_group,
            topk_group,
            ..
        } = m.selection
        {
            if n_group == 0 || !m.n_experts.is_multiple_of(n_group) {
                return bad(format!(
                    "n_group {n_group} must divide the {} experts",
                    m.n_experts
                ));
            }
            let per_group = m.n_experts / n_group;
            if topk_group == 0 || topk_group > n_group || topk_group * per_group < m.top_k {
                return bad(format!(
                    "topk_group {topk_group} must be in 1..={n_group} and leave at least top_k {} experts ({per_group} per group)",
                    m.top_k
                ));
            }
        }
        if !(m.routed_scaling_factor.is_finite() && m.routed_scaling_factor > 0.0) {
            return bad(format!(
                "routed_scaling_factor must be positive, got {}",
                m.routed_scaling_factor
            ));
        }
        if !(m.norm_eps.is_finite() && m.norm_eps >= 0.0) {
            return bad(format!(
                "the routing renormalisation epsilon must be >= 0, got {}",
                m.norm_eps
            ));
        }
        if m.shared.is_some_and(|s| s.d_mlp == 0) {
            return bad("the shared expert's width must be positive".into());
        }
        if let Some(&l) = m.dense_layers.iter().find(|&&l| l >= self.n_layers) {
            return bad(format!(
                "dense layer {l} is outside the model's {} layers",
                self.n_layers
            ));
        }
        if !m.dense_layers.is_empty() && m.d_mlp == 0 {
            return bad("the dense layers' MLP width (intermediate_size) must be positive".into());
        }
        Ok(())
    }

    /// Number of parameters the weights of this config hold (`usize::MAX` when that overflows,
    /// so a config declaring absurd sizes is caught before anything is allocated).
    pub fn n_params(&self) -> usize {
        self.checked_n_params().unwrap_or(usize::MAX)
    }

    fn checked_n_params(&self) -> Option<usize> {
        let (d, a, m) = (self.d_model, &self.attn, self.d_mlp());
        let mul = |x: usize, y: usize| x.checked_mul(y);
        let qkv = mul(a.n_heads.checked_add(mul(2, a.n_kv_heads)?)?, a.d_head)?;
        let mut block = mul(d, qkv)?.checked_add(mul(mul(a.n_heads, a.d_head)?, d)?)?;
        if a.qkv_bias {
            block = block.checked_add(qkv)?;
        }
        if a.o_bias {
            block = block.checked_add(d)?;
        }
        if let Some(qk) = a.qk_norm {
            block = block.checked_add(match qk {
                QkNorm::PerHead => mul(2, a.d_head)?,
                QkNorm::Full => qkv.checked_sub(mul(a.n_kv_heads, a.d_head)?)?,
            })?;
        }
        let mats = match &self.mlp {
            Mlp::None => 0,
            Mlp::Dense { bias, .. } => {
                mul(mul(2, d)?, m)?.checked_add(if *bias { m.checked_add(d)? } else { 0 })?
            }
            Mlp::Gated { bias, .. } => mul(mul(3, d)?, m)?.checked_add(if *bias {
                mul(2, m)?.checked_add(d)?
            } else {
                0
            })?,
            Mlp::Moe(_) => 0, // per layer, below
        };
        block = block.checked_add(mats)?;
        let mut moe_total = 0usize;
        if let Some(moe) = self.moe() {
            let gated = |w: usize| mul(mul(3, d)?, w);
            let mut routed =
                mul(moe.n_experts, gated(moe.d_expert)?)?.checked_add(mul(d, moe.n_experts)?)?;
            if moe.selection_bias {
                routed = routed.checked_add(moe.n_experts)?;
            }
            if let Some(s) = moe.shared {
                routed = routed.checked_add(gated(s.d_mlp)?)?;
                if s.gated {
                    routed = routed.checked_add(d)?;
                }
            }
            let dense = moe.dense_layers.len();
            moe_total = mul(self.n_layers.checked_sub(dense)?, routed)?
                .checked_add(mul(dense, gated(moe.d_mlp)?)?)?;
        }
        let norm_params = match self.norm.kind {
            NormKind::LayerNorm => mul(2, d)?,
            NormKind::RmsNorm => d,
            _ => 0,
        };
        let n_norms_per_block = if self.has_mlp() { 2 } else { 1 };
        block = block.checked_add(mul(n_norms_per_block, norm_params)?)?;
        let embed = mul(self.d_vocab, d)?;
        let mut total = mul(self.n_layers, block)?
            .checked_add(embed)?
            .checked_add(moe_total)?;
        if !self.tied_embeddings {
            total = total.checked_add(embed)?;
        }
        if self.unembed_bias {
            total = total.checked_add(self.d_vocab)?;
        }
        if self.positions == Positions::Learned {
            total = total.checked_add(mul(self.n_ctx, d)?)?;
        }
        if self.norm.final_norm {
            total = total.checked_add(norm_params)?;
        }
        Some(total)
    }
}

/// The flat config that checkpoints written before the config was nested hold (read only).
#[derive(Deserialize)]
struct FlatConfig {
    family: String,
    d_model: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    d_head: usize,
    d_mlp: usize,
    d_vocab: usize,
    n_ctx: usize,
    norm: NormKind,
    final_norm: bool,
    norm_eps: f64,
    positions: Positions,
    qkv_bias: bool,
    o_bias: bool,
    attn_scale: f64,
    mlp: FlatMlp,
    tied_embeddings: bool,
    unembed_bias: bool,
    sliding_window: Option<usize>,
    default_prepend_bos: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    #[serde(default)]
    processing: Processing,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum FlatMlp {
    None,
    Dense { act: Activation, bias: bool },
    Gated { act: Activation, bias: bool },
}

impl Config {
    /// A config as a checkpoint stores it: the nested form, or the flat one that checkpoints
    /// written before it hold.
    pub fn from_stored_json(text: &str) -> std::result::Result<Config, serde_json::Error> {
        let nested = serde_json::from_str::<Config>(text);
        let Err(e) = nested else { return nested };
        let Ok(f) = serde_json::from_str::<FlatConfig>(text) else {
            return Err(e);
        };
        // Checkpoints written before the nested config came only from these families.
        let family = match f.family.as_str() {
            "gpt2" => Family::Gpt2,
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            _ => Family::Custom,
        };
        let d_mlp = f.d_mlp;
        Ok(Config {
            family,
            d_model: f.d_model,
            n_layers: f.n_layers,
            d_vocab: f.d_vocab,
            n_ctx: f.n_ctx,
            attn: Attention {
                n_heads: f.n_heads,
                n_kv_heads: f.n_kv_heads,
                d_head: f.d_head,
                qkv_bias: f.qkv_bias,
                o_bias: f.o_bias,
                scale: f.attn_scale,
                sliding_window: f.sliding_window,
                qk_norm: None,
            },
            mlp: match f.mlp {
                FlatMlp::None => Mlp::None,
                FlatMlp::Dense { act, bias } => Mlp::Dense { act, bias, d_mlp },
                FlatMlp::Gated { act, bias } => Mlp::Gated { act, bias, d_mlp },
            },
            norm: Norm {
                kind: f.norm,
                eps: f.norm_eps,
                final_norm: f.final_norm,
            },
            positions: f.positions,
            tied_embeddings: f.tied_embeddings,
            unembed_bias: f.unembed_bias,
            default_prepend_bos: f.default_prepend_bos,
            bos_token_id: f.bos_token_id,
            eos_token_id: f.eos_token_id,
            pad_token_id: f.pad_token_id,
            processing: f.processing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_config_of_an_older_checkpoint_reads_as_the_nested_one() {
        let cfg = Config::gpt2_like(2, 32, 4, 100, 16);
        let flat = serde_json::json!({
            "family": "custom", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
            "d_head": 8, "d_mlp": 128, "d_vocab": 100, "n_ctx": 16, "norm": "layer_norm",
            "final_norm": true, "norm_eps": 1e-5, "positions": {"kind": "learned"},
            "qkv_bias": true, "o_bias": true, "attn_scale": (8f64).sqrt(),
            "mlp": {"kind": "dense", "act": "gelu_new", "bias": true},
            "tied_embeddings": true, "unembed_bias": false, "sliding_window": null,
            "default_prepend_bos": true, "bos_token_id": null, "eos_token_id": null,
            "pad_token_id": null,
        });
        assert_eq!(Config::from_stored_json(&flat.to_string()).unwrap(), cfg);
        let nested = serde_json::to_string(&cfg).unwrap();
        assert_eq!(Config::from_stored_json(&nested).unwrap(), cfg);
        assert!(Config::from_stored_json("{\"family\": 3}").is_err());
    }
}
