//! Fused CPU kernels for hot element-wise activations, each with its own backward.
//!
//! candle's `gelu` evaluates libm's scalar `tanhf` on one thread: on GPT-2 small it cost more
//! than half a second per forward. These kernels write `x·σ(k·x)`-style formulas over parallel
//! chunks and define the gradient, so training through them stays exact.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Which activation a [`Act`] op computes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `x · σ(2·√(2/π)·(x + 0.044715·x³))`, which equals GPT-2's tanh-approximated GELU.
    GeluTanh,
    /// `x · σ(x)`.
    Silu,
}

struct Act(Kind);

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `eˣ` to about 1 ulp (Cephes' polynomial), written without branches or calls so the loops
/// around it vectorise; exactly 0 below -88 (so masked attention stays exactly zero).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * C1 - n * C2;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; reading it from there instead
    // of `n as i32` keeps the loop in vector registers (Rust's saturating float-to-int cast is
    // scalarised lane by lane). The same bits either way.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if x < -88.0 {
        0.0
    } else {
        p * scale
    }
}

#[inline(always)]
fn gelu_tanh_one(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
    x / (1.0 + exp_approx(-2.0 * u))
}

#[inline(always)]
fn silu_one(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

#[inline(always)]
fn map_slice(kind: Kind, src: &[f32], dst: &mut [f32]) {
    // One loop per kind, so each is a straight-line body the compiler vectorises.
    match kind {
        Kind::GeluTanh => dst
            .iter_mut()
            .zip(src)
            .for_each(|(o, &x)| *o = gelu_tanh_one(x)),
        Kind::Silu => dst.iter_mut().zip(src).for_each(|(o, &x)| *o = silu_one(x)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_slice_avx512(kind: Kind, src: &[f32], dst: &mut [f32]) {
    map_slice(kind, src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_slice_avx2(kind: Kind, src: &[f32], dst: &mut [f32]) {
    map_slice(kind, src, dst)
}

/// The widest vector version of `map_slice` this CPU runs.
fn map_best(kind: Kind, src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { map_slice_avx512(kind, src, dst) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { map_slice_avx2(kind, src, dst) };
        }
    }
    map_slice(kind, src, dst)
}

/// Chunk size for the parallel map: big enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::GeluTanh => "patchclamp-gelu-tanh",
            Kind::Silu => "patchclamp-silu",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; src.len()];
        let kind = self.0;
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, i)| map_best(kind, i, o));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // Composite derivative: d/dx [x·σ(g(x))] = σ + x·σ·(1−σ)·g'(x).
        let x = x.detach();
        let (g, dg) = match self.0 {
            Kind::GeluTanh => {
                let g = ((&x + (x.powf(3.0)? * GELU_C as f64)?)? * (2.0 * SQRT_2_OVER_PI) as f64)?;
                let dg =
                    ((x.sqr()? * (3.0 * GELU_C) as f64)? + 1.0)? * (2.0 * SQRT_2_OVER_PI) as f64;
                (g, dg?)
            }
            Kind::Silu => (x.clone(), x.ones_like()?),
        };
        let s = candle_nn::ops::sigmoid(&g)?;
        let ds = (&s + ((&x * &s)? * (s.ones_like()? - &s)?)?.mul(&dg)?)?;
        Ok(Some(grad.mul(&ds)?))
    }
}

/// GPT-2's `gelu_new` (tanh approximation), fused on CPU.
pub fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    fused(x, Kind::GeluTanh, |x| x.gelu())
}

/// SiLU (swish), fused on CPU.
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    fused(x, Kind::Silu, |x| x.silu())
}

/// The fused kernel for contiguous f32 on CPU; candle's own op elsewhere.
fn fused(
    x: &Tensor,
    kind: Kind,
    fallback: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Act(kind))
    } else {
        fallback(x)
    }
}

/// Softmax over the last dimension of a contiguous f32 tensor (inference only: no backward).
struct SoftmaxLastDim;

/// The f32 values of a contiguous CPU storage (custom ops' inputs), or an error naming `op`.
pub fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(x) = s else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&x[a..b])
}

