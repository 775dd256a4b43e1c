//! Families: each maps a Hugging Face `config.json` and its weight names onto the canonical model.

mod gpt2;
mod llama;
mod mistral;
mod moe;
mod qwen2;

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::{Activation, Config, Family};
use crate::model::weights::{Checkpoint, Weights};

/// The families patchclamp can load, by their `model_type`.
pub const FAMILIES: &[&str] = &[
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
];

/// Maps `config.json` (already parsed) onto the canonical config.
pub fn config_from_hf(json: &Value, path: &Path) -> Result<Config> {
    let f = Fields { v: json, path };
    let family = family_of(json, path)?;
    let cfg = match family.as_str() {
        "gpt2" => gpt2::config(&f)?,
        "llama" => llama::config(&f, Family::Llama)?,
        "mistral" => mistral::config(&f)?,
        "qwen2" => qwen2::config(&f)?,
        "mixtral" => moe::mixtral(&f)?,
        "qwen2_moe" => moe::qwen2_moe(&f)?,
        "qwen3_moe" => moe::qwen3_moe(&f)?,
        "olmoe" => moe::olmoe(&f)?,
        _ => unreachable!("family_of only returns known families"),
    };
    cfg.validate().map_err(|e| match e {
        Error::Config { msg, .. } => Error::config(path, msg),
        e => e,
    })?;
    Ok(cfg)
}

/// Reads the weights of a `cfg.family` model from `ckpt`.
pub fn weights_from_hf(cfg: &Config, ckpt: &Checkpoint) -> Result<Weights> {
    match cfg.family {
        Family::Gpt2 => gpt2::weights(cfg, ckpt),
        Family::Llama
        | Family::Mistral
        | Family::Qwen2
        | Family::Mixtral
        | Family::Qwen2Moe
        | Family::Qwen3Moe
        | Family::Olmoe => llama::weights(cfg, ckpt),
        other => Err(Error::UnknownFamily {
            found: other.to_string(),
            path: "config".into(),
            supported: FAMILIES.join(", "),
        }),
    }
}

/// The family named by `model_type`, or by `architectures[0]` as a fallback.
fn family_of(json: &Value, path: &Path) -> Result<String> {
    let unknown = |found: String| Error::UnknownFamily {
        found,
        path: path.into(),
        supported: FAMILIES.join(", "),
    };
    if let Some(t) = json.get("model_type").and_then(Value::as_str) {
        return if FAMILIES.contains(&t) {
            Ok(t.to_string())
        } else {
            Err(unknown(t.to_string()))
        };
    }
    let arch = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::config(
                path,
                "neither 'model_type' nor 'architectures' is set; cannot tell the model family",
            )
        })?;
    let by_arch = [
        ("GPT2LMHeadModel", "gpt2"),
        ("LlamaForCausalLM", "llama"),
        ("MistralForCausalLM", "mistral"),
        ("Qwen2ForCausalLM", "qwen2"),
        ("MixtralForCausalLM", "mixtral"),
        ("Qwen2MoeForCausalLM", "qwen2_moe"),
        ("Qwen3MoeForCausalLM", "qwen3_moe"),
        ("OlmoeForCausalLM", "olmoe"),
    ];
    by_arch
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, f)| f.to_string())
        .ok_or_else(|| unknown(arch.to_string()))
}

/// Typed access to `config.json` fields with errors that name the field and the file.
pub(crate) struct Fields<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl Fields<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::config(self.path, format!("missing field '{key}'"))
    }

    fn wrong(&self, key: &str, want: &str) -> Error {
        Error::config(
            self.path,
            format!("field '{key}' should be {want}, found {}", self.v[key]),
        )
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional non-negative integer (null counts as absent).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.wrong(key, "a non-negative integer")),
        }
    }

    /// An optional number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number")),
        }
    }

    /// An optional number that must be finite and positive when present (epsilons, bases).
    pub fn opt_positive_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.opt_f64(key)? {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(self.wrong(key, "a positive number")),
            x => Ok(x),
        }
    }

    /// An optional integer that must be positive when present (`sliding_window`).
    pub fn opt_positive_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.opt_usize(key)? {
            Some(0) => Err(self.wrong(key, "a positive integer")),
            x => Ok(x),
        }
    }

    /// An optional boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| self.wrong(key, "true or false")),
        }
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a string")),
        }
    }

    /// An optional token id (some configs give a list; the first is used).
    pub fn token_id(&self, key: &str) -> Option<u32> {
        match self.v.get(key) {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as u32),
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|n| n as u32),
            _ => None,
        }
    }

    /// The activation named by `key`.
    pub fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.opt_str(key)?.unwrap_or(default);
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::config(
                    self.path,
                    format!("unsupported activation '{other}' in '{key}'; supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu"),
                ))
            }
        })
    }
}

/// Loads an HF `nn.Linear` weight `[out, in]` as `[in, out]`.
pub(crate) fn linear_t(
    ckpt: &Checkpoint,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<candle_core::Tensor> {
    Ok(ckpt.get(name, &[out, inp])?.t()?.contiguous()?)
}
