//! The output folder every analysis command writes: result.json, result.safetensors (its grids)
//! and the heatmap as SVG and PNG, each written atomically.

use std::path::Path;

use anyhow::Context;
use candle_core::Tensor;
use patchclamp_core::fsutil::write_atomic;

use crate::plot::Heatmap;

/// The file names a report folder holds, for messages.
pub const FILES: &str = "{result.json,result.safetensors,heatmap.svg,heatmap.png}";

/// Writes the report into `dir`; `grids` are `rows × cols` row-major matrices. Returns the JSON.
pub fn write(
    dir: &Path,
    result: &serde_json::Value,
    grids: &[(&str, &[f32])],
    heat: &Heatmap,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(result)?;
    write_atomic(&dir.join("result.json"), text.as_bytes())?;
    let dev = candle_core::Device::Cpu;
    let tensors = grids
        .iter()
        .map(|(k, v)| {
            Ok((
                *k,
                Tensor::from_vec(v.to_vec(), (heat.rows, heat.cols), &dev)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (*k, t)), None)?;
    write_atomic(&dir.join("result.safetensors"), &bytes)?;
    write_atomic(&dir.join("heatmap.svg"), heat.svg().as_bytes())?;
    write_atomic(&dir.join("heatmap.png"), &heat.png())?;
    Ok(text)
}
