//! Causal multi-head attention `z = softmax(q kᵀ · scale + mask) v` as one differentiable op.
//!
//! Training through the composed path puts a dozen nodes per layer into candle's graph, half
//! of them `[B, H, S, S]`, and candle's backward allocates and adds a zero buffer for every
//! node. This op keeps the scores and pattern inside (recomputed in the backward pass), so a
//! training step moves a fraction of the memory. The forward pass uses it only when no hook
//! reads or changes the scores or the pattern of that layer.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::softmax::causal_rows;

const OP: &str = "fused attention";

/// `q [B, S, H, E]`, `k`, `v` `[B, S, K, E]` → `z [B, S, H, E]` (`H = K · group`).
struct FusedAttention {
    scale: f32,
}

/// A strided matrix view: base offset, row stride, column stride.
#[derive(Clone, Copy)]
struct View {
    base: usize,
    rs: isize,
    cs: isize,
}

/// `dst (m×n, row-major) = alpha · lhs (m×k) · rhs (k×n)`.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    alpha: f32,
) {
    debug_assert_eq!(dst.len(), m * n);
    // SAFETY: every view addresses elements inside its slice (shapes checked by the callers:
    // the views come from the op's validated [B, S, H, E] layouts).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr().add(l.base),
            l.cs,
            l.rs,
            rhs.as_ptr().add(r.base),
            r.cs,
            r.rs,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

struct Dims {
    b: usize,
    s: usize,
    h: usize,
    kh: usize,
    e: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Dims> {
        let (qd, kd) = (q.shape().dims(), k.shape().dims());
        if qd.len() != 4 || kd.len() != 4 || kd != v.shape().dims() {
            candle_core::bail!("fused attention needs q [B,S,H,E] and k, v [B,S,K,E]");
        }
        let d = Dims {
            b: qd[0],
            s: qd[1],
            h: qd[2],
            kh: kd[2],
            e: qd[3],
        };
        if kd[0] != d.b || kd[1] != d.s || kd[3] != d.e || !d.h.is_multiple_of(d.kh) {
            candle_core::bail!("fused attention: q {qd:?} and k {kd:?} do not fit");
        }
        Ok(d)
    }

    /// Head `h` of batch row `b` in a `[B, S, heads, E]` buffer.
    fn head(&self, b: usize, h: usize, heads: usize) -> View {
        View {
            base: (b * self.s * heads + h) * self.e,
            rs: (heads * self.e) as isize,
            cs: 1,
        }
    }

    /// The transpose of a view.
    fn t(v: View) -> View {
        View {
            base: v.base,
            rs: v.cs,
            cs: v.rs,
        }
    }
}

/// The pattern `P [S, S]` of one (row, head).
fn pattern(d: &Dims, q: &[f32], k: &[f32], b: usize, h: usize, scale: f32) -> Vec<f32> {
    let s = d.s;
    let g = h / (d.h / d.kh);
    let mut scores = vec![0f32; s * s];
    mm(
        s,
        s,
        d.e,
        &mut scores,
        q,
        d.head(b, h, d.h),
        k,
        Dims::t(d.head(b, g, d.kh)),
        scale,
    );
    let mut p = vec![0f32; s * s];
    causal_rows(&scores, &mut p, 0, s, s, 0);
    p
}

/// Adds a `[S, E]` block into head `h` of a `[B, S, heads, E]` buffer.
fn scatter_add(d: &Dims, dst: &mut [f32], block: &[f32], b: usize, h: usize, heads: usize) {
    let v = d.head(b, h, heads);
    for (i, row) in block.chunks(d.e).enumerate() {
        let at = v.base + i * v.rs as usize;
        for (o, x) in dst[at..at + d.e].iter_mut().zip(row) {
            *o += x;
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "patchclamp-fused-attention"
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
        let d = Dims::of(l1, l2, l3)?;
        let (q, k, v) = (
            f32_slice(s1, l1, OP)?,
            f32_slice(s2, l2, OP)?,
            f32_slice(s3, l3, OP)?,
        );
        let group = d.h / d.kh;
        let blocks: Vec<Vec<f32>> = (0..d.b * d.h)
            .into_par_iter()
            .map(|i| {
                let (b, h) = (i / d.h, i % d.h);
                let p = pattern(&d, q, k, b, h, self.scale);
                let mut z = vec![0f32; d.s * d.e];
                let pv = View {
                    base: 0,
                    rs: d.s as isize,
                    cs: 1,
                };
                mm(
                    d.s,
                    d.e,
                    d.s,
                    &mut z,
                    &p,
                    pv,
                    v,
                    d.head(b, h / group, d.kh),
                    1.0,
                );
                z
            })
            .collect();
        let mut out = vec![0f32; q.len()];
        for (i, z) in blocks.iter().enumerate() {
            scatter_add(&d, &mut out, z, i / d.h, i % d.h, d.h);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(q.layout(), k.layout(), v.layout())?;
        let (qs, ks, vs) = (
            q.flatten_all()?.to_vec1::<f32>()?,
            k.flatten_all()?.to_vec1::<f32>()?,
            v.flatten_all()?.to_vec1::<f32>()?,
        );
        let gz = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (s, e, group) = (d.s, d.e, d.h / d.kh);
        let sq = View {
            base: 0,
            rs: s as isize,
            cs: 1,
        };
        let blocks: Vec<[Vec<f32>; 3]> = (0..d.b * d.h)
            .into_par_iter()
            .map(|i| {
                let (b, h) = (i / d.h, i % d.h);
                let g = h / group;
                let p = pattern(&d, &qs, &ks, b, h, self.scale);
                let (qv, kv, vv, zv) = (
                    d.head(b, h, d.h),
                    d.head(b, g, d.kh),
                    d.head(b, g, d.kh),
                    d.head(b, h, d.h),
                );
                // dP = dZ vᵀ, dV = Pᵀ dZ.
                let mut dp = vec![0f32; s * s];
                mm(s, s, e, &mut dp, &gz, zv, &vs, Dims::t(vv), 1.0);
                let mut dv = vec![0f32; s * e];
                mm(s, e, s, &mut dv, &p, Dims::t(sq), &gz, zv, 1.0);
                // dS = P ⊙ (dP − Σ_k dP⊙P), then dQ = dS k · scale, dK = dSᵀ q · scale.
                for (pr, dr) in p.chunks(s).zip(dp.chunks_mut(s)) {
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    for (x, &pi) in dr.iter_mut().zip(pr) {
                        *x = pi * (*x - dot);
                    }
                }
                let mut dq = vec![0f32; s * e];
                mm(s, e, s, &mut dq, &dp, sq, &ks, kv, self.scale);
                let mut dk = vec![0f32; s * e];
                mm(s, e, s, &mut dk, &dp, Dims::t(sq), &qs, qv, self.scale);
                [dq, dk, dv]
            })
            .collect();
        let mut dq = vec![0f32; qs.len()];
        let mut dk = vec![0f32; ks.len()];
        let mut dv = vec![0f32; vs.len()];
        // Fixed order: grouped heads add into their shared k/v head deterministically.
        for (i, [bq, bk, bv]) in blocks.iter().enumerate() {
            let (b, h) = (i / d.h, i % d.h);
            scatter_add(&d, &mut dq, bq, b, h, d.h);
            scatter_add(&d, &mut dk, bk, b, h / group, d.kh);
            scatter_add(&d, &mut dv, bv, b, h / group, d.kh);
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// `softmax(q kᵀ · scale + causal mask) v` per head for `q [B, S, H, E]`, `k, v [B, S, K, E]`,
/// as one op with a backward pass; `None` off the CPU or for non-f32 tensors.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !(q.device().is_cpu() && q.dtype() == candle_core::DType::F32) {
        return Ok(None);
    }
    let op = FusedAttention {
        scale: scale as f32,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(Some(if q.track_op() || k.track_op() || v.track_op() {
        q.apply_op3(&k, &v, op)?
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)?
    }))
}
