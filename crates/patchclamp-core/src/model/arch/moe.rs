//! The mixtures of experts built on Llama: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE. Each is
//! Llama's attention (with q/k norms for OLMoE and Qwen3) and a routed MLP whose routing
//! facts come from the family's Hugging Face `modeling_*.py`.

use crate::error::{Error, Result};
use crate::model::arch::{linear_t, llama, Fields};
use crate::model::config::{Config, Family, Mlp, Moe, QkNorm, Scoring, Selection, SharedExpert};
use crate::model::weights::{Checkpoint, MlpWeights, MoeWeights};

/// Softmax-scored greedy top-k routing with no bias, scaling, shared expert or dense layer:
/// what Mixtral, Qwen and OLMoE share; each family sets what differs.
fn softmax_top_k(f: &Fields, n_experts: usize, d_expert: usize) -> Result<Moe> {
    Ok(Moe {
        act: f.activation("hidden_act", "silu")?,
        n_experts,
        top_k: f.usize("num_experts_per_tok")?,
        d_expert,
        scoring: Scoring::Softmax,
        selection: Selection::Greedy,
        selection_bias: false,
        norm_topk_prob: f.bool_or("norm_topk_prob", false)?,
        norm_eps: 0.0,
        routed_scaling_factor: 1.0,
        shared: None,
        dense_layers: vec![],
        d_mlp: 0,
    })
}

/// Mixtral: Mistral's attention, 8 experts top-2, softmax weights always renormalised.
pub(super) fn mixtral(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Mixtral)?;
    cfg.attn.sliding_window = f.opt_positive_usize("sliding_window")?;
    let mut moe = softmax_top_k(
        f,
        f.usize("num_local_experts")?,
        f.usize("intermediate_size")?,
    )?;
    moe.norm_topk_prob = true; // Mixtral always renormalises
    cfg.mlp = Mlp::Moe(moe);
    Ok(cfg)
}

/// Qwen2-MoE: Qwen2's attention (q/k/v biases), a sigmoid-gated shared expert, dense layers
/// where `decoder_sparse_step` / `mlp_only_layers` say.
pub(super) fn qwen2_moe(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Qwen2Moe)?;
    cfg.attn.qkv_bias = f.bool_or("qkv_bias", true)?;
    cfg.attn.o_bias = false;
    cfg.default_prepend_bos = false;
    refuse_sliding(f)?;
    let mut moe = qwen_routing(f, &cfg)?;
    let shared = f.opt_usize("shared_expert_intermediate_size")?.unwrap_or(0);
    if shared > 0 {
        moe.shared = Some(SharedExpert {
            d_mlp: shared,
            gated: true,
        });
    }
    cfg.mlp = Mlp::Moe(moe);
    Ok(cfg)
}

/// Qwen3-MoE: per-head q/k RMSNorm, no biases, no shared expert.
pub(super) fn qwen3_moe(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Qwen3Moe)?;
    cfg.attn.qk_norm = Some(QkNorm::PerHead);
    cfg.default_prepend_bos = false;
    refuse_sliding(f)?;
    cfg.mlp = Mlp::Moe(qwen_routing(f, &cfg)?);
    Ok(cfg)
}

/// OLMoE: q/k RMSNorm over the whole projection, 64 experts top-8, weights not renormalised
/// by default.
pub(super) fn olmoe(f: &Fields) -> Result<Config> {
    let mut cfg = llama::config(f, Family::Olmoe)?;
    cfg.attn.qk_norm = Some(QkNorm::Full);
    if f.opt_f64("clip_qkv")?.is_some() {
        return Err(Error::config(
            f.path,
            "clip_qkv (clamping q, k and v) is not supported for olmoe",
        ));
    }
    cfg.mlp = Mlp::Moe(softmax_top_k(
        f,
        n_experts(f)?,
        f.usize("intermediate_size")?,
    )?);
    Ok(cfg)
}

