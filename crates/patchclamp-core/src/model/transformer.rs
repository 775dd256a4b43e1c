//! The one transformer: a config-driven forward pass whose every activation passes `hooks.at`.
//!
//! Shapes: B = batch, S = positions, D = d_model, H = heads, K = kv heads, E = d_head,
//! M = d_mlp, V = d_vocab.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::{HookPoint as P, Hooks, NormSite};
use crate::input::Input;
use crate::model::config::{Activation, Config, MlpKind, NormKind, Positions};
use crate::model::weights::{AttnWeights, BlockWeights, MlpWeights, NormWeights, Weights};
use crate::model::{fused_attention, fused_linear, kernels, rope};

/// A transformer: its canonical config and weights.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    pub weights: Weights,
    device: Device,
}

/// Which part of the forward pass to run (see [`Model::forward_span`]).
#[derive(Debug, Clone, Default)]
pub struct Span {
    /// Start at block `l` with this `[B, S, D]` residual as its `hook_resid_pre` (hook points
    /// before it are not reached, so nothing is recorded or changed there).
    pub start: Option<(usize, Tensor)>,
    /// Stop before block `l` and return the residual entering it (`n_layers`: the final
    /// residual, before the final norm).
    pub stop_at_layer: Option<usize>,
    /// Unembed only the last position (logits `[B, 1, V]`): sweeps whose metric reads the
    /// last position skip most of the unembedding, the largest product of a small model.
    pub last_position_only: bool,
}

/// Per-forward state shared by every block.
struct Context<'a> {
    input: &'a Input,
    /// Additive attention mask `[B, 1, S, S]`: 0 where allowed, -inf where not. Built on first
    /// use: the fused causal paths never need it.
    mask: std::cell::OnceCell<Tensor>,
    /// Rotary tables `[B, S, 1, rotary_dim]`.
    rope: Option<(Tensor, Tensor)>,
    /// The mask is plain causal (no padding, no window): the fused causal softmax applies.
    causal_only: bool,
}

