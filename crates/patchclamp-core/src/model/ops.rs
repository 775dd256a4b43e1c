//! The op seam: every place where an op runs fused or composed is decided here, by whether a
//! gradient is tracked (candle's fused ops have no backward) — and, with a GPU build, on which
//! device. The forward pass calls these and never chooses itself.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::model::kernels;

/// `softmax(q kᵀ · scale + causal mask) v` as one fused op with its own backward, when it
/// applies: gradients are tracked (its backward never materialises the `[B, H, S, S]` tensors
/// in candle's graph), the mask is plain causal, no hook reads the scores or the pattern, and
/// every key has its query (no cached prefix). `None`: compose it step by step.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    plain_causal: bool,
    hooked_inside: bool,
) -> Result<Option<Tensor>> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let square = q.dim(1)? == k.dim(1)?;
    if tracked && plain_causal && !hooked_inside && square {
        return Ok(kernels::attention::fused_attention(q, k, v, scale)?);
    }
    Ok(None)
}

/// `(x − μ)/σ · g + b` over the last dimension (`μ = 0` without `center`) as one fused op with
/// its backward, for training and inference alike: composed, a norm is a dozen broadcast ops
/// each way. `None` where the kernel does not apply (another device): compose it.
pub(crate) fn norm(
    x: &Tensor,
    g: &Tensor,
    b: &Tensor,
    center: bool,
    eps: f64,
) -> Result<Option<Tensor>> {
    Ok(kernels::norm(x, g, b, center, eps)?)
}

/// The norm's `(normalized, scale)` computed with [`norm`]'s arithmetic, for a forward whose
/// hooks record them: so recording the inside of a norm changes no number. `None`: compose.
pub(crate) fn norm_parts(x: &Tensor, center: bool, eps: f64) -> Result<Option<(Tensor, Tensor)>> {
    Ok(kernels::norm_parts(x, center, eps)?)
}

/// The causal softmax of `scores` `[B, H, S, S]` in one pass, when the mask is plain causal and
/// no hook shows the masked scores: it equals `softmax(scores + mask)` bit for bit, so the mask
/// tensor is only built for padding, windows, or to show it. `None`: mask and softmax.
pub(crate) fn causal_softmax(
    scores: &Tensor,
    plain_causal: bool,
    scores_hooked: bool,
) -> Result<Option<Tensor>> {
    if plain_causal && !scores_hooked {
        return Ok(kernels::causal_softmax(scores)?);
    }
    Ok(None)
}

/// Errors if `t` holds a NaN or an infinity.
pub fn ensure_finite(t: &Tensor, what: &str) -> Result<()> {
    let sum = t
        .abs()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    if !sum.is_finite() {
        return Err(Error::Numeric(format!(
            "{what} contains NaN or infinite values"
        )));
    }
    Ok(())
}

/// `x @ w + b` for `x` `[..., in]` and `w` `[in, out]`, as one 2-D matrix product.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    // A generation step's few rows: stream the weights once instead of packing them.
    if let Some(y) = kernels::gemv::gemv(x, w, b)? {
        return Ok(y);
    }
    if let Some(b) = b {
        if !x.track_op() && !w.track_op() && !b.track_op() {
            let din = x.dim(D::Minus1)?;
            let mut out = x.dims().to_vec();
            *out.last_mut().expect("non-scalar") = w.dim(1)?;
            let x2 = x.reshape((x.elem_count() / din, din))?;
            return Ok(kernels::linear_bias_inference(&x2, w, b)?.reshape(out)?);
        }
    }
    // Training: one graph node instead of reshape, matmul, reshape.
    let y = match kernels::linear::linear(x, w)? {
        Some(y) => y,
        None => matmul(x, w)?,
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Batched product `a @ b`: the parallel-over-batch kernel when no gradient is tracked.
pub(crate) fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.track_op() || b.track_op() {
        return Ok(a.matmul(b)?);
    }
    Ok(kernels::bmm_inference(a, b)?)
}

/// `x @ w` over the last dimension of `x`, flattening leading dims into one GEMM.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let din = *dims.last().expect("non-scalar input");
    let rows = x.elem_count() / din;
    let x2 = if x.is_contiguous() {
        x.reshape((rows, din))?
    } else {
        x.contiguous()?.reshape((rows, din))?
    };
    let y = x2.matmul(w)?;
    let mut out = dims;
    *out.last_mut().expect("non-scalar") = w.dim(1)?;
    Ok(y.reshape(out)?)
}

/// The first `b` rows of `x` (all of them when it has `b`).
pub(crate) fn first_rows(x: &Tensor, b: usize) -> Result<Tensor> {
    Ok(match x.dim(0)? == b {
        true => x.clone(),
        false => x.narrow(0, 0, b)?,
    })
}

/// `[B, K, S, E]` → `[B, K·g, S, E]`, repeating each kv head for its `g` query heads.
pub(crate) fn repeat_kv(x: &Tensor, g: usize) -> Result<Tensor> {
    if g == 1 {
        return Ok(x.contiguous()?);
    }
    let (b, k, s, e) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, k, g, s, e))?
        .reshape((b, k * g, s, e))?)
}

/// Softmax over the last dimension; the fused kernel when no gradient is tracked.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(kernels::softmax_last_dim_inference(x)?);
    }
    // candle's fused softmax has no backward: compose it from differentiable ops.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// The element-wise activations of the MLP.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => kernels::gelu_tanh(x)?,
        Activation::Relu => x.relu()?,
        Activation::Silu => kernels::silu(x)?,
    })
}
