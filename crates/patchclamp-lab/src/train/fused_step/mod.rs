//! The fused training step: loss and gradients of the lab's attention-only models in one
//! hand-written forward and backward pass, without candle's tape.
//!
//! A step of a model this small is mostly bookkeeping under candle (a zeroed gradient and an
//! add per graph node, thread wake-ups between small ops); here the batch is cut into chunks of
//! whole sequences, each chunk runs forward and backward on one thread with single-threaded
//! matrix products (its working set stays in cache), and the chunks' weight gradients are summed
//! in a fixed order, so the numbers do not depend on the thread count. The trainer takes this
//! path only for steps with no intervention in force and a model of the family below; any
//! other step goes through the hooked forward and candle's backward. Both agree to 1e-5
//! (tested).
//!
//! The family: learned positions, pre-LayerNorm attention-only blocks without biases, a final
//! LayerNorm and an untied unembedding without bias — the lab's default `ModelSpec`.

use std::ops::Range;

use patchclamp_core::model::{AttnPart, BlockNorm, Mlp, NormKind, NormPart, Param, Positions};
use patchclamp_core::Config;
use rayon::prelude::*;

mod layers;

use layers::chunk_pass_generic;

use crate::error::{Error, Result};
use crate::tasks::Batch;

/// Tokens per chunk: large enough for efficient products, small enough to stay in cache.
const CHUNK_TOKENS: usize = 512;

/// Rows of attention computed together: causal blocks skip the keys no query of the block sees.
const BLOCK: usize = 16;

/// The sizes of a model of the fused family.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Dims {
    layers: usize,
    d: usize,
    heads: usize,
    d_head: usize,
    vocab: usize,
    n_ctx: usize,
    eps: f32,
    scale: f32,
}

impl Dims {
    /// Width of the attention's heads together.
    fn attn(&self) -> usize {
        self.heads * self.d_head
    }
}

/// Where each tensor of one block sits in the trainer's parameter list.
#[derive(Debug, Clone, Copy)]
struct BlockIdx {
    ln_w: usize,
    ln_b: usize,
    w_q: usize,
    w_k: usize,
    w_v: usize,
    w_o: usize,
}

/// A compiled training step for one model: parameter positions and reusable chunk buffers.
pub(crate) struct FusedStep {
    dims: Dims,
    w_e: usize,
    w_pos: usize,
    blocks: Vec<BlockIdx>,
    lnf_w: usize,
    lnf_b: usize,
    w_u: usize,
    /// Element counts of the trainer's parameters.
    sizes: Vec<usize>,
    /// Buffers of each chunk, kept between steps (allocating them costs page faults).
    work: Vec<Work>,
    /// Each layer's `W_Q | W_K | W_V`, rebuilt in place every step.
    w_qkv: Vec<Vec<f32>>,
    /// Gradient buffers handed back by [`FusedStep::recycle`], filled again by the next step.
    spare: Vec<Vec<f32>>,
}

/// The weights of one step in the layout the kernels read.
struct Params<'a> {
    w_e: &'a [f32],
    w_pos: &'a [f32],
    ln_w: Vec<&'a [f32]>,
    ln_b: Vec<&'a [f32]>,
    /// `[d, 3·attn]`: `W_Q | W_K | W_V` side by side, one product for all three.
    w_qkv: Vec<&'a [f32]>,
    w_o: Vec<&'a [f32]>,
    lnf_w: &'a [f32],
    lnf_b: &'a [f32],
    w_u: &'a [f32],
}

/// One chunk's gradients, laid out as [`Params`].
#[derive(Default)]
struct Grads {
    w_e: Vec<f32>,
    w_pos: Vec<f32>,
    ln_w: Vec<Vec<f32>>,
    ln_b: Vec<Vec<f32>>,
    w_qkv: Vec<Vec<f32>>,
    w_o: Vec<Vec<f32>>,
    lnf_w: Vec<f32>,
    lnf_b: Vec<f32>,
    w_u: Vec<f32>,
}