/// Lanes for reductions: independent accumulators the compiler keeps in one vector register.
const LANES: usize = 16;

/// Largest element, in sixteen lanes (vectorises, unlike a fold of `f32::max`).
#[inline(always)]
pub fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    // A halving tree keeps the horizontal step in vector registers (short rows pay for it).
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = if acc[i + w] > acc[i] {
                acc[i + w]
            } else {
                acc[i]
            };
        }
    }
    rest.iter().fold(acc[0], |m, &v| if v > m { v } else { m })
}

/// Sum in sixteen lanes (vectorises; a fixed order, so deterministic).
#[inline(always)]
pub fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    rest.iter().sum::<f32>() + acc[0]
}

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

// --- normalisation with a backward pass ---------------------------------------------------------

/// `(x − μ) / sqrt(mean((x − μ)²) + eps) · w + b` over the last dimension (`μ = 0` for RMSNorm);
/// one pass forward and one backward instead of a dozen broadcast ops each way.
struct Norm {
    center: bool,
    eps: f32,
}

/// `(μ, scale)` of one row.
#[inline]
fn norm_scale(row: &[f32], center: bool, eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mu = if center { lane_sum(row) / n } else { 0.0 };
    let var = row.iter().map(|&x| (x - mu) * (x - mu)).sum::<f32>() / n;
    (mu, (var + eps).sqrt())
}

/// `(μ, 1/scale)` of one row.
#[inline]
fn norm_stats(row: &[f32], center: bool, eps: f32) -> (f32, f32) {
    let (mu, scale) = norm_scale(row, center, eps);
    (mu, 1.0 / scale)
}

