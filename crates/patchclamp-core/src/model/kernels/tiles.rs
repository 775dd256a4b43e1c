//! The fused training step's micro-kernels: strided matrix products (the library's, and register-tiled
//! loops for attention's small per-head products), register transposes and short dot products.
//! The AVX-512 tiles and their portable four-row twins do the same multiply-adds in the same
//! order, so every CPU gets the same bits (tested below).

/// `dst[m×n]` (row stride `dst_rs`) `= (acc ? dst : 0) + alpha·A·B`, where `A(i, p) =
/// a[i·a_st.0 + p·a_st.1]` and `B(p, j) = b[p·b_st.0 + j·b_st.1]`: strides make transposes free.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    alpha: f32,
    acc: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_bounds((m, n, k), (dst, dst_rs), (a, a_st), (b, b_st));
    // SAFETY: the asserts of `check_bounds` keep every address gemm forms inside the three slices, and the
    // output rows do not overlap each other or the inputs (`dst` is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_st.1 as isize,
            a_st.0 as isize,
            b.as_ptr(),
            b_st.1 as isize,
            b_st.0 as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Asserts that an `m×n` output with row stride `dst_rs` (rows not overlapping) and the operands
/// read through their strides lie inside their slices: what makes the raw products safe.
fn check_bounds(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&[f32], usize),
    (a, a_st): (&[f32], (usize, usize)),
    (b, b_st): (&[f32], (usize, usize)),
) {
    assert!(k > 0, "product with an empty inner dimension");
    assert!(m == 1 || dst_rs >= n, "product output rows overlap");
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "product output out of bounds"
    );
    assert!(
        (m - 1) * a_st.0 + (k - 1) * a_st.1 < a.len(),
        "product lhs out of bounds"
    );
    assert!(
        (k - 1) * b_st.0 + (n - 1) * b_st.1 < b.len(),
        "product rhs out of bounds"
    );
}

/// [`mm`] for attention's small products: where `B`'s rows are contiguous, the output has
/// sixteen-column multiples and four-row multiples, a register-tiled loop (four or eight rows by
/// one or two sixteen-lane vectors of accumulators); elsewhere the library product. A head's
/// products are 16×64×32-sized: the library's set-up per call costs more than their arithmetic.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn small_mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_st: (usize, usize),
    b: &[f32],
    b_st: (usize, usize),
    alpha: f32,
) {
    if b_st.1 != 1 || n % LANES != 0 || m % 4 != 0 || m == 0 || n == 0 || k == 0 {
        return mm((m, n, k), dst, dst_rs, a, a_st, b, b_st, alpha, false);
    }
    check_bounds((m, n, k), (dst, dst_rs), (a, a_st), (b, b_st));
    let (a, b, dst) = (a.as_ptr(), b.as_ptr(), dst.as_mut_ptr());
    // SAFETY: `check_bounds` covers every row (m is a multiple of the tile's rows), column (n a
    // multiple of 16) and depth the tiles read and write.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if m % 8 == 0 && is_x86_feature_detected!("avx512f") {
            return tiles_avx512((m, n, k), dst, dst_rs, a, a_st, b, b_st.0, alpha);
        }
        tiles((m, n, k), dst, dst_rs, a, a_st, b, b_st.0, alpha);
    }
}

/// Walks an `m×n` output in tiles of `R` rows by two sixteen-lane vectors of columns (then
/// one), calling `tile(two_vectors, lhs, rhs, dst)` at each tile's first row and column.
#[inline(always)]
unsafe fn for_each_tile<const R: usize>(
    (m, n): (usize, usize),
    (dst, drs): (*mut f32, usize),
    (a, ars): (*const f32, usize),
    b: *const f32,
    mut tile: impl FnMut(bool, *const f32, *const f32, *mut f32),
) {
    for i0 in (0..m).step_by(R) {
        let (ap, dp) = unsafe { (a.add(i0 * ars), dst.add(i0 * drs)) };
        let mut j0 = 0;
        while j0 + 2 * LANES <= n {
            tile(true, ap, unsafe { b.add(j0) }, unsafe { dp.add(j0) });
            j0 += 2 * LANES;
        }
        if j0 < n {
            tile(false, ap, unsafe { b.add(j0) }, unsafe { dp.add(j0) });
        }
    }
}

