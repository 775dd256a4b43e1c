//! Llama: RMSNorm, rotary positions, grouped-query attention, SwiGLU. Mistral and Qwen2 are
//! Llama with a sliding window or q/k/v biases, so their files reuse this one.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::arch::{linear_t, moe, Fields};
use crate::model::config::{
    Attention, Config, Family, Mlp, Norm, NormKind, Positions, QkNorm, Rope, RopeScaling,
};
use crate::model::weights::{
    AttnWeights, BlockWeights, Checkpoint, MlpWeights, NormWeights, Weights,
};

/// The canonical config of a Llama-shaped `config.json`.
pub(super) fn config(f: &Fields, family: Family) -> Result<Config> {
    let d_model = f.usize("hidden_size")?;
    let n_heads = f.usize("num_attention_heads")?;
    if n_heads == 0 {
        return Err(Error::config(
            f.path,
            "num_attention_heads must be positive",
        ));
    }
    let d_head = match f.opt_usize("head_dim")? {
        Some(h) => h,
        None => d_model / n_heads,
    };
    let partial = f.opt_f64("partial_rotary_factor")?.unwrap_or(1.0);
    let bias = f.bool_or("attention_bias", false)?;
    let mlp_bias = f.bool_or("mlp_bias", false)?;
    Ok(Config {
        family,
        d_model,
        n_layers: f.usize("num_hidden_layers")?,
        d_vocab: f.usize("vocab_size")?,
        n_ctx: f.usize("max_position_embeddings")?,
        attn: Attention {
            n_heads,
            n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            d_head,
            qkv_bias: bias,
            o_bias: bias,
            scale: (d_head as f64).sqrt(),
            sliding_window: None,
            qk_norm: None,
        },
        mlp: Mlp::Gated {
            act: f.activation("hidden_act", "silu")?,
            bias: mlp_bias,
            d_mlp: f.usize("intermediate_size")?,
        },
        norm: Norm {
            kind: NormKind::RmsNorm,
            eps: f.opt_positive_f64("rms_norm_eps")?.unwrap_or(1e-6),
            final_norm: true,
        },
        positions: Positions::Rotary(rope(f, ((d_head as f64) * partial) as usize)?),
        tied_embeddings: f.bool_or("tie_word_embeddings", false)?,
        unembed_bias: false,
        default_prepend_bos: true,
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
        processing: Default::default(),
    })
}

/// Rotary settings from `rope_theta` + `rope_scaling` (transformers 4) or `rope_parameters` (5).
fn rope(f: &Fields, rotary_dim: usize) -> Result<Rope> {
    let params = f.v.get("rope_parameters").filter(|v| v.is_object());
    let scaling = params.or_else(|| f.v.get("rope_scaling").filter(|v| v.is_object()));
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) => Some(v.as_f64().ok_or_else(|| {
            Error::config(
                f.path,
                format!("field 'rope_parameters.rope_theta' should be a number, found {v}"),
            )
        })?),
        None => f.opt_f64("rope_theta")?,
    }
    .unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::config(
            f.path,
            format!("field 'rope_theta' should be a positive number, found {theta}"),
        ));
    }
    let scaling = match scaling {
        None => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let num = |k: &str| -> Result<f64> {
                s.get(k)
                    .and_then(Value::as_f64)
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| {
                        Error::config(
                            f.path,
                            format!("rope scaling '{kind}' needs a positive number '{k}'"),
                        )
                    })
            };
            match kind {
                "default" => None,
                "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
                "llama3" => Some(RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
                }),
                other => {
                    return Err(Error::config(
                        f.path,
                        format!("unsupported rope scaling type '{other}'; supported: default, linear, llama3"),
                    ))
                }
            }
        }
    };
    Ok(Rope {
        theta,
        rotary_dim,
        scaling,
    })
}

