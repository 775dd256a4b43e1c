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

use patchclamp_core::model::kernels::{exp_approx, lane_max, lane_sum};
use patchclamp_core::model::{MlpKind, NormKind, Positions};
use patchclamp_core::{Config, Error, Result};
use rayon::prelude::*;

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
    /// The step for a model with `cfg` whose parameters are `(name, element count)` in the
    /// trainer's order, or `None` when the model is outside the fused family.
    pub(crate) fn new(cfg: &Config, params: &[(&str, usize)]) -> Option<FusedStep> {
        let family = cfg.norm == NormKind::LayerNorm
            && cfg.final_norm
            && matches!(cfg.positions, Positions::Learned)
            && matches!(cfg.mlp, MlpKind::None)
            && cfg.n_kv_heads == cfg.n_heads
            && !cfg.qkv_bias
            && !cfg.o_bias
            && !cfg.tied_embeddings
            && !cfg.unembed_bias
            && cfg.sliding_window.is_none()
            && cfg.n_layers > 0;
        if !family {
            return None;
        }
        let find = |n: &str| params.iter().position(|(x, _)| *x == n);
        let blocks = (0..cfg.n_layers)
            .map(|l| {
                Some(BlockIdx {
                    ln_w: find(&format!("blocks.{l}.ln1.w"))?,
                    ln_b: find(&format!("blocks.{l}.ln1.b"))?,
                    w_q: find(&format!("blocks.{l}.attn.W_Q"))?,
                    w_k: find(&format!("blocks.{l}.attn.W_K"))?,
                    w_v: find(&format!("blocks.{l}.attn.W_V"))?,
                    w_o: find(&format!("blocks.{l}.attn.W_O"))?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        // The only other tensors allowed are the second norms of attention-only blocks, which
        // nothing reads (their gradient is zero); anything else means a different model.
        let unused = params.iter().filter(|(n, _)| n.contains(".ln2.")).count();
        if params.len() != 6 * cfg.n_layers + 5 + unused {
            return None;
        }
        Some(FusedStep {
            dims: Dims {
                layers: cfg.n_layers,
                d: cfg.d_model,
                heads: cfg.n_heads,
                d_head: cfg.d_head,
                vocab: cfg.d_vocab,
                n_ctx: cfg.n_ctx,
                eps: cfg.norm_eps as f32,
                scale: (1.0 / cfg.attn_scale) as f32,
            },
            w_e: find("embed.W_E")?,
            w_pos: find("pos_embed.W_pos")?,
            blocks,
            lnf_w: find("ln_final.w")?,
            lnf_b: find("ln_final.b")?,
            w_u: find("unembed.W_U")?,
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

/// `dst[m×n]` (row stride `dst_rs`) `= (acc ? dst : 0) + alpha·A·B`, where `A(i, p) =
/// a[i·a_st.0 + p·a_st.1]` and `B(p, j) = b[p·b_st.0 + j·b_st.1]`: strides make transposes free.
#[allow(clippy::too_many_arguments)]
#[inline]
fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    alpha: f32,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_bounds((m, n, k), (dst, dst_rs), (a, a_st), (b, b_st));
    // SAFETY: the asserts of `check_bounds` keep every address gemm forms inside the three slices, and the
    // output rows do not overlap each other or the inputs (`dst` is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_st.1 as isize,
            a_st.0 as isize,
            b.as_ptr(),
            b_st.1 as isize,
            b_st.0 as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Asserts that an `m×n` output with row stride `dst_rs` (rows not overlapping) and the operands
/// read through their strides lie inside their slices: what makes the raw products safe.
fn check_bounds(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&[f32], usize),
    (a, a_st): (&[f32], (usize, usize)),
    (b, b_st): (&[f32], (usize, usize)),
) {
    assert!(k > 0, "product with an empty inner dimension");
    assert!(m == 1 || dst_rs >= n, "product output rows overlap");
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "product output out of bounds"
    );
    assert!(
        (m - 1) * a_st.0 + (k - 1) * a_st.1 < a.len(),
        "product lhs out of bounds"
    );
    assert!(
        (k - 1) * b_st.0 + (n - 1) * b_st.1 < b.len(),
        "product rhs out of bounds"
    );
}

/// [`mm`] for attention's small products: where `B`'s rows are contiguous, the output has
/// sixteen-column multiples and four-row multiples, a register-tiled loop (four or eight rows by
/// one or two sixteen-lane vectors of accumulators); elsewhere the library product. A head's
/// products are 16×64×32-sized: the library's set-up per call costs more than their arithmetic.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn small_mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    alpha: f32,
) {
    if b_st.1 != 1 || n % LANES != 0 || m % 4 != 0 || m == 0 || n == 0 || k == 0 {
        return mm((m, n, k), dst, dst_rs, a, a_st, b, b_st, alpha, false);
    }
    check_bounds((m, n, k), (dst, dst_rs), (a, a_st), (b, b_st));
    let (a, b, dst) = (a.as_ptr(), b.as_ptr(), dst.as_mut_ptr());
    // SAFETY: `check_bounds` covers every row (m is a multiple of the tile's rows), column (n a
    // multiple of 16) and depth the tiles read and write.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if m % 8 == 0 && is_x86_feature_detected!("avx512f") {
            return tiles_avx512((m, n, k), dst, dst_rs, a, a_st, b, b_st.0, alpha);
        }
        tiles((m, n, k), dst, dst_rs, a, a_st, b, b_st.0, alpha);
    }
}

/// Walks an `m×n` output in tiles of `R` rows by two sixteen-lane vectors of columns (then
/// one), calling `tile(two_vectors, lhs, rhs, dst)` at each tile's first row and column.
#[inline(always)]
unsafe fn for_each_tile<const R: usize>(
    (m, n): (usize, usize),
    (dst, drs): (*mut f32, usize),
    (a, ars): (*const f32, usize),
    b: *const f32,
    mut tile: impl FnMut(bool, *const f32, *const f32, *mut f32),
) {
    for i0 in (0..m).step_by(R) {
        let (ap, dp) = unsafe { (a.add(i0 * ars), dst.add(i0 * drs)) };
        let mut j0 = 0;
        while j0 + 2 * LANES <= n {
            tile(true, ap, unsafe { b.add(j0) }, unsafe { dp.add(j0) });
            j0 += 2 * LANES;
        }
        if j0 < n {
            tile(false, ap, unsafe { b.add(j0) }, unsafe { dp.add(j0) });
        }
    }
}

/// The output of [`small_mm`] in four-row tiles.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tiles(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    drs: usize,
    a: *const f32,
    a_st: (usize, usize),
    b: *const f32,
    brs: usize,
    alpha: f32,
) {
    let tile = |two, ap, bp, dp| unsafe {
        if two {
            tile::<2>(k, ap, a_st, bp, brs, dp, drs, alpha)
        } else {
            tile::<1>(k, ap, a_st, bp, brs, dp, drs, alpha)
        }
    };
    unsafe { for_each_tile::<4>((m, n), (dst, drs), (a, a_st.0), b, tile) }
}

/// [`tiles`] with eight rows, written in AVX-512 intrinsics: its sixteen accumulators fill half
/// the 32 vector registers, which the compiler's own vectorisation of [`tile`] spills (it then
/// gathers and scatters). The same fused multiply-adds in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx512(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    drs: usize,
    a: *const f32,
    a_st: (usize, usize),
    b: *const f32,
    brs: usize,
    alpha: f32,
) {
    let tile = |two, ap, bp, dp| unsafe {
        if two {
            tile_avx512::<2>(k, ap, a_st, bp, brs, dp, drs, alpha)
        } else {
            tile_avx512::<1>(k, ap, a_st, bp, brs, dp, drs, alpha)
        }
    };
    unsafe { for_each_tile::<8>((m, n), (dst, drs), (a, a_st.0), b, tile) }
}