/// The output of [`small_mm`] in four-row tiles.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tiles(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    drs: usize,
    a: *const f32,
    a_st: (usize, usize),
    b: *const f32,
    brs: usize,
    alpha: f32,
) {
    let tile = |two, ap, bp, dp| unsafe {
        if two {
            tile::<2>(k, ap, a_st, bp, brs, dp, drs, alpha)
        } else {
            tile::<1>(k, ap, a_st, bp, brs, dp, drs, alpha)
        }
    };
    unsafe { for_each_tile::<4>((m, n), (dst, drs), (a, a_st.0), b, tile) }
}

/// [`tiles`] with eight rows, written in AVX-512 intrinsics: its sixteen accumulators fill half
/// the 32 vector registers, which the compiler's own vectorisation of [`tile`] spills (it then
/// gathers and scatters). The same fused multiply-adds in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_avx512(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    drs: usize,
    a: *const f32,
    a_st: (usize, usize),
    b: *const f32,
    brs: usize,
    alpha: f32,
) {
    let tile = |two, ap, bp, dp| unsafe {
        if two {
            tile_avx512::<2>(k, ap, a_st, bp, brs, dp, drs, alpha)
        } else {
            tile_avx512::<1>(k, ap, a_st, bp, brs, dp, drs, alpha)
        }
    };
    unsafe { for_each_tile::<8>((m, n), (dst, drs), (a, a_st.0), b, tile) }
}

/// Eight output rows by `NV` vectors of [`tiles_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_avx512<const NV: usize>(
    k: usize,
    a: *const f32,
    (ars, acs): (usize, usize),
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    alpha: f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; 8];
    for p in 0..k {
        let bv: [__m512; NV] =
            std::array::from_fn(|v| unsafe { _mm512_loadu_ps(b.add(p * brs + v * LANES)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(unsafe { *a.add(r * ars + p * acs) });
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(x, bv, *acc);
            }
        }
    }
    let alpha = _mm512_set1_ps(alpha);
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(dst.add(r * drs + v * LANES), _mm512_mul_ps(alpha, acc)) };
        }
    }
}

/// Sixteen lanes of f32: one vector register.
const LANES: usize = 16;

/// Four output rows by `NV` sixteen-lane vectors, accumulated over the depth `k` in registers.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const NV: usize>(
    k: usize,
    a: *const f32,
    (ars, acs): (usize, usize),
    b: *const f32,
    brs: usize,
    dst: *mut f32,
    drs: usize,
    alpha: f32,
) {
    let mut acc = [[[0f32; LANES]; NV]; 4];
    for p in 0..k {
        let mut bv = [[0f32; LANES]; NV];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = unsafe {
                std::ptr::read_unaligned(b.add(p * brs + v * LANES) as *const [f32; LANES])
            };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { *a.add(r * ars + p * acs) };
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                for (y, &b) in acc.iter_mut().zip(bv) {
                    *y = x.mul_add(b, *y);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            for (l, &y) in acc.iter().enumerate() {
                unsafe { *dst.add(r * drs + v * LANES + l) = alpha * y };
            }
        }
    }
}

/// `dst[c·s + j] = x[j·rs + c]` for `j < s`, `c < w`: a head's keys or values as columns.
#[inline(always)]
pub fn transpose(x: &[f32], rs: usize, s: usize, w: usize, dst: &mut [f32]) {
    assert!(s == 0 || w == 0 || (x.len() >= (s - 1) * rs + w && dst.len() >= w * s));
    #[cfg(target_arch = "x86_64")]
    if s.is_multiple_of(LANES) && w.is_multiple_of(LANES) && is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature (checked) and every access is inside the slices
        // (asserted above).
        unsafe { transpose_avx512(x.as_ptr(), rs, s, w, dst.as_mut_ptr()) };
        return;
    }
    for j in 0..s {
        for (c, &v) in x[j * rs..][..w].iter().enumerate() {
            dst[c * s + j] = v;
        }
    }
}

