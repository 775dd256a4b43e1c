//! Batched variant forwards for sweeps: one batch row per variant, each row entering the model at
//! the first block its patch changes (from the base run's residual there), recomputing only the
//! positions from the first one the patch changes (earlier positions' keys and values come from
//! the base run), each row patched at its own slices in one masked select per hook point.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use patchclamp_core::model::{KvCache, Span};
use patchclamp_core::{ActivationCache, HookPoint, Hooks, Input, Model};

/// Which slice of a row is patched at a hook point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// One position (query position for `pattern`).
    Position(usize),
    /// One head (kv head for `k`/`v`), every position.
    Head(usize),
    /// The whole row.
    All,
}

/// The dimension of `point`'s activation a slice indexes (`None`: the whole row).
fn slice_dim(point: HookPoint, slice: Slice) -> Option<(usize, usize)> {
    match slice {
        Slice::Position(p) => Some((point.pos_dim(), p)),
        Slice::Head(h) => Some((3 - point.pos_dim(), h)),
        Slice::All => None,
    }
}

/// The patches of one batched forward: for each (hook point, source run) the rows and slices
/// copied from that source's row 0.
#[derive(Debug, Default)]
pub struct RowPatches {
    map: BTreeMap<(HookPoint, String), Vec<(usize, Slice)>>,
}

impl RowPatches {
    /// Patch `slice` of batch row `row` at `point` from `source`'s row 0.
    pub fn add(&mut self, point: HookPoint, source: &str, row: usize, slice: Slice) {
        self.map
            .entry((point, source.to_string()))
            .or_default()
            .push((row, slice));
    }

    /// Hooks applying every patch of a `batch`-row forward that recomputes positions `from..`
    /// (the sources hold every position), one edit per (point, source).
    pub fn into_hooks(
        self,
        sources: &[(&str, &ActivationCache)],
        batch: usize,
        from: usize,
    ) -> Result<Hooks> {
        let mut hooks = Hooks::none();
        for ((point, name), items) in self.map {
            let cache = sources
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| *c)
                .ok_or_else(|| Error::Input(format!("no patch source named '{name}'")))?;
            let src = cache
                .get(point)
                .ok_or_else(|| Error::Input(format!("patch source '{name}' has no {point}")))?
                .narrow(0, 0, 1)?;
            let (dim, n) = (point.pos_dim(), src.dim(point.pos_dim())?);
            let src = src
                .narrow(dim, from.min(n), n - from.min(n))?
                .contiguous()?;
            let mut shifted = Vec::with_capacity(items.len());
            for (row, slice) in items {
                shifted.push((
                    row,
                    match slice {
                        Slice::Position(p) if p < from => {
                            return Err(Error::Input(format!(
                            "position {p} is patched in a forward that starts at position {from}"
                        )))
                        }
                        Slice::Position(p) => Slice::Position(p - from),
                        s => s,
                    },
                ));
            }
            let mask = row_mask(point, src.dims(), &shifted, batch, src.device())?;
            hooks = hooks.edit(point, move |_, x| {
                // Rows that join later are not in `x` yet: the first rows of the mask are its rows.
                let rows = x.dim(0)?;
                let mask = mask.narrow(0, 0, rows)?;
                let src = src.broadcast_as(x.shape())?.contiguous()?;
                // hook_z and friends arrive as transposed views; the select wants them dense.
                Ok(mask.where_cond(&src, &x.contiguous()?)?)
            });
        }
        Ok(hooks)
    }
}

/// A contiguous u8 mask `[batch, ...]` of a point's activation selecting the patched slices
/// (contiguous so the select takes its fast path).
fn row_mask(
    point: HookPoint,
    dims: &[usize],
    items: &[(usize, Slice)],
    batch: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let per_row: usize = dims[1..].iter().product();
    let mut mask = vec![0u8; batch * per_row];
    for &(row, slice) in items {
        if row >= batch {
            return Err(Error::OutOfRange {
                what: "batch row",
                index: row as i64,
                limit: format!("{batch} rows"),
            });
        }
        let out = &mut mask[row * per_row..(row + 1) * per_row];
        let Some((dim, idx)) = slice_dim(point, slice) else {
            out.fill(1);
            continue;
        };
        if idx >= dims[dim] {
            return Err(Error::OutOfRange {
                what: if matches!(slice, Slice::Head(_)) {
                    "head"
                } else {
                    "position"
                },
                index: idx as i64,
                limit: format!("{} at {point}", dims[dim]),
            });
        }
        // Element (i_1, .., i_n) of the row is selected when i_dim = idx.
        let inner: usize = dims[dim + 1..].iter().product();
        let n = dims[dim];
        for (i, m) in out.iter_mut().enumerate() {
            if (i / inner) % n == idx {
                *m = 1;
            }
        }
    }
    let mut shape = dims.to_vec();
    shape[0] = batch;
    Ok(Tensor::from_vec(mask, shape, dev)?)
}