/// Saved activations of one layer of a chunk.
#[derive(Default)]
struct LayerActs {
    /// LayerNorm input centred and scaled `[T, d]`, and `1/scale` `[T]`.
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    /// LayerNorm output `[T, d]`.
    h: Vec<f32>,
    /// `[T, 3·attn]`: queries, keys, values.
    qkv: Vec<f32>,
    /// Patterns `[R, H, S, S]` (zero above the diagonal).
    p: Vec<f32>,
    /// Head outputs before `W_O` `[T, attn]`.
    z: Vec<f32>,
}

/// A chunk's buffers.
#[derive(Default)]
struct Work {
    /// `(tokens, sequence length)` the buffers are sized for.
    size: (usize, usize),
    layers: Vec<LayerActs>,
    resid: Vec<f32>,
    /// The final norm's saved activations (no attention parts).
    last: LayerActs,
    logits: Vec<f32>,
    d_resid: Vec<f32>,
    d_h: Vec<f32>,
    d_z: Vec<f32>,
    d_qkv: Vec<f32>,
    d_p: Vec<f32>,
    /// A head's keys or values transposed `[d_head, S]`.
    kt: Vec<f32>,
    grads: Grads,
}

fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

impl Work {
    /// Sizes the buffers for `tokens` tokens of `s`-token sequences and zeroes the gradients
    /// that accumulate. Every other buffer is overwritten before it is read, except the
    /// patterns' masked corners, which stay zero while the size stays the same.
    fn prepare(&mut self, dims: &Dims, tokens: usize, s: usize) {
        let (d, a, v) = (dims.d, dims.attn(), dims.vocab);
        if self.size == (tokens, s) {
            let g = &mut self.grads;
            for x in [&mut g.w_e, &mut g.w_pos, &mut g.lnf_w, &mut g.lnf_b] {
                x.fill(0.0);
            }
            g.ln_w
                .iter_mut()
                .chain(&mut g.ln_b)
                .for_each(|x| x.fill(0.0));
            return;
        }
        let rows = tokens / s;
        self.size = (tokens, s);
        self.layers.resize_with(dims.layers, Default::default);
        for l in &mut self.layers {
            resize(&mut l.xhat, tokens * d);
            resize(&mut l.rstd, tokens);
            resize(&mut l.h, tokens * d);
            resize(&mut l.qkv, tokens * 3 * a);
            resize(&mut l.p, rows * dims.heads * s * s);
            resize(&mut l.z, tokens * a);
        }
        resize(&mut self.last.xhat, tokens * d);
        resize(&mut self.last.rstd, tokens);
        resize(&mut self.last.h, tokens * d);
        for (buf, n) in [
            (&mut self.resid, tokens * d),
            (&mut self.logits, tokens * v),
            (&mut self.d_resid, tokens * d),
            (&mut self.d_h, tokens * d),
            (&mut self.d_z, tokens * a),
            (&mut self.d_qkv, tokens * 3 * a),
            (&mut self.d_p, s * s),
        ] {
            resize(buf, n);
        }
        let g = &mut self.grads;
        resize(&mut g.w_e, v * d);
        resize(&mut g.w_pos, dims.n_ctx * d);
        for list in [&mut g.ln_w, &mut g.ln_b] {
            list.resize_with(dims.layers, Vec::new);
            list.iter_mut().for_each(|x| resize(x, d));
        }
        g.w_qkv.resize_with(dims.layers, Vec::new);
        g.w_qkv.iter_mut().for_each(|x| resize(x, d * 3 * a));
        g.w_o.resize_with(dims.layers, Vec::new);
        g.w_o.iter_mut().for_each(|x| resize(x, a * d));
        resize(&mut g.lnf_w, d);
        resize(&mut g.lnf_b, d);
        resize(&mut g.w_u, d * v);
    }
}