/// Weights under HF Llama names (`model.layers.L.self_attn.q_proj.weight`, …); the mixtures
/// of experts built on Llama read their expert layers through `moe::weights`.
pub(super) fn weights(cfg: &Config, ckpt: &Checkpoint) -> Result<Weights> {
    let d = cfg.d_model;
    let (qd, kvd) = (
        cfg.attn.n_heads * cfg.attn.d_head,
        cfg.attn.n_kv_heads * cfg.attn.d_head,
    );
    let rms = |name: &str| -> Result<NormWeights> {
        Ok(NormWeights {
            w: Some(ckpt.get(name, &[d])?),
            b: None,
        })
    };
    let opt = |name: String, n: usize, on: bool| -> Result<Option<candle_core::Tensor>> {
        if on {
            ckpt.get(&name, &[n]).map(Some)
        } else {
            Ok(None)
        }
    };
    let qk = |name: String, full: usize| -> Result<Option<candle_core::Tensor>> {
        match cfg.attn.qk_norm {
            None => Ok(None),
            Some(QkNorm::PerHead) => ckpt.get(&name, &[cfg.attn.d_head]).map(Some),
            Some(QkNorm::Full) => ckpt.get(&name, &[full]).map(Some),
        }
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let attn = AttnWeights {
            w_q: linear_t(ckpt, &format!("{a}.q_proj.weight"), qd, d)?,
            b_q: opt(format!("{a}.q_proj.bias"), qd, cfg.attn.qkv_bias)?,
            w_k: linear_t(ckpt, &format!("{a}.k_proj.weight"), kvd, d)?,
            b_k: opt(format!("{a}.k_proj.bias"), kvd, cfg.attn.qkv_bias)?,
            w_v: linear_t(ckpt, &format!("{a}.v_proj.weight"), kvd, d)?,
            b_v: opt(format!("{a}.v_proj.bias"), kvd, cfg.attn.qkv_bias)?,
            w_o: linear_t(ckpt, &format!("{a}.o_proj.weight"), d, qd)?,
            b_o: opt(format!("{a}.o_proj.bias"), d, cfg.attn.o_bias)?,
            q_norm: qk(format!("{a}.q_norm.weight"), qd)?,
            k_norm: qk(format!("{a}.k_norm.weight"), kvd)?,
        };
        let (mlp, moe) = match cfg.moe_at(l) {
            Some(_) => (None, Some(moe::weights(cfg, ckpt, l)?)),
            None => (
                Some(gated_mlp(cfg, ckpt, &format!("{p}.mlp"), cfg.d_mlp())?),
                None,
            ),
        };
        blocks.push(BlockWeights {
            ln1: rms(&format!("{p}.input_layernorm.weight"))?,
            attn,
            ln2: rms(&format!("{p}.post_attention_layernorm.weight"))?,
            mlp,
            moe,
        });
    }
    let w_u = if cfg.tied_embeddings {
        // Some tied checkpoints store the shared matrix a second time under its head's name.
        ckpt.skip("lm_head.weight");
        None
    } else {
        Some(linear_t(ckpt, "lm_head.weight", cfg.d_vocab, d)?)
    };
    Ok(Weights {
        w_e: ckpt.get("model.embed_tokens.weight", &[cfg.d_vocab, d])?,
        w_pos: None,
        blocks,
        ln_final: rms("model.norm.weight")?,
        w_u,
        b_u: None,
    })
}

/// A SwiGLU MLP of width `m` under `{p}.gate_proj` / `up_proj` / `down_proj` (with biases when
/// the config's MLP has them).
pub(super) fn gated_mlp(cfg: &Config, ckpt: &Checkpoint, p: &str, m: usize) -> Result<MlpWeights> {
    let d = cfg.d_model;
    let bias = matches!(cfg.mlp, Mlp::Gated { bias: true, .. });
    let opt = |name: String, n: usize| -> Result<Option<candle_core::Tensor>> {
        if bias {
            ckpt.get(&name, &[n]).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(MlpWeights {
        w_gate: Some(linear_t(ckpt, &format!("{p}.gate_proj.weight"), m, d)?),
        b_gate: opt(format!("{p}.gate_proj.bias"), m)?,
        w_in: linear_t(ckpt, &format!("{p}.up_proj.weight"), m, d)?,
        b_in: opt(format!("{p}.up_proj.bias"), m)?,
        w_out: linear_t(ckpt, &format!("{p}.down_proj.weight"), d, m)?,
        b_out: opt(format!("{p}.down_proj.bias"), d)?,
    })
}
