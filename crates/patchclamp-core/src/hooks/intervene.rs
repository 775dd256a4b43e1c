//! Declarative interventions: `Intervention { at, select, op, when }`, serialisable, validated
//! before any compute, applied by `Hooks::at` in the order they were added.
//!
//! Replacing ops (zero, mean, set, patch, subspace patch) make the replaced elements constants:
//! no gradient flows through them to upstream parameters, while unselected elements keep theirs.
//! Additive and linear ops (add, scale, project out) keep the gradient.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hooks::{ActivationCache, HookPoint};
use crate::model::Config;

/// One intervention: where, on which elements, what, and when (training steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervention {
    /// The hook point (TransformerLens name in files).
    pub at: HookPoint,
    /// Which elements; everything when empty.
    #[serde(default)]
    pub select: Selection,
    /// What to do to them.
    pub op: Op,
    /// When it is active; always when absent.
    #[serde(default)]
    pub when: Schedule,
    /// During generation, the decode steps at which it is active (step `t` computes generated
    /// token `t`; step 0 is the prefill); every step when absent. Generation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<Schedule>,
}

/// Picks elements of an activation along its batch, position, head and unit dimensions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Batch rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<usize>>,
    /// Positions (query positions for attention maps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Positions>,
    /// Heads, for points with a head dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<usize>>,
    /// Indices of the last dimension (neurons, residual dimensions, key positions of a pattern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<usize>>,
}

/// Which positions: indices (negative from the end), a range, the last, or one list per row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// These positions; -1 is the last.
    Indices(Vec<i64>),
    /// `start..end` (end exclusive; negative from the end).
    Range { start: i64, end: i64 },
    /// The last position.
    Last,
    /// Row i uses `per_row[i]` (padded batches).
    PerRow(Vec<Vec<i64>>),
    /// The prompt's positions (during generation; every position of a plain forward).
    Prompt,
    /// The generated positions (generation only).
    Generated,
    /// Every position, prompt and generated.
    All,
}

/// Steps at which an intervention is active (training); inference always runs step 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// First active step (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// First inactive step (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Schedule {
    /// Whether step `t` lies in the window.
    pub fn active(&self, t: u64) -> bool {
        self.from.is_none_or(|a| t >= a) && self.until.is_none_or(|b| t < b)
    }

    /// Fails for a window that holds no step (`from >= until`): such a spec can never act.
    pub fn validate(&self) -> Result<()> {
        if let (Some(a), Some(b)) = (self.from, self.until) {
            if a >= b {
                return Err(Error::Input(format!(
                    "the window from = {a}, until = {b} holds no step (until is exclusive, so it must exceed from)"
                )));
            }
        }
        Ok(())
    }

    /// Whether the window holds any of the steps `0..steps` (a training run's updates).
    pub fn overlaps(&self, steps: u64) -> bool {
        self.from.unwrap_or(0) < steps.min(self.until.unwrap_or(u64::MAX))
    }
}

/// Where one row of a generation's forward sits in its sequence (see
/// [`Intervention::for_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowWindow {
    /// The prompt this row generates for (what `rows` selections name).
    pub prompt: usize,
    /// Absolute position of the row's first real position in this forward.
    pub offset: usize,
    /// Its real positions in this forward.
    pub len: usize,
    /// Padding columns before them.
    pub pad: usize,
    /// The prompt's length: where negative positions count back from.
    pub anchor: usize,
}

/// Numbers in a spec: a scalar, a vector over the last dimension, or a tensor of any shape
/// broadcastable to the activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Values {
    Scalar(f64),
    Vector(Vec<f64>),
    Tensor { shape: Vec<usize>, data: Vec<f64> },
}

impl Values {
    /// The numbers, flat.
    fn numbers(&self) -> &[f64] {
        match self {
            Values::Scalar(x) => std::slice::from_ref(x),
            Values::Vector(v) => v,
            Values::Tensor { data, .. } => data,
        }
    }

    /// Fails when a number is NaN or infinite (it would spread through every later activation).
    fn check_finite(&self, what: &str, at: HookPoint) -> Result<()> {
        match self.numbers().iter().position(|x| !x.is_finite()) {
            Some(i) => Err(Error::Input(format!(
                "{what} at {at} holds a non-finite number ({} at index {i})",
                self.numbers()[i]
            ))),
            None => Ok(()),
        }
    }

