//! `x @ w (+ b)` for a few rows of `x`: a generation step's products, where the weights are
//! read once per step and the speed is memory bandwidth. A general GEMM packs panels of `w` for
//! reuse across rows that are not there; this streams `w` once over the threads. `w` is
//! `[in, out]` row-major (an axpy per input; the threads split the inputs and their partial
//! sums are added), or the transposed view of an `[out, in]` matrix (a tied unembedding,
//! `W_Eᵀ`: a dot product per output; the threads split the outputs).

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The most rows this kernel takes; more rows reuse `w` enough for a packed GEMM to win.
pub const MAX_ROWS: usize = 8;

struct Gemv {
    bias: Option<Vec<f32>>,
}

/// How `w` is laid out.
#[derive(Clone, Copy)]
enum Form {
    /// `[k, n]` row-major: `y += x_i · w[i, :]`.
    Rows,
    /// The transpose of a row-major `[n, k]`: `y_j = x · wt[j, :]`.
    Transposed,
}

#[inline(always)]
fn rows_chunk(
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    (i0, i1): (usize, usize),
    out: &mut [Vec<f32>],
) {
    let row = |i: usize| &w[i * n..(i + 1) * n];
    let mut i = i0;
    // Four weight rows per pass over the outputs: a quarter of the loads and stores of y.
    while i + 4 <= i1 {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        for (r, y) in out.iter_mut().enumerate() {
            let xs = &x[r * k + i..r * k + i + 4];
            let (a, b, c, d) = (xs[0], xs[1], xs[2], xs[3]);
            for ((((o, &p), &q), &s), &t) in y.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *o += a * p + b * q + c * s + d * t;
            }
        }
        i += 4;
    }
    for i in i..i1 {
        let wr = row(i);
        for (r, y) in out.iter_mut().enumerate() {
            let xv = x[r * k + i];
            y.iter_mut().zip(wr).for_each(|(o, &wv)| *o += xv * wv);
        }
    }
}

#[inline(always)]
fn transposed_chunk(
    x: &[f32],
    wt: &[f32],
    k: usize,
    (c0, _): (usize, usize),
    out: &mut [Vec<f32>],
) {
    let width = out[0].len();
    let mut j = 0;
    // Four outputs at once: four independent accumulators keep four weight rows in flight.
    while j + 4 <= width {
        let row = |q: usize| &wt[(c0 + j + q) * k..(c0 + j + q + 1) * k];
        let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
        for (r, y) in out.iter_mut().enumerate() {
            let xr = &x[r * k..(r + 1) * k];
            let mut acc = [[0f32; 16]; 4];
            let full = k / 16 * 16;
            fn lanes(w: &[f32], full: usize) -> std::slice::ChunksExact<'_, f32> {
                w[..full].chunks_exact(16)
            }
            for ((((xc, c0), c1), c2), c3) in lanes(xr, full)
                .zip(lanes(w0, full))
                .zip(lanes(w1, full))
                .zip(lanes(w2, full))
                .zip(lanes(w3, full))
            {
                for l in 0..16 {
                    acc[0][l] += xc[l] * c0[l];
                    acc[1][l] += xc[l] * c1[l];
                    acc[2][l] += xc[l] * c2[l];
                    acc[3][l] += xc[l] * c3[l];
                }
            }
            for (q, wq) in [w0, w1, w2, w3].iter().enumerate() {
                let tail: f32 = (full..k).map(|c| xr[c] * wq[c]).sum();
                y[j + q] += acc[q].iter().sum::<f32>() + tail;
            }
        }
        j += 4;
    }
    for j in j..width {
        let wr = &wt[(c0 + j) * k..(c0 + j + 1) * k];
        for (r, y) in out.iter_mut().enumerate() {
            y[j] += super::tiles::dot16(&x[r * k..(r + 1) * k], wr);
        }
    }
}

