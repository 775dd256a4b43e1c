//! Reading and writing SAELens folders.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{ensure_finite, Checkpoint};
use crate::sae::{Architecture, Gated, Kind, Normalize, Sae, SaeConfig};

/// The config file.
pub const SAE_CFG: &str = "cfg.json";
/// The weights file.
pub const SAE_WEIGHTS: &str = "sae_weights.safetensors";
/// Log10 feature densities (optional).
pub const SAE_SPARSITY: &str = "sparsity.safetensors";
/// The trainer's input scaling factor (optional).
pub const SAE_SCALER: &str = "activation_scaler.json";

pub(super) fn load(dir: PathBuf, device: &Device) -> Result<Sae> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: "SAE folder",
            path: dir,
            hint: " (a SAELens folder holds cfg.json and sae_weights.safetensors)".into(),
        });
    }
    let cfg_path = dir.join(SAE_CFG);
    if !cfg_path.is_file() {
        return Err(Error::NotFound {
            what: "SAE config",
            path: cfg_path,
            hint: String::new(),
        });
    }
    let text = crate::fsutil::read_text(&cfg_path, 1 << 20, "SAE configs")?;
    let mut cfg = SaeConfig::parse(&text, &cfg_path)?;
    let ck = Checkpoint::open(&[dir.join(SAE_WEIGHTS)], device)?;
    let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.d_out);
    let mut w_enc = ck.get("W_enc", &[d_in, d_sae])?;
    let mut w_dec = ck.get("W_dec", &[d_sae, d_out])?;
    let mut b_dec = ck.get("b_dec", &[d_out])?;
    let (b_enc, gated) = match cfg.architecture {
        Architecture::Gated => (
            None,
            Some(Gated {
                b_gate: ck.get("b_gate", &[d_sae])?,
                r_mag: ck.get("r_mag", &[d_sae])?,
                b_mag: ck.get("b_mag", &[d_sae])?,
            }),
        ),
        _ => (Some(ck.get("b_enc", &[d_sae])?), None),
    };
    let threshold = match cfg.architecture {
        Architecture::JumpRelu => Some(ck.get("threshold", &[d_sae])?),
        _ => None,
    };
    let w_skip = match cfg.kind {
        Kind::SkipTranscoder => Some(ck.get("W_skip", &[d_out, d_in])?),
        _ => None,
    };
    // SAELens wrote an all-ones `scaling_factor` for a while and drops it on load; any other
    // value is a finetuning factor it applies, which patchclamp does not.
    if ck.has("scaling_factor") {
        let s = ck.get("scaling_factor", &[d_sae])?;
        let off = (s.affine(1.0, -1.0)?).abs()?.max(0)?.to_scalar::<f32>()?;
        if off > 0.0 {
            return Err(Error::Input(format!(
                "{}: a finetuning scaling_factor other than 1 is not supported",
                dir.display()
            )));
        }
    }
    ck.finish().map_err(|e| match e {
        Error::UnusedWeights { names, .. } => Error::Input(format!(
            "{} holds tensors a {} SAE has no place for ({names}): cfg.json's architecture and the weights disagree",
            dir.join(SAE_WEIGHTS).display(),
            cfg.architecture_name()
        )),
        e => e,
    })?;
    let mut named: Vec<(&str, &Tensor)> =
        vec![("W_enc", &w_enc), ("W_dec", &w_dec), ("b_dec", &b_dec)];
    for (n, t) in [
        ("b_enc", &b_enc),
        ("threshold", &threshold),
        ("W_skip", &w_skip),
    ] {
        if let Some(t) = t {
            named.push((n, t));
        }
    }
    if let Some(g) = &gated {
        named.extend([
            ("b_gate", &g.b_gate),
            ("r_mag", &g.r_mag),
            ("b_mag", &g.b_mag),
        ]);
    }
    for (n, t) in named {
        ensure_finite(t, &format!("{}: weight '{n}'", dir.display()))?;
    }
    if cfg.normalize == Normalize::ExpectedAverageOnlyIn {
        let scaler = dir.join(SAE_SCALER);
        if scaler.is_file() {
            let s = read_scaler(&scaler)?;
            // SAELens's trainer folds the factor into the weights at the end of training
            // (fold_activation_norm_scaling_factor); an unfolded checkpoint computes the same.
            w_enc = (w_enc * s)?;
            w_dec = (w_dec / s)?;
            b_dec = (b_dec / s)?;
            cfg.normalize = Normalize::None;
            tracing::info!(
                "{}: folded activation scaling factor {s} into the weights",
                dir.display()
            );
        } else {
            tracing::warn!(
                "{}: normalize_activations is expected_average_only_in but there is no {SAE_SCALER}; \
                 reading it as SAELens does (no scaling)",
                dir.display()
            );
        }
    }
    let sparsity = read_sparsity(&dir, d_sae, device)?;
    Ok(Sae {
        cfg,
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        threshold,
        gated,
        w_skip,
        sparsity,
        path: Some(dir),
    })
}

/// `activation_scaler.json`'s `scaling_factor`.
fn read_scaler(path: &Path) -> Result<f64> {
    let text = crate::fsutil::read_text(path, 1 << 16, "scaler files")?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
    match v.get("scaling_factor").and_then(|s| s.as_f64()) {
        Some(s) if s.is_finite() && s > 0.0 => Ok(s),
        Some(s) => Err(Error::config(
            path,
            format!("scaling_factor {s} must be positive and finite"),
        )),
        None => Err(Error::config(path, "missing a numeric 'scaling_factor'")),
    }
}

/// A folder's `sparsity.safetensors` (`sparsity` `[d_sae]`), if it has one.
pub fn read_sparsity(dir: &Path, d_sae: usize, device: &Device) -> Result<Option<Tensor>> {
    let path = dir.join(SAE_SPARSITY);
    if !path.is_file() {
        return Ok(None);
    }
    let ck = Checkpoint::open(&[path], device)?;
    Ok(Some(ck.get("sparsity", &[d_sae])?))
}

pub(super) fn save(sae: &Sae, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let mut tensors: Vec<(&str, &Tensor)> = vec![
        ("W_enc", &sae.w_enc),
        ("W_dec", &sae.w_dec),
        ("b_dec", &sae.b_dec),
    ];
    if let Some(b) = &sae.b_enc {
        tensors.push(("b_enc", b));
    }
    if let Some(t) = &sae.threshold {
        tensors.push(("threshold", t));
    }
    if let Some(w) = &sae.w_skip {
        tensors.push(("W_skip", w));
    }
    if let Some(g) = &sae.gated {
        tensors.extend([
            ("b_gate", &g.b_gate),
            ("r_mag", &g.r_mag),
            ("b_mag", &g.b_mag),
        ]);
    }
    let contiguous: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n.to_string(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::tensor::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), None)
            .map_err(|e| Error::Input(format!("serialising the SAE's weights: {e}")))?;
    crate::fsutil::write_atomic(&dir.join(SAE_WEIGHTS), &bytes)?;
    if let Some(s) = &sae.sparsity {
        let s = s.contiguous()?;
        let bytes = safetensors::tensor::serialize([("sparsity", &s)], None)
            .map_err(|e| Error::Input(format!("serialising sparsity: {e}")))?;
        crate::fsutil::write_atomic(&dir.join(SAE_SPARSITY), &bytes)?;
    }
    // The config last: a folder with a cfg.json is complete.
    crate::fsutil::write_atomic(&dir.join(SAE_CFG), sae.cfg.to_json().as_bytes())
}
