//! `patchclamp inspect MODEL`: config, parameter count and every hook point with its shape.

use patchclamp_report::outcomes::{hook_point_shapes, InspectOutcome};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder (config.json, model.safetensors, tokenizer.json) or a cached repo id.
    model: String,
    /// Apply TransformerLens's weight processing (fold_ln, centring, fold_value_biases) first.
    #[arg(long)]
    processed: bool,
    #[command(flatten)]
    sae: crate::sae::SaeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let m = crate::load_model(&a.model, a.processed)?;
    let cfg = &m.model.cfg;
    let points = hook_point_shapes(cfg, &a.sae.splices(cfg)?);
    if a.json {
        let out = InspectOutcome {
            dir: &m.files.dir,
            config: cfg,
            n_params: cfg.n_params(),
            tokenizer: m.files.tokenizer.as_deref(),
            hook_points: points,
        };
        crate::print(&serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    crate::print(&format!("model      {}", m.files.dir.display()));
    crate::print(&format!("family     {}", cfg.family));
    crate::print(&format!(
        "params     {} ({:.2} M)",
        cfg.n_params(),
        cfg.n_params() as f64 / 1e6
    ));
    crate::print(&format!(
        "shape      {} layers, d_model {}, {} heads ({} kv) × d_head {}, d_mlp {}, vocab {}, context {}",
        cfg.n_layers, cfg.d_model, cfg.attn.n_heads, cfg.attn.n_kv_heads, cfg.attn.d_head, cfg.d_mlp(), cfg.d_vocab, cfg.n_ctx
    ));
    crate::print(&format!(
        "norm       {:?} (eps {:e}), final norm: {}",
        cfg.norm.kind, cfg.norm.eps, cfg.norm.final_norm
    ));
    crate::print(&format!(
        "positions  {}",
        serde_json::to_string(&cfg.positions)?
    ));
    crate::print(&format!("mlp        {}", serde_json::to_string(&cfg.mlp)?));
    crate::print(&format!(
        "attention  scale {:.4}, qkv bias {}, o bias {}, sliding window {}",
        cfg.attn.scale,
        cfg.attn.qkv_bias,
        cfg.attn.o_bias,
        cfg.attn
            .sliding_window
            .map_or("none".into(), |w| w.to_string())
    ));
    crate::print(&format!(
        "embedding  tied: {}, prepend BOS by default: {}",
        cfg.tied_embeddings, cfg.default_prepend_bos
    ));
    crate::print(&format!(
        "processing {}",
        serde_json::to_string(&cfg.processing)?
    ));
    crate::print(&format!(
        "tokenizer  {}",
        m.files
            .tokenizer
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    ));
    crate::print(&format!("\n{} hook points:", points.len()));
    let width = points.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in points {
        crate::print(&format!("  {:width$}  [{}]", p.name, p.shape.join(", ")));
    }
    Ok(())
}
