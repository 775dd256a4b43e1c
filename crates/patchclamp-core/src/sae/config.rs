//! An SAE's `cfg.json` in SAELens's v6 layout, with older layouts upgraded as SAELens does.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::hooks::{HookPoint, SaeAt};

/// How the latents are computed from the encoder's pre-activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `relu(pre)`.
    Standard,
    /// `relu(pre) · [pre > threshold]`.
    JumpRelu,
    /// `relu` of the `k` largest pre-activations, the rest zero.
    TopK,
    /// A gate `[x W_enc + b_gate > 0]` times the magnitude `relu(x (W_enc ⊙ e^r_mag) + b_mag)`.
    Gated,
}

/// What the SAE reads from and writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reconstructs the activation it reads.
    Sae,
    /// Reads one point and writes another (`hook_name` → `hook_name_out`), `d_in` → `d_out`.
    Transcoder,
    /// A transcoder with a linear skip path `x W_skipᵀ` added to its output.
    SkipTranscoder,
}

/// How activations are normalised on the way in (and undone on the way out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Nothing.
    None,
    /// A constant factor fitted in training (`activation_scaler.json`), folded into the
    /// weights on load as SAELens's trainer folds it at the end.
    ExpectedAverageOnlyIn,
    /// Each token rescaled to norm `√d_in`, the output scaled back.
    ConstantNormRescale,
    /// Each token centred and divided by its (unbiased) standard deviation, undone after.
    LayerNorm,
}

/// Every SAELens architecture name patchclamp reads, for errors.
pub const ARCHITECTURES: &str =
    "standard, jumprelu, topk, gated, transcoder, skip_transcoder, jumprelu_transcoder";

/// The configuration of one SAE: the typed fields patchclamp computes with and the whole
/// `cfg.json` object, kept so that saving writes back every key it read.
#[derive(Debug, Clone, PartialEq)]
pub struct SaeConfig {
    /// The activation function family.
    pub architecture: Architecture,
    /// SAE or transcoder.
    pub kind: Kind,
    /// Width of what the SAE reads (after `hook_z` flattening).
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Width of what it writes: `d_in` for an SAE.
    pub d_out: usize,
    /// Whether `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Input normalisation.
    pub normalize: Normalize,
    /// Whether `[.., head, d_head]` activations are flattened to `[.., head·d_head]`.
    pub reshape_hook_z: bool,
    /// TopK's `k`.
    pub k: Option<usize>,
    /// TopK: rank pre-activations scaled by the decoder rows' norms.
    pub rescale_acts_by_decoder_norm: bool,
    /// `metadata.hook_name`: where it reads.
    pub hook_name: Option<String>,
    /// `metadata.hook_name_out`: where a transcoder writes.
    pub hook_name_out: Option<String>,
    /// The `cfg.json` object in v6 layout (upgraded if it was older).
    pub raw: Map<String, Value>,
}

impl SaeConfig {
    /// Parses a `cfg.json` text (`path` names it in errors), upgrading pre-6.0 layouts.
    pub fn parse(text: &str, path: &Path) -> Result<SaeConfig> {
        let bad = |msg: String| Error::config(path, msg);
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(mut raw) = value else {
            return Err(bad("cfg.json must be a JSON object".into()));
        };
        let version = raw
            .get("sae_lens_version")
            .or_else(|| raw.get("metadata").and_then(|m| m.get("sae_lens_version")))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if version.as_deref().is_none_or(|v| major(v) < 6) {
            raw = upgrade_pre6(raw);
        }
        Self::from_raw(raw).map_err(bad)
    }

