//! GPT-2's tanh GELU and SiLU as fused CPU ops with their own backward.
//!
//! candle's `gelu` evaluates libm's scalar `tanhf` on one thread: on GPT-2 small it cost more
//! than half a second per forward. These kernels write `x·σ(k·x)`-style formulas over parallel
//! chunks and define the gradient, so training through them stays exact.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;
use super::simd::{exp_approx, CHUNK};

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