/// The hook points a base run records for [`forward_rows`]: the residual entering each block,
/// and the keys and values the later positions attend to.
pub fn base_points(model: &Model) -> Vec<HookPoint> {
    (0..model.cfg.n_layers)
        .flat_map(|l| {
            let key = match model.cfg.rotary() {
                Some(_) => HookPoint::RotK(l),
                None => HookPoint::K(l),
            };
            [HookPoint::ResidPre(l), key, HookPoint::V(l)]
        })
        .collect()
}

/// One batched forward whose row `i` enters block `starts[i]` (ascending) with the base run's
/// `hook_resid_pre` there, recomputing positions `from..` only (`base` holds [`base_points`] of
/// a batch-1 run of `tokens`); the last position's logits `[B, 1, V]`, or of the tokens
/// `columns` only (`[B, 1, k]`).
pub fn forward_rows(
    model: &Model,
    tokens: &[u32],
    base: &ActivationCache,
    starts: &[usize],
    from: usize,
    columns: Option<&[u32]>,
    hooks: &mut Hooks,
) -> Result<Tensor> {
    let s = tokens.len();
    if from >= s {
        return Err(Error::OutOfRange {
            what: "first recomputed position",
            index: from as i64,
            limit: format!("{s} positions"),
        });
    }
    if starts.is_empty() || starts.windows(2).any(|w| w[0] > w[1]) {
        return Err(Error::Input(
            "rows must be given in ascending start layers, at least one".into(),
        ));
    }
    let resid = |l: usize, n: usize| -> Result<Tensor> {
        let r = base.get(HookPoint::ResidPre(l)).ok_or_else(|| {
            Error::Input(format!("the base run has no blocks.{l}.hook_resid_pre"))
        })?;
        Ok(r.narrow(0, 0, 1)?
            .narrow(1, from, s - from)?
            .repeat((n, 1, 1))?)
    };
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &l in starts {
        match groups.last_mut() {
            Some((at, n)) if *at == l => *n += 1,
            _ => groups.push((l, 1)),
        }
    }
    let (l0, n0) = groups[0];
    let joins = groups[1..]
        .iter()
        .map(|&(l, n)| Ok((l, resid(l, n)?)))
        .collect::<Result<Vec<_>>>()?;
    let b = starts.len();
    let dev = model.device();
    let one = Input::single(tokens, dev)?;
    let input = Input {
        tokens: one.tokens.narrow(1, from, s - from)?.repeat((b, 1))?,
        positions: one.positions.narrow(1, from, s - from)?.repeat((b, 1))?,
        mask: None,
        lengths: vec![s - from; b],
        padding: Default::default(),
    };
    let prefix = match from {
        0 => None,
        _ => Some(KvCache::from_cache(&model.cfg, base, from)?),
    };
    let span = Span {
        start: Some((l0, resid(l0, n0)?)),
        stop_at_layer: columns.map(|_| model.cfg.n_layers),
        last_position_only: true,
        joins,
        prefix,
    };
    let out = model.forward_span(&input, hooks, span)?;
    match columns {
        Some(ids) => Ok(model.logits_of(&out.narrow(1, out.dim(1)? - 1, 1)?, ids)?),
        None => Ok(out),
    }
}

