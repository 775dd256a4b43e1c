//! The layers' forward and backward for one chunk of the fused step, in data-flow order: embed
//! → per block (LayerNorm → causal attention → `W_O` → residual) → final LayerNorm → unembed →
//! cross-entropy, then the same way back.

use std::ops::Range;

use patchclamp_core::model::kernels::{exp_approx, lane_max, lane_sum};

use super::{resize, Dims, LayerActs, Step, Work, BLOCK};
use patchclamp_core::model::kernels::tiles::{dot16, mm, small_mm, transpose};

/// Causal blocks of `s` query rows: `(first row, end row)`; a block's queries see keys
/// `0..end`.
pub(super) fn blocks(s: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..s).step_by(BLOCK).map(move |i| (i, (i + BLOCK).min(s)))
}

#[inline(always)]
pub(super) fn chunk_pass_generic(step: &Step, rows: Range<usize>, w: &mut Work) -> f64 {
    let Step {
        dims,
        p,
        batch,
        s,
        cls,
        inv_total,
    } = step;
    let (s, inv_total) = (*s, *inv_total);
    let (d, a, v, t) = (dims.d, dims.attn(), dims.vocab, w.size.0);
    let tokens = || {
        batch.tokens[rows.clone()]
            .iter()
            .flat_map(|r| r.iter().enumerate())
    };

    // Forward: x₀ = W_E[token] + W_pos[position].
    for ((pos, &tok), x) in tokens().zip(w.resid.chunks_mut(d)) {
        let (e, q) = (&p.w_e[tok as usize * d..][..d], &p.w_pos[pos * d..][..d]);
        x.iter_mut()
            .zip(e.iter().zip(q))
            .for_each(|(x, (e, q))| *x = e + q);
    }
    for l in 0..dims.layers {
        let acts = &mut w.layers[l];
        layer_norm(&w.resid, d, dims.eps, p.ln_w[l], p.ln_b[l], acts);
        mm(
            (t, 3 * a, d),
            &mut acts.qkv,
            3 * a,
            &acts.h,
            (d, 1),
            p.w_qkv[l],
            (3 * a, 1),
            1.0,
            false,
        );
        attention(dims, s, acts, &mut w.kt);
        // x += z · W_O
        mm(
            (t, d, a),
            &mut w.resid,
            d,
            &acts.z,
            (a, 1),
            p.w_o[l],
            (d, 1),
            1.0,
            true,
        );
    }
    let fin = &mut w.last;
    layer_norm(&w.resid, d, dims.eps, p.lnf_w, p.lnf_b, fin);
    mm(
        (t, v, d),
        &mut w.logits,
        v,
        &fin.h,
        (d, 1),
        p.w_u,
        (v, 1),
        1.0,
        false,
    );

    // Loss, and its gradient in place of the logits: (softmax − onehot) · weight / Σ weights
    // over the class columns, zero elsewhere.
    let mut loss = 0f64;
    let scored = batch.targets[rows.clone()]
        .iter()
        .zip(&batch.weights[rows.clone()])
        .flat_map(|(t, w)| t.iter().zip(w));
    for ((&tgt, &wt), row) in scored.zip(w.logits.chunks_mut(v)) {
        if wt > 0.0 {
            let z = &mut row[cls.clone()];
            let max = lane_max(z);
            let x_t = z[tgt as usize - cls.start];
            z.iter_mut().for_each(|x| *x = exp_approx(*x - max));
            let sum = lane_sum(z);
            loss += wt as f64 * (max + sum.ln() - x_t) as f64;
            let g = wt * inv_total;
            let k = g / sum;
            z.iter_mut().for_each(|x| *x *= k);
            z[tgt as usize - cls.start] -= g;
            row[..cls.start].fill(0.0);
            row[cls.end..].fill(0.0);
        } else {
            row.fill(0.0);
        }
    }

    // Backward through the unembedding and the final norm.
    let g = &mut w.grads;
    let dl = &w.logits;
    mm(
        (d, v, t),
        &mut g.w_u,
        v,
        &fin.h,
        (1, d),
        dl,
        (v, 1),
        1.0,
        false,
    );
    mm(
        (t, d, v),
        &mut w.d_h,
        d,
        dl,
        (v, 1),
        p.w_u,
        (1, v),
        1.0,
        false,
    );
    w.d_resid.fill(0.0);
    layer_norm_backward(
        &w.d_h,
        fin,
        p.lnf_w,
        d,
        &mut g.lnf_w,
        &mut g.lnf_b,
        &mut w.d_resid,
    );

    for l in (0..dims.layers).rev() {
        let acts = &w.layers[l];
        mm(
            (a, d, t),
            &mut g.w_o[l],
            d,
            &acts.z,
            (1, a),
            &w.d_resid,
            (d, 1),
            1.0,
            false,
        );
        mm(
            (t, a, d),
            &mut w.d_z,
            a,
            &w.d_resid,
            (d, 1),
            p.w_o[l],
            (1, d),
            1.0,
            false,
        );
        attention_backward(dims, s, acts, &w.d_z, &mut w.d_p, &mut w.kt, &mut w.d_qkv);
        mm(
            (d, 3 * a, t),
            &mut g.w_qkv[l],
            3 * a,
            &acts.h,
            (1, d),
            &w.d_qkv,
            (3 * a, 1),
            1.0,
            false,
        );
        mm(
            (t, d, 3 * a),
            &mut w.d_h,
            d,
            &w.d_qkv,
            (3 * a, 1),
            p.w_qkv[l],
            (1, 3 * a),
            1.0,
            false,
        );
        layer_norm_backward(
            &w.d_h,
            acts,
            p.ln_w[l],
            d,
            &mut g.ln_w[l],
            &mut g.ln_b[l],
            &mut w.d_resid,
        );
    }

    // The embeddings' gradients: each token's residual gradient, scattered.
    for ((pos, &tok), dx) in tokens().zip(w.d_resid.chunks(d)) {
        let e = &mut g.w_e[tok as usize * d..][..d];
        e.iter_mut().zip(dx).for_each(|(e, x)| *e += x);
        let q = &mut g.w_pos[pos * d..][..d];
        q.iter_mut().zip(dx).for_each(|(q, x)| *q += x);
    }
    loss
}