impl Model {
    /// Wraps a config and weights, checking that they agree.
    pub fn new(cfg: Config, weights: Weights) -> Result<Self> {
        cfg.validate()?;
        let device = weights.w_e.device().clone();
        let model = Model {
            cfg,
            weights,
            device,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the model on `input`; returns logits `[B, S, V]`.
    pub fn forward(&self, input: &Input, hooks: &mut Hooks) -> Result<Tensor> {
        self.forward_span(input, hooks, Span::default())
    }

    /// Runs part of the model: from a cached residual at block `start` and/or up to block
    /// `stop_at_layer` (returning the residual entering it); logits when it runs to the end.
    pub fn forward_span(&self, input: &Input, hooks: &mut Hooks, span: Span) -> Result<Tensor> {
        self.check_input(input)?;
        let (b, s) = input.dims()?;
        let n = self.cfg.n_layers;
        let stop = span.stop_at_layer.unwrap_or(n);
        let first = span.start.as_ref().map_or(0, |(l, _)| *l);
        if stop > n || first >= n || first > stop {
            return Err(Error::OutOfRange {
                what: "layer",
                index: if stop > n { stop as i64 } else { first as i64 },
                limit: format!("{n} layers (start {first}, stop {stop})"),
            });
        }
        hooks.prepare_input(&self.cfg, input)?;
        let w = &self.weights;

        let mut resid = match span.start {
            Some((_, resid)) => {
                let want = [b, s, self.cfg.d_model];
                if resid.dims() != want {
                    return Err(Error::Input(format!(
                        "start residual has shape {:?}, expected {want:?}",
                        resid.dims()
                    )));
                }
                resid
            }
            None => {
                let embed = w
                    .w_e
                    .index_select(&input.tokens.flatten_all()?, 0)?
                    .reshape((b, s, ()))?;
                let mut resid = hooks.at(P::Embed, embed)?;
                if let Some(w_pos) = &w.w_pos {
                    let pos = w_pos
                        .index_select(&input.positions.flatten_all()?, 0)?
                        .reshape((b, s, ()))?;
                    resid = (resid + hooks.at(P::PosEmbed, pos)?)?;
                }
                resid
            }
        };

        let ctx = Context {
            input,
            mask: std::cell::OnceCell::new(),
            rope: match self.cfg.rotary() {
                Some(r) => Some(rope::tables(r, &input.positions, &self.device)?),
                None => None,
            },
            causal_only: input.mask.is_none() && self.cfg.sliding_window.is_none(),
        };
        for (l, block) in w.blocks.iter().enumerate().take(stop).skip(first) {
            resid = self.block(l, block, resid, &ctx, hooks)?;
        }
        if stop < n || span.stop_at_layer == Some(n) {
            return Ok(resid);
        }
        let resid = if span.last_position_only {
            resid.narrow(1, s - 1, 1)?
        } else {
            resid
        };
        self.unembed_with(&resid, hooks)
    }

    /// Logits of a final-position residual `[B, S, D]`: final norm (its scale computed from
    /// `resid` itself) and unembedding, as the end of the forward pass does (the logit lens).
    pub fn unembed_residual(&self, resid: &Tensor) -> Result<Tensor> {
        self.unembed_with(resid, &mut Hooks::none())
    }

    /// Final norm, unembedding and the `logits` hook.
    fn unembed_with(&self, resid: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let w = &self.weights;
        let x = if self.cfg.final_norm {
            self.norm(resid, &w.ln_final, P::FinalScale, P::FinalNormalized, hooks)?
        } else {
            resid.clone()
        };
        let logits = linear(&x, &w.unembed(), None)?;
        let logits = match &w.b_u {
            Some(b_u) => logits.broadcast_add(b_u)?,
            None => logits,
        };
        hooks.at(P::Logits, logits)
    }

    /// One block: `resid += attn(ln1(resid)); resid += mlp(ln2(resid))`.
    fn block(
        &self,
        l: usize,
        w: &BlockWeights,
        resid: Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let resid = hooks.at(P::ResidPre(l), resid)?;
        let x = self.norm(
            &resid,
            &w.ln1,
            P::NormScale(l, NormSite::Ln1),
            P::NormNormalized(l, NormSite::Ln1),
            hooks,
        )?;
        let attn_out = self.attention(l, &w.attn, &x, ctx, hooks)?;
        let attn_out = hooks.at(P::AttnOut(l), attn_out)?;
        let resid = (resid + attn_out)?;
        let Some(mlp) = &w.mlp else {
            return hooks.at(P::ResidPost(l), resid);
        };
        let resid = hooks.at(P::ResidMid(l), resid)?;
        let x = self.norm(
            &resid,
            &w.ln2,
            P::NormScale(l, NormSite::Ln2),
            P::NormNormalized(l, NormSite::Ln2),
            hooks,
        )?;
        let mlp_out = self.mlp(l, mlp, &x, hooks)?;
        let mlp_out = hooks.at(P::MlpOut(l), mlp_out)?;
        hooks.at(P::ResidPost(l), (resid + mlp_out)?)
    }

    /// `scale = sqrt(mean(x²) + eps)` (after centring for LayerNorm); `x / scale · w + b`.
    fn norm(
        &self,
        x: &Tensor,
        w: &NormWeights,
        scale_point: P,
        normalized_point: P,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let kind = self.cfg.norm;
        if kind == NormKind::None {
            return Ok(x.clone());
        }
        // Training takes the fused kernel (one op each way) unless a hook reads the inside.
        let affine = matches!(kind, NormKind::LayerNorm | NormKind::RmsNorm);
        if x.track_op() && affine && !hooks.wants(scale_point) && !hooks.wants(normalized_point) {
            if let Some(g) = &w.w {
                let b = match &w.b {
                    Some(b) => b.clone(),
                    None => g.zeros_like()?,
                };
                let center = kind == NormKind::LayerNorm;
                if let Some(y) = kernels::norm(x, g, &b, center, self.cfg.norm_eps)? {
                    return Ok(y);
                }
            }
        }
        let x = match kind {
            NormKind::LayerNorm | NormKind::LayerNormPre => {
                x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
            }
            _ => x.clone(),
        };
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm_eps)?.sqrt()?;
        let scale = hooks.at(scale_point, scale)?;
        let x = x.broadcast_div(&scale)?;
        // TransformerLens 4 records `hook_normalized` before the gain and bias, for both norms.
        let x = hooks.at(normalized_point, x)?;
        let x = match &w.w {
            Some(g) => x.broadcast_mul(g)?,
            None => x,
        };
        Ok(match &w.b {
            Some(b) => x.broadcast_add(b)?,
            None => x,
        })
    }

    /// Multi-head (grouped-query) causal attention; returns the output added to the residual.
    fn attention(
        &self,
        l: usize,
        w: &AttnWeights,
        x: &Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s, _) = x.dims3()?;
        let (h, k_h, e) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);