/// Eight output rows by `NV` vectors of [`tiles_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_avx512<const NV: usize>(
    k: usize,
    a: *const f32,
    (ars, acs): (usize, usize),
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    alpha: f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; 8];
    for p in 0..k {
        let bv: [__m512; NV] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(p * brs + v * LANES)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(unsafe { *a.add(r * ars + p * acs) });
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(x, bv, *acc);
            }
        }
    }
    let alpha = _mm512_set1_ps(alpha);
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add(r * drs + v * LANES), _mm512_mul_ps(alpha, acc)) };
        }
    }
}

/// Sixteen lanes of f32: one vector register.
const LANES: usize = 16;

/// Four output rows by `NV` sixteen-lane vectors, accumulated over the depth `k` in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const NV: usize>(
    k: usize,
    a: *const f32,
    (ars, acs): (usize, usize),
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    alpha: f32,
) {
    let mut acc = [[[0f32; LANES]; NV]; 4];
    for p in 0..k {
        let mut bv = [[0f32; LANES]; NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = unsafe {
                std::ptr::read_unaligned(b.add(p * brs + v * LANES) as *const [f32; LANES])
            };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { *a.add(r * ars + p * acs) };
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                for (y, &b) in acc.iter_mut().zip(bv) {
                    *y = x.mul_add(b, *y);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            for (l, &y) in acc.iter().enumerate() {
                unsafe { *dst.add(r * drs + v * LANES + l) = alpha * y };
            }
        }
    }
}

/// Causal blocks of `s` query rows: `(first row, end row)`; a block's queries see keys
/// `0..end`.
fn blocks(s: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..s).step_by(BLOCK).map(move |i| (i, (i + BLOCK).min(s)))
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

#[inline(always)]
fn chunk_pass_generic(step: &Step, rows: Range<usize>, w: &mut Work) -> f64 {
    let Step {
        dims,
        p,
        batch,
        s,
        cls,
        inv_total,
    } = step;
    let (s, inv_total) = (*s, *inv_total);
    let (d, a, v, t) = (dims.d, dims.attn(), dims.vocab, w.size.0);
    let tokens = || {
        batch.tokens[rows.clone()]
            .iter()
            .flat_map(|r| r.iter().enumerate())
    };

    // Forward: x₀ = W_E[token] + W_pos[position].
    for ((pos, &tok), x) in tokens().zip(w.resid.chunks_mut(d)) {
        let (e, q) = (&p.w_e[tok as usize * d..][..d], &p.w_pos[pos * d..][..d]);
        x.iter_mut()
            .zip(e.iter().zip(q))
            .for_each(|(x, (e, q))| *x = e + q);
    }
    for l in 0..dims.layers {
        let acts = &mut w.layers[l];
        layer_norm(&w.resid, d, dims.eps, p.ln_w[l], p.ln_b[l], acts);
        mm(
            (t, 3 * a, d),
            &mut acts.qkv,
            3 * a,
            &acts.h,
            (d, 1),
            p.w_qkv[l],
            (3 * a, 1),
            1.0,
            false,
        );
        attention(dims, s, acts, &mut w.kt);
        // x += z · W_O
        mm(
            (t, d, a),
            &mut w.resid,
            d,
            &acts.z,
            (a, 1),
            p.w_o[l],
            (d, 1),
            1.0,
            true,
        );
    }
    let fin = &mut w.last;
    layer_norm(&w.resid, d, dims.eps, p.lnf_w, p.lnf_b, fin);
    mm(
        (t, v, d),
        &mut w.logits,
        v,
        &fin.h,
        (d, 1),
        p.w_u,
        (v, 1),
        1.0,
        false,
    );

    // Loss, and its gradient in place of the logits: (softmax − onehot) · weight / Σ weights
    // over the class columns, zero elsewhere.
    let mut loss = 0f64;
    let scored = batch.targets[rows.clone()]
        .iter()
        .zip(&batch.weights[rows.clone()])
        .flat_map(|(t, w)| t.iter().zip(w));
    for ((&tgt, &wt), row) in scored.zip(w.logits.chunks_mut(v)) {
        if wt > 0.0 {
            let z = &mut row[cls.clone()];
            let max = lane_max(z);
            let x_t = z[tgt as usize - cls.start];
            z.iter_mut().for_each(|x| *x = exp_approx(*x - max));
            let sum = lane_sum(z);
            loss += wt as f64 * (max + sum.ln() - x_t) as f64;
            let g = wt * inv_total;
            let k = g / sum;
            z.iter_mut().for_each(|x| *x *= k);
            z[tgt as usize - cls.start] -= g;
            row[..cls.start].fill(0.0);
            row[cls.end..].fill(0.0);
        } else {
            row.fill(0.0);
        }
    }

    // Backward through the unembedding and the final norm.
    let g = &mut w.grads;
    let dl = &w.logits;
    mm(
        (d, v, t),
        &mut g.w_u,
        v,
        &fin.h,
        (1, d),
        dl,
        (v, 1),
        1.0,
        false,
    );
    mm(
        (t, d, v),
        &mut w.d_h,
        d,
        dl,
        (v, 1),
        p.w_u,
        (1, v),
        1.0,
        false,
    );
    w.d_resid.fill(0.0);
    layer_norm_backward(
        &w.d_h,
        fin,
        p.lnf_w,
        d,
        &mut g.lnf_w,
        &mut g.lnf_b,
        &mut w.d_resid,
    );

    for l in (0..dims.layers).rev() {
        let acts = &w.layers[l];
        mm(
            (a, d, t),
            &mut g.w_o[l],
            d,
            &acts.z,
            (1, a),
            &w.d_resid,
            (d, 1),
            1.0,
            false,
        );
        mm(
            (t, a, d),
            &mut w.d_z,
            a,
            &w.d_resid,
            (d, 1),
            p.w_o[l],
            (1, d),
            1.0,
            false,
        );
        attention_backward(dims, s, acts, &w.d_z, &mut w.d_p, &mut w.kt, &mut w.d_qkv);
        mm(
            (d, 3 * a, t),
            &mut g.w_qkv[l],
            3 * a,
            &acts.h,
            (1, d),
            &w.d_qkv,
            (3 * a, 1),
            1.0,
            false,
        );
        mm(
            (t, d, 3 * a),
            &mut w.d_h,
            d,
            &w.d_qkv,
            (3 * a, 1),
            p.w_qkv[l],
            (1, 3 * a),
            1.0,
            false,
        );
        layer_norm_backward(
            &w.d_h,
            acts,
            p.ln_w[l],
            d,
            &mut g.ln_w[l],
            &mut g.ln_b[l],
            &mut w.d_resid,
        );
    }

    // The embeddings' gradients: each token's residual gradient, scattered.
    for ((pos, &tok), dx) in tokens().zip(w.d_resid.chunks(d)) {
        let e = &mut g.w_e[tok as usize * d..][..d];
        e.iter_mut().zip(dx).for_each(|(e, x)| *e += x);
        let q = &mut g.w_pos[pos * d..][..d];
        q.iter_mut().zip(dx).for_each(|(q, x)| *q += x);
    }
    loss
}

/// `h = (x − μ)/σ · w + b` per row, keeping `(x − μ)/σ` and `1/σ` for the backward.
#[inline(always)]
fn layer_norm(x: &[f32], d: usize, eps: f32, wt: &[f32], bias: &[f32], out: &mut LayerActs) {
    let n = d as f32;
    for (((row, xh), h), r) in x
        .chunks(d)
        .zip(out.xhat.chunks_mut(d))
        .zip(out.h.chunks_mut(d))
        .zip(out.rstd.iter_mut())
    {
        let mu = lane_sum(row) / n;
        xh.iter_mut().zip(row).for_each(|(o, &x)| *o = x - mu);
        let var = dot16(xh, xh) / n;
        let rs = 1.0 / (var + eps).sqrt();
        *r = rs;
        xh.iter_mut().for_each(|o| *o *= rs);
        // Zipped iterators, not indices: no bounds checks, so the loops vectorise.
        for ((h, &x), (&g, &b)) in h.iter_mut().zip(&*xh).zip(wt.iter().zip(bias)) {
            *h = x * g + b;
        }
    }
}

/// LayerNorm's backward: accumulates the gain and bias gradients and adds the input gradient
/// `(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ` (with `dx̂ = dh·w`) into `dx`.
#[inline(always)]
fn layer_norm_backward(
    dh: &[f32],
    acts: &LayerActs,
    wt: &[f32],
    d: usize,
    gw: &mut [f32],
    gb: &mut [f32],
    dx: &mut [f32],
) {
    let n = d as f32;
    let mut dxh = vec![0f32; d];
    for (((dh, xh), &rs), dx) in dh
        .chunks(d)
        .zip(acts.xhat.chunks(d))
        .zip(&acts.rstd)
        .zip(dx.chunks_mut(d))
    {
        for ((((gw, gb), g), &x), (&dy, &w)) in gw
            .iter_mut()
            .zip(gb.iter_mut())
            .zip(dxh.iter_mut())
            .zip(xh)
            .zip(dh.iter().zip(wt))
        {
            *gw += dy * x;
            *gb += dy;
            *g = dy * w;
        }
        let (m1, m2) = (lane_sum(&dxh) / n, dot16(&dxh, xh) / n);
        for ((dx, &g), &x) in dx.iter_mut().zip(&dxh).zip(xh) {
            *dx += rs * (g - m1 - x * m2);
        }
    }
}

/// Causal attention of every (row, head) of a chunk: patterns into `acts.p`, outputs into
/// `acts.z`.
#[inline(always)]
fn attention(dims: &Dims, s: usize, acts: &mut LayerActs, kt: &mut Vec<f32>) {
    let (a, dh) = (dims.attn(), dims.d_head);
    let rows = acts.z.len() / (s * a);
    let ss = s * s;
    resize(kt, dh * s);
    for r in 0..rows {
        let qkv = &acts.qkv[r * s * 3 * a..][..s * 3 * a];
        for hd in 0..dims.heads {
            let (q, k, v) = (
                &qkv[hd * dh..],
                &qkv[a + hd * dh..],
                &qkv[2 * a + hd * dh..],
            );
            let p = &mut acts.p[(r * dims.heads + hd) * ss..][..ss];
            transpose(k, 3 * a, s, dh, kt);
            for (i0, i1) in blocks(s) {
                // scores = q·kᵀ · scale for the block's queries and the keys they see
                small_mm(
                    (i1 - i0, i1, dh),
                    &mut p[i0 * s..],
                    s,
                    &q[i0 * 3 * a..],
                    (3 * a, 1),
                    kt,
                    (s, 1),
                    dims.scale,
                );
                for i in i0..i1 {
                    softmax_causal(&mut p[i * s..i * s + i1], i + 1);
                }
            }
            let z = &mut acts.z[r * s * a + hd * dh..];
            for (i0, i1) in blocks(s) {
                small_mm(
                    (i1 - i0, dh, i1),
                    &mut z[i0 * a..],
                    a,
                    &p[i0 * s..],
                    (s, 1),
                    v,
                    (3 * a, 1),
                    1.0,
                );
            }
        }
    }
}

/// `dst[c·s + j] = x[j·rs + c]` for `j < s`, `c < w`: a head's keys or values as columns.
#[inline(always)]
fn transpose(x: &[f32], rs: usize, s: usize, w: usize, dst: &mut [f32]) {
    assert!(s == 0 || w == 0 || (x.len() >= (s - 1) * rs + w && dst.len() >= w * s));
    #[cfg(target_arch = "x86_64")]
    if s.is_multiple_of(LANES) && w.is_multiple_of(LANES) && is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature (checked) and every access is inside the slices
        // (asserted above).
        unsafe { transpose_avx512(x.as_ptr(), rs, s, w, dst.as_mut_ptr()) };
        return;
    }
    for j in 0..s {
        for (c, &v) in x[j * rs..][..w].iter().enumerate() {
            dst[c * s + j] = v;
        }
    }
}

