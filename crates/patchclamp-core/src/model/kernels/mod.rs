//! Every CPU kernel of patchclamp, one file per op: where a GPU twin of an op will live too.
//!
//! [`simd`] (exponential, lane reductions), [`activation`] (GELU, SiLU), [`softmax`] (inference
//! and causal softmax), [`norm`] (LayerNorm, RMSNorm), [`matmul`] (inference products),
//! [`gemv`] (a generation step's few-row products),
//! [`attention`] and [`linear`] (the training ops with hand-written backward passes),
//! [`cross_entropy`] (the loss and its gradient), [`tiles`] (the fused training step's
//! register-tiled products and transposes). Each op defines its backward where it has one; the
//! choice between a kernel and candle's composed ops is `model::ops`'s.

pub mod activation;
pub mod attention;
pub mod cross_entropy;
pub mod gemv;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod simd;
pub mod softmax;
pub mod tiles;

use candle_core::{CpuStorage, Layout};

pub use activation::{gelu_tanh, silu};
pub use matmul::{bmm_inference, linear_bias_inference};
pub use norm::{norm, norm_parts};
pub use simd::{exp_approx, lane_max, lane_sum};
pub use softmax::{causal_softmax, softmax_last_dim_inference};

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

#[cfg(test)]
pub(crate) use crate::testing::max_diff;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};

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
