//! Harvesting activations for an SAE: documents packed into contexts, run through the model
//! (stopping after the hook's block), special tokens dropped, and drawn through a bounded
//! shuffle buffer, so memory is the buffer and one forward's activations whatever the corpus.
//!
//! Packing follows SAELens: documents are concatenated with a separator token (the model's
//! BOS/EOS) between them and cut into contexts of `context_size` tokens, each starting with
//! BOS when the model has one; a tail shorter than a context is dropped.

use patchclamp_core::model::Span;
use patchclamp_core::rng::Rng;
use patchclamp_core::{HookPoint, Hooks, Input, Model, Padding, Selector};

use crate::{Error, Result};

/// Documents as token lists (a corpus read lazily, line by line).
pub type Documents<'a> = Box<dyn Iterator<Item = Result<Vec<u32>>> + Send + 'a>;

/// Contexts of `size` tokens packed from documents.
pub struct Packer<'a> {
    docs: Documents<'a>,
    size: usize,
    bos: Option<u32>,
    sep: Option<u32>,
    pending: Vec<u32>,
    done: bool,
}

impl<'a> Packer<'a> {
    /// Packs `docs` into `size`-token contexts, each led by `bos`, documents separated by `sep`.
    pub fn new(
        docs: Documents<'a>,
        size: usize,
        bos: Option<u32>,
        sep: Option<u32>,
    ) -> Result<Self> {
        if size < 2 || (bos.is_some() && size < 3) {
            return Err(Error::Input(format!(
                "a context of {size} tokens is too short to predict anything"
            )));
        }
        Ok(Packer {
            docs,
            size,
            bos,
            sep,
            pending: vec![],
            done: false,
        })
    }

    /// The next context, or `None` when the documents run out.
    pub fn next_context(&mut self) -> Result<Option<Vec<u32>>> {
        let body = self.size - usize::from(self.bos.is_some());
        while self.pending.len() < body && !self.done {
            match self.docs.next() {
                Some(doc) => {
                    let doc = doc?;
                    if doc.is_empty() {
                        continue;
                    }
                    if !self.pending.is_empty() {
                        if let Some(s) = self.sep {
                            self.pending.push(s);
                        }
                    }
                    self.pending.extend(doc);
                }
                None => self.done = true,
            }
        }
        if self.pending.len() < body {
            return Ok(None);
        }
        let rest = self.pending.split_off(body);
        let mut ctx: Vec<u32> = self.bos.into_iter().collect();
        ctx.append(&mut self.pending);
        self.pending = rest;
        Ok(Some(ctx))
    }
}

/// Activations at one hook point, streamed from packed contexts through a shuffle buffer.
pub struct Harvest<'a> {
    model: &'a Model,
    hook: HookPoint,
    packer: Packer<'a>,
    exclude: Vec<u32>,
    /// Contexts per forward pass.
    pub contexts_per_forward: usize,
    width: usize,
    buffer: Vec<f32>,
    capacity: usize,
    rng: Rng,
    exhausted: bool,
    /// Contexts run through the model so far.
    pub contexts: u64,
    /// Activations harvested so far (special tokens excluded).
    pub harvested: u64,
}

impl<'a> Harvest<'a> {
    /// Streams `hook`'s activations (flattened to `[.., width]`) of `model` over `packer`'s
    /// contexts, skipping tokens in `exclude`; `capacity` rows of shuffle buffer.
    pub fn new(
        model: &'a Model,
        hook: HookPoint,
        packer: Packer<'a>,
        exclude: Vec<u32>,
        capacity: usize,
        seed: u64,
    ) -> Result<Self> {
        let p = HookPoint::parse_for(&hook.to_string(), &model.cfg)?;
        if p.pos_dim() != 1 || p.sae().is_some() {
            return Err(Error::Input(format!(
                "{hook} is not a per-token activation: harvest a residual, MLP or hook_z point"
            )));
        }
        let width = p.shape(&model.cfg, 1, 1)[2..].iter().product();
        if capacity == 0 {
            return Err(Error::Input(
                "the shuffle buffer needs room for at least one row".into(),
            ));
        }
        Ok(Harvest {
            model,
            hook,
            packer,
            exclude,
            contexts_per_forward: 8,
            width,
            buffer: vec![],
            capacity,
            rng: Rng::new(seed ^ 0x4A12_7E57),
            exhausted: false,
            contexts: 0,
            harvested: 0,
        })
    }

    /// The width of one activation row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Runs one forward over the next contexts and appends their activations to the buffer;
    /// false when the corpus is used up.
    fn refill(&mut self) -> Result<bool> {
        let mut ctxs = vec![];
        while ctxs.len() < self.contexts_per_forward {
            match self.packer.next_context()? {
                Some(c) => ctxs.push(c),
                None => break,
            }
        }
        if ctxs.is_empty() {
            return Ok(false);
        }
        crate::util::interrupt::check()?;
        let input = Input::batch(&ctxs, Padding::Right, 0, self.model.device())?;
        let mut hooks = Hooks::none().capture(Selector::Point(self.hook));
        let stop = self
            .hook
            .layer()
            .map(|l| l + 1)
            .filter(|&l| l < self.model.cfg.n_layers);
        self.model.forward_span(
            &input,
            &mut hooks,
            Span {
                stop_at_layer: stop,
                ..Default::default()
            },
        )?;
        let acts = hooks
            .take_cache()
            .get(self.hook)
            .cloned()
            .ok_or_else(|| Error::Input(format!("the forward did not reach {}", self.hook)))?;
        let flat: Vec<f32> = acts
            .contiguous()?
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        let w = self.width;
        for (row, tok) in flat.chunks(w).zip(ctxs.iter().flatten()) {
            if self.exclude.contains(tok) {
                continue;
            }
            self.buffer.extend_from_slice(row);
            self.harvested += 1;
        }
        self.contexts += ctxs.len() as u64;
        Ok(true)
    }

    /// The next `rows` activations `[rows, width]`, drawn uniformly from the buffer (kept
    /// full while the corpus lasts); `None` when fewer than `rows` remain.
    pub fn next_batch(&mut self, rows: usize) -> Result<Option<Vec<f32>>> {
        let w = self.width;
        let mut out = Vec::with_capacity(rows * w);
        for _ in 0..rows {
            while !self.exhausted && self.buffer.len() / w < self.capacity {
                if !self.refill()? {
                    self.exhausted = true;
                }
            }
            let n = self.buffer.len() / w;
            if n == 0 {
                return Ok(None);
            }
            let i = self.rng.below(n as u64) as usize;
            out.extend_from_slice(&self.buffer[i * w..(i + 1) * w]);
            // Swap-remove row i.
            let last = (n - 1) * w;
            if i != n - 1 {
                self.buffer.copy_within(last..last + w, i * w);
            }
            self.buffer.truncate(last);
        }
        Ok(Some(out))
    }
}