    /// The typed view of a v6 `cfg.json` object.
    fn from_raw(raw: Map<String, Value>) -> std::result::Result<SaeConfig, String> {
        let arch = raw
            .get("architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("standard");
        let (architecture, kind) = match arch {
            "standard" => (Architecture::Standard, Kind::Sae),
            "jumprelu" => (Architecture::JumpRelu, Kind::Sae),
            "topk" => (Architecture::TopK, Kind::Sae),
            "gated" => (Architecture::Gated, Kind::Sae),
            "transcoder" => (Architecture::Standard, Kind::Transcoder),
            "skip_transcoder" => (Architecture::Standard, Kind::SkipTranscoder),
            "jumprelu_transcoder" => (Architecture::JumpRelu, Kind::Transcoder),
            "jumprelu_skip_transcoder" => (Architecture::JumpRelu, Kind::SkipTranscoder),
            "batchtopk" | "matryoshka_batchtopk" => {
                return Err(format!(
                    "architecture '{arch}' is a training-only form; SAELens saves it as 'jumprelu'"
                ))
            }
            other => {
                return Err(format!(
                    "unknown SAE architecture '{other}'; supported: {ARCHITECTURES}"
                ))
            }
        };
        let dim = |key: &str| -> std::result::Result<usize, String> {
            let v = raw
                .get(key)
                .ok_or_else(|| format!("missing '{key}'"))?
                .as_u64()
                .ok_or_else(|| format!("'{key}' must be a positive integer"))?;
            if v == 0 || v > (1 << 31) {
                return Err(format!("'{key}' = {v} is not a usable width (1..=2^31)"));
            }
            Ok(v as usize)
        };
        let d_in = dim("d_in")?;
        let d_sae = dim("d_sae")?;
        let d_out = match kind {
            Kind::Sae => d_in,
            _ => dim("d_out")?,
        };
        let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("'{key}' must be true or false, got {v}")),
            }
        };
        let apply_b_dec_to_input = flag("apply_b_dec_to_input", kind == Kind::Sae)?;
        if apply_b_dec_to_input && kind != Kind::Sae {
            return Err(
                "apply_b_dec_to_input is not supported for transcoders (b_dec has d_out entries)"
                    .into(),
            );
        }
        let normalize = match raw.get("normalize_activations").and_then(|v| v.as_str()) {
            None | Some("none") => Normalize::None,
            Some("expected_average_only_in") => Normalize::ExpectedAverageOnlyIn,
            Some("constant_norm_rescale") => Normalize::ConstantNormRescale,
            Some("layer_norm") => Normalize::LayerNorm,
            Some(other) => {
                return Err(format!(
                    "normalize_activations '{other}' is not supported (none, expected_average_only_in, constant_norm_rescale, layer_norm)"
                ))
            }
        };
        let reshape_hook_z = match raw.get("reshape_activations").and_then(|v| v.as_str()) {
            None | Some("none") => false,
            Some("hook_z") => true,
            Some(other) => {
                return Err(format!(
                    "reshape_activations '{other}' is not supported (none, hook_z)"
                ))
            }
        };
        let k = match architecture {
            Architecture::TopK => {
                let k = dim("k")?;
                if k > d_sae {
                    return Err(format!("k = {k} exceeds d_sae = {d_sae}"));
                }
                Some(k)
            }
            _ => None,
        };
        let rescale_acts_by_decoder_norm = flag("rescale_acts_by_decoder_norm", false)?;
        let meta = raw.get("metadata").and_then(|m| m.as_object());
        let text = |key: &str| {
            meta.and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let hook_name = text("hook_name");
        let hook_name_out = text("hook_name_out");
        if kind != Kind::Sae && hook_name.is_some() && hook_name_out.is_none() {
            return Err("a transcoder needs metadata.hook_name_out (where it writes)".into());
        }
        Ok(SaeConfig {
            architecture,
            kind,
            d_in,
            d_sae,
            d_out,
            apply_b_dec_to_input,
            normalize,
            reshape_hook_z,
            k,
            rescale_acts_by_decoder_norm,
            hook_name,
            hook_name_out,
            raw,
        })
    }

    /// SAELens's architecture name.
    pub fn architecture_name(&self) -> &'static str {
        match (self.kind, self.architecture) {
            (Kind::Sae, Architecture::Standard) => "standard",
            (Kind::Sae, Architecture::JumpRelu) => "jumprelu",
            (Kind::Sae, Architecture::TopK) => "topk",
            (Kind::Sae, Architecture::Gated) => "gated",
            (Kind::Transcoder, Architecture::JumpRelu) => "jumprelu_transcoder",
            (Kind::Transcoder, _) => "transcoder",
            (Kind::SkipTranscoder, Architecture::JumpRelu) => "jumprelu_skip_transcoder",
            (Kind::SkipTranscoder, _) => "skip_transcoder",
        }
    }

    /// Where it reads, as a hook point (`metadata.hook_name`).
    pub fn hook_in(&self) -> Result<Option<HookPoint>> {
        self.hook_name.as_deref().map(parse_site).transpose()
    }

    /// Where a transcoder writes (`metadata.hook_name_out`); an SAE writes where it reads.
    pub fn hook_out(&self) -> Result<Option<HookPoint>> {
        match self.kind {
            Kind::Sae => self.hook_in(),
            _ => self.hook_name_out.as_deref().map(parse_site).transpose(),
        }
    }

    /// A new configuration for an SAE patchclamp trains, in SAELens's v6 layout.
    pub fn new(
        architecture: Architecture,
        d_in: usize,
        d_sae: usize,
        hook_name: &str,
        metadata: Map<String, Value>,
    ) -> SaeConfig {
        let mut raw = Map::new();
        raw.insert("d_in".into(), d_in.into());
        raw.insert("d_sae".into(), d_sae.into());
        raw.insert("dtype".into(), "float32".into());
        raw.insert("device".into(), "cpu".into());
        raw.insert("apply_b_dec_to_input".into(), true.into());
        raw.insert("normalize_activations".into(), "none".into());
        raw.insert("reshape_activations".into(), "none".into());
        let mut meta = metadata;
        meta.insert("hook_name".into(), hook_name.into());
        meta.entry("sae_lens_version")
            .or_insert_with(|| SAELENS_FORMAT.into());
        meta.entry("sae_lens_training_version")
            .or_insert_with(|| Value::String(format!("patchclamp {}", env!("CARGO_PKG_VERSION"))));
        raw.insert("metadata".into(), Value::Object(meta));
        let name = match architecture {
            Architecture::Standard => "standard",
            Architecture::JumpRelu => "jumprelu",
            Architecture::TopK => "topk",
            Architecture::Gated => "gated",
        };
        raw.insert("architecture".into(), name.into());
        SaeConfig {
            architecture,
            kind: Kind::Sae,
            d_in,
            d_sae,
            d_out: d_in,
            apply_b_dec_to_input: true,
            normalize: Normalize::None,
            reshape_hook_z: false,
            k: None,
            rescale_acts_by_decoder_norm: false,
            hook_name: Some(hook_name.to_string()),
            hook_name_out: None,
            raw,
        }
    }

    /// Sets TopK's `k` (and the key SAELens reads).
    pub fn with_k(mut self, k: usize) -> SaeConfig {
        self.k = Some(k);
        self.raw.insert("k".into(), k.into());
        self.raw
            .insert("rescale_acts_by_decoder_norm".into(), false.into());
        self
    }

    /// The JSON text SAELens reads.
    pub fn to_json(&self) -> String {
        let mut raw = self.raw.clone();
        // What patchclamp computes with is what it writes: normalisation folded on load reads
        // back as "none".
        let norm = match self.normalize {
            Normalize::None => "none",
            Normalize::ExpectedAverageOnlyIn => "expected_average_only_in",
            Normalize::ConstantNormRescale => "constant_norm_rescale",
            Normalize::LayerNorm => "layer_norm",
        };
        raw.insert("normalize_activations".into(), norm.into());
        raw.insert("architecture".into(), self.architecture_name().into());
        serde_json::to_string_pretty(&Value::Object(raw)).unwrap_or_default()
    }
}

