//! `Hooks`: what a forward pass records and changes at its hook points.
//!
//! Every activation of the forward pass flows through exactly one call, `hooks.at(point, x)`.
//! With nothing registered at `point` that call is one hash lookup and returns `x` untouched.

mod cache;
mod point;
mod select;

pub use cache::ActivationCache;
pub use point::{HookPoint, NormSite};
pub use select::Selector;

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::Config;

/// A Rust closure that replaces the activation at a hook point (the escape hatch).
pub type EditFn = Box<dyn FnMut(HookPoint, &Tensor) -> Result<Tensor> + Send>;

/// The hooks of one forward pass: captures to record and edits to apply.
#[derive(Default)]
pub struct Hooks {
    selectors: Vec<Selector>,
    positions: Option<Vec<i64>>,
    edits: Vec<(HookPoint, EditFn)>,
    // Resolved against a model config by `prepare`.
    capture_set: HashSet<HookPoint>,
    edit_index: HashMap<HookPoint, Vec<usize>>,
    cache: ActivationCache,
}

impl Hooks {
    /// Hooks that record nothing and change nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Record the points `sel` matches.
    pub fn capture(mut self, sel: impl Into<Selector>) -> Self {
        self.selectors.push(sel.into());
        self
    }

    /// Record every hook point.
    pub fn capture_all(self) -> Self {
        self.capture(Selector::All)
    }

    /// Store only these positions (negative counts from the end) of each captured activation.
    pub fn at_positions(mut self, positions: Vec<i64>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// Replace the activation at `point` by `f(point, x)`; edits apply in the order added.
    pub fn edit(
        mut self,
        point: HookPoint,
        f: impl FnMut(HookPoint, &Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Self {
        self.edits.push((point, Box::new(f)));
        self
    }

    /// Resolves selectors and edits against `cfg`; the forward pass calls this first.
    pub fn prepare(&mut self, cfg: &Config) -> Result<()> {
        let all = HookPoint::all(cfg);
        self.capture_set.clear();
        for sel in &self.selectors {
            let matched = sel.resolve(&all, cfg)?;
            self.capture_set.extend(matched);
        }
        self.edit_index.clear();
        for (i, (p, _)) in self.edits.iter().enumerate() {
            if !p.exists_in(cfg) {
                return Err(Error::UnknownHook {
                    name: format!("{p}' (this model has no such point"),
                    near: ")".into(),
                });
            }
            self.edit_index.entry(*p).or_default().push(i);
        }
        Ok(())
    }

    /// Whether anything reads or changes `point` (lets the forward skip optional work).
    pub fn wants(&self, point: HookPoint) -> bool {
        self.capture_set.contains(&point) || self.edit_index.contains_key(&point)
    }

    /// Whether an edit changes `point` (captures alone do not).
    pub fn edits(&self, point: HookPoint) -> bool {
        self.edit_index.contains_key(&point)
    }

    /// The single place activations leave the forward pass: apply edits, record, pass on.
    pub fn at(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        if let Some(idx) = self.edit_index.get(&point) {
            for &i in idx {
                let new = (self.edits[i].1)(point, &x)?;
                if new.dims() != x.dims() {
                    return Err(Error::Input(format!(
                        "edit at {point} returned shape {:?}, expected {:?}",
                        new.dims(),
                        x.dims()
                    )));
                }
                x = new;
            }
        }
        if self.capture_set.contains(&point) {
            let stored = match &self.positions {
                Some(pos) => slice_positions(point, &x, pos)?,
                None => x.clone(), // an Arc clone: no copy
            };
            self.cache.insert(point, stored);
        }
        Ok(x)
    }

    /// The recorded activations.
    pub fn cache(&self) -> &ActivationCache {
        &self.cache
    }

    /// Takes the recorded activations, leaving an empty cache.
    pub fn take_cache(&mut self) -> ActivationCache {
        std::mem::take(&mut self.cache)
    }
}

/// The dimension holding (query) positions for each point.
fn pos_dim(point: HookPoint) -> usize {
    match point {
        HookPoint::AttnScores(_) | HookPoint::Pattern(_) => 2,
        _ => 1,
    }
}

/// Selects positions (negative = from the end) along the point's position dimension.
fn slice_positions(point: HookPoint, x: &Tensor, positions: &[i64]) -> Result<Tensor> {
    let dim = pos_dim(point);
    let n = x.dim(dim)? as i64;
    let idx = positions
        .iter()
        .map(|&p| {
            let q = if p < 0 { n + p } else { p };
            if q < 0 || q >= n {
                Err(Error::OutOfRange {
                    what: "position",
                    index: p,
                    limit: format!("{n} positions"),
                })
            } else {
                Ok(q as u32)
            }
        })
        .collect::<Result<Vec<u32>>>()?;
    let idx = Tensor::new(idx.as_slice(), x.device())?;
    Ok(x.index_select(&idx, dim)?)
}
