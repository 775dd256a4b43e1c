//! The key-value cache: keys and values of positions a forward pass reads instead of
//! recomputing. Sweeps start their variants from a base run's prefix; generation appends the
//! keys and values of each new position.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, HookPoint as P};
use crate::model::config::Config;

/// The keys and values of the first positions of a sequence at every block, from a cached run.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per block: keys `[1, p, K, E]` (after rotary embedding) and values `[1, p, K, E]`.
    pub layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// The first `len` positions of row 0 of a run that recorded `hook_k` (`hook_rot_k` under
    /// rotary positions) and `hook_v` at every block.
    pub fn from_cache(cfg: &Config, cache: &ActivationCache, len: usize) -> Result<Self> {
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let key = match cfg.rotary() {
                    Some(_) => P::RotK(l),
                    None => P::K(l),
                };
                let get = |p: P| -> Result<Tensor> {
                    let t = cache.get(p).ok_or_else(|| {
                        Error::Input(format!("a key-value prefix needs {p} in the cache"))
                    })?;
                    Ok(t.narrow(0, 0, 1)?.narrow(1, 0, len)?.contiguous()?)
                };
                Ok((get(key)?, get(P::V(l))?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers })
    }

    /// Appends the keys and values of the positions a forward over the input that follows
    /// the cache recorded (`hook_k` or `hook_rot_k`, and `hook_v`, at every block; row 0).
    pub fn append(&mut self, cfg: &Config, cache: &ActivationCache) -> Result<()> {
        let n = cache
            .get(P::V(0))
            .ok_or_else(|| {
                Error::Input("appending to a key-value cache needs blocks.0.attn.hook_v".into())
            })?
            .dim(1)?;
        let new = KvCache::from_cache(cfg, cache, n)?;
        if new.layers.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "the key-value cache has {} blocks, the run appended {}",
                self.layers.len(),
                new.layers.len()
            )));
        }
        for ((k, v), (nk, nv)) in self.layers.iter_mut().zip(new.layers) {
            *k = Tensor::cat(&[&*k, &nk], 1)?;
            *v = Tensor::cat(&[&*v, &nv], 1)?;
        }
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

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    /// Whether no positions are cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