/// The first position at which `slice` of `point` differs, bit for bit, between two runs'
/// caches (row 0 of each): a patch of it changes nothing before there (`None`: nothing at all).
pub fn first_change(
    a: &ActivationCache,
    b: &ActivationCache,
    point: HookPoint,
    slice: Slice,
) -> Result<Option<usize>> {
    let (Some(x), Some(y)) = (a.get(point), b.get(point)) else {
        return Ok(Some(0));
    };
    if x.dims() != y.dims() {
        return Ok(Some(0));
    }
    let dim = point.pos_dim();
    // Positions the slice covers: one, or all of them.
    let (first, n) = match slice {
        Slice::Position(p) => (p, 1),
        _ => (0, x.dim(dim)?),
    };
    // Position-major values of the slice: [n, rest].
    let cut = |t: &Tensor| -> Result<Vec<f32>> {
        let t = t.narrow(0, 0, 1)?;
        let t = match slice_dim(point, slice) {
            Some((d, idx)) => t.narrow(d, idx, 1)?,
            None => t,
        };
        Ok(t.transpose(0, dim)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    };
    let (u, v) = (cut(x)?, cut(y)?);
    let per = u.len() / n.max(1);
    // NaN never equals itself, so a NaN counts as changed.
    Ok((0..n)
        .find(|&p| u[p * per..(p + 1) * per] != v[p * per..(p + 1) * per])
        .map(|p| first + p))
}

/// One variant of a sweep: where its result goes, the layers it patches, the first position its
/// patch changes.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Index into the result (`layer · n_cols + col`).
    pub at: usize,
    /// The blocks it patches (its row joins the forward at the first).
    pub layers: std::ops::Range<usize>,
    /// The first position its patch changes.
    pub from: usize,
    /// Patches a point of the last block past its keys and values, which keeps every position
    /// of that block (the others compute only its last position).
    pub tail: bool,
}

/// One forward of a sweep: its rows recompute positions `from..`.
#[derive(Debug, Clone)]
pub struct Group {
    /// The first position the forward recomputes (the earliest of its rows').
    pub from: usize,
    /// One per row, in ascending start layers.
    pub rows: Vec<Variant>,
}

/// The forwards of a sweep over `seq`-token prompts: variants that start recomputing at nearby
/// positions share one forward from the earliest of them (a forward's products want many rows;
/// a row may recompute up to twice the positions it needs), variants that keep the last block
/// whole go to their own forwards, at most `batch` rows each.
pub fn plan(mut variants: Vec<Variant>, seq: usize, batch: usize) -> Vec<Group> {
    variants.sort_by_key(|v| (v.tail, v.from, v.layers.start));
    let mut groups: Vec<Group> = Vec::new();
    let mut current: Vec<Variant> = Vec::new();
    let flush = |rows: &mut Vec<Variant>, groups: &mut Vec<Group>| {
        if rows.is_empty() {
            return;
        }
        let from = rows.iter().map(|v| v.from).min().unwrap_or(0);
        let mut rows = std::mem::take(rows);
        rows.sort_by_key(|v| v.layers.start);
        for chunk in rows.chunks(batch) {
            groups.push(Group {
                from,
                rows: chunk.to_vec(),
            });
        }
    };
    for v in variants {
        if let Some(first) = current.first() {
            let fits = first.tail == v.tail && seq - first.from <= 2 * (seq - v.from);
            if !fits {
                flush(&mut current, &mut groups);
            }
        }
        current.push(v);
    }
    flush(&mut current, &mut groups);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_variant_once_within_their_bounds() {
        let seq = 15;
        let variants: Vec<Variant> = (0..12)
            .flat_map(|l| (2..seq).map(move |p| (l, p)))
            .map(|(l, p)| Variant {
                at: l * seq + p,
                layers: l..l + 1,
                from: p,
                tail: l == 11 && p % 2 == 0,
            })
            .collect();
        let groups = plan(variants.clone(), seq, 40);
        let mut seen: Vec<usize> = groups
            .iter()
            .flat_map(|g| g.rows.iter().map(|v| v.at))
            .collect();
        seen.sort();
        let mut want: Vec<usize> = variants.iter().map(|v| v.at).collect();
        want.sort();
        assert_eq!(seen, want, "every variant in exactly one forward");
        for g in &groups {
            assert!(!g.rows.is_empty() && g.rows.len() <= 40);
            assert!(g
                .rows
                .windows(2)
                .all(|w| w[0].layers.start <= w[1].layers.start));
            assert!(g.rows.iter().all(|v| v.tail == g.rows[0].tail));
            for v in &g.rows {
                assert!(v.from >= g.from && seq - g.from <= 2 * (seq - v.from));
            }
        }
        // Positions 2..15 fall into a few forwards, not one per position.
        assert!(groups.len() < 10, "{} forwards", groups.len());
    }
}
