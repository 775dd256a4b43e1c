//! Linear-AcT maps on disk: one safetensors file with the per-unit `scale`, `shift`, `low` and
//! `high` (F32, 1-D, one width) and, in its metadata, the hook point they were fitted at, the
//! family of the model they were fitted on (`model_hint`, as control vectors have) and
//! `format = patchclamp-transport-1`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patchclamp_core::HookPoint;
use patchclamp_lab::steering::Transport;

use crate::error::{Error, Result};

/// The `format` metadata value of a transport file.
pub const FORMAT: &str = "patchclamp-transport-1";

const FIELDS: [&str; 4] = ["scale", "shift", "low", "high"];

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Input(format!("{}: {}", path.display(), msg.into()))
}

/// A Linear-AcT map file's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportFile {
    /// Where the maps were fitted.
    pub point: HookPoint,
    /// The family of the model they were fitted on (empty when the file does not say).
    pub model_hint: String,
    pub transport: Transport,
}

/// Writes `t`, fitted at `point` of a `model_hint` model, to `path` (atomically).
pub fn write(path: &Path, point: HookPoint, model_hint: &str, t: &Transport) -> Result<()> {
    let cols = [&t.scale, &t.shift, &t.low, &t.high];
    let named: Vec<(&str, Tensor)> = FIELDS
        .iter()
        .zip(cols)
        .map(|(&k, v)| {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Ok((k, Tensor::new(v.as_slice(), &Device::Cpu)?))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("point".to_string(), point.to_string()),
        ("model_hint".to_string(), model_hint.to_string()),
    ]);
    let bytes = safetensors::serialize(named.iter().map(|(k, t)| (*k, t)), Some(meta))
        .map_err(|e| bad(path, e.to_string()))?;
    patchclamp_core::fsutil::write_atomic(path, &bytes)
        .map_err(|e| crate::run_dir::write_error(path, e))
}

/// Reads a transport file, checked for one width, finite values and `low ≤ high`.
pub fn read(path: &Path) -> Result<TransportFile> {
    let bytes = patchclamp_core::fsutil::read_bytes(
        path,
        patchclamp_core::fsutil::SPEC_LIMIT,
        "transport files",
    )?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file ({e})")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(
            path,
            format!(
                "not a Linear-AcT map (its format is not {FORMAT}; write one with `steer fit-act`)"
            ),
        ));
    }
    let point: HookPoint = meta
        .get("point")
        .ok_or_else(|| bad(path, "no `point` in the metadata"))?
        .parse()
        .map_err(|e: patchclamp_core::Error| bad(path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e.to_string()))?;
    let mut cols: Vec<Vec<f64>> = vec![];
    for k in FIELDS {
        let v = st
            .tensor(k)
            .map_err(|_| bad(path, format!("no `{k}` tensor")))?;
        if v.dtype() != safetensors::Dtype::F32 || v.shape().len() != 1 {
            return Err(bad(path, format!("`{k}` must be a 1-D F32 tensor")));
        }
        let vals: Vec<f64> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect();
        if let Some(x) = vals.iter().find(|x| !x.is_finite()) {
            return Err(bad(path, format!("`{k}` holds a non-finite value ({x})")));
        }
        cols.push(vals);
    }
    if cols.iter().any(|c| c.len() != cols[0].len()) || cols[0].is_empty() {
        return Err(bad(
            path,
            "scale, shift, low and high must have one non-zero width",
        ));
    }
    let t = Transport {
        scale: cols[0].clone(),
        shift: cols[1].clone(),
        low: cols[2].clone(),
        high: cols[3].clone(),
    };
    if let Some(i) = (0..t.low.len()).find(|&i| t.low[i] > t.high[i]) {
        return Err(bad(
            path,
            format!("unit {i}'s band is reversed (low > high)"),
        ));
    }
    Ok(TransportFile {
        point,
        model_hint: meta.get("model_hint").cloned().unwrap_or_default(),
        transport: t,
    })
}