/// The SAELens format version patchclamp writes.
pub const SAELENS_FORMAT: &str = "6.0.0";

/// A hook name from an SAE's config as a splice site.
fn parse_site(name: &str) -> Result<HookPoint> {
    let p: HookPoint = name.parse()?;
    if SaeAt::new(p).is_none() {
        return Err(Error::Input(format!(
            "an SAE splices at a block's point (blocks.L.…), not at {name}"
        )));
    }
    Ok(p)
}

/// The major version of a version string ("6.5.1" → 6; unparsable → 0).
fn major(v: &str) -> u64 {
    v.split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// SAELens's upgrade of a pre-6.0 config: renamed keys, topk from `activation_fn_kwargs`,
/// boolean normalisation, model keys moved into `metadata`.
fn upgrade_pre6(old: Map<String, Value>) -> Map<String, Value> {
    let rename = |k: &str| match k {
        "hook_point" => "hook_name".to_string(),
        "hook_point_head_index" => "hook_head_index".to_string(),
        "activation_fn_str" => "activation_fn".to_string(),
        k => k.to_string(),
    };
    let mut cfg: Map<String, Value> = old.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    cfg.entry("prepend_bos").or_insert(true.into());
    cfg.entry("apply_b_dec_to_input").or_insert(true.into());
    cfg.entry("architecture").or_insert("standard".into());
    if !cfg.contains_key("reshape_activations") {
        let z = cfg
            .get("hook_name")
            .and_then(|v| v.as_str())
            .is_some_and(|h| h.contains("hook_z"));
        cfg.insert(
            "reshape_activations".into(),
            if z { "hook_z" } else { "none" }.into(),
        );
    }
    let topk_k = cfg
        .get("activation_fn_kwargs")
        .and_then(|kw| kw.get("k"))
        .filter(|k| !k.is_null())
        .cloned();
    if cfg.get("activation_fn").and_then(|v| v.as_str()) == Some("topk") {
        if let Some(k) = &topk_k {
            cfg.insert("architecture".into(), "topk".into());
            cfg.insert("k".into(), k.clone());
        }
    }
    match cfg.get("normalize_activations") {
        Some(Value::Bool(b)) => {
            let mode = if *b {
                "expected_average_only_in"
            } else {
                "none"
            };
            cfg.insert("normalize_activations".into(), mode.into());
        }
        None | Some(Value::Null) => {
            cfg.insert("normalize_activations".into(), "none".into());
        }
        _ => {}
    }
    const TOP: &[&str] = &[
        "d_in",
        "d_sae",
        "d_out",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "reshape_activations",
        "architecture",
        "k",
        "rescale_acts_by_decoder_norm",
    ];
    const META: &[&str] = &[
        "model_name",
        "hook_name",
        "model_class_name",
        "hook_head_index",
        "model_from_pretrained_kwargs",
        "prepend_bos",
        "exclude_special_tokens",
        "neuronpedia_id",
        "context_size",
        "seqpos_slice",
        "dataset_path",
        "sae_lens_version",
        "sae_lens_training_version",
        "hook_name_out",
        "hook_head_index_out",
        "hf_hook_name",
        "hf_hook_name_out",
    ];
    let mut out = Map::new();
    let mut meta = Map::new();
    for (k, v) in cfg {
        if TOP.contains(&k.as_str()) {
            out.insert(k, v);
        } else if META.contains(&k.as_str()) {
            meta.insert(k, v);
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre6_topk_is_upgraded_as_saelens_does() {
        let text = r#"{"d_in": 8, "d_sae": 16, "hook_point": "blocks.0.hook_resid_post",
            "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
            "normalize_activations": true, "context_size": 4, "lr": 0.001}"#;
        let cfg = SaeConfig::parse(text, Path::new("cfg.json")).unwrap();
        assert_eq!(cfg.architecture, Architecture::TopK);
        assert_eq!(cfg.k, Some(3));
        assert_eq!(cfg.normalize, Normalize::ExpectedAverageOnlyIn);
        assert_eq!(cfg.hook_name.as_deref(), Some("blocks.0.hook_resid_post"));
        assert!(cfg.raw["metadata"].get("context_size").is_some());
        assert!(cfg.raw.get("lr").is_none(), "training keys are dropped");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = |t: &str| {
            SaeConfig::parse(t, Path::new("x/cfg.json"))
                .unwrap_err()
                .to_string()
        };
        let v6 = r#""metadata": {"sae_lens_version": "6.1.0"}"#;
        assert!(e(&format!(
            r#"{{"d_in": 8, "d_sae": 16, "architecture": "magic", {v6}}}"#
        ))
        .contains("unknown SAE architecture 'magic'"));
        assert!(e(&format!(
            r#"{{"d_in": 8, "d_sae": 4, "architecture": "topk", "k": 9, {v6}}}"#
        ))
        .contains("k = 9 exceeds d_sae = 4"));
        assert!(e(&format!(r#"{{"d_in": 0, "d_sae": 4, {v6}}}"#)).contains("'d_in' = 0"));
        assert!(e(&format!(
            r#"{{"d_in": 8, "d_sae": 4, "architecture": "batchtopk", {v6}}}"#
        ))
        .contains("saves it as 'jumprelu'"));
        assert!(e("[1]").contains("x/cfg.json"));
    }
}
