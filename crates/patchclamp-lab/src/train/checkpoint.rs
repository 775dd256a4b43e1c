//! Training checkpoints: weights, optimiser moments, data-stream state and step in one
//! safetensors file, written atomically, so a resumed run continues bit for bit.
//!
//! A checkpoint knows what it is: the resolved experiment that wrote it (its identity, seeds
//! included) and a checksum of its tensor bytes. A resume is refused, saying what differs, when
//! the experiment is another one; a file whose bytes changed is refused as corrupt; weights that
//! are NaN or infinite are refused when read, so the learning rate is not blamed for a broken
//! file.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patchclamp_core::fsutil::{content_hash, write_atomic};
use patchclamp_core::rng::Rng;

use safetensors::tensor::Dtype;

use super::Trainer;
use crate::error::{Error, Result};

/// The format this version writes.
const FORMAT: &str = "patchclamp-train-2";
/// The format before identities and checksums: still read as a model, never resumed.
const FORMAT_1: &str = "patchclamp-train-1";

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
        ("experiment".into(), tr.identity.clone().unwrap_or_default()),
    ]
    .into();
    let out = serialize(&bufs, &meta);
    Ok(write_atomic(path, &out)?)
}

/// The safetensors layout with sorted keys, so the same state gives the same bytes
/// (`safetensors::serialize` orders its metadata map by hash).
pub(crate) fn serialize(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut order: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let data: Vec<u8> = order.iter().flat_map(|t| t.2.iter().copied()).collect();
    let mut meta = meta.clone();
    meta.insert("checksum".into(), content_hash(&data));
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
    out.extend_from_slice(&data);
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
        // A device or pipe named as a checkpoint would be read forever.
        if !path.is_file() {
            return Err(Error::Input(format!(
                "{} is not a file; a training checkpoint is a .safetensors file",
                path.display()
            )));
        }
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
        let format = get("format")?;
        if format != FORMAT && format != FORMAT_1 {
            return Err(foreign(format!("format '{format}'")));
        }
        if format == FORMAT {
            // The header was parsed above, so its length is known to fit the file.
            let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            let sum = content_hash(&bytes[8 + n..]);
            if get("checksum")? != &sum {
                return Err(bad(format!(
                    "its tensor bytes do not match the checksum written with them ({} stored, {sum} read): the file was changed or damaged after it was written",
                    get("checksum")?
                )));
            }
        }
        let cfg = patchclamp_core::Config::from_stored_json(get("config")?)
            .map_err(|e| bad(e.to_string()))?;
        // Declared sizes against the stored ones, before anything is allocated for them.
        let stored: usize = header
            .tensors()
            .iter()
            .filter(|(name, _)| name.starts_with("param."))
            .map(|(_, info)| info.shape.iter().product::<usize>())
            .sum();
        if cfg.n_params() > stored {
            return Err(bad(format!(
                "its config declares {} parameters but it stores {stored}",
                cfg.n_params()
            )));
        }
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

/// Checks that the checkpoint at `path` is one `tr` can resume: written by this version, by
/// the same experiment (identity) for the same model, its bytes intact. Returns its step.
/// Reads only; nothing is changed.
pub fn check_checkpoint(tr: &Trainer, path: &Path) -> Result<u64> {
    let st = Stored::read(path)?;
    st.check_resumable(tr)?;
    st.get("step")?
        .parse()
        .map_err(|_| st.bad("bad step".into()))
}

impl Stored {
    fn check_resumable(&self, tr: &Trainer) -> Result<()> {
        let path = self.path.display();
        if self.get("format")? == FORMAT_1 {
            return Err(Error::Input(format!(
                "{path} was written by an older patchclamp, without the experiment identity a resume checks; run without --resume to start over"
            )));
        }
        let stored = self.get("experiment")?;
        let ours = tr.identity.clone().unwrap_or_default();
        if stored != ours {
            return Err(Error::Input(format!(
                "{path} was written by a different experiment ({}); resume with the experiment and overrides that wrote it, or run without --resume to start over",
                differences(&stored, &ours)
            )));
        }
        if self.cfg != tr.model.cfg {
            return Err(Error::Input(format!(
                "{path} was written for a different model config; resume with the experiment that wrote it"
            )));
        }
        Ok(())
    }
}

/// What differs between two experiment identities, as `train.seed: 1 in the checkpoint, 2
/// here` (at most four differences).
fn differences(stored: &str, ours: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let (a, b) = (flatten(&parse(stored)), flatten(&parse(ours)));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "absent".into());
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} in the checkpoint, {} here",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect();
    match diffs.len() {
        0 if stored.is_empty() => "the checkpoint records no experiment".into(),
        0 => "the experiments are written differently".into(),
        n if n > 4 => format!("{} and {} more", diffs[..4].join("; "), n - 4),
        _ => diffs.join("; "),
    }
}

/// `{"train": {"seed": 1}}` as `train.seed = 1`, arrays as `interventions[0].at`.
fn flatten(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn go(prefix: String, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    go(key, x, out);
                }
            }
            serde_json::Value::Array(xs) => {
                for (i, x) in xs.iter().enumerate() {
                    go(format!("{prefix}[{i}]"), x, out);
                }
                if xs.is_empty() {
                    out.insert(prefix, "[]".into());
                }
            }
            x => {
                out.insert(prefix, x.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(String::new(), v, &mut out);
    out
}

/// Fails when a weight read from `path` is NaN or infinite.
fn check_finite(path: &Path, name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::Safetensors {
            path: path.to_path_buf(),
            msg: format!(
                "parameter {name} holds {} at index {i}: the file is damaged, or the run that wrote it diverged",
                values[i]
            ),
        }),
        None => Ok(()),
    }
}

/// Restores a state written by [`save_checkpoint`] into a trainer built from the same
/// experiment (weights, moments, step and data stream are replaced).
pub fn load_checkpoint(tr: &mut Trainer, path: &Path) -> Result<()> {
    let st = Stored::read(path)?;
    st.check_resumable(tr)?;
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
        check_finite(path, name, &p)?;
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
            .and_then(|d| check_finite(path, name, &d).map(|_| d))
            .map_err(|e| patchclamp_core::Error::Input(e.to_string()))?;
        Ok(Tensor::from_vec(data, t.dims(), &Device::Cpu)?)
    })?;
    Ok(patchclamp_core::Model::new(st.cfg.clone(), w)?)
}