/// [`transpose`] in 16×16 blocks held in vector registers (the scalar loop moves one element a
/// cycle at best); `s` and `w` are multiples of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(x: *const f32, rs: usize, s: usize, w: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    for j0 in (0..s).step_by(LANES) {
        for c0 in (0..w).step_by(LANES) {
            let r: [__m512; LANES] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(x.add((j0 + i) * rs + c0)) });
            // Pairs of rows interleaved, then pairs of pairs: every 128-bit lane L of u[g][k]
            // holds column 4L + k of rows 4g..4g+4.
            let t: [__m512; LANES] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            let u: [[__m512; 4]; 4] = std::array::from_fn(|g| {
                let pd = |v: __m512| _mm512_castps_pd(v);
                let (lo, hi) = (pd(t[4 * g]), pd(t[4 * g + 1]));
                let (lo2, hi2) = (pd(t[4 * g + 2]), pd(t[4 * g + 3]));
                [
                    _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2)),
                    _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2)),
                ]
            });
            // Gather lane L of the four row groups: output column 4L + k.
            #[allow(clippy::needless_range_loop)] // k picks the same slot of all four groups
            for k in 0..4 {
                const EVEN: i32 = 0b10_00_10_00;
                const ODD: i32 = 0b11_01_11_01;
                let v0 = _mm512_shuffle_f32x4::<EVEN>(u[0][k], u[1][k]);
                let v1 = _mm512_shuffle_f32x4::<ODD>(u[0][k], u[1][k]);
                let v2 = _mm512_shuffle_f32x4::<EVEN>(u[2][k], u[3][k]);
                let v3 = _mm512_shuffle_f32x4::<ODD>(u[2][k], u[3][k]);
                let out = [
                    _mm512_shuffle_f32x4::<EVEN>(v0, v2),
                    _mm512_shuffle_f32x4::<EVEN>(v1, v3),
                    _mm512_shuffle_f32x4::<ODD>(v0, v2),
                    _mm512_shuffle_f32x4::<ODD>(v1, v3),
                ];
                for (lane, o) in out.into_iter().enumerate() {
                    let c = c0 + 4 * lane + k;
                    unsafe { _mm512_storeu_ps(dst.add(c * s + j0), o) };
                }
            }
        }
    }
}

