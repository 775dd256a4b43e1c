//! The one transformer: a config-driven forward pass whose every activation passes `hooks.at`.
//! It reads top to bottom: embed → blocks (`norm → attention → +resid → norm → mlp → +resid`)
//! → final norm → unembed; which op runs fused or composed is `ops`'s choice, what the input
//! and the weights must satisfy is `validate`'s.
//!
//! Shapes: B = batch, S = positions, D = d_model, H = heads, K = kv heads, E = d_head,
//! M = d_mlp, V = d_vocab.

use candle_core::{Device, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::{HookPoint as P, Hooks, NormSite};
use crate::input::Input;
use crate::model::config::{Config, Mlp, NormKind, Positions};
use crate::model::kv::KvCache;
use crate::model::ops::{activation, bmm, first_rows, linear, matmul, repeat_kv, softmax_last_dim};
use crate::model::weights::{AttnWeights, BlockWeights, MlpWeights, NormWeights, Weights};
use crate::model::{ops, rope};

/// A transformer: its canonical config and weights.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: Config,
    pub weights: Weights,
    /// SAEs spliced into every forward pass (SAELens's `add_sae`), after any the hooks bring;
    /// empty for the plain model. What lets every analysis run on a model with SAEs in place.
    pub saes: Vec<crate::hooks::Splice>,
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
    /// Rows that enter later: `(l, resid)` appends `resid` `[b, S, D]` to the batch as part of
    /// block `l`'s `hook_resid_pre` (layers ascending, from the first block run). The input
    /// covers every row, the rows present from the start first; hooks see the rows present at
    /// each point. Sweeps use this so each variant runs only the blocks after its patch.
    pub joins: Vec<(usize, Tensor)>,
    /// Positions before the input's first are not recomputed: the input holds the positions
    /// after them (with their absolute position ids) and each block reads the earlier
    /// positions' keys and values from a cached run. Hook points hold the input's positions
    /// (attention maps: its queries against every key), and selections index those.
    pub prefix: Option<KvCache>,
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
    /// Keys and values of the positions before the input's.
    prefix: Option<&'a KvCache>,
}

