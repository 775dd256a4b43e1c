//! Matrix products for inference: `x @ W + b` in one op and the batched product parallel over
//! the batch.

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

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