/// Softmax over the first `visible` entries of `row`; the rest become 0. The whole row is
/// processed (masked entries as -inf, whose exponential is exactly 0): rows as long as a block
/// end are whole vectors, where a loop over the visible part alone would mostly run its scalar
/// remainder.
#[inline(always)]
fn softmax_causal(row: &mut [f32], visible: usize) {
    row[visible..].fill(f32::NEG_INFINITY);
    let max = lane_max(row);
    row.iter_mut().for_each(|x| *x = exp_approx(*x - max));
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Gradients of queries, keys and values of every (row, head) from the gradient of the head
/// outputs `dz` `[T, attn]`, into `dqkv` `[T, 3·attn]`; `dp` is an `[S, S]` scratch.
#[inline(always)]
fn attention_backward(
    dims: &Dims,
    s: usize,
    acts: &LayerActs,
    dz: &[f32],
    dp: &mut [f32],
    vt: &mut Vec<f32>,
    dqkv: &mut [f32],
) {
    let (a, dh) = (dims.attn(), dims.d_head);
    let rows = dz.len() / (s * a);
    let ss = s * s;
    resize(vt, dh * s);
    for r in 0..rows {
        let qkv = &acts.qkv[r * s * 3 * a..][..s * 3 * a];
        let dqkv = &mut dqkv[r * s * 3 * a..][..s * 3 * a];
        let dz = &dz[r * s * a..][..s * a];
        for hd in 0..dims.heads {
            let (q, k, v) = (
                &qkv[hd * dh..],
                &qkv[a + hd * dh..],
                &qkv[2 * a + hd * dh..],
            );
            let dzh = &dz[hd * dh..];
            let p = &acts.p[(r * dims.heads + hd) * ss..][..ss];
            transpose(v, 3 * a, s, dh, vt);
            for (i0, i1) in blocks(s) {
                // dP = dz · vᵀ, then dS = P ⊙ (dP − Σⱼ dP ⊙ P) · scale
                small_mm(
                    (i1 - i0, i1, dh),
                    &mut dp[i0 * s..],
                    s,
                    &dzh[i0 * a..],
                    (a, 1),
                    vt,
                    (s, 1),
                    1.0,
                );
                for i in i0..i1 {
                    let (pr, dr) = (&p[i * s..i * s + i1], &mut dp[i * s..i * s + i1]);
                    let dot = dot16(pr, dr);
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(g, &pp)| *g = pp * (*g - dot) * dims.scale);
                }
            }
            for (j0, j1) in blocks(s) {
                // Keys j0..j1 are seen by queries j0..s.
                let m = s - j0;
                // dV = Pᵀ · dz
                small_mm(
                    (j1 - j0, dh, m),
                    &mut dqkv[j0 * 3 * a + 2 * a + hd * dh..],
                    3 * a,
                    &p[j0 * s + j0..],
                    (1, s),
                    &dzh[j0 * a..],
                    (a, 1),
                    1.0,
                );
                // dK = dSᵀ · q
                small_mm(
                    (j1 - j0, dh, m),
                    &mut dqkv[j0 * 3 * a + a + hd * dh..],
                    3 * a,
                    &dp[j0 * s + j0..],
                    (1, s),
                    &q[j0 * 3 * a..],
                    (3 * a, 1),
                    1.0,
                );
            }
            for (i0, i1) in blocks(s) {
                // dQ = dS · k
                small_mm(
                    (i1 - i0, dh, i1),
                    &mut dqkv[i0 * 3 * a + hd * dh..],
                    3 * a,
                    &dp[i0 * s..],
                    (s, 1),
                    k,
                    (3 * a, 1),
                    1.0,
                );
            }
        }
    }
}