    /// As an f32 tensor on `dev`.
    pub fn tensor(&self, dev: &Device) -> Result<Tensor> {
        let t = match self {
            Values::Scalar(x) => Tensor::new(*x as f32, dev)?,
            Values::Vector(v) => Tensor::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), dev)?,
            Values::Tensor { shape, data } => {
                let n: usize = shape.iter().product();
                if n != data.len() {
                    return Err(Error::Input(format!(
                        "a tensor of shape {shape:?} needs {n} values, got {}",
                        data.len()
                    )));
                }
                Tensor::from_vec(
                    data.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    shape.as_slice(),
                    dev,
                )?
            }
        };
        Ok(t)
    }

    /// The tensor's shape.
    fn shape(&self) -> Vec<usize> {
        match self {
            Values::Scalar(_) => vec![],
            Values::Vector(v) => vec![v.len()],
            Values::Tensor { shape, .. } => shape.clone(),
        }
    }
}

/// What an intervention does to the selected elements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Op {
    /// Change nothing; record the whole activation in the cache (like a capture).
    Record,
    /// Set to zero.
    Zero,
    /// Set to a mean (computed over a dataset by the library; broadcast to the activation).
    Mean { mean: Values },
    /// Set (clamp) to a value.
    Set { value: Values },
    /// Copy from the same point of a named source run (`Hooks::source`), rows mapped by `rows`
    /// (`rows[i]` = source row for row i; identity when absent).
    Patch {
        source: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<Vec<usize>>,
    },
    /// Add `coef · vector` (steering).
    Add {
        vector: Values,
        #[serde(default = "one")]
        coef: f64,
    },
    /// Multiply by a factor.
    Scale { factor: f64 },
    /// Remove the component in the span of `basis` (rows orthonormal, over the last dimension).
    ProjectOut { basis: Values },
    /// Linear-AcT transport: per unit, `x ← x + strength · ((scale − 1)·x + shift)` where
    /// `low ≤ x ≤ high` (the source band the map was fitted on), `x` elsewhere. A strength
    /// of 0 is the identity, bit for bit.
    Transport {
        scale: Values,
        shift: Values,
        low: Values,
        high: Values,
        #[serde(default = "one")]
        strength: f64,
    },
    /// `h + U Uᵀ (h_src − h)` with `U` the rows of `basis`, from a named source run.
    SubspacePatch { basis: Values, source: String },
    /// Switch experts off at a router (`blocks.L.mlp.gate.hook_out`): their logits become
    /// −∞, so they are never chosen and the next-best expert takes each freed slot; the
    /// weights are recomputed the family's way over what remains.
    SwitchOff { experts: Vec<usize> },
    /// Force experts on at a router: each is chosen for every selected token, weighted as
    /// if its logit were just above the token's best (SteerMoE's `max + 0.01`).
    Force { experts: Vec<usize> },
    /// Clamp an attention pattern to the perfect previous-token pattern (Singh et al. 2024):
    /// `A[t, t−1] = strength`, `A[t, t] = 1 − strength`, `A[0, 0] = 1`.
    PrevToken {
        #[serde(default = "one")]
        strength: f64,
    },
    /// Clamp an attention pattern to the perfect induction pattern: query `t` attends to the
    /// token after the latest earlier occurrence of its own token (`strength`, the rest on `t`);
    /// a query whose token has not occurred before attends to itself.
    Induction {
        #[serde(default = "one")]
        strength: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl Intervention {
    /// Checks the spec against a model and an input of `batch × seq` before any compute.
    pub fn validate(
        &self,
        cfg: &Config,
        batch: usize,
        seq: usize,
        sources: &HashMap<String, ActivationCache>,
    ) -> Result<()> {
        let p = self.at;
        HookPoint::parse_for(&p.to_string(), cfg)?;
        if p.sae().is_some() {
            // An SAE point's shape is its SAE's: `Hooks::prepare` checks the rest against the
            // spliced SAE before any compute.
            return self
                .when
                .validate()
                .map_err(|e| Error::Input(format!("intervention at {p}: {e}")));
        }
        self.validate_shaped(&p.shape(cfg, batch, seq), batch, seq, sources)?;
        if let (Op::SwitchOff { experts } | Op::Force { experts }, Some(m)) = (&self.op, cfg.moe())
        {
            let (n, k) = (m.n_experts, m.top_k);
            let mut unique = experts.clone();
            unique.sort_unstable();
            unique.dedup();
            if matches!(self.op, Op::SwitchOff { .. }) && n - unique.len() < k {
                return Err(Error::Input(format!(
                    "switching off {} of {n} experts at {p} leaves {}, fewer than the {k} each token is routed to",
                    unique.len(),
                    n - unique.len()
                )));
            }
            if matches!(self.op, Op::Force { .. }) && unique.len() > k {
                return Err(Error::Input(format!(
                    "forcing {} experts at {p}, but each token is routed to only {k}",
                    unique.len()
                )));
            }
        }
        Ok(())
    }

    /// [`Intervention::validate`] for an activation of `shape` (an SAE point's).
    pub fn validate_shaped(
        &self,
        shape: &[usize],
        batch: usize,
        seq: usize,
        sources: &HashMap<String, ActivationCache>,
    ) -> Result<()> {
        let p = self.at;
        let shape = shape.to_vec();
        self.when
            .validate()
            .map_err(|e| Error::Input(format!("intervention at {p}: {e}")))?;
        if self.decode.is_some() {
            return Err(Error::Input(format!(
                "the intervention at {p} has a decode window: it acts only in generation"
            )));
        }
        let range = |what: &'static str, idx: &[usize], n: usize| -> Result<()> {
            match idx.iter().find(|&&i| i >= n) {
                Some(&i) => Err(Error::OutOfRange {
                    what,
                    index: i as i64,
                    limit: format!("{n} at {p}"),
                }),
                None => Ok(()),
            }
        };
        let s = &self.select;
        if p.is_flat() && (s.rows.is_some() || s.positions.is_some()) {
            let l = p.layer().unwrap_or(0);
            return Err(Error::Input(format!(
                "{p} runs over tokens, not [batch, pos]: select rows and positions at blocks.{l}.mlp.gate.hook_out instead"
            )));
        }
        if let Some(rows) = &s.rows {
            range("batch row", rows, batch)?;
        }
        if let Some(pos) = &s.positions {
            let lists: Vec<Vec<i64>> = match pos {
                Positions::Indices(v) => vec![v.clone()],
                Positions::Range { start, end } => {
                    resolve_range(*start, *end, seq, p)?;
                    vec![]
                }
                Positions::Last | Positions::Prompt | Positions::All => vec![],
                Positions::Generated => {
                    return Err(Error::Input(format!(
                        "positions = \"generated\" at {p} selects generated tokens: it acts only in generation"
                    )))
                }
                Positions::PerRow(v) => {
                    if v.len() != batch {
                        return Err(Error::Input(format!(
                            "per-row positions at {p} give {} rows for a batch of {batch}",
                            v.len()
                        )));
                    }
                    v.clone()
                }
            };
            for i in lists.into_iter().flatten() {
                resolve_pos(i, seq, p)?;
            }
        }
        if let Some(heads) = &s.heads {
            if !p.has_heads() {
                return Err(Error::Input(format!(
                    "{p} has no head dimension; drop 'heads' or pick a per-head point"
                )));
            }
            range("head", heads, shape[head_dim(p)])?;
        }
        if let Some(units) = &s.units {
            range("unit", units, *shape.last().unwrap_or(&0))?;
        }
        let finite = |x: f64, what: &str| -> Result<()> {
            if x.is_finite() {
                Ok(())
            } else {
                Err(Error::Input(format!(
                    "{what} at {p} must be finite, got {x}"
                )))
            }
        };
        let check_values = |v: &Values, what: &str| -> Result<()> {
            v.check_finite(what, p)?;
            let vs = v.shape();
            if !broadcastable(&vs, &shape) {
                return Err(Error::Input(format!(
                    "{what} of shape {vs:?} does not broadcast to {p}'s shape {shape:?}"
                )));
            }
            Ok(())
        };
        let check_source = |name: &str| -> Result<()> {
            let Some(src) = sources.get(name) else {
                let names: Vec<&str> = sources.keys().map(|s| s.as_str()).collect();
                return Err(Error::Input(format!(
                    "patch source '{name}' is not registered (have: {})",
                    names.join(", ")
                )));
            };
            if src.get(p).is_none() {
                return Err(Error::Input(format!(
                    "patch source '{name}' did not record {p}"
                )));
            }
            Ok(())
        };
        let check_basis = |b: &Values| -> Result<()> {
            let bs = b.shape();
            let last = *shape.last().unwrap_or(&0);
            let ok = match bs.as_slice() {
                [n] => *n == last,
                [_, n] => *n == last,
                _ => false,
            };
            if !ok {
                return Err(Error::Input(format!(
                    "basis of shape {bs:?} must be [{last}] or [k, {last}] at {p}"
                )));
            }
            b.check_finite("basis", p)?;
            check_orthonormal(b.numbers(), last, p)
        };
        match &self.op {
            Op::Record | Op::Zero => Ok(()),
            Op::Scale { factor } => finite(*factor, "scale factor"),
            Op::Mean { mean } => check_values(mean, "mean"),
            Op::Set { value } => check_values(value, "value"),
            Op::Add { vector, coef } => {
                finite(*coef, "steering coefficient")?;
                check_values(vector, "vector")
            }
            Op::Patch { source, rows } => {
                check_source(source)?;
                if let Some(rows) = rows {
                    if rows.len() != batch {
                        return Err(Error::Input(format!(
                            "patch row map has {} entries for a batch of {batch}",
                            rows.len()
                        )));
                    }
                    let src_rows = sources[source].get(p).map(|t| t.dims()[0]).unwrap_or(0);
                    range("source row", rows, src_rows)?;
                }
                Ok(())
            }
            Op::ProjectOut { basis } => check_basis(basis),
            Op::Transport {
                scale,
                shift,
                low,
                high,
                strength,
            } => {
                finite(*strength, "transport strength")?;
                for (v, what) in [
                    (scale, "scale"),
                    (shift, "shift"),
                    (low, "low"),
                    (high, "high"),
                ] {
                    check_values(v, what)?;
                }
                let (lo, hi) = (low.numbers(), high.numbers());
                if lo.len() == hi.len() {
                    if let Some(i) = lo.iter().zip(hi).position(|(a, b)| a > b) {
                        return Err(Error::Input(format!(
                            "the transport band at {p} is empty at unit {i} (low {} > high {})",
                            lo[i], hi[i]
                        )));
                    }
                }
                Ok(())
            }
            Op::SubspacePatch { basis, source } => {
                check_basis(basis)?;
                check_source(source)
            }
            Op::SwitchOff { experts } | Op::Force { experts } => {
                let off = matches!(self.op, Op::SwitchOff { .. });
                let kind = if off { "switch_off" } else { "force" };
                if !matches!(p, HookPoint::RouterLogits(_)) {
                    return Err(Error::Input(format!(
                        "{kind} acts on router logits (blocks.L.mlp.gate.hook_out), not {p}"
                    )));
                }
                if s.units.is_some() {
                    return Err(Error::Input(format!(
                        "{kind} at {p} names its experts itself: drop 'units'"
                    )));
                }
                let n = *shape.last().unwrap_or(&0);
                range("expert", experts, n)?;
                let mut unique = experts.clone();
                unique.sort_unstable();
                unique.dedup();
                if unique.is_empty() {
                    return Err(Error::Input(format!("{kind} at {p} names no experts")));
                }
                Ok(())
            }
            Op::PrevToken { strength } | Op::Induction { strength } => {
                if !matches!(p, HookPoint::Pattern(_)) {
                    return Err(Error::Input(format!(
                        "prev_token and induction clamps act on attention patterns \
                         (blocks.L.attn.hook_pattern), not {p}"
                    )));
                }
                if !(0.0..=1.0).contains(strength) {
                    return Err(Error::Input(format!(
                        "pattern clamp strength {strength} at {p} must lie in [0, 1]"
                    )));
                }
                Ok(())
            }
        }
    }

    /// This intervention for one forward of a generation (decode step `step`), its positions
    /// read as absolute positions of each row's sequence. Row `i` of the forward is `rows[i]`:
    /// its positions `offset..offset + len` sit after `pad` columns of padding. Negative
    /// positions and `last` count back from the row's prompt end (`anchor`), `prompt` and
    /// `generated` split there, and `rows` selections name prompts: so a selection names the
    /// same positions at every step, with a cache or without, batched or alone. `None` when it
    /// selects nothing in this forward.
    pub fn for_rows(&self, step: u64, rows: &[RowWindow]) -> Option<Intervention> {
        if self.decode.is_some_and(|d| !d.active(step)) {
            return None;
        }
        let lists: Vec<Vec<i64>> = rows
            .iter()
            .map(|w| match &self.select.rows {
                Some(names) if !names.contains(&w.prompt) => vec![],
                _ => self
                    .window_positions(w)
                    .into_iter()
                    .map(|q| (q + w.pad) as i64)
                    .collect(),
            })
            .collect();
        if lists.iter().all(|l| l.is_empty()) {
            return None;
        }
        let mut iv = self.clone();
        iv.select.rows = None;
        iv.decode = None;
        iv.select.positions = match (lists.len(), self.select.positions.is_none()) {
            // One unpadded row, everything selected: leave the selection whole (cheapest).
            (1, true) if rows[0].pad == 0 => None,
            _ => Some(Positions::PerRow(lists)),
        };
        Some(iv)
    }

    /// This intervention for prompts `start..start + len` of a longer list generated as their
    /// own batch: `rows` and per-row positions renumbered from `start`. `None` when it names
    /// none of them.
    pub fn for_prompts(&self, start: usize, len: usize) -> Option<Intervention> {
        let mut iv = self.clone();
        if let Some(rows) = &self.select.rows {
            let kept: Vec<usize> = rows
                .iter()
                .filter(|&&r| r >= start && r < start + len)
                .map(|r| r - start)
                .collect();
            if kept.is_empty() {
                return None;
            }
            iv.select.rows = Some(kept);
        }
        if let Some(Positions::PerRow(lists)) = &self.select.positions {
            let kept: Vec<Vec<i64>> = (start..start + len)
                .map(|i| lists.get(i).cloned().unwrap_or_default())
                .collect();
            if kept.iter().all(|l| l.is_empty()) {
                return None;
            }
            iv.select.positions = Some(Positions::PerRow(kept));
        }
        Some(iv)
    }

    /// The window positions (0-based within the row's `len`) this selects for one row.
    fn window_positions(&self, w: &RowWindow) -> Vec<usize> {
        let (lo, hi) = (w.offset as i64, (w.offset + w.len) as i64);
        let abs = |i: i64| if i < 0 { w.anchor as i64 + i } else { i };
        let span = |a: i64, b: i64| -> Vec<usize> {
            (a.max(lo)..b.min(hi)).map(|q| (q - lo) as usize).collect()
        };
        let list = |v: &[i64]| -> Vec<usize> {
            let mut out: Vec<usize> = v
                .iter()
                .map(|&i| abs(i))
                .filter(|&a| a >= lo && a < hi)
                .map(|a| (a - lo) as usize)
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        };
        match &self.select.positions {
            None | Some(Positions::All) => span(lo, hi),
            Some(Positions::Prompt) => span(0, w.anchor as i64),
            Some(Positions::Generated) => span(w.anchor as i64, hi),
            Some(Positions::Last) => list(&[-1]),
            Some(Positions::Indices(v)) => list(v),
            Some(Positions::Range { start, end }) => span(abs(*start), abs(*end)),
            Some(Positions::PerRow(v)) => list(v.get(w.prompt).map_or(&[], |l| l)),
        }
    }

    /// Whether the op reads the input tokens (`Hooks` hands them over only then).
    pub fn needs_tokens(&self) -> bool {
        matches!(self.op, Op::Induction { .. })
    }

    /// Applies the op to `x` at the selected elements.
    pub fn apply(&self, x: &Tensor, sources: &HashMap<String, ActivationCache>) -> Result<Tensor> {
        self.apply_with_tokens(x, sources, None)
    }

    /// [`Intervention::apply`] for ops that read the input tokens (`[batch][pos]`).
    pub fn apply_with_tokens(
        &self,
        x: &Tensor,
        sources: &HashMap<String, ActivationCache>,
        tokens: Option<&[Vec<u32>]>,
    ) -> Result<Tensor> {
        let dev = x.device();
        let p = self.at;
        let replace = |value: Tensor| -> Result<Tensor> {
            // Replaced elements are constants: detach so no gradient reaches upstream through them.
            let value = value
                .detach()
                .to_dtype(x.dtype())?
                .broadcast_as(x.shape())?;
            self.blend(x, &value)
        };
        match &self.op {
            Op::Record => Ok(x.clone()),
            Op::Zero => replace(x.zeros_like()?),
            Op::Mean { mean } => replace(mean.tensor(dev)?),
            Op::Set { value } => replace(value.tensor(dev)?),
            Op::Patch { source, rows } => {
                replace(self.source_value(x, sources, source, rows.as_deref())?)
            }
            Op::Add { vector, coef } => {
                let delta =
                    (vector.tensor(dev)?.to_dtype(x.dtype())? * *coef)?.broadcast_as(x.shape())?;
                self.blend(x, &(x + delta)?)
            }
            Op::Scale { factor } => self.blend(x, &(x * *factor)?),
            Op::ProjectOut { basis } => {
                let u = basis_rows(basis, dev)?; // [k, n]
                let coords = x.broadcast_matmul(&u.t()?)?; // [..., k]
                let proj = coords.broadcast_matmul(&u)?; // [..., n]
                self.blend(x, &(x - proj)?)
            }
            Op::Transport {
                scale,
                shift,
                low,
                high,
                strength,
            } => {
                if *strength == 0.0 {
                    return Ok(x.clone());
                }
                let t = |v: &Values| -> Result<Tensor> {
                    Ok(v.tensor(dev)?.to_dtype(x.dtype())?.broadcast_as(x.shape())?)
                };
                let (w, b) = (t(scale)?, t(shift)?);
                // x + λ·(T(x) − x), with T(x) − x = (w − 1)·x + b.
                let step = ((x * (w - 1.0)?)? + b)?;
                let moved = (x + step.affine(*strength, 0.0)?)?;
                let above = x.ge(&t(low)?)?.to_dtype(DType::U8)?;
                let below = x.le(&t(high)?)?.to_dtype(DType::U8)?;
                let inside = (above * below)?;
                self.blend(x, &inside.where_cond(&moved, x)?)
            }
            Op::SubspacePatch { basis, source } => {
                let u = basis_rows(basis, dev)?;
                let src = self.source_value(x, sources, source, None)?.detach();
                let coords = (src - x)?.broadcast_matmul(&u.t()?)?;
                let patched = (x + coords.broadcast_matmul(&u)?)?;
                // The patched part of h is a constant from the source run, the rest keeps h.
                self.blend(x, &patched)
            }
            Op::SwitchOff { experts } | Op::Force { experts } => {
                // ±∞ marks the experts; the router reads them (see `model::moe`).
                let mark = match self.op {
                    Op::SwitchOff { .. } => f32::NEG_INFINITY,
                    _ => f32::INFINITY,
                };
                let n = x.dim(D::Minus1)?;
                let mut v = vec![0u8; n];
                for &e in experts.iter().filter(|&&e| e < n) {
                    v[e] = 1;
                }
                let mut shape = vec![1; x.rank()];
                shape[x.rank() - 1] = n;
                let cols = Tensor::from_vec(v, shape, dev)?.broadcast_as(x.shape())?;
                let marked = cols.where_cond(
                    &Tensor::new(mark, dev)?.to_dtype(x.dtype())?.broadcast_as(x.shape())?,
                    x,
                )?;
                self.blend(x, &marked)
            }
            Op::PrevToken { strength } => {
                let (_, _, sq, sk) = x.dims4()?;
                replace(prev_token_pattern(sq, sk, *strength as f32, dev)?)
            }
            Op::Induction { strength } => {
                let tokens = tokens.ok_or_else(|| {
                    Error::Input(format!("the induction clamp at {p} needs the input tokens"))
                })?;
                let (b, _, sq, sk) = x.dims4()?;
                let tokens = &tokens[..tokens.len().min(b)];
                if tokens.len() != b || tokens.iter().any(|t| t.len() != sk || sk != sq) {
                    return Err(Error::Input(format!(
                        "the induction clamp at {p} got tokens that do not match the pattern's shape {:?}",
                        x.dims()
                    )));
                }
                replace(induction_pattern(tokens, *strength as f32, dev)?)
            }
        }
        .map_err(|e| match e {
            Error::Candle(c) => Error::Input(format!(
                "intervention at {p}: {}",
                c.to_string().lines().next().unwrap_or("")
            )),
            e => e,
        })
    }

    /// The source run's activation at this point, rows mapped.
    fn source_value(
        &self,
        x: &Tensor,
        sources: &HashMap<String, ActivationCache>,
        name: &str,
        rows: Option<&[usize]>,
    ) -> Result<Tensor> {
        let src = sources
            .get(name)
            .and_then(|c| c.get(self.at))
            .ok_or_else(|| Error::Input(format!("patch source '{name}' has no {}", self.at)))?;
        let src = match rows {
            Some(r) => {
                // The map covers the whole batch; rows that join later are not here yet.
                let r = &r[..r.len().min(x.dim(0)?)];
                let idx = Tensor::new(r.iter().map(|&i| i as u32).collect::<Vec<_>>(), x.device())?;
                src.contiguous()?.index_select(&idx, 0)?
            }
            None => src.clone(),
        };
        if src.dims() != x.dims() {
            return Err(Error::Input(format!(
                "patch source '{name}' has shape {:?} at {} but this run has {:?} (same prompt lengths needed)",
                src.dims(),
                self.at,
                x.dims()
            )));
        }
        Ok(src)
    }

    /// `new` on the selected elements, `x` elsewhere.
    fn blend(&self, x: &Tensor, new: &Tensor) -> Result<Tensor> {
        match self.mask(x)? {
            None => Ok(new.clone()),
            Some(mask) => Ok(mask.where_cond(new, x)?),
        }
    }

    /// A u8 mask of `x`'s shape selecting the chosen elements (`None`: everything).
    pub fn mask(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let s = &self.select;
        if s.rows.is_none() && s.positions.is_none() && s.heads.is_none() && s.units.is_none() {
            return Ok(None);
        }
        let dims = x.dims().to_vec();
        let dev = x.device();
        let p = self.at;
        let pos_dim = p.pos_dim();
        let last = dims.len() - 1;
        // One indicator per dimension; their product is the mask.
        let mut ind: Vec<Option<Vec<u8>>> = vec![None; dims.len()];
        // Rows past the end have not joined the forward yet (`Span::joins`): nothing to select.
        let onehot = |n: usize, idx: &[usize]| {
            let mut v = vec![0u8; n];
            for &i in idx.iter().filter(|&&i| i < n) {
                v[i] = 1;
            }
            v
        };
        if let Some(rows) = &s.rows {
            ind[0] = Some(onehot(dims[0], rows));
        }
        if let Some(h) = &s.heads {
            ind[head_dim(p)] = Some(onehot(dims[head_dim(p)], h));
        }
        if let Some(u) = &s.units {
            ind[last] = Some(onehot(dims[last], u));
        }
        let mut mask: Option<Tensor> = None;
        for (d, v) in ind.into_iter().enumerate() {
            let Some(v) = v else { continue };
            let mut shape = vec![1; dims.len()];
            shape[d] = dims[d];
            let t = Tensor::from_vec(v, shape, dev)?;
            mask = Some(match mask {
                None => t,
                Some(m) => m.broadcast_mul(&t)?,
            });
        }
        if let Some(pos) = &s.positions {
            let seq = dims[pos_dim];
            // A [batch, seq] table, since per-row positions differ by row.
            let mut table = vec![0u8; dims[0] * seq];
            for row in 0..dims[0] {
                let list: Vec<i64> = match pos {
                    Positions::Indices(v) => v.clone(),
                    Positions::Range { start, end } => {
                        let r = resolve_range(*start, *end, seq, p)?;
                        (r.start as i64..r.end as i64).collect()
                    }
                    Positions::Last => vec![-1],
                    Positions::PerRow(v) => v.get(row).cloned().unwrap_or_default(),
                    Positions::Prompt | Positions::All => (0..seq as i64).collect(),
                    Positions::Generated => vec![],
                };
                for i in list {
                    table[row * seq + resolve_pos(i, seq, p)?] = 1;
                }
            }
            let mut shape = vec![1; dims.len()];
            shape[0] = dims[0];
            shape[pos_dim] = seq;
            let t = Tensor::from_vec(table, shape, dev)?;
            mask = Some(match mask {
                None => t,
                Some(m) => m.broadcast_mul(&t)?,
            });
        }
        Ok(match mask {
            Some(m) => Some(m.broadcast_as(x.shape())?.contiguous()?),
            None => None,
        })
    }
}

