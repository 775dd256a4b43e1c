//! GPT-2: LayerNorm, learned positions, fused `c_attn`, Conv1D weights stored `[in, out]`.

use crate::error::{Error, Result};
use crate::model::arch::Fields;
use crate::model::config::{Attention, Config, Family, Mlp, Norm, NormKind, Positions};
use crate::model::weights::{
    AttnWeights, BlockWeights, Checkpoint, MlpWeights, NormWeights, Weights,
};

pub(super) fn config(f: &Fields) -> Result<Config> {
    let d_model = f.usize("n_embd")?;
    let n_heads = f.usize("n_head")?;
    if n_heads == 0 || d_model % n_heads != 0 {
        return Err(Error::config(
            f.path,
            format!("n_embd ({d_model}) must be a multiple of n_head ({n_heads})"),
        ));
    }
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(Error::config(
            f.path,
            "scale_attn_by_inverse_layer_idx = true is not supported",
        ));
    }
    let d_head = d_model / n_heads;
    Ok(Config {
        family: Family::Gpt2,
        d_model,
        n_layers: f.usize("n_layer")?,
        d_vocab: f.usize("vocab_size")?,
        n_ctx: match f.opt_usize("n_positions")? {
            Some(n) => n,
            None => f.usize("n_ctx")?,
        },
        attn: Attention {
            n_heads,
            n_kv_heads: n_heads,
            d_head,
            qkv_bias: true,
            o_bias: true,
            scale: if f.bool_or("scale_attn_weights", true)? {
                (d_head as f64).sqrt()
            } else {
                1.0
            },
            sliding_window: None,
            qk_norm: None,
        },
        mlp: Mlp::Dense {
            act: f.activation("activation_function", "gelu_new")?,
            bias: true,
            d_mlp: f.opt_usize("n_inner")?.unwrap_or(4 * d_model),
        },
        norm: Norm {
            kind: NormKind::LayerNorm,
            eps: f.opt_positive_f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            final_norm: true,
        },
        positions: Positions::Learned,
        tied_embeddings: true,
        unembed_bias: false,
        default_prepend_bos: true,
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
        processing: Default::default(),
    })
}

pub(super) fn weights(cfg: &Config, ckpt: &Checkpoint) -> Result<Weights> {
    // Checkpoints saved from GPT2LMHeadModel prefix names with "transformer."; GPT2Model does not.
    let pre = if ckpt.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let (d, m) = (cfg.d_model, cfg.d_mlp());
    let ln = |name: &str| -> Result<NormWeights> {
        Ok(NormWeights {
            w: Some(ckpt.get(&format!("{pre}{name}.weight"), &[d])?),
            b: Some(ckpt.get(&format!("{pre}{name}.bias"), &[d])?),
        })
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("{pre}h.{l}");
        // c_attn packs [q | k | v] along its output columns.
        let c_attn = ckpt.get(&format!("{p}.attn.c_attn.weight"), &[d, 3 * d])?;
        let c_attn_b = ckpt.get(&format!("{p}.attn.c_attn.bias"), &[3 * d])?;
        let col = |i: usize| c_attn.narrow(1, i * d, d).and_then(|t| t.contiguous());
        let bias = |i: usize| c_attn_b.narrow(0, i * d, d).and_then(|t| t.contiguous());
        let attn = AttnWeights {
            w_q: col(0)?,
            b_q: Some(bias(0)?),
            w_k: col(1)?,
            b_k: Some(bias(1)?),
            w_v: col(2)?,
            b_v: Some(bias(2)?),
            w_o: ckpt.get(&format!("{p}.attn.c_proj.weight"), &[d, d])?,
            b_o: Some(ckpt.get(&format!("{p}.attn.c_proj.bias"), &[d])?),
            q_norm: None,
            k_norm: None,
        };
        let mlp = MlpWeights {
            w_gate: None,
            b_gate: None,
            w_in: ckpt.get(&format!("{p}.mlp.c_fc.weight"), &[d, m])?,
            b_in: Some(ckpt.get(&format!("{p}.mlp.c_fc.bias"), &[m])?),
            w_out: ckpt.get(&format!("{p}.mlp.c_proj.weight"), &[m, d])?,
            b_out: Some(ckpt.get(&format!("{p}.mlp.c_proj.bias"), &[d])?),
        };
        blocks.push(BlockWeights {
            ln1: ln(&format!("h.{l}.ln_1"))?,
            attn,
            ln2: ln(&format!("h.{l}.ln_2"))?,
            mlp: Some(mlp),
            moe: None,
        });
    }
    // GPT-2's unembedding is the token embedding; a stored head is that same matrix.
    ckpt.skip("lm_head.weight");
    Ok(Weights {
        w_e: ckpt.get(&format!("{pre}wte.weight"), &[cfg.d_vocab, d])?,
        w_pos: Some(ckpt.get(&format!("{pre}wpe.weight"), &[cfg.n_ctx, d])?),
        blocks,
        ln_final: ln("ln_f")?,
        w_u: None,
        b_u: None,
    })
}