/// [`transpose`] in 16×16 blocks held in vector registers (the scalar loop moves one element a
/// cycle at best); `s` and `w` are multiples of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(x: *const f32, rs: usize, s: usize, w: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    for j0 in (0..s).step_by(LANES) {
        for c0 in (0..w).step_by(LANES) {
            let r: [__m512; LANES] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(x.add((j0 + i) * rs + c0)) });
            // Pairs of rows interleaved, then pairs of pairs: every 128-bit lane L of u[g][k]
            // holds column 4L + k of rows 4g..4g+4.
            let t: [__m512; LANES] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            let u: [[__m512; 4]; 4] = std::array::from_fn(|g| {
                let pd = |v: __m512| _mm512_castps_pd(v);
                let (lo, hi) = (pd(t[4 * g]), pd(t[4 * g + 1]));
                let (lo2, hi2) = (pd(t[4 * g + 2]), pd(t[4 * g + 3]));
                [
                    _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2)),
                    _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2)),
                ]
            });
            // Gather lane L of the four row groups: output column 4L + k.
            #[allow(clippy::needless_range_loop)] // k picks the same slot of all four groups
            for k in 0..4 {
                const EVEN: i32 = 0b10_00_10_00;
                const ODD: i32 = 0b11_01_11_01;
                let v0 = _mm512_shuffle_f32x4::<EVEN>(u[0][k], u[1][k]);
                let v1 = _mm512_shuffle_f32x4::<ODD>(u[0][k], u[1][k]);
                let v2 = _mm512_shuffle_f32x4::<EVEN>(u[2][k], u[3][k]);
                let v3 = _mm512_shuffle_f32x4::<ODD>(u[2][k], u[3][k]);
                let out = [
                    _mm512_shuffle_f32x4::<EVEN>(v0, v2),
                    _mm512_shuffle_f32x4::<EVEN>(v1, v3),
                    _mm512_shuffle_f32x4::<ODD>(v0, v2),
                    _mm512_shuffle_f32x4::<ODD>(v1, v3),
                ];
                for (lane, o) in out.into_iter().enumerate() {
                    let c = c0 + 4 * lane + k;
                    unsafe { _mm512_storeu_ps(dst.add(c * s + j0), o) };
                }
            }
        }
    }
}

/// `Σ xᵢ·yᵢ` with sixteen lanes.
#[inline(always)]
pub fn dot16(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (cx, cy) = (x.chunks_exact(16), y.chunks_exact(16));
    let (rx, ry) = (cx.remainder(), cy.remainder());
    for (a, b) in cx.zip(cy) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + rx.iter().zip(ry).map(|(a, b)| a * b).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, irregular test matrix.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn small_products_match_a_plain_loop_and_each_other() {
        // (m, n, k, lhs transposed): eight-row and four-row tiles, one and two vectors, the
        // library fallback (n not a multiple of 16), and a transposed lhs as in dV and dK.
        for (m, n, k, at) in [
            (16, 64, 32, false),
            (16, 48, 64, true),
            (12, 32, 20, false),
            (8, 16, 5, true),
            (4, 20, 7, false),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let a_st = if at { (1, m) } else { (k, 1) };
            let want: Vec<f32> = (0..m * n)
                .map(|x| {
                    let (i, j) = (x / n, x % n);
                    let dot: f64 = (0..k)
                        .map(|p| a[i * a_st.0 + p * a_st.1] as f64 * b[p * n + j] as f64)
                        .sum();
                    0.5 * dot as f32
                })
                .collect();
            let mut got = vec![f32::NAN; m * n];
            small_mm((m, n, k), &mut got, n, &a, a_st, &b, (n, 1), 0.5);
            for (x, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{m}×{n}×{k} at {x}: {g} vs {w}"
                );
            }
            // The portable four-row tiles give the very bits the dispatched ones gave.
            if n % LANES == 0 && m % 4 == 0 {
                let mut portable = vec![f32::NAN; m * n];
                // SAFETY: the output and operands are exactly m×n, m×k and k×n.
                unsafe {
                    tiles(
                        (m, n, k),
                        portable.as_mut_ptr(),
                        n,
                        a.as_ptr(),
                        a_st,
                        b.as_ptr(),
                        n,
                        0.5,
                    )
                };
                assert_eq!(portable, got, "{m}×{n}×{k}");
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_in_blocks_and_remainders() {
        // 48×32 takes the 16×16 vector blocks where the CPU has them; 20×12 the scalar loop.
        for (s, w, rs) in [(48, 32, 100), (20, 12, 13), (16, 16, 16)] {
            let x: Vec<f32> = (0..s * rs).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; w * s];
            transpose(&x, rs, s, w, &mut dst);
            for c in 0..w {
                for j in 0..s {
                    assert_eq!(dst[c * s + j], x[j * rs + c], "s {s} w {w}: ({c}, {j})");
                }
            }
        }
    }
}