/// The perfect previous-token pattern `[1, 1, q, k]` (queries aligned to the last keys).
fn prev_token_pattern(sq: usize, sk: usize, strength: f32, dev: &Device) -> Result<Tensor> {
    let off = sk - sq.min(sk);
    let mut a = vec![0f32; sq * sk];
    for q in 0..sq {
        let t = q + off;
        if t == 0 {
            a[q * sk] = 1.0;
        } else {
            a[q * sk + t - 1] = strength;
            a[q * sk + t] += 1.0 - strength;
        }
    }
    Ok(Tensor::from_vec(a, (1, 1, sq, sk), dev)?)
}

/// The perfect induction pattern `[B, 1, S, S]` for `tokens`.
fn induction_pattern(tokens: &[Vec<u32>], strength: f32, dev: &Device) -> Result<Tensor> {
    let (b, s) = (tokens.len(), tokens[0].len());
    let mut a = vec![0f32; b * s * s];
    for (r, row) in tokens.iter().enumerate() {
        let mut last: HashMap<u32, usize> = HashMap::new();
        for t in 0..s {
            let base = (r * s + t) * s;
            match last.get(&row[t]) {
                Some(&j) => {
                    a[base + j + 1] = strength;
                    a[base + t] += 1.0 - strength;
                }
                None => a[base + t] = 1.0,
            }
            last.insert(row[t], t);
        }
    }
    Ok(Tensor::from_vec(a, (b, 1, s, s), dev)?)
}