impl Model {
    /// Wraps a config and weights, checking that they agree.
    pub fn new(cfg: Config, weights: Weights) -> Result<Self> {
        cfg.validate()?;
        let device = weights.w_e.device().clone();
        let model = Model {
            cfg,
            weights,
            saes: vec![],
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
        let b0 = self.check_joins(&span.joins, b, s, first, stop)?;
        if let Some(prefix) = &span.prefix {
            self.check_prefix(prefix, input, s)?;
            if !span.joins.is_empty() && prefix.rows() != 1 {
                return Err(Error::Input(
                    "rows that join later share one prefix row: give a one-row key-value cache"
                        .into(),
                ));
            }
        }
        if !self.saes.is_empty() {
            hooks.adopt_splices(&self.saes);
        }
        hooks.prepare_input(&self.cfg, input)?;
        let w = &self.weights;

        let mut resid = match span.start {
            Some((_, resid)) => {
                let want = [b0, s, self.cfg.d_model];
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
                    .index_select(&input.tokens.narrow(0, 0, b0)?.flatten_all()?, 0)?
                    .reshape((b0, s, ()))?;
                let mut resid = hooks.at(P::Embed, embed)?;
                if let Some(w_pos) = &w.w_pos {
                    let pos = w_pos
                        .index_select(&input.positions.narrow(0, 0, b0)?.flatten_all()?, 0)?
                        .reshape((b0, s, ()))?;
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
            causal_only: input.mask.is_none()
                && self.cfg.attn.sliding_window.is_none()
                && !span.prefix.as_ref().is_some_and(|p| p.is_padded()),
            prefix: span.prefix.as_ref(),
        };
        let mut joins = span.joins.into_iter().peekable();
        for (l, block) in w.blocks.iter().enumerate().take(stop).skip(first) {
            while let Some((_, rows)) = joins.next_if(|(at, _)| *at == l) {
                resid = Tensor::cat(&[&resid, &rows], 0)?;
            }
            // The metric reads the last position only: past the last block's keys and values,
            // nothing else of its other positions is needed (unless a hook looks at it).
            let last_only = span.last_position_only
                && l + 1 == n
                && stop == n
                && !P::all(&self.cfg)
                    .into_iter()
                    .any(|p| p.layer() == Some(l) && p.is_query_side() && hooks.wants(p));
            resid = self.block(l, block, resid, &ctx, hooks, last_only)?;
        }
        if stop < n || span.stop_at_layer == Some(n) {
            return Ok(resid);
        }
        let resid = if span.last_position_only {
            resid.narrow(1, resid.dim(1)? - 1, 1)?
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

    /// Logits of the tokens `ids` only, `[B, S, k]`, for a final residual `[B, S, D]` (from
    /// `stop_at_layer = n_layers`): a metric that reads a few logits skips the rest of the
    /// unembedding, the largest product of a sweep's forward.
    pub fn logits_of(&self, resid: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let w = &self.weights;
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= self.cfg.d_vocab) {
            return Err(Error::OutOfRange {
                what: "token id",
                index: id as i64,
                limit: format!("a vocabulary of {} tokens", self.cfg.d_vocab),
            });
        }
        let x = if self.cfg.norm.final_norm {
            self.norm(
                resid,
                &w.ln_final,
                P::FinalScale,
                P::FinalNormalized,
                &mut Hooks::none(),
            )?
        } else {
            resid.clone()
        };
        let idx = Tensor::new(ids, &self.device)?;
        let w_u = w.unembed();
        // A tied unembedding is W_Eᵀ, a view: pick W_E's rows instead of copying it.
        let w_u = match w_u.is_contiguous() {
            true => w_u.index_select(&idx, 1)?,
            false => w_u.t()?.contiguous()?.index_select(&idx, 0)?.t()?,
        }; // [D, k]
        let logits = matmul(&x, &w_u)?;
        Ok(match &w.b_u {
            Some(b_u) => logits.broadcast_add(&b_u.index_select(&idx, 0)?)?,
            None => logits,
        })
    }

    /// Final norm, unembedding and the `logits` hook.
    fn unembed_with(&self, resid: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let w = &self.weights;
        let x = if self.cfg.norm.final_norm {
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
        last_only: bool,
    ) -> Result<Tensor> {
        let resid = hooks.at(P::ResidPre(l), resid)?;
        let x = self.norm(
            &resid,
            &w.ln1,
            P::NormScale(l, NormSite::Ln1),
            P::NormNormalized(l, NormSite::Ln1),
            hooks,
        )?;
        let attn_out = self.attention(l, &w.attn, &x, ctx, hooks, last_only)?;
        let attn_out = hooks.at(P::AttnOut(l), attn_out)?;
        let resid = match last_only {
            true => resid.narrow(1, resid.dim(1)? - 1, 1)?,
            false => resid,
        };
        let resid = (resid + attn_out)?;
        if w.mlp.is_none() && w.moe.is_none() {
            return hooks.at(P::ResidPost(l), resid);
        }
        let resid = hooks.at(P::ResidMid(l), resid)?;
        let x = self.norm(
            &resid,
            &w.ln2,
            P::NormScale(l, NormSite::Ln2),
            P::NormNormalized(l, NormSite::Ln2),
            hooks,
        )?;
        let mlp_out = match (&w.moe, &w.mlp) {
            (Some(moe), _) => self.moe(l, moe, &x, hooks)?,
            (None, Some(mlp)) => self.mlp(l, mlp, &x, hooks)?,
            (None, None) => unreachable!("checked above"),
        };
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
        let kind = self.cfg.norm.kind;
        if kind == NormKind::None {
            return Ok(x.clone());
        }
        // The fused kernel (one op each way) unless a hook reads the inside. At inference a
        // recorded or edited `hook_normalized` comes from the fused kernel's arithmetic, so
        // recording it changes no number; training with a hook inside, and an edited scale,
        // take the step-by-step path below.
        let affine = matches!(kind, NormKind::LayerNorm | NormKind::RmsNorm);
        let center = kind == NormKind::LayerNorm;
        if let (true, Some(g)) = (affine, &w.w) {
            if !hooks.wants(scale_point) && !hooks.wants(normalized_point) {
                let b = match &w.b {
                    Some(b) => b.clone(),
                    None => g.zeros_like()?,
                };
                if let Some(y) = ops::norm(x, g, &b, center, self.cfg.norm.eps)? {
                    return Ok(y);
                }
            } else if !hooks.edits(scale_point) {
                if let Some((x, scale)) = ops::norm_parts(x, center, self.cfg.norm.eps)? {
                    hooks.at(scale_point, scale)?;
                    let x = hooks.at(normalized_point, x)?.broadcast_mul(g)?;
                    return Ok(match &w.b {
                        Some(b) => x.broadcast_add(b)?,
                        None => x,
                    });
                }
            }
        }
        let x = match kind {
            NormKind::LayerNorm | NormKind::LayerNormPre => {
                x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
            }
            _ => x.clone(),
        };
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm.eps)?.sqrt()?;
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

    /// Multi-head (grouped-query) causal attention; returns the output added to the residual
    /// (for the last position only when `last_only`).
    fn attention(
        &self,
        l: usize,
        w: &AttnWeights,
        x: &Tensor,
        ctx: &Context,
        hooks: &mut Hooks,
        last_only: bool,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s, _) = x.dims3()?;
        let (h, k_h, e) = (cfg.attn.n_heads, cfg.attn.n_kv_heads, cfg.attn.d_head);
        // Queries: every position, or the last one (keys and values still cover them all).
        let (xq, sq) = match last_only {
            true => (x.narrow(1, s - 1, 1)?, 1),
            false => (x.clone(), s),
        };

        let q = linear(&xq, &w.w_q, w.b_q.as_ref())?.reshape((b, sq, h, e))?; // [B, Sq, H, E]
        let k = linear(x, &w.w_k, w.b_k.as_ref())?.reshape((b, s, k_h, e))?; // [B, S, K, E]
        let v = linear(x, &w.w_v, w.b_v.as_ref())?.reshape((b, s, k_h, e))?; // [B, S, K, E]
        let mut q = hooks.at(P::Q(l), q)?;
        let mut k = hooks.at(P::K(l), k)?;
        let mut v = hooks.at(P::V(l), v)?;
        if let (Some(gq), Some(gk)) = (&w.q_norm, &w.k_norm) {
            q = hooks.at(P::QNormed(l), self.qk_norm(&q, gq)?)?;
            k = hooks.at(P::KNormed(l), self.qk_norm(&k, gk)?)?;
        }
        if let Some((cos, sin)) = &ctx.rope {
            // Rows that join later are not here yet: the tables cover the first `b` rows.
            let (cos, sin) = (first_rows(cos, b)?, first_rows(sin, b)?);
            let (cos_q, sin_q) = (cos.narrow(1, s - sq, sq)?, sin.narrow(1, s - sq, sq)?);
            q = hooks.at(P::RotQ(l), rope::apply(&q, &cos_q, &sin_q)?)?;
            k = hooks.at(P::RotK(l), rope::apply(&k, &cos, &sin)?)?;
        }
        if let Some(prefix) = ctx.prefix {
            // The earlier positions' keys and values: one row per row, or one shared by all.
            let (pk, pv) = &prefix.layers[l];
            let dtype = k.dtype();
            let rows = |t: &Tensor| -> Result<Tensor> {
                let t = t.to_dtype(dtype)?;
                Ok(match t.dim(0)? {
                    1 if b > 1 => t.repeat((b, 1, 1, 1))?,
                    _ => t,
                })
            };
            k = Tensor::cat(&[&rows(pk)?, &k], 1)?;
            v = Tensor::cat(&[&rows(pv)?, &v], 1)?;
        }

        let inside = hooks.wants(P::AttnScores(l)) || hooks.wants(P::Pattern(l));
        let fused = ops::attention(&q, &k, &v, 1.0 / cfg.attn.scale, ctx.causal_only, inside)?;
        let z = match fused {
            Some(z) => z,
            None => self.attention_map(l, q, k, v, ctx, hooks)?,
        };
        let z = hooks.at(P::Z(l), z)?;

        if hooks.wants(P::Result(l)) {
            // Per-head outputs z_h · W_O[h] (without b_O), only computed when someone asks.
            let d = cfg.d_model;
            let zh = z.permute((2, 0, 1, 3))?.reshape((h, b * sq, e))?; // [H, B·Sq, E]
            let w_o = w.w_o.reshape((h, e, d))?; // [H, E, D]
            let result = bmm(&zh, &w_o)?
                .reshape((h, b, sq, d))?
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
        linear(&z.reshape((b, sq, h * e))?, &w.w_o, w.b_o.as_ref())
    }

    /// RMSNorm of queries or keys `[B, S, heads, E]` with gain `g`: over each head's `E`
    /// values (an `[E]` gain) or over all heads at once (a `[heads·E]` gain).
    fn qk_norm(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (b, s, heads, e) = x.dims4()?;
        let x = match g.dim(0)? == e {
            true => x.clone(),
            false => x.reshape((b, s, heads * e))?,
        };
        let zero = g.zeros_like()?;
        let y = match ops::norm(&x, g, &zero, false, self.cfg.norm.eps)? {
            Some(y) => y,
            None => {
                let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm.eps)?.sqrt()?;
                x.broadcast_div(&scale)?.broadcast_mul(g)?
            }
        };
        Ok(y.reshape((b, s, heads, e))?)
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
        let (h, k_h) = (cfg.attn.n_heads, cfg.attn.n_kv_heads);
        // Scaling q (half the size of the scores) instead of the scores; equal up to rounding.
        let q = (q.transpose(1, 2)?.contiguous()? * (1.0 / cfg.attn.scale))?; // [B, H, S, E]
        let k = repeat_kv(&k.transpose(1, 2)?, h / k_h)?; // [B, H, S, E]
        let v = repeat_kv(&v.transpose(1, 2)?, h / k_h)?; // [B, H, S, E]
        let scores = bmm(&q, &k.t()?)?; // [B, H, S, S]

        let fused = ops::causal_softmax(&scores, ctx.causal_only, hooks.wants(P::AttnScores(l)))?;
        let pattern = match fused {
            Some(p) => p,
            None => {
                let mask = match ctx.mask.get() {
                    Some(m) => m,
                    None => {
                        let m = self.attention_mask(ctx.input, ctx.prefix)?;
                        ctx.mask.get_or_init(|| m)
                    }
                };
                // The present rows; the last query rows when only the last position is asked.
                let (_, _, sq, _) = scores.dims4()?;
                let mask = first_rows(mask, scores.dim(0)?)?;
                let mask = mask.narrow(2, mask.dim(2)? - sq, sq)?;
                let scores = hooks.at(P::AttnScores(l), scores.broadcast_add(&mask)?)?;
                softmax_last_dim(&scores)?
            }
        };
        let pattern = hooks.at(P::Pattern(l), pattern)?;
        let z = bmm(&pattern, &v)?.transpose(1, 2)?; // [B, S, H, E]
        Ok(z)
    }

    /// Dense `W_out·act(W_in·x)` or gated `W_out·(act(W_gate·x) ⊙ W_in·x)`.
    fn mlp(&self, l: usize, w: &MlpWeights, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let (gated, act) = match &self.cfg.mlp {
            Mlp::Dense { act, .. } => (false, *act),
            // A mixture of experts' dense layers are gated MLPs with the experts' activation.
            Mlp::Gated { act, .. } => (true, *act),
            Mlp::Moe(m) => (true, m.act),
            Mlp::None => unreachable!("blocks without an MLP carry no MlpWeights"),
        };
        let post = match gated {
            false => {
                let pre = hooks.at(P::MlpPre(l), linear(x, &w.w_in, w.b_in.as_ref())?)?;
                activation(&pre, act)?
            }
            true => {
                let w_gate = w
                    .w_gate
                    .as_ref()
                    .ok_or_else(|| Error::Input("gated MLP without a gate".into()))?;
                let pre = hooks.at(P::MlpPre(l), linear(x, w_gate, w.b_gate.as_ref())?)?;
                let pre_linear =
                    hooks.at(P::MlpPreLinear(l), linear(x, &w.w_in, w.b_in.as_ref())?)?;
                (activation(&pre, act)? * pre_linear)?
            }
        };
        let post = hooks.at(P::MlpPost(l), post)?;
        linear(&post, &w.w_out, w.b_out.as_ref())
    }

    /// Causal (optionally sliding-window) mask `[B, 1, S, p + S]` that also hides padding keys;
    /// the first `p` keys are a cached prefix's (its rows' leading padding hidden too).
    fn attention_mask(&self, input: &Input, prefix: Option<&KvCache>) -> Result<Tensor> {
        let (b, s) = input.dims()?;
        let p = prefix.map_or(0, |p| p.len());
        let prefix_pad = |row: usize| prefix.map_or(0, |p| p.pad_of(row));
        let key_ok: Option<Vec<u8>> = match &input.mask {
            Some(m) => Some(m.flatten_all()?.to_vec1::<u8>()?),
            None => None,
        };
        let window = self.cfg.attn.sliding_window.unwrap_or(usize::MAX);
        let n = p + s; // keys
        let mut mask = vec![0f32; b * s * n];
        for row in 0..b {
            for q in p..n {
                for k in 0..n {
                    let causal = k <= q && q - k < window;
                    let valid = match k < p {
                        true => k >= prefix_pad(row),
                        false => key_ok.as_ref().is_none_or(|m| m[row * s + k - p] == 1),
                    };
                    // A padding query attends to itself so its softmax stays finite.
                    if !(causal && valid) && k != q {
                        mask[(row * s + q - p) * n + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(mask, (b, 1, s, n), &self.device)?)
    }
}

impl Positions {
    /// Whether this is a learned position table.
    pub fn is_learned(&self) -> bool {
        matches!(self, Positions::Learned)
    }
}
