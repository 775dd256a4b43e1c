//! `patchclamp inspect MODEL`: config, parameter count and every hook point with its shape.

use patchclamp_core::HookPoint;
use serde_json::json;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder (config.json, model.safetensors, tokenizer.json) or a cached repo id.
    model: String,
    /// Apply TransformerLens's weight processing (fold_ln, centring, fold_value_biases) first.
    #[arg(long)]
    processed: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let m = crate::load_model(&a.model, a.processed)?;
    let cfg = &m.model.cfg;
    let points: Vec<(String, Vec<String>)> = HookPoint::all(cfg)
        .into_iter()
        .map(|p| {
            // Symbolic shape: batch and positions named, model dimensions as numbers.
            let probe = p.shape(cfg, 1_000_001, 1_000_003);
            let dims = probe
                .iter()
                .map(|&d| match d {
                    1_000_001 => "batch".to_string(),
                    1_000_003 => "pos".to_string(),
                    n => n.to_string(),
                })
                .collect();
            (p.to_string(), dims)
        })
        .collect();
    if a.json {
        let out = json!({
            "dir": m.files.dir,
            "config": cfg,
            "n_params": cfg.n_params(),
            "tokenizer": m.files.tokenizer,
            "hook_points": points.iter().map(|(n, s)| json!({"name": n, "shape": s})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("model      {}", m.files.dir.display());
    println!("family     {}", cfg.family);
    println!(
        "params     {} ({:.2} M)",
        cfg.n_params(),
        cfg.n_params() as f64 / 1e6
    );
    println!(
        "shape      {} layers, d_model {}, {} heads ({} kv) × d_head {}, d_mlp {}, vocab {}, context {}",
        cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx
    );
    println!(
        "norm       {:?} (eps {:e}), final norm: {}",
        cfg.norm, cfg.norm_eps, cfg.final_norm
    );
    println!("positions  {}", serde_json::to_string(&cfg.positions)?);
    println!("mlp        {}", serde_json::to_string(&cfg.mlp)?);
    println!(
        "attention  scale {:.4}, qkv bias {}, o bias {}, sliding window {}",
        cfg.attn_scale,
        cfg.qkv_bias,
        cfg.o_bias,
        cfg.sliding_window.map_or("none".into(), |w| w.to_string())
    );
    println!(
        "embedding  tied: {}, prepend BOS by default: {}",
        cfg.tied_embeddings, cfg.default_prepend_bos
    );
    println!("processing {}", serde_json::to_string(&cfg.processing)?);
    println!(
        "tokenizer  {}",
        m.files
            .tokenizer
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    println!("\n{} hook points:", points.len());
    let width = points.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, shape) in points {
        println!("  {name:width$}  [{}]", shape.join(", "));
    }
    Ok(())
}