/// The head dimension of a per-head point.
fn head_dim(p: HookPoint) -> usize {
    match p {
        HookPoint::AttnScores(_) | HookPoint::Pattern(_) => 1,
        _ => 2,
    }
}

/// A position index, negative from the end, checked against `seq`.
fn resolve_pos(i: i64, seq: usize, p: HookPoint) -> Result<usize> {
    let q = if i < 0 { seq as i64 + i } else { i };
    if q < 0 || q >= seq as i64 {
        return Err(Error::OutOfRange {
            what: "position",
            index: i,
            limit: format!("{seq} positions at {p}"),
        });
    }
    Ok(q as usize)
}

/// `start..end` with negative bounds counted from the end (`end` may equal `seq`).
fn resolve_range(start: i64, end: i64, seq: usize, p: HookPoint) -> Result<std::ops::Range<usize>> {
    let bound = |i: i64| -> Result<usize> {
        let q = if i < 0 { seq as i64 + i } else { i };
        if q < 0 || q > seq as i64 {
            return Err(Error::OutOfRange {
                what: "position",
                index: i,
                limit: format!("{seq} positions at {p}"),
            });
        }
        Ok(q as usize)
    };
    let (a, b) = (bound(start)?, bound(end)?);
    if a > b {
        return Err(Error::Input(format!(
            "position range {start}..{end} at {p} is empty or reversed"
        )));
    }
    Ok(a..b)
}