/// `Σ xᵢ·yᵢ` with sixteen lanes.
#[inline(always)]
fn dot16(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (cx, cy) = (x.chunks_exact(16), y.chunks_exact(16));
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + rx.iter().zip(ry).map(|(a, b)| a * b).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, irregular test matrix.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn small_products_match_a_plain_loop_and_each_other() {
        // (m, n, k, lhs transposed): eight-row and four-row tiles, one and two vectors, the
        // library fallback (n not a multiple of 16), and a transposed lhs as in dV and dK.
        for (m, n, k, at) in [
            (16, 64, 32, false),
            (16, 48, 64, true),
            (12, 32, 20, false),
            (8, 16, 5, true),
            (4, 20, 7, false),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let a_st = if at { (1, m) } else { (k, 1) };
            let want: Vec<f32> = (0..m * n)
                .map(|x| {
                    let (i, j) = (x / n, x % n);
                    let dot: f64 = (0..k)
                        .map(|p| a[i * a_st.0 + p * a_st.1] as f64 * b[p * n + j] as f64)
                        .sum();
                    0.5 * dot as f32
                })
                .collect();
            let mut got = vec![f32::NAN; m * n];
            small_mm((m, n, k), &mut got, n, &a, a_st, &b, (n, 1), 0.5);
            for (x, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{m}×{n}×{k} at {x}: {g} vs {w}"
                );
            }
            // The portable four-row tiles give the very bits the dispatched ones gave.
            if n % LANES == 0 && m % 4 == 0 {
                let mut portable = vec![f32::NAN; m * n];
                // SAFETY: the output and operands are exactly m×n, m×k and k×n.
                unsafe {
                    tiles(
                        (m, n, k),
                        portable.as_mut_ptr(),
                        n,
                        a.as_ptr(),
                        a_st,
                        b.as_ptr(),
                        n,
                        0.5,
                    )
                };
                assert_eq!(portable, got, "{m}×{n}×{k}");
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_in_blocks_and_remainders() {
        // 48×32 takes the 16×16 vector blocks where the CPU has them; 20×12 the scalar loop.
        for (s, w, rs) in [(48, 32, 100), (20, 12, 13), (16, 16, 16)] {
            let x: Vec<f32> = (0..s * rs).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; w * s];
            transpose(&x, rs, s, w, &mut dst);
            for c in 0..w {
                for j in 0..s {
                    assert_eq!(dst[c * s + j], x[j * rs + c], "s {s} w {w}: ({c}, {j})");
                }
            }
        }
    }
}
