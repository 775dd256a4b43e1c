//! The key-value cache: keys and values of positions a forward pass reads instead of
//! recomputing. Sweeps start their variants from a base run's prefix (one row, shared by every
//! variant); generation keeps one row per prompt, left-padded to a common length, and appends
//! the keys and values of each new position.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, HookPoint as P};
use crate::input::{Input, Padding};
use crate::model::config::Config;

/// The keys and values of the first positions of a batch of sequences at every block.
///
/// Rows are aligned at their ends: row `r`'s first `pad[r]` columns are padding (never
/// attended to) and its real positions follow, so a new position is the next column of every
/// row. A cache of one row serves a batch of any size (sweeps' variants share their base).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per block: keys `[R, C, K, E]` (after rotary embedding) and values `[R, C, K, E]`.
    pub layers: Vec<(Tensor, Tensor)>,
    /// Per row: the leading columns that are padding (empty: none anywhere).
    pad: Vec<usize>,
}

impl KvCache {
    /// The first `len` positions of row 0 of a run that recorded `hook_k` (`hook_rot_k` under
    /// rotary positions) and `hook_v` at every block.
    pub fn from_cache(cfg: &Config, cache: &ActivationCache, len: usize) -> Result<Self> {
        let layers = Self::read(cfg, cache, |t| {
            Ok(t.narrow(0, 0, 1)?.narrow(1, 0, len)?.contiguous()?)
        })?;
        Ok(KvCache {
            layers,
            pad: vec![],
        })
    }

    /// Every row of a run over `input` (left-padded or unpadded) that recorded
    /// [`KvCache::points`]: the cache a batched generation continues from.
    pub fn from_batch(cfg: &Config, cache: &ActivationCache, input: &Input) -> Result<Self> {
        let (_, s) = input.dims()?;
        if input.mask.is_some() && input.padding != Padding::Left {
            return Err(Error::Input(
                "a batched key-value cache needs left-padded rows (so every row ends at the last column)"
                    .into(),
            ));
        }
        let layers = Self::read(cfg, cache, |t| Ok(t.contiguous()?))?;
        let pad: Vec<usize> = input.lengths.iter().map(|&l| s - l).collect();
        let pad = if pad.iter().all(|&p| p == 0) {
            vec![]
        } else {
            pad
        };
        Ok(KvCache { layers, pad })
    }

    /// Per block, `pick` applied to the recorded keys and values.
    fn read(
        cfg: &Config,
        cache: &ActivationCache,
        pick: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        (0..cfg.n_layers)
            .map(|l| {
                let key = match cfg.rotary() {
                    Some(_) => P::RotK(l),
                    None => P::K(l),
                };
                let get = |p: P| -> Result<Tensor> {
                    let t = cache.get(p).ok_or_else(|| {
                        Error::Input(format!("a key-value prefix needs {p} in the cache"))
                    })?;
                    pick(t)
                };
                Ok((get(key)?, get(P::V(l))?))
            })
            .collect()
    }

    /// Appends the keys and values of the positions a forward over the input that follows
    /// the cache recorded (`hook_k` or `hook_rot_k`, and `hook_v`, at every block; every row).
    pub fn append(&mut self, cfg: &Config, cache: &ActivationCache) -> Result<()> {
        let new = Self::read(cfg, cache, |t| Ok(t.clone()))?;
        let rows = self.rows();
        for ((k, v), (nk, nv)) in self.layers.iter_mut().zip(new) {
            if nk.dim(0)? != rows {
                return Err(Error::Input(format!(
                    "the key-value cache has {rows} rows, the run appended {}",
                    nk.dim(0)?
                )));
            }
            *k = Tensor::cat(&[&*k, &nk], 1)?;
            *v = Tensor::cat(&[&*v, &nv], 1)?;
        }
        Ok(())
    }

    /// Keeps the rows `keep` (in that order), then drops the leading columns that are padding
    /// in every row left: a finished prompt stops costing the others anything.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        let rows = self.rows();
        if keep.is_empty() || keep.iter().any(|&r| r >= rows) {
            return Err(Error::Input(format!(
                "cannot keep rows {keep:?} of a {rows}-row key-value cache"
            )));
        }
        let dev = self.layers[0].0.device().clone();
        let idx = Tensor::from_vec(keep.iter().map(|&r| r as u32).collect(), keep.len(), &dev)?;
        let pad: Vec<usize> = keep.iter().map(|&r| self.pad_of(r)).collect();
        let drop = pad.iter().copied().min().unwrap_or(0);
        let cols = self.len() - drop;
        for (k, v) in self.layers.iter_mut() {
            *k = k
                .index_select(&idx, 0)?
                .narrow(1, drop, cols)?
                .contiguous()?;
            *v = v
                .index_select(&idx, 0)?
                .narrow(1, drop, cols)?
                .contiguous()?;
        }
        self.pad = if pad.iter().all(|&p| p == drop) {
            vec![]
        } else {
            pad.iter().map(|p| p - drop).collect()
        };
        Ok(())
    }

    /// The hook points a run records so that [`KvCache::append`] can extend a cache with it.
    pub fn points(cfg: &Config) -> Vec<P> {
        (0..cfg.n_layers)
            .flat_map(|l| {
                let key = match cfg.rotary() {
                    Some(_) => P::RotK(l),
                    None => P::K(l),
                };
                [key, P::V(l)]
            })
            .collect()
    }

    /// Number of cached columns (positions, padding included).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    /// Whether no positions are cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.dim(0).unwrap_or(0))
    }

    /// Row `r`'s leading padding columns.
    pub fn pad_of(&self, r: usize) -> usize {
        self.pad.get(r).copied().unwrap_or(0)
    }

    /// Row `r`'s real length: the absolute position id of the next position it gets.
    pub fn length_of(&self, r: usize) -> usize {
        self.len() - self.pad_of(r)
    }

    /// Whether some row holds padding (attention then needs an explicit mask).
    pub fn is_padded(&self) -> bool {
        !self.pad.is_empty()
    }
}