/// Whether a tensor of shape `a` broadcasts to `b` (numpy rules, aligned at the right).
fn broadcastable(a: &[usize], b: &[usize]) -> bool {
    a.len() <= b.len()
        && a.iter()
            .rev()
            .zip(b.iter().rev())
            .all(|(&x, &y)| x == 1 || x == y)
}

/// A basis as a `[k, n]` matrix (a single direction becomes `[1, n]`).
/// How far `U Uᵀ` may stray from the identity: the rows of a basis written out as text from
/// float32 (six or seven digits) are orthonormal to about 1e-6.
const ORTHONORMAL_TOLERANCE: f64 = 1e-4;

/// Fails unless the rows of `data` (`k × n`, row-major) are orthonormal: a projection onto a
/// basis that is not would silently remove the wrong amount (or add some back).
fn check_orthonormal(data: &[f64], n: usize, p: HookPoint) -> Result<()> {
    let rows: Vec<&[f64]> = data.chunks_exact(n.max(1)).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    if rows.iter().all(|r| r.iter().all(|&x| x == 0.0)) {
        return Err(Error::Input(format!(
            "the basis at {p} is all zeros: it spans nothing, so the op would change nothing"
        )));
    }
    for (i, a) in rows.iter().enumerate() {
        for (j, b) in rows.iter().enumerate().skip(i) {
            let want = if i == j { 1.0 } else { 0.0 };
            let got = dot(a, b);
            if (got - want).abs() > ORTHONORMAL_TOLERANCE {
                let what = if i == j {
                    format!("row {i} has norm {:.6}", got.sqrt())
                } else {
                    format!("rows {i} and {j} have dot product {got:.6}")
                };
                return Err(Error::Input(format!(
                    "the basis at {p} is not orthonormal ({what}); orthonormalise it first (e.g. a QR decomposition)"
                )));
            }
        }
    }
    Ok(())
}

fn basis_rows(b: &Values, dev: &Device) -> Result<Tensor> {
    let t = b.tensor(dev)?.to_dtype(DType::F32)?;
    Ok(if t.rank() == 1 { t.unsqueeze(0)? } else { t })
}