/// The inside of [`norm`] for inference: `(x − μ) / scale` `[.., D]` and `scale` `[.., 1]`,
/// with the fused kernel's arithmetic, so that `normalized · w + b` equals its output bit for
/// bit (recording a norm's inside changes no number); `None` where it does not apply.
pub fn norm_parts(
    x: &Tensor,
    center: bool,
    eps: f64,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) || x.track_op() {
        return Ok(None);
    }
    let d = x.dim(candle_core::D::Minus1)?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut normalized = vec![0f32; xs.len()];
    let mut scales = vec![0f32; xs.len() / d.max(1)];
    let rows = (CHUNK / d.max(1)).max(1);
    normalized
        .par_chunks_mut(d * rows)
        .zip(scales.par_chunks_mut(rows))
        .zip(xs.par_chunks(d * rows))
        .for_each(|((o, sc), i)| {
            for ((orow, s), row) in o.chunks_mut(d).zip(sc.iter_mut()).zip(i.chunks(d)) {
                let (mu, scale) = norm_scale(row, center, eps as f32);
                let r = 1.0 / scale;
                *s = scale;
                for j in 0..d {
                    orow[j] = (row[j] - mu) * r;
                }
            }
        });
    let mut scale_shape = x.dims().to_vec();
    *scale_shape.last_mut().expect("non-scalar") = 1;
    Ok(Some((
        Tensor::from_vec(normalized, x.shape(), x.device())?,
        Tensor::from_vec(scales, scale_shape, x.device())?,
    )))
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "patchclamp-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32_slice(s1, l1, "norm")?,
            f32_slice(s2, l2, "norm")?,
            f32_slice(s3, l3, "norm")?,
        );
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * (CHUNK / d).max(1))
            .zip(x.par_chunks(d * (CHUNK / d).max(1)))
            .for_each(|(o, i)| {
                for (orow, row) in o.chunks_mut(d).zip(i.chunks(d)) {
                    let (mu, r) = norm_stats(row, self.center, self.eps);
                    for j in 0..d {
                        orow[j] = (row[j] - mu) * r * w[j] + b[j];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; xs.len()];
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        let mut xhat = vec![0f32; d];
        let mut gh = vec![0f32; d];
        for ((row, g), out) in xs.chunks(d).zip(gs.chunks(d)).zip(dx.chunks_mut(d)) {
            let (mu, r) = norm_stats(row, self.center, self.eps);
            let (mut m1, mut m2) = (0f32, 0f32);
            for j in 0..d {
                xhat[j] = (row[j] - mu) * r;
                gh[j] = g[j] * ws[j];
                dw[j] += g[j] * xhat[j];
                db[j] += g[j];
                m1 += gh[j];
                m2 += gh[j] * xhat[j];
            }
            let (m1, m2) = (m1 / d as f32, m2 / d as f32);
            for j in 0..d {
                let c = if self.center { m1 } else { 0.0 };
                out[j] = r * (gh[j] - c - xhat[j] * m2);
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// LayerNorm (`center`) or RMSNorm of `x` `[.., D]` with gain `w` and bias `b` `[D]`, fused on
/// CPU with its backward; `None` where it does not apply (other devices or dtypes).
pub fn norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    center: bool,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == candle_core::DType::F32) {
        return Ok(None);
    }
    let op = Norm {
        center,
        eps: eps as f32,
    };
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    Ok(Some(if x.track_op() || w.track_op() || b.track_op() {
        x.apply_op3(&w, &b, op)?
    } else {
        x.apply_op3_no_bwd(&w, &b, &op)?
    }))
}

// --- matrix products for inference -------------------------------------------------------------

/// `x @ w + b` for contiguous `x` `[rows, in]`, `w` `[in, out]`, `b` `[out]` (inference only).
///
/// The bias is written into the output first and the product accumulated onto it, so the bias
/// costs no extra pass and no extra buffer.
struct LinearBias;

impl candle_core::CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "patchclamp-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (xs, ws, bs) else {
            candle_core::bail!("linear: only f32 is supported");
        };
        let (rows, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 || bl.shape().elem_count() != n {
            candle_core::bail!(
                "linear: shapes {:?} @ {:?} + {:?}",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let (Some((x0, _)), Some((w0, _)), Some((b0, _))) = (
            xl.contiguous_offsets(),
            wl.contiguous_offsets(),
            bl.contiguous_offsets(),
        ) else {
            candle_core::bail!("linear: inputs must be contiguous");
        };
        let bias = &b[b0..b0 + n];
        let mut out = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            out.extend_from_slice(bias);
        }
        // SAFETY: the pointers cover rows×k, k×n and rows×n contiguous f32 values (checked).
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                x[x0..].as_ptr(),
                1,
                k as isize,
                w[w0..].as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

/// `x @ w + b` with the bias fused into the product, for 2-D f32 CPU tensors without gradients.
pub fn linear_bias_inference(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &LinearBias)
    } else {
        x.matmul(w)?.broadcast_add(b)
    }
}

/// Batched `a @ b` for `a` `[B, m, k]` contiguous and `b` `[B, k, n]` with any strides in its
/// last two dims (a transposed view is fine), one single-threaded product per batch entry run
/// in parallel: attention's many small products pay no per-product thread start-up.
struct BatchedMatmul;

impl candle_core::CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "patchclamp-bmm"
    }

    fn cpu_fwd(
        &self,
        a_s: &CpuStorage,
        al: &Layout,
        b_s: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a_s, b_s) else {
            candle_core::bail!("bmm: only f32 is supported");
        };
        let (batch, m, k) = al.shape().dims3()?;
        let (batch2, k2, n) = bl.shape().dims3()?;
        if batch != batch2 || k != k2 {
            candle_core::bail!("bmm: shapes {:?} @ {:?}", al.shape(), bl.shape());
        }
        let Some((a0, _)) = al.contiguous_offsets() else {
            candle_core::bail!("bmm: lhs must be contiguous");
        };
        let bs = bl.stride();
        let (b_batch, b_rs, b_cs) = (bs[0], bs[1] as isize, bs[2] as isize);
        let b0 = bl.start_offset();
        let mut out = vec![0f32; batch * m * n];
        let (a_ptr, b_ptr) = (a.as_ptr() as usize, b.as_ptr() as usize);
        out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
            let lhs = (a_ptr as *const f32).wrapping_add(a0 + i * m * k);
            let rhs = (b_ptr as *const f32).wrapping_add(b0 + i * b_batch);
            // SAFETY: lhs covers m×k contiguous values of batch entry i; rhs addresses k×n values
            // through the layout's own strides; dst is this entry's m×n output.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs,
                    1,
                    k as isize,
                    rhs,
                    b_cs,
                    b_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((batch, m, n))))
    }
}