        let q = linear(x, &w.w_q, w.b_q.as_ref())?.reshape((b, s, h, e))?; // [B, S, H, E]
        let k = linear(x, &w.w_k, w.b_k.as_ref())?.reshape((b, s, k_h, e))?; // [B, S, K, E]
        let v = linear(x, &w.w_v, w.b_v.as_ref())?.reshape((b, s, k_h, e))?; // [B, S, K, E]
        let mut q = hooks.at(P::Q(l), q)?;
        let mut k = hooks.at(P::K(l), k)?;
        let v = hooks.at(P::V(l), v)?;
        if let Some((cos, sin)) = &ctx.rope {
            q = hooks.at(P::RotQ(l), rope::apply(&q, cos, sin)?)?;
            k = hooks.at(P::RotK(l), rope::apply(&k, cos, sin)?)?;
        }

        // Training with nothing hooked inside the attention map takes the fused op, whose
        // backward never materialises the [B, H, S, S] tensors in candle's graph.
        let tracked = q.track_op() || k.track_op() || v.track_op();
        let inside = hooks.wants(P::AttnScores(l)) || hooks.wants(P::Pattern(l));
        let fused = match tracked && ctx.causal_only && !inside {
            true => fused_attention::fused_attention(&q, &k, &v, 1.0 / cfg.attn_scale)?,
            false => None,
        };
        let z = match fused {
            Some(z) => z,
            None => self.attention_map(l, q, k, v, ctx, hooks)?,
        };
        let z = hooks.at(P::Z(l), z)?;