/// `h = (x − μ)/σ · w + b` per row, keeping `(x − μ)/σ` and `1/σ` for the backward.
#[inline(always)]
pub(super) fn layer_norm(
    x: &[f32],
    d: usize,
    eps: f32,
    wt: &[f32],
    bias: &[f32],
    out: &mut LayerActs,
) {
    let n = d as f32;
    for (((row, xh), h), r) in x
        .chunks(d)
        .zip(out.xhat.chunks_mut(d))
        .zip(out.h.chunks_mut(d))
        .zip(out.rstd.iter_mut())
    {
        let mu = lane_sum(row) / n;
        xh.iter_mut().zip(row).for_each(|(o, &x)| *o = x - mu);
        let var = dot16(xh, xh) / n;
        let rs = 1.0 / (var + eps).sqrt();
        *r = rs;
        xh.iter_mut().for_each(|o| *o *= rs);
        // Zipped iterators, not indices: no bounds checks, so the loops vectorise.
        for ((h, &x), (&g, &b)) in h.iter_mut().zip(&*xh).zip(wt.iter().zip(bias)) {
            *h = x * g + b;
        }
    }
}

/// LayerNorm's backward: accumulates the gain and bias gradients and adds the input gradient
/// `(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ` (with `dx̂ = dh·w`) into `dx`.
#[inline(always)]
pub(super) fn layer_norm_backward(
    dh: &[f32],
    acts: &LayerActs,
    wt: &[f32],
    d: usize,
    gw: &mut [f32],
    gb: &mut [f32],
    dx: &mut [f32],
) {
    let n = d as f32;
    let mut dxh = vec![0f32; d];
    for (((dh, xh), &rs), dx) in dh
        .chunks(d)
        .zip(acts.xhat.chunks(d))
        .zip(&acts.rstd)
        .zip(dx.chunks_mut(d))
    {
        for ((((gw, gb), g), &x), (&dy, &w)) in gw
            .iter_mut()
            .zip(gb.iter_mut())
            .zip(dxh.iter_mut())
            .zip(xh)
            .zip(dh.iter().zip(wt))
        {
            *gw += dy * x;
            *gb += dy;
            *g = dy * w;
        }
        let (m1, m2) = (lane_sum(&dxh) / n, dot16(&dxh, xh) / n);
        for ((dx, &g), &x) in dx.iter_mut().zip(&dxh).zip(xh) {
            *dx += rs * (g - m1 - x * m2);
        }
    }
}