/// Batched matrix product over all leading dims, for f32 CPU tensors without gradients.
pub fn bmm_inference(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let dims = a.dims().to_vec();
    let r = dims.len();
    if !a.device().is_cpu() || a.dtype() != candle_core::DType::F32 || r < 3 {
        return a.matmul(b);
    }
    let (m, k, n) = (dims[r - 2], dims[r - 1], b.dim(r - 1)?);
    let batch: usize = dims[..r - 2].iter().product();
    let a3 = a.contiguous()?.reshape((batch, m, k))?;
    // Keep b's strides (a transposed view needs no copy) when its leading dims merge cleanly.
    let b3 = match b.reshape((batch, k, n)) {
        Ok(t) => t,
        Err(_) => b.contiguous()?.reshape((batch, k, n))?,
    };
    let b3 = if b3.layout().stride()[0] == 0 {
        b3.contiguous()?
    } else {
        b3
    };
    let mut out_dims = dims[..r - 2].to_vec();
    out_dims.extend([m, n]);
    a3.apply_op2_no_bwd(&b3, &BatchedMatmul)?.reshape(out_dims)
}

#[cfg(test)]
pub(crate) use crate::testing::max_diff;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_products_match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (37, 19), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (19, 23), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 23, &dev).unwrap();
        let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&linear_bias_inference(&x, &w, &b).unwrap(), &want) < 1e-5);
        let q = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 6, 4), &dev).unwrap();
        let kt = k.t().unwrap();
        let want = q.matmul(&kt).unwrap();
        assert!(
            max_diff(&bmm_inference(&q, &kt).unwrap(), &want) < 1e-5,
            "transposed rhs view"
        );
        let v = Tensor::randn(0f32, 1.0, (2, 3, 6, 4), &dev).unwrap();
        let p = want.clone();
        assert!(max_diff(&bmm_inference(&p, &v).unwrap(), &p.matmul(&v).unwrap()) < 1e-5);
    }

    #[test]
    fn exp_approx_is_accurate_and_exact_at_the_ends() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (a, e) = (exp_approx(x), x.exp());
            assert!(((a - e) / e).abs() < 2e-7, "exp({x}) = {a}, want {e}");
        }
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        // Between -88 and -87 the result saturates at e^-87 ≈ 1.6e-38 instead of going subnormal.
        assert!(exp_approx(-87.5) < 2e-38);
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_candle_and_masks_exactly() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 4.0, (3, 5, 129), &dev).unwrap();
        let ours = softmax_last_dim_inference(&x).unwrap();
        assert!(max_diff(&ours, &candle_nn::ops::softmax_last_dim(&x).unwrap()) < 1e-6);
        let masked = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 1.0]], &dev).unwrap();
        let p: Vec<f32> = softmax_last_dim_inference(&masked)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(p[1], 0.0);
        assert!((p[0] + p[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn kernels_match_candle_values_and_gradients() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (7, 4099), &dev).unwrap())
            .contiguous()
            .unwrap();
        assert!(max_diff(&gelu_tanh(&x).unwrap(), &x.gelu().unwrap()) < 1e-5);
        assert!(max_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 1e-5);
        // Gradients against candle's own (composite) ops.
        let v = Var::from_tensor(&x).unwrap();
        for (ours, theirs) in [
            (
                gelu_tanh(v.as_tensor()).unwrap(),
                v.as_tensor().gelu().unwrap(),
            ),
            (silu(v.as_tensor()).unwrap(), v.as_tensor().silu().unwrap()),
        ] {
            let g1 = ours.sum_all().unwrap().backward().unwrap();
            let g2 = theirs.sum_all().unwrap().backward().unwrap();
            let d = max_diff(g1.get(&v).unwrap(), g2.get(&v).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }
}