        if hooks.wants(P::Result(l)) {
            // Per-head outputs z_h · W_O[h] (without b_O), only computed when someone asks.
            let d = cfg.d_model;
            let zh = z.permute((2, 0, 1, 3))?.reshape((h, b * s, e))?; // [H, B·S, E]
            let w_o = w.w_o.reshape((h, e, d))?; // [H, E, D]
            let result = bmm(&zh, &w_o)?
                .reshape((h, b, s, d))?
                .permute((1, 2, 0, 3))?; // [B, S, H, D]
            let result = hooks.at(P::Result(l), result)?;
            if hooks.edits(P::Result(l)) {
                // An edited result is what flows on: the output is the sum over heads.
                let out = result.sum(2)?;
                return Ok(match &w.b_o {
                    Some(b_o) => out.broadcast_add(b_o)?,
                    None => out,
                });
            }
            // Only recorded: keep the plain path below so recording never changes the numbers.
        }
        linear(&z.reshape((b, s, h * e))?, &w.w_o, w.b_o.as_ref())
    }

    /// `z = pattern · v` through explicit scores and pattern (each a hook point); `[B, S, H, E]`.
    fn attention_map(
        &self,
        l: usize,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (h, k_h) = (cfg.n_heads, cfg.n_kv_heads);
        // Scaling q (half the size of the scores) instead of the scores; equal up to rounding.
        let q = (q.transpose(1, 2)?.contiguous()? * (1.0 / cfg.attn_scale))?; // [B, H, S, E]
        let k = repeat_kv(&k.transpose(1, 2)?, h / k_h)?; // [B, H, S, E]
        let v = repeat_kv(&v.transpose(1, 2)?, h / k_h)?; // [B, H, S, E]
        let scores = bmm(&q, &k.t()?)?; // [B, H, S, S]

        // The fused causal softmax equals softmax(scores + mask) bit for bit; the explicit
        // mask is only needed for padding, windows, or to show the masked scores.
        let fused = match ctx.causal_only && !hooks.wants(P::AttnScores(l)) {
            true => kernels::causal_softmax(&scores)?,
            false => None,
        };
        let pattern = match fused {
            Some(p) => p,
            None => {
                let mask = match ctx.mask.get() {
                    Some(m) => m,
                    None => {
                        let m = self.attention_mask(ctx.input)?;
                        ctx.mask.get_or_init(|| m)
                    }
                };
                let scores = hooks.at(P::AttnScores(l), scores.broadcast_add(mask)?)?;
                softmax_last_dim(&scores)?
            }
        };
        let pattern = hooks.at(P::Pattern(l), pattern)?;
        let z = bmm(&pattern, &v)?.transpose(1, 2)?; // [B, S, H, E]
        Ok(z)
    }

    /// Dense `W_out·act(W_in·x)` or gated `W_out·(act(W_gate·x) ⊙ W_in·x)`.
    fn mlp(&self, l: usize, w: &MlpWeights, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let post = match &self.cfg.mlp {
            MlpKind::Dense { act, .. } => {
                let pre = hooks.at(P::MlpPre(l), linear(x, &w.w_in, w.b_in.as_ref())?)?;
                activation(&pre, *act)?
            }
            MlpKind::Gated { act, .. } => {
                let w_gate = w
                    .w_gate
                    .as_ref()
                    .ok_or_else(|| Error::Input("gated MLP without a gate".into()))?;
                let pre = hooks.at(P::MlpPre(l), linear(x, w_gate, w.b_gate.as_ref())?)?;
                let pre_linear =
                    hooks.at(P::MlpPreLinear(l), linear(x, &w.w_in, w.b_in.as_ref())?)?;
                (activation(&pre, *act)? * pre_linear)?
            }
            MlpKind::None => unreachable!("blocks without an MLP carry no MlpWeights"),
        };
        let post = hooks.at(P::MlpPost(l), post)?;
        linear(&post, &w.w_out, w.b_out.as_ref())
    }

    /// Causal (optionally sliding-window) mask that also hides padding keys.
    fn attention_mask(&self, input: &Input) -> Result<Tensor> {
        let (b, s) = input.dims()?;
        let key_ok: Option<Vec<u8>> = match &input.mask {
            Some(m) => Some(m.flatten_all()?.to_vec1::<u8>()?),
            None => None,
        };
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        let mut mask = vec![0f32; b * s * s];
        for row in 0..b {
            for q in 0..s {
                for k in 0..s {
                    let causal = k <= q && q - k < window;
                    let valid = key_ok.as_ref().is_none_or(|m| m[row * s + k] == 1);
                    // A padding query attends to itself so its softmax stays finite.
                    if !(causal && valid) && k != q {
                        mask[(row * s + q) * s + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(mask, (b, 1, s, s), &self.device)?)
    }

    /// Rejects inputs the model cannot run: ids outside the vocabulary, too many positions.
    fn check_input(&self, input: &Input) -> Result<()> {
        let (_, s) = input.dims()?;
        if s > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "the input has {s} positions but the model's context is {} tokens",
                self.cfg.n_ctx
            )));
        }
        let max = input
            .tokens
            .max_all()?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?;
        if max as usize >= self.cfg.d_vocab {
            return Err(Error::OutOfRange {
                what: "token id",
                index: max as i64,
                limit: format!("a vocabulary of {} tokens", self.cfg.d_vocab),
            });
        }
        Ok(())
    }

    /// Checks each weight has the shape the config implies.
    fn check_shapes(&self) -> Result<()> {
        let c = &self.cfg;
        let w = &self.weights;
        let (d, qd, kvd) = (c.d_model, c.n_heads * c.d_head, c.n_kv_heads * c.d_head);
        let mut expect: Vec<(String, &Tensor, Vec<usize>)> =
            vec![("W_E".into(), &w.w_e, vec![c.d_vocab, d])];
        if let Some(p) = &w.w_pos {
            expect.push(("W_pos".into(), p, vec![c.n_ctx, d]));
        }
        if let Some(u) = &w.w_u {
            expect.push(("W_U".into(), u, vec![d, c.d_vocab]));
        }
        if w.blocks.len() != c.n_layers {
            return Err(Error::Input(format!(
                "config has {} layers but weights have {}",
                c.n_layers,
                w.blocks.len()
            )));
        }
        for (l, blk) in w.blocks.iter().enumerate() {
            let a = &blk.attn;
            expect.push((format!("blocks.{l}.attn.W_Q"), &a.w_q, vec![d, qd]));
            expect.push((format!("blocks.{l}.attn.W_K"), &a.w_k, vec![d, kvd]));
            expect.push((format!("blocks.{l}.attn.W_V"), &a.w_v, vec![d, kvd]));
            expect.push((format!("blocks.{l}.attn.W_O"), &a.w_o, vec![qd, d]));
            if let Some(m) = &blk.mlp {
                expect.push((format!("blocks.{l}.mlp.W_in"), &m.w_in, vec![d, c.d_mlp]));
                expect.push((format!("blocks.{l}.mlp.W_out"), &m.w_out, vec![c.d_mlp, d]));
            }
        }
        for (name, t, shape) in expect {
            if t.dims() != shape.as_slice() {
                return Err(Error::WeightShape {
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Fails with the first tensor that holds a NaN or infinity.
    pub fn check_finite(&self) -> Result<()> {
        let w = &self.weights;
        let mut named: Vec<(String, &Tensor)> = vec![("W_E".into(), &w.w_e)];
        if let Some(u) = &w.w_u {
            named.push(("W_U".into(), u));
        }
        for (l, b) in w.blocks.iter().enumerate() {
            named.push((format!("blocks.{l}.attn.W_Q"), &b.attn.w_q));
            named.push((format!("blocks.{l}.attn.W_K"), &b.attn.w_k));
            named.push((format!("blocks.{l}.attn.W_V"), &b.attn.w_v));
            named.push((format!("blocks.{l}.attn.W_O"), &b.attn.w_o));
            if let Some(m) = &b.mlp {
                named.push((format!("blocks.{l}.mlp.W_in"), &m.w_in));
                named.push((format!("blocks.{l}.mlp.W_out"), &m.w_out));
            }
        }
        for (name, t) in named {
            ensure_finite(t, &name)?;
        }
        Ok(())
    }
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
    let y = match fused_linear::linear(x, w)? {
        Some(y) => y,
        None => matmul(x, w)?,
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Batched product `a @ b`: the parallel-over-batch kernel when no gradient is tracked.
fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.track_op() || b.track_op() {
        return Ok(a.matmul(b)?);
    }
    Ok(kernels::bmm_inference(a, b)?)
}

/// `x @ w` over the last dimension of `x`, flattening leading dims into one GEMM.
fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
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

/// `[B, K, S, E]` → `[B, K·g, S, E]`, repeating each kv head for its `g` query heads.
fn repeat_kv(x: &Tensor, g: usize) -> Result<Tensor> {
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

impl Positions {
    /// Whether this is a learned position table.
    pub fn is_learned(&self) -> bool {
        matches!(self, Positions::Learned)
    }
}