/// Causal attention of every (row, head) of a chunk: patterns into `acts.p`, outputs into
/// `acts.z`.
#[inline(always)]
pub(super) fn attention(dims: &Dims, s: usize, acts: &mut LayerActs, kt: &mut Vec<f32>) {
    let (a, dh) = (dims.attn(), dims.d_head);
    let rows = acts.z.len() / (s * a);
    let ss = s * s;
    resize(kt, dh * s);
    for r in 0..rows {
        let qkv = &acts.qkv[r * s * 3 * a..][..s * 3 * a];
        for hd in 0..dims.heads {
            let (q, k, v) = (
                &qkv[hd * dh..],
                &qkv[a + hd * dh..],
                &qkv[2 * a + hd * dh..],
            );
            let p = &mut acts.p[(r * dims.heads + hd) * ss..][..ss];
            transpose(k, 3 * a, s, dh, kt);
            for (i0, i1) in blocks(s) {
                // scores = q·kᵀ · scale for the block's queries and the keys they see
                small_mm(
                    (i1 - i0, i1, dh),
                    &mut p[i0 * s..],
                    s,
                    &q[i0 * 3 * a..],
                    (3 * a, 1),
                    kt,
                    (s, 1),
                    dims.scale,
                );
                for i in i0..i1 {
                    softmax_causal(&mut p[i * s..i * s + i1], i + 1);
                }
            }
            let z = &mut acts.z[r * s * a + hd * dh..];
            for (i0, i1) in blocks(s) {
                small_mm(
                    (i1 - i0, dh, i1),
                    &mut z[i0 * a..],
                    a,
                    &p[i0 * s..],
                    (s, 1),
                    v,
                    (3 * a, 1),
                    1.0,
                );
            }
        }
    }
}

/// Softmax over the first `visible` entries of `row`; the rest become 0. The whole row is
/// processed (masked entries as -inf, whose exponential is exactly 0): rows as long as a block
/// end are whole vectors, where a loop over the visible part alone would mostly run its scalar
/// remainder.
#[inline(always)]
pub(super) fn softmax_causal(row: &mut [f32], visible: usize) {
    row[visible..].fill(f32::NEG_INFINITY);
    let max = lane_max(row);
    row.iter_mut().for_each(|x| *x = exp_approx(*x - max));
    let inv = 1.0 / lane_sum(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Gradients of queries, keys and values of every (row, head) from the gradient of the head
/// outputs `dz` `[T, attn]`, into `dqkv` `[T, 3·attn]`; `dp` is an `[S, S]` scratch.
#[inline(always)]
pub(super) fn attention_backward(
    dims: &Dims,
    s: usize,
    acts: &LayerActs,
    dz: &[f32],
    dp: &mut [f32],
    vt: &mut Vec<f32>,
    dqkv: &mut [f32],
) {
    let (a, dh) = (dims.attn(), dims.d_head);
    let rows = dz.len() / (s * a);
    let ss = s * s;
    resize(vt, dh * s);
    for r in 0..rows {
        let qkv = &acts.qkv[r * s * 3 * a..][..s * 3 * a];
        let dqkv = &mut dqkv[r * s * 3 * a..][..s * 3 * a];
        let dz = &dz[r * s * a..][..s * a];
        for hd in 0..dims.heads {
            let (q, k, v) = (
                &qkv[hd * dh..],
                &qkv[a + hd * dh..],
                &qkv[2 * a + hd * dh..],
            );
            let dzh = &dz[hd * dh..];
            let p = &acts.p[(r * dims.heads + hd) * ss..][..ss];
            transpose(v, 3 * a, s, dh, vt);
            for (i0, i1) in blocks(s) {
                // dP = dz · vᵀ, then dS = P ⊙ (dP − Σⱼ dP ⊙ P) · scale
                small_mm(
                    (i1 - i0, i1, dh),
                    &mut dp[i0 * s..],
                    s,
                    &dzh[i0 * a..],
                    (a, 1),
                    vt,
                    (s, 1),
                    1.0,
                );
                for i in i0..i1 {
                    let (pr, dr) = (&p[i * s..i * s + i1], &mut dp[i * s..i * s + i1]);
                    let dot = dot16(pr, dr);
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(g, &pp)| *g = pp * (*g - dot) * dims.scale);
                }
            }
            for (j0, j1) in blocks(s) {
                // Keys j0..j1 are seen by queries j0..s.
                let m = s - j0;
                // dV = Pᵀ · dz
                small_mm(
                    (j1 - j0, dh, m),
                    &mut dqkv[j0 * 3 * a + 2 * a + hd * dh..],
                    3 * a,
                    &p[j0 * s + j0..],
                    (1, s),
                    &dzh[j0 * a..],
                    (a, 1),
                    1.0,
                );
                // dK = dSᵀ · q
                small_mm(
                    (j1 - j0, dh, m),
                    &mut dqkv[j0 * 3 * a + a + hd * dh..],
                    3 * a,
                    &dp[j0 * s + j0..],
                    (1, s),
                    &q[j0 * 3 * a..],
                    (3 * a, 1),
                    1.0,
                );
            }
            for (i0, i1) in blocks(s) {
                // dQ = dS · k
                small_mm(
                    (i1 - i0, dh, i1),
                    &mut dqkv[i0 * 3 * a + hd * dh..],
                    3 * a,
                    &dp[i0 * s..],
                    (s, 1),
                    k,
                    (3 * a, 1),
                    1.0,
                );
            }
        }
    }
}
