//! An on-disk activation store: harvested activations in sharded safetensors files
//! (`acts-00000.safetensors`, tensor `acts` `[rows, d_in]` f32) and `store.json`, so one
//! harvest feeds many training runs (and the benchmark feeds two trainers the same rows).
//! Rows are stored in the order the harvest's shuffle buffer gave them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use patchclamp_core::fsutil::write_atomic;

use crate::{Error, Result};

/// `store.json`: what the shards hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreInfo {
    pub format: String,
    /// The hook point the rows were read at (empty when unknown, e.g. written by a script).
    pub hook: String,
    pub d_in: usize,
    pub rows: u64,
    pub shards: Vec<String>,
    /// What they were harvested from.
    #[serde(default)]
    pub source: String,
}

const FORMAT: &str = "patchclamp-activation-store-1";

/// Shard file names, in order.
pub fn shard_name(i: usize) -> String {
    format!("acts-{i:05}.safetensors")
}

/// Writes one shard of `rows × d` values into `dir`; returns its file name.
pub fn write_shard(dir: &Path, i: usize, data: &[f32], d: usize) -> Result<String> {
    let name = shard_name(i);
    let rows = data.len() / d;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::json!({"acts": {"dtype": "F32", "shape": [rows, d], "data_offsets": [0, bytes.len()]}});
    let mut head = serde_json::to_string(&header)
        .expect("plain data")
        .into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + bytes.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes);
    write_atomic(&dir.join(&name), &out)?;
    Ok(name)
}

/// Writes `store.json` (last: a store with one is complete).
pub fn write_info(dir: &Path, info: &StoreInfo) -> Result<()> {
    let text = serde_json::to_string_pretty(info).expect("plain data");
    Ok(write_atomic(&dir.join("store.json"), text.as_bytes())?)
}

/// Rows read back shard by shard, in stored order; one shard in memory at a time.
pub struct StoreReader {
    pub info: StoreInfo,
    dir: PathBuf,
    next_shard: usize,
    current: Vec<f32>,
    pos: usize,
}

impl StoreReader {
    /// Opens a store folder, checking `store.json` and that every shard is there.
    pub fn open(dir: &Path) -> Result<StoreReader> {
        let path = dir.join("store.json");
        let text = patchclamp_core::fsutil::read_text(&path, 1 << 24, "activation store indexes")?;
        let info: StoreInfo = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        if info.format != FORMAT {
            return Err(Error::Input(format!(
                "{}: format '{}', expected '{FORMAT}'",
                path.display(),
                info.format
            )));
        }
        if info.d_in == 0 || info.shards.is_empty() {
            return Err(Error::Input(format!(
                "{} describes an empty store",
                path.display()
            )));
        }
        for s in &info.shards {
            if !dir.join(s).is_file() {
                return Err(Error::Input(format!(
                    "the store {} misses its shard {s}",
                    dir.display()
                )));
            }
        }
        Ok(StoreReader {
            info,
            dir: dir.to_path_buf(),
            next_shard: 0,
            current: vec![],
            pos: 0,
        })
    }

    fn load_next(&mut self) -> Result<bool> {
        let Some(name) = self.info.shards.get(self.next_shard) else {
            return Ok(false);
        };
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        let t = st
            .tensor("acts")
            .map_err(|_| Error::Input(format!("{} holds no tensor 'acts'", path.display())))?;
        if t.dtype() != safetensors::Dtype::F32
            || t.shape().len() != 2
            || t.shape()[1] != self.info.d_in
        {
            return Err(Error::Input(format!(
                "{}: 'acts' is {:?} {:?}, expected F32 [rows, {}]",
                path.display(),
                t.dtype(),
                t.shape(),
                self.info.d_in
            )));
        }
        self.current = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = self.current.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "{} holds a non-finite activation at row {}",
                path.display(),
                i / self.info.d_in
            )));
        }
        self.pos = 0;
        self.next_shard += 1;
        Ok(true)
    }

    /// The next `rows` rows, or `None` when the store is used up.
    pub fn next_batch(&mut self, rows: usize) -> Result<Option<Vec<f32>>> {
        let d = self.info.d_in;
        let mut out = Vec::with_capacity(rows * d);
        while out.len() < rows * d {
            if self.pos >= self.current.len() && !self.load_next()? {
                return Ok(None);
            }
            let take = (rows * d - out.len()).min(self.current.len() - self.pos);
            out.extend_from_slice(&self.current[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(Some(out))
    }
}
