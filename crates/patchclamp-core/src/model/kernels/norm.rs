//! LayerNorm and RMSNorm as one fused op each way, and the parts (`hook_scale`,
//! `hook_normalized`) computed with the same arithmetic.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::simd::{lane_sum, CHUNK};

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
