//! Training checkpoints: weights, optimiser moments, data-stream state and step in one
//! safetensors file, written atomically, so a resumed run continues bit for bit.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patchclamp_core::fsutil::write_atomic;
use patchclamp_core::rng::Rng;

use safetensors::tensor::Dtype;

use super::Trainer;
use crate::error::{Error, Result};

const FORMAT: &str = "patchclamp-train-1";

/// Writes the trainer's full state to `path` (atomically).
pub fn save_checkpoint(tr: &Trainer, path: &Path) -> Result<()> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for ((name, var), st) in tr.params.iter().zip(&tr.state) {
        let data = var.flatten_all()?.to_vec1::<f32>()?;
        bufs.push((format!("param.{name}"), var.dims().to_vec(), bytes(&data)));
        if !st.m.is_empty() {
            bufs.push((format!("m.{name}"), var.dims().to_vec(), bytes(&st.m)));
        }
        if !st.v.is_empty() {
            bufs.push((format!("v.{name}"), var.dims().to_vec(), bytes(&st.v)));
        }
    }
    let meta: BTreeMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("step".into(), tr.step.to_string()),
        ("rng".into(), tr.rng.state().to_string()),
        ("config".into(), json(&tr.model.cfg)),
        ("train".into(), json(&tr.spec)),
    ]
    .into();
    let out = serialize(&bufs, &meta);
    Ok(write_atomic(path, &out)?)
}

/// The safetensors layout with sorted keys, so the same state gives the same bytes
/// (`safetensors::serialize` orders its metadata map by hash).
fn serialize(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut order: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).expect("strings"),
    );
    let mut offset = 0usize;
    for (name, shape, bytes) in &order {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut head = serde_json::to_string(&header)
        .expect("plain data")
        .into_bytes();
    // The data must start 8-byte aligned; pad the header with spaces as safetensors does.
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, _, bytes) in order {
        out.extend_from_slice(bytes);
    }
    out
}

fn json<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x).expect("plain data serialises")
}

/// A checkpoint file read into memory, its header checked.
struct Stored {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    meta: std::collections::HashMap<String, String>,
    cfg: patchclamp_core::Config,
}

impl Stored {
    fn read(path: &Path) -> Result<Stored> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Safetensors {
            path: path.to_path_buf(),
            msg,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let foreign = |what: String| {
            Error::Input(format!(
                "{} is not a patchclamp training checkpoint ({what}); model folders load with `patchclamp run`",
                path.display()
            ))
        };
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| foreign(format!("no '{k}' entry")))
        };
        if get("format")? != FORMAT {
            return Err(foreign(format!("format '{}'", get("format")?)));
        }
        let cfg = patchclamp_core::Config::from_stored_json(get("config")?)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Stored {
            path: path.to_path_buf(),
            bytes,
            meta,
            cfg,
        })
    }

    fn bad(&self, msg: String) -> Error {
        Error::Safetensors {
            path: self.path.clone(),
            msg,
        }
    }

    /// A metadata entry.
    fn get(&self, k: &str) -> Result<String> {
        self.meta
            .get(k)
            .cloned()
            .ok_or_else(|| self.bad(format!("the checkpoint has no '{k}' entry")))
    }

    /// Tensor `name` as `n` f32 values, if present.
    fn tensor(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.bad(e.to_string()))?;
        let Ok(v) = st.tensor(name) else {
            return Ok(None);
        };
        if v.dtype() != Dtype::F32 || v.data().len() != 4 * n {
            return Err(self.bad(format!("tensor {name} has the wrong size or dtype")));
        }
        Ok(Some(
            v.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    /// Tensor `name`, which must be present.
    fn required(&self, name: &str, n: usize, what: &str) -> Result<Vec<f32>> {
        self.tensor(name, n)?
            .ok_or_else(|| self.bad(format!("missing {what} {name}")))
    }
}

/// Restores a state written by [`save_checkpoint`] into a trainer built from the same
/// model config (weights, moments, step and data stream are replaced).
pub fn load_checkpoint(tr: &mut Trainer, path: &Path) -> Result<()> {
    let st = Stored::read(path)?;
    if st.cfg != tr.model.cfg {
        return Err(Error::Input(format!(
            "checkpoint {} was written for a different model config; resume with the experiment that wrote it",
            path.display()
        )));
    }
    let step: u64 = st
        .get("step")?
        .parse()
        .map_err(|_| st.bad("bad step".into()))?;
    let rng: u64 = st
        .get("rng")?
        .parse()
        .map_err(|_| st.bad("bad rng state".into()))?;
    for ((name, var), state) in tr.params.iter().zip(tr.state.iter_mut()) {
        let n = var.elem_count();
        let p = st.required(&format!("param.{name}"), n, "parameter")?;
        var.set(&Tensor::from_vec(p, var.dims(), &Device::Cpu)?)?;
        if !state.m.is_empty() {
            state.m = st.required(&format!("m.{name}"), n, "optimiser state")?;
        }
        if !state.v.is_empty() {
            state.v = st.required(&format!("v.{name}"), n, "optimiser state")?;
        }
    }
    tr.step = step;
    tr.rng = Rng::from_state(rng);
    Ok(())
}

/// The model stored in a training checkpoint (for inference, or as a patch source).
pub fn load_model(path: &Path) -> Result<patchclamp_core::Model> {
    let st = Stored::read(path)?;
    let shell = patchclamp_core::model::Weights::random(&st.cfg, 0, &Device::Cpu)?;
    let w = shell.map(|name, t| {
        // `Weights::map` speaks the core's error: the lab's message is carried over whole.
        let data = st
            .required(&format!("param.{name}"), t.elem_count(), "parameter")
            .map_err(|e| patchclamp_core::Error::Input(e.to_string()))?;
        Ok(Tensor::from_vec(data, t.dims(), &Device::Cpu)?)
    })?;
    Ok(patchclamp_core::Model::new(st.cfg.clone(), w)?)
}
