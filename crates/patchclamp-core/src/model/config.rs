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
pub enum MlpKind {
    /// Attention-only blocks.
    None,
    /// `W_out · act(W_in · x + b_in) + b_out`.
    Dense { act: Activation, bias: bool },
    /// `W_out · (act(W_gate · x) ⊙ (W_in · x)) (+ biases)`.
    Gated { act: Activation, bias: bool },
    // A mixture-of-experts variant (router + experts of the kinds above) lands here; the block
    // code already dispatches on this enum, so it is one more arm.
}

/// Which weight-processing steps have been applied (see `model::process`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

/// The canonical description of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The family the weights came from (`gpt2`, `llama`, `mistral`, `qwen2`, or `custom`).
    pub family: String,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads; fewer than `n_heads` means grouped-query attention.
    pub n_kv_heads: usize,
    pub d_head: usize,
    /// Hidden width of the MLP (0 for attention-only models).
    pub d_mlp: usize,
    pub d_vocab: usize,
    /// Longest sequence the model accepts.
    pub n_ctx: usize,
    pub norm: NormKind,
    /// Whether a final norm precedes the unembedding.
    pub final_norm: bool,
    pub norm_eps: f64,
    pub positions: Positions,
    /// Biases on the q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Attention scores are divided by this (usually sqrt(d_head)).
    pub attn_scale: f64,
    pub mlp: MlpKind,
    /// Unembedding shares the token embedding matrix.
    pub tied_embeddings: bool,
    /// Whether the unembedding has a bias (TransformerLens's `b_U`).
    pub unembed_bias: bool,
    /// Keys further back than this are masked (Mistral); `None` is full causal attention.
    pub sliding_window: Option<usize>,
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
        self.n_heads / self.n_kv_heads
    }

    /// Whether blocks have an MLP.
    pub fn has_mlp(&self) -> bool {
        !matches!(self.mlp, MlpKind::None)
    }

    /// Whether the MLP is gated (has `hook_pre_linear`).
    pub fn gated_mlp(&self) -> bool {
        matches!(self.mlp, MlpKind::Gated { .. })
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
        self.norm != NormKind::None
    }

    /// Checks the numbers fit together; every family's mapping ends with this.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config("model config", msg));
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.has_mlp() && self.d_mlp == 0 {
            return bad("d_mlp must be positive for a model with an MLP".into());
        }
        if let Some(r) = self.rotary() {
            if r.rotary_dim == 0 || r.rotary_dim > self.d_head || r.rotary_dim % 2 != 0 {
                return bad(format!(
                    "rotary_dim {} must be even and in 2..={}",
                    r.rotary_dim, self.d_head
                ));
            }
        }
        if self.attn_scale.is_nan() || self.attn_scale <= 0.0 {
            return bad(format!(
                "attn_scale must be positive, got {}",
                self.attn_scale
            ));
        }
        Ok(())
    }

    /// Number of parameters the weights of this config hold.
    pub fn n_params(&self) -> usize {
        let d = self.d_model;
        let qkv = (self.n_heads + 2 * self.n_kv_heads) * self.d_head;
        let mut block = d * qkv + self.n_heads * self.d_head * d;
        if self.qkv_bias {
            block += qkv;
        }
        if self.o_bias {
            block += d;
        }
        let mats = match self.mlp {
            MlpKind::None => 0,
            MlpKind::Dense { bias, .. } => {
                2 * d * self.d_mlp + if bias { self.d_mlp + d } else { 0 }
            }
            MlpKind::Gated { bias, .. } => {
                3 * d * self.d_mlp + if bias { 2 * self.d_mlp + d } else { 0 }
            }
        };
        block += mats;
        let norm_params = match self.norm {
            NormKind::LayerNorm => 2 * d,
            NormKind::RmsNorm => d,
            _ => 0,
        };
        let n_norms_per_block = if self.has_mlp() { 2 } else { 1 };
        block += n_norms_per_block * norm_params;
        let mut total = self.n_layers * block + self.d_vocab * d;
        if !self.tied_embeddings {
            total += self.d_vocab * d;
        }
        if self.unembed_bias {
            total += self.d_vocab;
        }
        if self.positions == Positions::Learned {
            total += self.n_ctx * d;
        }
        if self.final_norm {
            total += norm_params;
        }
        total
    }
}
