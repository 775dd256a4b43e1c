//! llama.cpp control vectors (GGUF): `general.architecture = "controlvector"`,
//! `controlvector.model_hint`, `controlvector.layer_count`, and F32 1-D tensors `direction.{k}`
//! (`k ≥ 1`, `n_embd` values) added to block k's output at every position — llama.cpp's
//! semantics, read and written with candle's GGUF module.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use patchclamp_core::hooks::Values;
use patchclamp_core::{HookPoint, Intervention, Op};
use patchclamp_lab::steering::SteeringVectors;

use crate::error::{Error, Result};

/// A control vector file's directions by block.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    /// The model family it was made for (`controlvector.model_hint`).
    pub model_hint: String,
    /// `direction.k` by block k (k ≥ 1).
    pub directions: BTreeMap<usize, Vec<f32>>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Input(format!("{}: {}", path.display(), msg.into()))
}

impl ControlVector {
    /// Reads a control vector, checking what llama.cpp checks: F32, 1-D, one width, k ≥ 1.
    pub fn read(path: &Path) -> Result<ControlVector> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let short = |e: candle_core::Error| {
            bad(path, e.to_string().lines().next().unwrap_or("").to_string())
        };
        let content = gguf_file::Content::read(&mut f).map_err(short)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned());
        if arch.as_deref() != Some("controlvector") {
            return Err(bad(
                path,
                format!("not a control vector (general.architecture is {arch:?}, expected \"controlvector\")"),
            ));
        }
        let model_hint = content
            .metadata
            .get("controlvector.model_hint")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        let mut directions = BTreeMap::new();
        let mut width = None;
        for (name, info) in &content.tensor_infos {
            let Some(k) = name.strip_prefix("direction.") else {
                continue;
            };
            let k: usize = k
                .parse()
                .map_err(|_| bad(path, format!("tensor {name}: expected direction.N")))?;
            if k == 0 {
                return Err(bad(
                    path,
                    "direction.0 is not allowed (llama.cpp has no control vector for block 0)",
                ));
            }
            let dims = info.shape.dims().to_vec();
            if info.ggml_dtype != GgmlDType::F32 || dims.len() != 1 {
                return Err(bad(
                    path,
                    format!(
                        "{name} must be F32 and 1-D, found {:?} {dims:?}",
                        info.ggml_dtype
                    ),
                ));
            }
            if *width.get_or_insert(dims[0]) != dims[0] {
                return Err(bad(
                    path,
                    format!(
                        "{name} has {} values, the others {}",
                        dims[0],
                        width.unwrap_or(0)
                    ),
                ));
            }
            let t = info
                .read(&mut f, content.tensor_data_offset, &Device::Cpu)
                .map_err(short)?
                .dequantize(&Device::Cpu)
                .map_err(short)?;
            let v: Vec<f32> = t.to_vec1().map_err(short)?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(path, format!("{name} holds a non-finite value")));
            }
            // llama.cpp sums a direction given twice.
            let e = directions.entry(k).or_insert_with(|| vec![0.0; v.len()]);
            e.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
        if directions.is_empty() {
            return Err(bad(path, "holds no direction.N tensors"));
        }
        Ok(ControlVector {
            model_hint,
            directions,
        })
    }

    /// The vectors extracted at blocks ≥ 1 as a control vector (llama.cpp cannot hold block 0).
    pub fn from_vectors(v: &SteeringVectors, model_hint: &str) -> Result<ControlVector> {
        if v.layers.contains(&0) {
            return Err(Error::Input(
                "a llama.cpp control vector has no slot for block 0: extract at blocks 1 and up"
                    .into(),
            ));
        }
        Ok(ControlVector {
            model_hint: model_hint.to_string(),
            directions: v
                .layers
                .iter()
                .copied()
                .zip(v.vectors.iter().cloned())
                .collect(),
        })
    }

    /// Writes the file (atomically), as llama.cpp and the `gguf` package read it.
    pub fn write(&self, path: &Path) -> Result<()> {
        let fail = |e: candle_core::Error| {
            bad(path, e.to_string().lines().next().unwrap_or("").to_string())
        };
        let tensors: Vec<(String, QTensor)> = self
            .directions
            .iter()
            .map(|(k, v)| {
                let t = Tensor::new(v.as_slice(), &Device::Cpu)?;
                Ok((
                    format!("direction.{k}"),
                    QTensor::quantize(&t, GgmlDType::F32)?,
                ))
            })
            .collect::<candle_core::Result<_>>()
            .map_err(fail)?;
        let arch = gguf_file::Value::String("controlvector".into());
        let hint = gguf_file::Value::String(self.model_hint.clone());
        let count = gguf_file::Value::I32(self.directions.len() as i32);
        let meta = [
            ("general.architecture", &arch),
            ("controlvector.model_hint", &hint),
            ("controlvector.layer_count", &count),
        ];
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &meta, &refs).map_err(fail)?;
        patchclamp_core::fsutil::write_atomic(path, buf.get_ref())
            .map_err(|e| crate::run_dir::write_error(path, e))
    }

    /// Writes the directions as safetensors (`direction.{k}`, F32), atomically.
    pub fn write_safetensors(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, Tensor)> = self
            .directions
            .iter()
            .map(|(k, v)| {
                Ok((
                    format!("direction.{k}"),
                    Tensor::new(v.as_slice(), &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()
            .map_err(|e| bad(path, e.to_string()))?;
        let meta =
            std::collections::HashMap::from([("model_hint".to_string(), self.model_hint.clone())]);
        let bytes = safetensors::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
            .map_err(|e| bad(path, e.to_string()))?;
        patchclamp_core::fsutil::write_atomic(path, &bytes)
            .map_err(|e| crate::run_dir::write_error(path, e))
    }

    /// The interventions that apply it: `scale · direction.k` added to block k's output at every
    /// position, for k in the inclusive `layers` range (llama.cpp's defaults: 1 to the last).
    pub fn interventions(
        &self,
        scale: f64,
        layers: Option<(usize, usize)>,
        n_layers: usize,
        d_model: usize,
    ) -> Result<Vec<Intervention>> {
        let (a, b) = layers.unwrap_or((1, n_layers.saturating_sub(1)));
        let mut out = vec![];
        for (&k, v) in &self.directions {
            if v.len() != d_model {
                return Err(Error::Input(format!(
                    "direction.{k} has {} values; the model's width is {d_model}",
                    v.len()
                )));
            }
            if k >= n_layers {
                return Err(Error::Input(format!(
                    "direction.{k} names block {k}; the model has {n_layers} blocks"
                )));
            }
            if k < a || k > b {
                continue;
            }
            out.push(Intervention {
                at: HookPoint::ResidPost(k),
                select: Default::default(),
                op: Op::Add {
                    vector: Values::Vector(v.iter().map(|&x| x as f64).collect()),
                    coef: scale,
                },
                when: Default::default(),
                decode: None,
            });
        }
        Ok(out)
    }
}
