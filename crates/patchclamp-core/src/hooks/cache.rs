//! The activation cache: exactly the activations a run asked for, keyed by hook point.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::hooks::HookPoint;

/// The `format` entry of a saved cache's metadata: how patchclamp knows a file is its own.
pub const CACHE_FORMAT: &str = "patchclamp-cache-1";

/// Whether `path` is an activation cache patchclamp wrote (and so may be replaced).
pub fn is_cache_file(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    use std::io::Read;
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return false;
    }
    let mut head = vec![0u8; n as usize];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&head)
        .ok()
        .and_then(|v| {
            v["__metadata__"]["format"]
                .as_str()
                .map(|f| f == CACHE_FORMAT)
        })
        .unwrap_or(false)
}

/// Recorded activations, in forward order: exactly the points a run's [`Hooks`](crate::Hooks)
/// asked for, each the tensor the forward computed (shared, not copied).
///
/// ```
/// use patchclamp_core::{load, HookPoint, Hooks, Input, Selector};
///
/// let dev = candle_core::Device::Cpu;
/// let m = load("../../tests/fixtures/models/gpt2", &dev)?;
/// let ids = m.tokenizer()?.prompt(&m.model.cfg, "The cat sat", None)?;
/// let mut hooks = Hooks::none().capture(Selector::parse("blocks.*.attn.hook_z")?);
/// m.model.forward(&Input::single(&ids, &dev)?, &mut hooks)?;
/// let cache = hooks.take_cache();
/// // By point or by TransformerLens name; a per-head view without knowing the axis.
/// let z = cache.get(HookPoint::Z(0)).expect("recorded"); // [batch, pos, head, d_head]
/// let z_head2 = cache.head(HookPoint::Z(0), 2)?; // [batch, pos, d_head]
/// assert_eq!(z_head2.dims(), &[z.dim(0)?, z.dim(1)?, z.dim(3)?]);
/// assert!(cache.by_name("blocks.0.hook_mlp_out").is_err(), "not recorded: an error, not a blank");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct ActivationCache {
    map: BTreeMap<HookPoint, Tensor>,
}

impl ActivationCache {
    /// Stores (or overwrites) the activation at `point`.
    pub fn insert(&mut self, point: HookPoint, x: Tensor) {
        self.map.insert(point, x);
    }

    /// The activation at `point`, if recorded.
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.map.get(&point)
    }

    /// The activation named `name` (a TransformerLens hook name), with a clear error if absent.
    pub fn by_name(&self, name: &str) -> Result<&Tensor> {
        let p: HookPoint = name.parse()?;
        self.map.get(&p).ok_or_else(|| Error::UnknownHook {
            name: format!("{name}' (not recorded in this cache"),
            near: ")".into(),
        })
    }

    /// One head's slice of a per-head activation (`hook_z`, `hook_pattern`, …), head dim kept out.
    pub fn head(&self, point: HookPoint, head: usize) -> Result<Tensor> {
        let x = self.map.get(&point).ok_or_else(|| Error::UnknownHook {
            name: format!("{point}' (not recorded in this cache"),
            near: ")".into(),
        })?;
        let Some(dim) = point.head_dim() else {
            return Err(Error::Input(format!("{point} has no head dimension")));
        };
        let n = x.dim(dim)?;
        if head >= n {
            return Err(Error::OutOfRange {
                what: "head",
                index: head as i64,
                limit: format!("{n} heads at {point}"),
            });
        }
        Ok(x.narrow(dim, head, 1)?.squeeze(dim)?)
    }

    /// Recorded points and activations in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (&HookPoint, &Tensor)> {
        self.map.iter()
    }

    /// Number of recorded activations.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held by the recorded tensors.
    pub fn nbytes(&self) -> usize {
        self.map
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Writes one safetensors file keyed by TransformerLens names, plus `extra` tensors
    /// (e.g. `tokens`), atomically.
    pub fn save_safetensors(&self, path: &Path, extra: &[(&str, Tensor)]) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = self
            .map
            .iter()
            .map(|(p, t)| (p.to_string(), t.clone()))
            .collect();
        for (k, t) in extra {
            named.push((k.to_string(), t.clone()));
        }
        let meta =
            std::collections::HashMap::from([("format".to_string(), CACHE_FORMAT.to_string())]);
        let bytes = safetensors::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
            .map_err(|e| Error::Safetensors {
                path: path.into(),
                msg: e.to_string(),
            })?;
        write_atomic(path, &bytes)
    }
}
