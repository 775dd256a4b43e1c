//! `Hooks`: what a forward pass records and changes at its hook points.
//!
//! Every activation of the forward pass flows through exactly one call, `hooks.at(point, x)`.
//! With nothing registered at `point` that call is one hash lookup and returns `x` untouched.
//!
//! # A guide
//!
//! A [`Hooks`] value is built before a forward pass and handed to it; afterwards it holds the
//! [`ActivationCache`] of what it was asked to record. Points are named as TransformerLens names
//! them ([`HookPoint`]; `blocks.L.attn.hook_pattern`, …), and a [`Selector`] names several at
//! once (`blocks.*.hook_resid_pre`). What a hook can do, in the order it is usually learned:
//!
//! 1. **Record** ([`Hooks::capture`]): the cache holds exactly the points asked for, each an
//!    `Arc` clone of the tensor the forward computed (no copy).
//! 2. **Change** declaratively ([`Hooks::intervene`] with an [`Intervention`]: zero, mean,
//!    set, clamp, patch from another run's cache, add a steering vector, …), or with a closure
//!    ([`Hooks::edit`], the escape hatch). Interventions are data: the same spec is a TOML or
//!    JSON file, and it is validated against the model before any compute.
//! 3. **Patch** from another run: register its cache as a named source ([`Hooks::source`]) and
//!    point a `patch` intervention at it.
//!
//! ```
//! use patchclamp_core::{load, HookPoint, Hooks, Input, Intervention, Selector};
//! use patchclamp_core::testing::max_diff;
//!
//! let dev = candle_core::Device::Cpu;
//! let m = load("../../tests/fixtures/models/gpt2", &dev)?; // a 2-layer GPT-2 the repo ships
//! let ids = m.tokenizer()?.prompt(&m.model.cfg, "The cat sat on the", None)?;
//! let input = Input::single(&ids, &dev)?;
//!
//! // 1. Record every block's input and the patterns of layer 1.
//! let mut rec = Hooks::none()
//!     .capture(Selector::parse("blocks.*.hook_resid_pre")?)
//!     .capture(Selector::parse("blocks.1.attn.hook_pattern")?);
//! let clean = m.model.forward(&input, &mut rec)?; // [batch, pos, d_vocab]
//! let cache = rec.take_cache();
//! let resid = cache.by_name("blocks.0.hook_resid_pre")?; // [batch, pos, d_model]
//! assert_eq!(resid.dims(), &[1, ids.len(), m.model.cfg.d_model]);
//! let head0 = cache.head(HookPoint::Pattern(1), 0)?; // [batch, query, key]
//! assert_eq!(head0.dims(), &[1, ids.len(), ids.len()]);
//! assert_eq!(cache.len(), m.model.cfg.n_layers + 1, "exactly what was asked for");
//!
//! // 2. Change: zero layer 0's attention output. The logits move.
//! let zero: Intervention = serde_json::from_str(
//!     r#"{"at": "blocks.0.hook_attn_out", "op": {"kind": "zero"}}"#,
//! )?;
//! let ablated = m.model.forward(&input, &mut Hooks::none().intervene(zero))?;
//! assert!(max_diff(&clean, &ablated) > 1e-3);
//!
//! // 3. Patch the clean run's block-1 input into a run that zeroes layer 0's attention:
//! //    everything downstream of the patched residual is the clean run's again.
//! let zero: Intervention = serde_json::from_str(
//!     r#"{"at": "blocks.0.hook_attn_out", "op": {"kind": "zero"}}"#,
//! )?;
//! let patch: Intervention = serde_json::from_str(
//!     r#"{"at": "blocks.1.hook_resid_pre", "op": {"kind": "patch", "source": "clean"}}"#,
//! )?;
//! let mut hooks = Hooks::none()
//!     .source("clean", cache)
//!     .intervene(zero)
//!     .intervene(patch);
//! let restored = m.model.forward(&input, &mut hooks)?;
//! assert!(max_diff(&clean, &restored) < 1e-5);
//!
//! // The escape hatch: any closure from the activation to its replacement.
//! let mut doubled = Hooks::none().edit("blocks.1.hook_mlp_out".parse()?, |_, x| Ok((x * 2.0)?));
//! m.model.forward(&input, &mut doubled)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Shapes follow TransformerLens: `[batch, pos, d_model]` for residual points,
//! `[batch, pos, head, d_head]` for `hook_q/k/v/z`, `[batch, head, query, key]` for
//! `hook_attn_scores` and `hook_pattern` ([`HookPoint::shape`] gives any point's). The biggest
//! source of bugs is an index on the wrong axis: [`ActivationCache::head`] picks the head axis
//! for you.