#[inline(always)]
fn chunk(
    form: Form,
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    span: (usize, usize),
    out: &mut [Vec<f32>],
) {
    match form {
        Form::Rows => rows_chunk(x, w, k, n, span, out),
        Form::Transposed => transposed_chunk(x, w, k, span, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(
    form: Form,
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    span: (usize, usize),
    out: &mut [Vec<f32>],
) {
    chunk(form, x, w, k, n, span, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(
    form: Form,
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    span: (usize, usize),
    out: &mut [Vec<f32>],
) {
    chunk(form, x, w, k, n, span, out)
}

/// The widest vector version of `chunk` this CPU runs.
fn chunk_best(
    form: Form,
    x: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    span: (usize, usize),
    out: &mut [Vec<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { chunk_avx512(form, x, w, k, n, span, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { chunk_avx2(form, x, w, k, n, span, out) };
        }
    }
    chunk(form, x, w, k, n, span, out)
}

impl candle_core::CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "patchclamp-gemv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(xs, xl, "gemv")?;
        let CpuStorage::F32(w) = ws else {
            candle_core::bail!("gemv: only f32 is supported");
        };
        let (m, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("gemv: shapes {:?} @ {:?}", xl.shape(), wl.shape());
        }
        let (form, w) = match (wl.contiguous_offsets(), wl.stride()) {
            (Some((a, b)), _) => (Form::Rows, &w[a..b]),
            (None, [1, s]) if *s == k => {
                let a = wl.start_offset();
                (Form::Transposed, &w[a..a + n * k])
            }
            _ => candle_core::bail!(
                "gemv: the weights must be row-major or a transposed row-major matrix"
            ),
        };
        let tasks = 2 * rayon::current_num_threads().max(1);
        let mut y = vec![0f32; m * n];
        match form {
            // Split the inputs: each task streams a contiguous block of whole weight rows into
            // its own partial sums, added up at the end (the outputs are at most a few
            // thousand wide here).
            Form::Rows => {
                let per = k.div_ceil(tasks).max(1);
                let blocks: Vec<usize> = (0..k).step_by(per).collect();
                let parts: Vec<Vec<Vec<f32>>> = blocks
                    .par_iter()
                    .map(|&i0| {
                        let i1 = (i0 + per).min(k);
                        let mut out = vec![vec![0f32; n]; m];
                        chunk_best(form, x, w, k, n, (i0, i1), &mut out);
                        out
                    })
                    .collect();
                for part in &parts {
                    for (r, row) in part.iter().enumerate() {
                        y[r * n..(r + 1) * n]
                            .iter_mut()
                            .zip(row)
                            .for_each(|(a, b)| *a += b);
                    }
                }
            }
            // Split the outputs: each task streams a contiguous block of weight rows.
            Form::Transposed => {
                let width = n.div_ceil(tasks).next_multiple_of(16).max(16);
                let starts: Vec<usize> = (0..n).step_by(width).collect();
                let parts: Vec<Vec<Vec<f32>>> = starts
                    .par_iter()
                    .map(|&c0| {
                        let c1 = (c0 + width).min(n);
                        let mut out = vec![vec![0f32; c1 - c0]; m];
                        chunk_best(form, x, w, k, n, (c0, c1), &mut out);
                        out
                    })
                    .collect();
                for (&c0, part) in starts.iter().zip(&parts) {
                    for (r, row) in part.iter().enumerate() {
                        y[r * n + c0..r * n + c0 + row.len()].copy_from_slice(row);
                    }
                }
            }
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(n) {
                row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// `x @ w + b` for f32 CPU tensors without gradients, `x` `[.., k]` with at most
/// [`MAX_ROWS`] rows and `w` `[k, n]` (row-major, or the transposed view of a row-major
/// matrix); `None` where it does not apply.
pub fn gemv(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if x.track_op() || w.track_op() || b.is_some_and(|b| b.track_op()) {
        return Ok(None);
    }
    if !(f32_cpu(x) && f32_cpu(w) && w.rank() == 2 && x.rank() >= 1) {
        return Ok(None);
    }
    let k = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    if rows == 0 || rows > MAX_ROWS {
        return Ok(None);
    }
    let n = w.dim(1)?;
    let bias = match b {
        Some(b) if b.elem_count() == n => Some(
            b.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        ),
        Some(_) => return Ok(None),
        None => None,
    };
    let mut out = x.dims().to_vec();
    *out.last_mut().expect("rank ≥ 1") = n;
    let x2 = x.contiguous()?.reshape((rows, k))?;
    Ok(Some(x2.apply_op2_no_bwd(w, &Gemv { bias })?.reshape(out)?))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn few_row_products_match_the_general_product_in_both_layouts() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(3);
        for (m, k, n) in [(1, 768, 2304), (3, 64, 1000), (8, 130, 257), (1, 5, 3)] {
            let x = Tensor::from_vec(rng.normal_vec(m * k, 1.0), (m, k), &dev).unwrap();
            let w = Tensor::from_vec(rng.normal_vec(k * n, 1.0), (k, n), &dev).unwrap();
            let wt = Tensor::from_vec(rng.normal_vec(n * k, 1.0), (n, k), &dev).unwrap();
            let b = Tensor::from_vec(rng.normal_vec(n, 1.0), n, &dev).unwrap();
            for (w, b) in [(w.clone(), Some(&b)), (wt.t().unwrap(), None), (w, None)] {
                let want = match b {
                    Some(b) => x.matmul(&w).unwrap().broadcast_add(b).unwrap(),
                    None => x.matmul(&w).unwrap(),
                };
                let got = super::gemv(&x, &w, b).unwrap().unwrap();
                // Another summation order: equal to f32 rounding, 1e-5 of the largest output.
                let d = crate::testing::max_diff(&got, &want);
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d <= 1e-5 * scale, "{m}×{k}×{n}: {d} (largest {scale})");
            }
        }
        // Nine rows take the general product.
        let x = Tensor::zeros((9, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(super::gemv(&x, &w, None).unwrap().is_none());
    }
}
