//! `x @ w` over the last dimension of `x` as one differentiable op, for training.
//!
//! The composed form (reshape, matmul, reshape) is three graph nodes, and candle's backward
//! allocates and accumulates a full-size gradient buffer for each; this op is one node whose
//! backward calls the matrix kernel directly (`dx = g wᵀ`, `dw = xᵀ g`).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::f32_slice;

struct Linear;

/// `dst (m×n) = lhs (m×k) · rhs (k×n)` with explicit strides (row, column) for the inputs.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    lhs: &[f32],
    l_rs: isize,
    l_cs: isize,
    rhs: &[f32],
    r_rs: isize,
    r_cs: isize,
) {
    assert!(dst.len() >= m * n);
    // SAFETY: callers pass slices holding m×k and k×n elements under the given strides
    // (checked shapes of contiguous tensors), and dst holds m×n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            l_cs,
            l_rs,
            rhs.as_ptr(),
            r_cs,
            r_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "patchclamp-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?);
        let (din, dout) = l2.shape().dims2()?;
        let rows = x.len() / din;
        let mut out = vec![0f32; rows * dout];
        gemm(
            rows,
            dout,
            din,
            &mut out,
            x,
            din as isize,
            1,
            w,
            dout as isize,
            1,
        );
        let mut dims = l1.shape().dims().to_vec();
        *dims.last_mut().expect("non-scalar") = dout;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (din, dout) = w.dims2()?;
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let rows = xs.len() / din;
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * din];
            // g [rows, dout] · wᵀ [dout, din]
            gemm(
                rows,
                din,
                dout,
                &mut dx,
                &g,
                dout as isize,
                1,
                &ws,
                1,
                dout as isize,
            );
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let mut dw = vec![0f32; din * dout];
            // xᵀ [din, rows] · g [rows, dout]
            gemm(
                din,
                dout,
                rows,
                &mut dw,
                &xs,
                1,
                din as isize,
                &g,
                dout as isize,
                1,
            );
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x @ w` for `x [.., in]`, `w [in, out]` as one differentiable CPU op; `None` where it does
/// not apply (other devices or dtypes, or nothing tracked).
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let tracked = x.track_op() || w.track_op();
    if !(tracked
        && x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && w.dtype() == candle_core::DType::F32
        && w.rank() == 2)
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(&w.contiguous()?, Linear)?))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn value_and_gradients_equal_the_composed_product() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(4);
        let x = Var::from_tensor(
            &Tensor::from_vec(rng.normal_vec(2 * 5 * 7, 1.0), (2, 5, 7), &dev).unwrap(),
        )
        .unwrap();
        let w =
            Var::from_tensor(&Tensor::from_vec(rng.normal_vec(7 * 3, 1.0), (7, 3), &dev).unwrap())
                .unwrap();
        let probe = Tensor::from_vec(rng.normal_vec(2 * 5 * 3, 1.0), (2, 5, 3), &dev).unwrap();
        let fused = super::linear(x.as_tensor(), w.as_tensor())
            .unwrap()
            .unwrap();
        let composed = x.as_tensor().broadcast_matmul(w.as_tensor()).unwrap();
        let diff = crate::model::kernels::max_diff;
        assert!(diff(&fused, &composed) < 1e-5);
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let (a, b) = (
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(diff(a, b) < 1e-5, "gradient differs by {}", diff(a, b));
        }
    }
}