mod cache;
mod intervene;
mod point;
mod select;
mod splice;

pub use cache::{is_cache_file, ActivationCache, CACHE_FORMAT};
pub use intervene::{Intervention, Op, Positions, RowWindow, Schedule, Selection, Values};
pub use point::{ExpertSite, HookPoint, NormSite, SaeAt, SaeSite};
pub use select::Selector;
pub use splice::Splice;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::model::Config;

/// A Rust closure that replaces the activation at a hook point (the escape hatch).
pub type EditFn = Box<dyn FnMut(HookPoint, &Tensor) -> Result<Tensor> + Send>;

/// A change applied at a hook point: a declarative intervention or a closure.
enum Action {
    Intervene(Box<Intervention>),
    Edit(EditFn),
}

/// The hooks of one forward pass: captures to record and changes to apply.
#[derive(Default)]
pub struct Hooks {
    selectors: Vec<Selector>,
    positions: Option<Vec<i64>>,
    actions: Vec<(HookPoint, Action)>,
    sources: HashMap<String, ActivationCache>,
    step: u64,
    /// The input tokens, kept only when an op reads them.
    tokens: Option<Vec<Vec<u32>>>,
    /// SAEs spliced into the forward pass.
    splices: Vec<Splice>,
    /// Transcoders' outputs between their input and output points, by splice.
    pending: HashMap<usize, splice::Pending>,
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