/// Qwen's routing fields (shared by Qwen2-MoE and Qwen3-MoE).
fn qwen_routing(f: &Fields, cfg: &Config) -> Result<Moe> {
    let n_experts = n_experts(f)?;
    let step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(Error::config(
            f.path,
            "decoder_sparse_step must be positive",
        ));
    }
    let only: Vec<usize> = match f.v.get("mlp_only_layers") {
        None | Some(serde_json::Value::Null) => vec![],
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
            .ok_or_else(|| {
                Error::config(
                    f.path,
                    "field 'mlp_only_layers' should be a list of layer numbers",
                )
            })?,
    };
    let dense_layers: Vec<usize> = (0..cfg.n_layers)
        .filter(|l| only.contains(l) || n_experts == 0 || (l + 1) % step != 0)
        .collect();
    let d_mlp = match dense_layers.is_empty() {
        true => 0,
        false => f.usize("intermediate_size")?,
    };
    Ok(Moe {
        dense_layers,
        d_mlp,
        ..softmax_top_k(f, n_experts, f.usize("moe_intermediate_size")?)?
    })
}

/// `num_experts`, or `num_local_experts` as transformers 5 writes it for some families.
fn n_experts(f: &Fields) -> Result<usize> {
    match f.opt_usize("num_experts")? {
        Some(n) => Ok(n),
        None => f.usize("num_local_experts"),
    }
}

/// Qwen's per-layer sliding windows are not modelled: refuse rather than run them wrong.
fn refuse_sliding(f: &Fields) -> Result<()> {
    if f.bool_or("use_sliding_window", false)? {
        return Err(Error::config(
            f.path,
            "use_sliding_window = true (per-layer sliding windows) is not supported",
        ));
    }
    Ok(())
}

/// Layer `l`'s router, experts and shared expert. Experts are read per expert
/// (`experts.E.gate_proj`, as checkpoints on the Hub store them) or from the stacked
/// `experts.gate_up_proj` / `experts.down_proj` that transformers 5 holds in memory.
pub(super) fn weights(cfg: &Config, ckpt: &Checkpoint, l: usize) -> Result<MoeWeights> {
    let m = cfg.moe_at(l).expect("a layer that routes");
    let d = cfg.d_model;
    let p = match cfg.family {
        Family::Mixtral => format!("model.layers.{l}.block_sparse_moe"),
        _ => format!("model.layers.{l}.mlp"),
    };
    let w_router = linear_t(ckpt, &format!("{p}.gate.weight"), m.n_experts, d)?;
    let stacked = format!("{p}.experts.gate_up_proj");
    let experts = if ckpt.has(&stacked) {
        let (e, h) = (m.n_experts, m.d_expert);
        let gate_up = ckpt.get(&stacked, &[e, 2 * h, d])?;
        let down = ckpt.get(&format!("{p}.experts.down_proj"), &[e, d, h])?;
        (0..e)
            .map(|i| -> Result<MlpWeights> {
                let gu = gate_up.get(i)?; // [2M, D]: gate rows, then up rows
                Ok(MlpWeights {
                    w_gate: Some(gu.narrow(0, 0, h)?.t()?.contiguous()?),
                    b_gate: None,
                    w_in: gu.narrow(0, h, h)?.t()?.contiguous()?,
                    b_in: None,
                    w_out: down.get(i)?.t()?.contiguous()?,
                    b_out: None,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        (0..m.n_experts)
            .map(|e| expert(cfg, ckpt, &format!("{p}.experts.{e}"), m.d_expert))
            .collect::<Result<Vec<_>>>()?
    };
    let shared = match m.shared {
        Some(s) => Some(llama::gated_mlp(
            cfg,
            ckpt,
            &format!("{p}.shared_expert"),
            s.d_mlp,
        )?),
        None => None,
    };
    let w_shared_gate = match m.shared {
        Some(s) if s.gated => Some(linear_t(
            ckpt,
            &format!("{p}.shared_expert_gate.weight"),
            1,
            d,
        )?),
        _ => None,
    };
    Ok(MoeWeights {
        w_router,
        router_bias: None,
        experts,
        shared,
        w_shared_gate,
    })
}

/// One routed expert under its family's names (Mixtral's `w1`/`w3`/`w2`, else
/// `gate_proj`/`up_proj`/`down_proj`).
fn expert(cfg: &Config, ckpt: &Checkpoint, p: &str, h: usize) -> Result<MlpWeights> {
    if cfg.family != Family::Mixtral {
        return llama::gated_mlp(cfg, ckpt, p, h);
    }
    let d = cfg.d_model;
    Ok(MlpWeights {
        w_gate: Some(linear_t(ckpt, &format!("{p}.w1.weight"), h, d)?),
        b_gate: None,
        w_in: linear_t(ckpt, &format!("{p}.w3.weight"), h, d)?,
        b_in: None,
        w_out: linear_t(ckpt, &format!("{p}.w2.weight"), d, h)?,
        b_out: None,
    })
}
