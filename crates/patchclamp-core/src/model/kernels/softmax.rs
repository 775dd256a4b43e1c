//! Softmax over the last dimension: the inference kernel, and the causal softmax of attention
//! scores with its backward (the mask never materialised).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::simd::{exp_approx, lane_max, lane_sum, CHUNK, LANES};

/// Softmax over the last dimension of a contiguous f32 tensor (inference only: no backward).
struct SoftmaxLastDim;

#[inline(always)]
fn softmax_row(row: &[f32], out: &mut [f32]) {
    let max = lane_max(row);
    out.iter_mut()
        .zip(row)
        .for_each(|(o, &x)| *o = exp_approx(x - max));
    let inv = 1.0 / lane_sum(out);
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(src: &[f32], dst: &mut [f32], n: usize) {
    for (r, o) in src.chunks(n).zip(dst.chunks_mut(n)) {
        softmax_row(r, o)
    }
}

fn softmax_rows(src: &[f32], dst: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { softmax_rows_avx512(src, dst, n) };
    }
    for (r, o) in src.chunks(n).zip(dst.chunks_mut(n)) {
        softmax_row(r, o)
    }
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "patchclamp-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "softmax")?;
        let n = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; src.len()];
        let rows_per_chunk = (CHUNK / n).max(1);
        out.par_chunks_mut(rows_per_chunk * n)
            .zip(src.par_chunks(rows_per_chunk * n))
            .for_each(|(o, i)| softmax_rows(i, o, n));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Softmax over the last dimension without gradient tracking, fused on CPU.
pub fn softmax_last_dim_inference(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

// --- causal softmax with a backward pass ----------------------------------------------------------

/// Softmax over the last dimension of `[.., q, k]` scores under a causal mask (query `i` sees
/// keys `0..=i + k − q`), without materialising the mask; differentiable.
#[derive(Clone, Copy)]
struct CausalSoftmax;

/// The backward of [`CausalSoftmax`]: `p ⊙ (g − Σ g⊙p)` from the output `p` and gradient `g`.
struct CausalSoftmaxBwd;

/// Softmax of `row` with keys from `visible` on masked; equal bit for bit to [`softmax_row`]
/// on the row with those keys set to -inf (so recording the masked scores changes nothing).
#[inline(always)]
fn causal_softmax_row(row: &[f32], visible: usize, out: &mut [f32]) {
    // Work on whole vector chunks up to the last visible key; everything after is exactly 0
    // (as exp(-inf) would be), and adding zeros changes no sum, so this stays bit-identical.
    let end = (visible.div_ceil(LANES) * LANES).min(row.len());
    let (head, tail) = out.split_at_mut(end);
    let masked = |j: usize, x: f32| if j < visible { x } else { f32::NEG_INFINITY };
    for (j, (o, &x)) in head.iter_mut().zip(row).enumerate() {
        *o = masked(j, x);
    }
    let max = lane_max(head);
    head.iter_mut().for_each(|o| *o = exp_approx(*o - max));
    tail.fill(0.0);
    let inv = 1.0 / lane_sum(head);
    head.iter_mut().for_each(|o| *o *= inv);
}

/// Causal softmax of consecutive rows starting at global row `first`.
#[inline(always)]
fn causal_rows_generic(src: &[f32], dst: &mut [f32], first: usize, q: usize, k: usize, off: usize) {
    for (i, (r, o)) in src.chunks(k).zip(dst.chunks_mut(k)).enumerate() {
        let visible = ((first + i) % q + off + 1).min(k);
        causal_softmax_row(r, visible, o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn causal_rows_avx512(
    src: &[f32],
    dst: &mut [f32],
    first: usize,
    q: usize,
    k: usize,
    off: usize,
) {
    causal_rows_generic(src, dst, first, q, k, off)
}

/// Causal softmax of `[rows, k]` scores whose first row is row `first` of `[.., q, k]` maps.
pub(crate) fn causal_rows(
    src: &[f32],
    dst: &mut [f32],
    first: usize,
    q: usize,
    k: usize,
    off: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { causal_rows_avx512(src, dst, first, q, k, off) };
    }
    causal_rows_generic(src, dst, first, q, k, off)
}

/// Calls `f(row_index_within_matrix, row)` for the rows of a `[.., q, k]` buffer, in parallel.
fn rows_par<F>(dst: &mut [f32], q: usize, k: usize, f: F)
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    let rows_per_chunk = (CHUNK / k).max(1);
    dst.par_chunks_mut(rows_per_chunk * k)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_mut(k).enumerate() {
                let r = c * rows_per_chunk + i;
                f(r, r % q, row);
            }
        });
}

fn qk_dims(layout: &Layout) -> candle_core::Result<(usize, usize)> {
    let d = layout.shape().dims();
    if d.len() < 2 {
        candle_core::bail!("causal softmax needs [.., q, k] scores");
    }
    Ok((d[d.len() - 2], d[d.len() - 1]))
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "patchclamp-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "causal softmax")?;
        let (q, k) = qk_dims(layout)?;
        let mut out = vec![0f32; src.len()];
        let off = k - q.min(k);
        let rows_per_chunk = (CHUNK / k).max(1);
        out.par_chunks_mut(rows_per_chunk * k)
            .zip(src.par_chunks(rows_per_chunk * k))
            .enumerate()
            .for_each(|(c, (o, i))| causal_rows(i, o, c * rows_per_chunk, q, k, off));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &CausalSoftmaxBwd,
        )?))
    }
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "patchclamp-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "causal softmax backward";
        let (p, g) = (f32_slice(s1, l1, op)?, f32_slice(s2, l2, op)?);
        let (q, k) = qk_dims(l1)?;
        let mut out = vec![0f32; p.len()];
        rows_par(&mut out, q, k, |r, _, row| {
            let (pr, gr) = (&p[r * k..(r + 1) * k], &g[r * k..(r + 1) * k]);
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &pi), &gi) in row.iter_mut().zip(pr).zip(gr) {
                *o = pi * (gi - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Causal softmax of `[.., q, k]` attention scores (queries aligned to the last keys), fused on
/// CPU with a fused backward; `None` where the fused kernel does not apply (other devices).
pub fn causal_softmax(scores: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !(scores.device().is_cpu() && scores.dtype() == candle_core::DType::F32) {
        return Ok(None);
    }
    let s = scores.contiguous()?;
    Ok(Some(if s.track_op() {
        s.apply_op1(CausalSoftmax)?
    } else {
        s.apply_op1_no_bwd(&CausalSoftmax)?
    }))
}