    /// Replace the activation at `point` by `f(point, x)` (the escape hatch). Edits and
    /// interventions at one point apply in the order they were added.
    pub fn edit(
        mut self,
        point: HookPoint,
        f: impl FnMut(HookPoint, &Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Self {
        self.actions.push((point, Action::Edit(Box::new(f))));
        self
    }

    /// Add a declarative intervention.
    pub fn intervene(mut self, iv: Intervention) -> Self {
        self.actions.push((iv.at, Action::Intervene(Box::new(iv))));
        self
    }

    /// Add several interventions, in order.
    pub fn intervene_all(self, ivs: impl IntoIterator<Item = Intervention>) -> Self {
        ivs.into_iter().fold(self, |h, iv| h.intervene(iv))
    }

    /// Splice an SAE into the forward pass: its `<point>.hook_sae_*` points exist while
    /// it is spliced, and several SAEs splice at different points at once.
    pub fn splice(mut self, splice: Splice) -> Self {
        self.splices.push(splice);
        self
    }

    /// Splice several SAEs, in order.
    pub fn splice_all(self, splices: impl IntoIterator<Item = Splice>) -> Self {
        splices.into_iter().fold(self, |h, s| h.splice(s))
    }

    /// Splices each of `splices` unless an SAE already reads at its point (a model's own SAEs
    /// join each pass's).
    pub fn adopt_splices(&mut self, splices: &[Splice]) {
        for s in splices {
            if !self.splices.iter().any(|o| o.at == s.at) {
                self.splices.push(s.clone());
            }
        }
    }

    /// The spliced SAEs.
    pub fn splices(&self) -> &[Splice] {
        &self.splices
    }

    /// Every hook point of `cfg` with these hooks' SAEs spliced, in forward order.
    pub fn points(&self, cfg: &Config) -> Vec<HookPoint> {
        splice::with_points(HookPoint::all(cfg), &self.splices)
    }

    /// The shape of `point`'s activation for a `batch × seq` input (an SAE point's from its SAE).
    pub fn shape(&self, point: HookPoint, cfg: &Config, batch: usize, seq: usize) -> Vec<usize> {
        match self.splice_of(point) {
            Some((s, site)) => s.shape(site, cfg, batch, seq),
            None => point.shape(cfg, batch, seq),
        }
    }

    /// Register another run's activations under `name`, for `patch` and `subspace_patch` ops.
    pub fn source(mut self, name: impl Into<String>, cache: ActivationCache) -> Self {
        self.sources.insert(name.into(), cache);
        self
    }

    /// Set the training step that intervention schedules are checked against.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Resolves selectors and checks every intervention against `cfg` and `input` before
    /// any compute; the forward pass calls this first.
    pub fn prepare_input(&mut self, cfg: &Config, input: &Input) -> Result<()> {
        let (batch, seq) = input.dims()?;
        let need = self.actions.iter().any(|(_, a)| match a {
            Action::Intervene(iv) => iv.needs_tokens() && iv.when.active(self.step),
            Action::Edit(_) => false,
        });
        self.tokens = if need {
            Some(
                input
                    .tokens
                    .to_dtype(candle_core::DType::U32)?
                    .to_vec2::<u32>()?,
            )
        } else {
            None
        };
        self.prepare(cfg, batch, seq)
    }

    /// Resolves selectors and checks every intervention against `cfg` and a `batch × seq`
    /// input before any compute.
    pub fn prepare(&mut self, cfg: &Config, batch: usize, seq: usize) -> Result<()> {
        for (i, s) in self.splices.iter().enumerate() {
            s.check(cfg)?;
            if let Some(o) = self.splices[..i]
                .iter()
                .find(|o| o.at == s.at || o.out == s.out)
            {
                return Err(Error::Input(format!(
                    "two SAEs splice at {} ({} and {}): splice one per point",
                    if o.at == s.at { s.at.base() } else { s.out },
                    o.sae.cfg.architecture_name(),
                    s.sae.cfg.architecture_name()
                )));
            }
        }
        let all = self.points(cfg);
        self.capture_set.clear();
        for sel in &self.selectors {
            let matched = sel.resolve(&all, cfg)?;
            self.capture_set.extend(matched);
        }
        if let Some(p) = self.capture_set.iter().find(|p| !self.has_point(**p)) {
            return Err(self.no_sae(*p));
        }
        self.edit_index.clear();
        self.pending.clear();
        for (i, (p, action)) in self.actions.iter().enumerate() {
            if !p.exists_in(cfg) {
                HookPoint::parse_for(&p.to_string(), cfg)?;
            }
            if !self.has_point(*p) {
                return Err(self.no_sae(*p));
            }
            if let Action::Intervene(iv) = action {
                match self.splice_of(*p) {
                    Some((s, site)) => {
                        HookPoint::parse_for(&p.to_string(), cfg)?;
                        iv.validate_shaped(
                            &s.shape(site, cfg, batch, seq),
                            batch,
                            seq,
                            &self.sources,
                        )?
                    }
                    None => iv.validate(cfg, batch, seq, &self.sources)?,
                }
                if !iv.when.active(self.step) {
                    continue;
                }
                if iv.op == Op::Record {
                    self.capture_set.insert(*p);
                    continue;
                }
            }
            self.edit_index.entry(*p).or_default().push(i);
        }
        // The forward must hand a spliced SAE's points to `at` and take back what it returns.
        for s in &self.splices {
            self.edit_index.entry(s.at.base()).or_default();
            self.edit_index.entry(s.out).or_default();
        }
        Ok(())
    }

    /// Whether `p` exists with these splices (every point that is not an SAE's does).
    fn has_point(&self, p: HookPoint) -> bool {
        p.sae().is_none() || self.splice_of(p).is_some()
    }

    /// The splice an SAE point belongs to, and its site.
    fn splice_of(&self, p: HookPoint) -> Option<(&Splice, SaeSite)> {
        let (at, site) = p.sae()?;
        self.splices.iter().find(|s| s.at == at).map(|s| (s, site))
    }

    /// The error for an SAE point with no SAE spliced there.
    fn no_sae(&self, p: HookPoint) -> Error {
        let base = p
            .sae()
            .map(|(at, _)| at.base().to_string())
            .unwrap_or_default();
        let have: Vec<String> = self
            .splices
            .iter()
            .map(|s| s.at.base().to_string())
            .collect();
        Error::UnknownHook {
            name: p.to_string(),
            near: format!(
                " (no SAE is spliced at {base}; spliced: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        }
    }

    /// Whether anything reads or changes `point` (lets the forward skip optional work).
    pub fn wants(&self, point: HookPoint) -> bool {
        self.capture_set.contains(&point) || self.edit_index.contains_key(&point)
    }

    /// Whether an edit changes `point` (captures alone do not).
    pub fn edits(&self, point: HookPoint) -> bool {
        self.edit_index.contains_key(&point)
    }

    /// The single place activations leave the forward pass: apply edits, record, pass on
    /// (through a spliced SAE, where one reads or writes here).
    pub fn at(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        if let Some(idx) = self.edit_index.get(&point) {
            for &i in idx {
                let new = match &mut self.actions[i].1 {
                    Action::Edit(f) => f(point, &x)?,
                    Action::Intervene(iv) => {
                        iv.apply_with_tokens(&x, &self.sources, self.tokens.as_deref())?
                    }
                };
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
        if self.splices.is_empty() || point.sae().is_some() {
            return Ok(x);
        }
        for i in 0..self.splices.len() {
            if self.splices[i].at.base() == point {
                x = self.run_splice(i, x)?;
            } else if self.splices[i].out == point {
                x = self.finish_transcoder(i, x)?;
            }
        }
        Ok(x)
    }

    /// Runs splice `i`'s SAE on `x` through its points; returns what replaces `x` (an SAE)
    /// or `x` itself (a transcoder, which replaces its output point later).
    fn run_splice(&mut self, i: usize, x: Tensor) -> Result<Tensor> {
        let s = self.splices[i].clone();
        let sae = Arc::clone(&s.sae);
        let touched = SaeSite::ALL.iter().any(|&site| self.edits(s.point(site)));
        let looked = touched || SaeSite::ALL.iter().any(|&site| self.wants(s.point(site)));
        let transcoder = s.out != s.at.base();
        if s.error_term && !looked {
            // Nothing reads or edits the SAE: with the error term it is the identity.
            if transcoder {
                self.pending.remove(&i);
            }
            return Ok(x);
        }
        let x = x.contiguous()?;
        let input = self.at(s.point(SaeSite::Input), sae.reshape_in(&x)?)?;
        let (xn, state) = sae.normalize_in(&input)?;
        let (pre, gate) = sae.pre_acts(&xn)?;
        let pre = self.at(s.point(SaeSite::ActsPre), pre)?;
        let acts = self.at(
            s.point(SaeSite::ActsPost),
            sae.activate(&pre, gate.as_ref())?,
        )?;
        let recons = self.at(s.point(SaeSite::Recons), sae.recons(&acts)?)?;
        let like = (!transcoder).then(|| x.dims().to_vec());
        let mut y = sae.finish(&recons, &state, like.as_deref())?;
        if let Some(skip) = sae.skip(&x)? {
            y = (y + skip)?;
        }
        // SAELens's error term comes from a clean pass with hooks off; untouched, it is this one.
        let clean = match (s.error_term, touched) {
            (true, true) => Some(sae.forward(&x)?),
            _ => None,
        };
        if transcoder {
            self.pending.insert(i, splice::Pending { y, clean });
            return Ok(x);
        }
        self.output(&s, x, y, clean)
    }

    /// A transcoder's output point: its output (plus the error term) replaces `x`.
    fn finish_transcoder(&mut self, i: usize, x: Tensor) -> Result<Tensor> {
        let s = self.splices[i].clone();
        match self.pending.remove(&i) {
            Some(p) => self.output(&s, x, p.y, p.clean),
            None if s.error_term => Ok(x),
            None => Err(Error::Input(format!(
                "the transcoder writing {} reads {}, which this forward did not compute",
                s.out,
                s.at.base()
            ))),
        }
    }

    /// The error and output points of a splice whose activation is `x` and whose
    /// reconstruction is `y` (`clean`: the unedited one, when it differs).
    fn output(
        &mut self,
        s: &Splice,
        x: Tensor,
        y: Tensor,
        clean: Option<Tensor>,
    ) -> Result<Tensor> {
        if !s.error_term {
            return self.at(s.point(SaeSite::Output), y);
        }
        let error = (&x - clean.as_ref().unwrap_or(&y))?;
        let error_point = s.point(SaeSite::Error);
        let edited = clean.is_some() || self.edits(error_point);
        let error = self.at(error_point, error)?;
        // Untouched, the output is x itself: the spliced forward equals the plain one bit for bit.
        let out = if edited { (y + error)? } else { x };
        self.at(s.point(SaeSite::Output), out)
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

/// Selects positions (negative = from the end) along the point's position dimension. A
/// routing point over tokens is kept whole (its rows are not positions).
fn slice_positions(point: HookPoint, x: &Tensor, positions: &[i64]) -> Result<Tensor> {
    if point.is_flat() {
        return Ok(x.clone());
    }
    let dim = point.pos_dim();
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
    // index_select needs a contiguous input; hook_z and friends are transposed views.
    Ok(x.contiguous()?.index_select(&idx, dim)?)
}