impl FusedStep {
    /// The step for a model with `cfg` whose parameters are `(handle, element count)` in the
    /// trainer's order, or `None` when the model is outside the fused family.
    pub(crate) fn new(cfg: &Config, params: &[(Param, usize)]) -> Option<FusedStep> {
        let family = cfg.norm.kind == NormKind::LayerNorm
            && cfg.norm.final_norm
            && matches!(cfg.positions, Positions::Learned)
            && matches!(cfg.mlp, Mlp::None)
            && cfg.attn.n_kv_heads == cfg.attn.n_heads
            && !cfg.attn.qkv_bias
            && !cfg.attn.o_bias
            && !cfg.tied_embeddings
            && !cfg.unembed_bias
            && cfg.attn.sliding_window.is_none()
            && cfg.n_layers > 0;
        if !family {
            return None;
        }
        let find = |p: Param| params.iter().position(|(x, _)| *x == p);
        let blocks = (0..cfg.n_layers)
            .map(|layer| {
                let ln1 = |part| Param::Norm {
                    layer,
                    norm: BlockNorm::Ln1,
                    part,
                };
                let attn = |part| Param::Attn { layer, part };
                Some(BlockIdx {
                    ln_w: find(ln1(NormPart::Gain))?,
                    ln_b: find(ln1(NormPart::Bias))?,
                    w_q: find(attn(AttnPart::WQ))?,
                    w_k: find(attn(AttnPart::WK))?,
                    w_v: find(attn(AttnPart::WV))?,
                    w_o: find(attn(AttnPart::WO))?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        // The only other tensors allowed are the second norms of attention-only blocks, which
        // nothing reads (their gradient is zero); anything else means a different model.
        let unused = params
            .iter()
            .filter(|(p, _)| {
                matches!(
                    p,
                    Param::Norm {
                        norm: BlockNorm::Ln2,
                        ..
                    }
                )
            })
            .count();
        if params.len() != 6 * cfg.n_layers + 5 + unused {
            return None;
        }
        Some(FusedStep {
            dims: Dims {
                layers: cfg.n_layers,
                d: cfg.d_model,
                heads: cfg.attn.n_heads,
                d_head: cfg.attn.d_head,
                vocab: cfg.d_vocab,
                n_ctx: cfg.n_ctx,
                eps: cfg.norm.eps as f32,
                scale: (1.0 / cfg.attn.scale) as f32,
            },
            w_e: find(Param::Embed)?,
            w_pos: find(Param::PosEmbed)?,
            blocks,
            lnf_w: find(Param::FinalNorm(NormPart::Gain))?,
            lnf_b: find(Param::FinalNorm(NormPart::Bias))?,
            w_u: find(Param::Unembed)?,
            sizes: params.iter().map(|(_, n)| *n).collect(),
            work: vec![],
            w_qkv: vec![],
            spare: vec![],
        })
    }

    /// The weighted mean next-token loss of `batch` (over the logits of `classes`, if given)
    /// and its gradient for every parameter (`params` in the trainer's order, flattened).
    pub(crate) fn loss_and_grads(
        &mut self,
        params: &[Vec<f32>],
        batch: &Batch,
        classes: Option<Range<usize>>,
    ) -> Result<(f32, Vec<Vec<f32>>)> {
        let dims = self.dims;
        let (b, s) = batch.dims();
        self.check(params, batch, classes.as_ref())?;
        let total: f64 = batch.weights.iter().flatten().map(|&w| w as f64).sum();
        if total <= 0.0 {
            return Err(Error::Input(
                "the batch has no position with a positive loss weight".into(),
            ));
        }
        let (d, a) = (dims.d, dims.attn());
        self.w_qkv.resize_with(dims.layers, Vec::new);
        for (w, bi) in self.w_qkv.iter_mut().zip(&self.blocks) {
            w.resize(d * 3 * a, 0.0);
            for (part, &idx) in [bi.w_q, bi.w_k, bi.w_v].iter().enumerate() {
                for (row, src) in w.chunks_mut(3 * a).zip(params[idx].chunks(a)) {
                    row[part * a..(part + 1) * a].copy_from_slice(src);
                }
            }
        }
        let p = Params {
            w_e: &params[self.w_e],
            w_pos: &params[self.w_pos],
            ln_w: self.blocks.iter().map(|x| &params[x.ln_w][..]).collect(),
            ln_b: self.blocks.iter().map(|x| &params[x.ln_b][..]).collect(),
            w_qkv: self.w_qkv.iter().map(Vec::as_slice).collect(),
            w_o: self.blocks.iter().map(|x| &params[x.w_o][..]).collect(),
            lnf_w: &params[self.lnf_w],
            lnf_b: &params[self.lnf_b],
            w_u: &params[self.w_u],
        };
        let rows_per_chunk = CHUNK_TOKENS.div_ceil(s).clamp(1, b);
        let chunks: Vec<Range<usize>> = (0..b)
            .step_by(rows_per_chunk)
            .map(|r| r..(r + rows_per_chunk).min(b))
            .collect();
        self.work.resize_with(chunks.len(), Default::default);
        let step = Step {
            dims,
            p,
            batch,
            s,
            cls: classes.unwrap_or(0..dims.vocab),
            inv_total: (1.0 / total) as f32,
        };
        let job = |(rows, w): (&Range<usize>, &mut Work)| {
            w.prepare(&dims, rows.len() * s, s);
            chunk_pass(&step, rows.clone(), w)
        };
        let sums: Vec<f64> = if rayon::current_num_threads() > 1 && chunks.len() > 1 {
            chunks
                .par_iter()
                .zip(self.work.par_iter_mut())
                .map(job)
                .collect()
        } else {
            chunks.iter().zip(self.work.iter_mut()).map(job).collect()
        };
        let loss = (sums.iter().sum::<f64>() / total) as f32;
        Ok((loss, self.reduce(chunks.len())))
    }

    /// Rejects a batch or parameter list the step cannot take, with the reason.
    fn check(
        &self,
        params: &[Vec<f32>],
        batch: &Batch,
        classes: Option<&Range<usize>>,
    ) -> Result<()> {
        let dims = &self.dims;
        let (b, s) = batch.dims();
        let sizes = params.iter().map(Vec::len);
        if params.len() != self.sizes.len() || !sizes.eq(self.sizes.iter().copied()) {
            return Err(Error::Input(
                "fused step: the parameters do not match the model it was built for".into(),
            ));
        }
        if b == 0 || s == 0 || s > dims.n_ctx {
            return Err(Error::Input(format!(
                "fused step: batch of {b} rows × {s} positions (the model takes at most {} positions)",
                dims.n_ctx
            )));
        }
        let square = batch.targets.len() == b
            && batch.weights.len() == b
            && (0..b).all(|r| {
                [
                    batch.tokens[r].len(),
                    batch.targets[r].len(),
                    batch.weights[r].len(),
                ] == [s; 3]
            });
        if !square {
            return Err(Error::Input("fused step: rows of different lengths".into()));
        }
        let cls = classes.cloned().unwrap_or(0..dims.vocab);
        if cls.is_empty() || cls.end > dims.vocab {
            return Err(Error::Input(format!(
                "classes {cls:?} outside the vocabulary of {}",
                dims.vocab
            )));
        }
        for (r, (toks, tgts)) in batch.tokens.iter().zip(&batch.targets).enumerate() {
            for (t, (&x, &y)) in toks.iter().zip(tgts).enumerate() {
                let scored = batch.weights[r][t] > 0.0;
                if x as usize >= dims.vocab || (scored && !cls.contains(&(y as usize))) {
                    return Err(Error::Input(format!(
                        "row {r} position {t}: token {x} / target {y} outside the vocabulary {} or classes {cls:?}",
                        dims.vocab
                    )));
                }
            }
        }
        Ok(())
    }

    /// The chunks' gradients summed in chunk order, in the trainer's parameter order, written
    /// into the recycled buffers where there are some.
    fn reduce(&mut self, chunks: usize) -> Vec<Vec<f32>> {
        let a = self.dims.attn();
        let work = &self.work[..chunks];
        let mut out = std::mem::take(&mut self.spare);
        if out.len() != self.sizes.len() || out.iter().zip(&self.sizes).any(|(o, &n)| o.len() != n)
        {
            out = self.sizes.iter().map(|&n| vec![0.0; n]).collect();
        }
        // Tensors nothing reads (an attention-only block's second norm) have zero gradients;
        // every other one is overwritten below.
        for (i, o) in out.iter_mut().enumerate() {
            if !self.read(i) {
                o.fill(0.0);
            }
        }
        // `add(i, pick, layout)`: parameter i from the chunks' buffer `pick` (`layout` as in
        // `sum_into`; the whole buffer when `None`).
        type Pick<'a> = &'a (dyn Fn(&Grads) -> &[f32] + Sync);
        let sizes = &self.sizes;
        let mut add = |i: usize, pick: Pick, layout: Option<(usize, usize, usize)>| {
            let layout = layout.unwrap_or((sizes[i], sizes[i], 0));
            sum_into(&mut out[i], work, pick, layout);
        };
        add(self.w_e, &|g| &g.w_e, None);
        add(self.w_pos, &|g| &g.w_pos, None);
        for (l, bi) in self.blocks.iter().enumerate() {
            add(bi.ln_w, &|g| &g.ln_w[l], None);
            add(bi.ln_b, &|g| &g.ln_b[l], None);
            add(bi.w_o, &|g| &g.w_o[l], None);
            // Q, K and V are column blocks of the chunks' `[d, 3·attn]` gradient.
            for (part, i) in [bi.w_q, bi.w_k, bi.w_v].into_iter().enumerate() {
                add(i, &|g| &g.w_qkv[l], Some((a, 3 * a, part * a)));
            }
        }
        add(self.lnf_w, &|g| &g.lnf_w, None);
        add(self.lnf_b, &|g| &g.lnf_b, None);
        add(self.w_u, &|g| &g.w_u, None);
        out
    }

    /// Whether parameter `i` (in the trainer's order) is one the step reads.
    fn read(&self, i: usize) -> bool {
        [self.w_e, self.w_pos, self.lnf_w, self.lnf_b, self.w_u].contains(&i)
            || self
                .blocks
                .iter()
                .any(|b| [b.ln_w, b.ln_b, b.w_q, b.w_k, b.w_v, b.w_o].contains(&i))
    }

    /// Takes back the gradients [`FusedStep::loss_and_grads`] returned, to fill them again
    /// next step instead of allocating (fresh pages cost faults on every step).
    pub(crate) fn recycle(&mut self, grads: Vec<Vec<f32>>) {
        self.spare = grads;
    }
}

/// `dst[i] = Σ_chunks src[(i / row)·stride + offset + i % row]` with `src` = `pick(chunk)`,
/// the chunks added in chunk order (so the sum does not depend on the thread count), in
/// parallel pieces of `dst`.
fn sum_into(
    dst: &mut [f32],
    work: &[Work],
    pick: &(dyn Fn(&Grads) -> &[f32] + Sync),
    (row, stride, offset): (usize, usize, usize),
) {
    const PIECE: usize = 1 << 13;
    dst.par_chunks_mut(PIECE)
        .enumerate()
        .for_each(|(i, piece)| {
            let mut done = 0;
            while done < piece.len() {
                let at = i * PIECE + done;
                let (r, c) = (at / row, at % row);
                let len = (row - c).min(piece.len() - done);
                let src = r * stride + offset + c;
                let out = &mut piece[done..done + len];
                out.copy_from_slice(&pick(&work[0].grads)[src..src + len]);
                for w in &work[1..] {
                    let part = &pick(&w.grads)[src..src + len];
                    out.iter_mut().zip(part).for_each(|(x, &y)| *x += y);
                }
                done += len;
            }
        });
}

/// What every chunk of one step reads.
struct Step<'a> {
    dims: Dims,
    p: Params<'a>,
    batch: &'a Batch,
    /// Sequence length.
    s: usize,
    /// The logits the loss is over.
    cls: Range<usize>,
    /// `1 / Σ weights` of the whole batch.
    inv_total: f32,
}

/// Forward and backward of one chunk (rows `rows` of the batch); returns its weighted loss sum
/// and leaves its gradients in `w.grads`.
fn chunk_pass(step: &Step, rows: Range<usize>, w: &mut Work) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { chunk_pass_avx512(step, rows, w) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { chunk_pass_avx2(step, rows, w) };
        }
    }
    chunk_pass_generic(step, rows, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_pass_avx512(step: &Step, rows: Range<usize>, w: &mut Work) -> f64 {
    chunk_pass_generic(step, rows, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_pass_avx2(step: &Step, rows: Range<usize>, w: &mut Work) -> f64 {
    chunk_pass_generic(step, rows, w)
}
