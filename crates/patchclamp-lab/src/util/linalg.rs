//! Eigenvalues of small real non-symmetric matrices (the OV circuit's copying score):
//! Householder reduction to Hessenberg form, then the shifted complex QR algorithm.

/// A complex number `(re, im)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct C64 {
    pub re: f64,
    pub im: f64,
}

impl C64 {
    fn new(re: f64, im: f64) -> Self {
        C64 { re, im }
    }
    /// `|z|`.
    pub fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    fn conj(self) -> Self {
        C64::new(self.re, -self.im)
    }
    fn add(self, o: Self) -> Self {
        C64::new(self.re + o.re, self.im + o.im)
    }
    fn sub(self, o: Self) -> Self {
        C64::new(self.re - o.re, self.im - o.im)
    }
    fn mul(self, o: Self) -> Self {
        C64::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
    fn scale(self, s: f64) -> Self {
        C64::new(self.re * s, self.im * s)
    }
    fn sqrt(self) -> Self {
        let r = self.abs();
        let re = ((r + self.re) / 2.0).max(0.0).sqrt();
        let im = ((r - self.re) / 2.0).max(0.0).sqrt();
        C64::new(re, if self.im < 0.0 { -im } else { im })
    }
}

/// All eigenvalues of the `n × n` row-major matrix `a`; `None` if QR does not converge.
pub fn eigenvalues(a: &[f64], n: usize) -> Option<Vec<C64>> {
    assert_eq!(a.len(), n * n, "matrix must be n × n");
    let mut h = a.to_vec();
    hessenberg(&mut h, n);
    let mut m: Vec<C64> = h.iter().map(|&x| C64::new(x, 0.0)).collect();
    let at = |i: usize, j: usize| i * n + j;
    let mut out = Vec::with_capacity(n);
    let mut hi = n;
    let mut iters = 0usize;
    while hi > 0 {
        let end = hi - 1;
        // Deflate: find the start of the unreduced block ending at `end`.
        let mut lo = end;
        while lo > 0 {
            let sub = m[at(lo, lo - 1)].abs();
            let diag = m[at(lo, lo)].abs() + m[at(lo - 1, lo - 1)].abs();
            if sub <= f64::EPSILON * diag.max(f64::MIN_POSITIVE) {
                m[at(lo, lo - 1)] = C64::default();
                break;
            }
            lo -= 1;
        }
        if lo == end {
            out.push(m[at(end, end)]);
            hi -= 1;
            iters = 0;
            continue;
        }
        iters += 1;
        if iters > 60 * n.max(10) {
            return None;
        }
        // Wilkinson shift from the trailing 2×2 block (an exceptional shift now and then
        // breaks cycles).
        let (a11, a12, a21, a22) = (
            m[at(end - 1, end - 1)],
            m[at(end - 1, end)],
            m[at(end, end - 1)],
            m[at(end, end)],
        );
        let mu = if iters % 11 == 10 {
            a22.add(C64::new(m[at(end, end - 1)].abs(), 0.0))
        } else {
            let tr_half = a11.add(a22).scale(0.5);
            let det = a11.mul(a22).sub(a12.mul(a21));
            let disc = tr_half.mul(tr_half).sub(det).sqrt();
            let (l1, l2) = (tr_half.add(disc), tr_half.sub(disc));
            if l1.sub(a22).abs() < l2.sub(a22).abs() {
                l1
            } else {
                l2
            }
        };
        // One QR step on the block [lo, end] with Givens rotations: H − μI = QR, H ← RQ + μI.
        for i in lo..=end {
            m[at(i, i)] = m[at(i, i)].sub(mu);
        }
        let mut rots = Vec::with_capacity(end - lo);
        for k in lo..end {
            let (x, y) = (m[at(k, k)], m[at(k + 1, k)]);
            let r = (x.abs().powi(2) + y.abs().powi(2)).sqrt();
            let (c, s) = if r == 0.0 {
                (C64::new(1.0, 0.0), C64::default())
            } else {
                (x.scale(1.0 / r), y.scale(1.0 / r))
            };
            for j in k..=end {
                let (p, q) = (m[at(k, j)], m[at(k + 1, j)]);
                m[at(k, j)] = c.conj().mul(p).add(s.conj().mul(q));
                m[at(k + 1, j)] = c.mul(q).sub(s.mul(p));
            }
            rots.push((c, s));
        }
        for (k, (c, s)) in (lo..end).zip(rots) {
            for i in lo..=(k + 1).min(end) {
                let (p, q) = (m[at(i, k)], m[at(i, k + 1)]);
                m[at(i, k)] = p.mul(c).add(q.mul(s));
                m[at(i, k + 1)] = q.mul(c.conj()).sub(p.mul(s.conj()));
            }
        }
        for i in lo..=end {
            m[at(i, i)] = m[at(i, i)].add(mu);
        }
    }
    Some(out)
}

/// Householder reduction of the row-major `n × n` matrix to upper Hessenberg form, in place
/// (a similarity transform: eigenvalues are unchanged).
fn hessenberg(a: &mut [f64], n: usize) {
    for k in 0..n.saturating_sub(2) {
        let norm: f64 = (k + 1..n).map(|i| a[i * n + k].powi(2)).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if a[(k + 1) * n + k] > 0.0 {
            -norm
        } else {
            norm
        };
        let mut v: Vec<f64> = (k + 1..n).map(|i| a[i * n + k]).collect();
        v[0] -= alpha;
        let vn: f64 = v.iter().map(|x| x * x).sum();
        if vn == 0.0 {
            continue;
        }
        // A ← P A P with P = I − 2 v vᵀ / (vᵀv) acting on rows/columns k+1..n.
        for j in 0..n {
            let d: f64 = (0..v.len())
                .map(|i| v[i] * a[(k + 1 + i) * n + j])
                .sum::<f64>();
            let f = 2.0 * d / vn;
            for (i, vi) in v.iter().enumerate() {
                a[(k + 1 + i) * n + j] -= f * vi;
            }
        }
        for i in 0..n {
            let d: f64 = (0..v.len())
                .map(|j| a[i * n + k + 1 + j] * v[j])
                .sum::<f64>();
            let f = 2.0 * d / vn;
            for (j, vj) in v.iter().enumerate() {
                a[i * n + k + 1 + j] -= f * vj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<C64>) -> Vec<C64> {
        // Rounded real parts: a conjugate pair's real parts differ in the last bits.
        let key = |z: &C64| ((z.re * 1e6).round() as i64, z.im);
        v.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
        v
    }

    #[test]
    fn rotation_has_imaginary_eigenvalues() {
        let e = sorted(eigenvalues(&[0.0, -1.0, 1.0, 0.0], 2).unwrap());
        assert!((e[0].im + 1.0).abs() < 1e-12 && e[0].re.abs() < 1e-12);
        assert!((e[1].im - 1.0).abs() < 1e-12 && e[1].re.abs() < 1e-12);
    }

    #[test]
    fn similar_matrices_share_eigenvalues() {
        // A = P diag(3, -2, 0.5, 1+2i, 1-2i as a real 2×2 block) P⁻¹ with P unit lower-triangular.
        let n = 5;
        let mut d = vec![0.0; n * n];
        d[0] = 3.0;
        d[n + 1] = -2.0;
        d[2 * n + 2] = 0.5;
        d[3 * n + 3] = 1.0;
        d[3 * n + 4] = 2.0;
        d[4 * n + 3] = -2.0;
        d[4 * n + 4] = 1.0;
        let mut p = vec![0.0; n * n];
        let mut pinv = vec![0.0; n * n];
        for i in 0..n {
            p[i * n + i] = 1.0;
            pinv[i * n + i] = 1.0;
        }
        p[n] = 0.7; // P = I + 0.7 e1 e0ᵀ − 0.3 e4 e2ᵀ, inverse flips the signs.
        p[4 * n + 2] = -0.3;
        pinv[n] = -0.7;
        pinv[4 * n + 2] = 0.3;
        let mul = |a: &[f64], b: &[f64]| {
            let mut c = vec![0.0; n * n];
            for i in 0..n {
                for k in 0..n {
                    for j in 0..n {
                        c[i * n + j] += a[i * n + k] * b[k * n + j];
                    }
                }
            }
            c
        };
        let a = mul(&mul(&p, &d), &pinv);
        let e = sorted(eigenvalues(&a, n).unwrap());
        let want = sorted(vec![
            C64::new(3.0, 0.0),
            C64::new(-2.0, 0.0),
            C64::new(0.5, 0.0),
            C64::new(1.0, 2.0),
            C64::new(1.0, -2.0),
        ]);
        for (x, y) in e.iter().zip(&want) {
            assert!(x.sub(*y).abs() < 1e-9, "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn random_matrix_trace_is_the_eigenvalue_sum() {
        let n = 24;
        let mut rng = patchclamp_core::rng::Rng::new(5);
        let a: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
        let e = eigenvalues(&a, n).unwrap();
        let tr: f64 = (0..n).map(|i| a[i * n + i]).sum();
        let s = e.iter().fold(C64::default(), |s, x| s.add(*x));
        assert!((s.re - tr).abs() < 1e-8 && s.im.abs() < 1e-8);
        // Frobenius² of A bounds Σ|λ|² (Schur's inequality).
        let fro2: f64 = a.iter().map(|x| x * x).sum();
        assert!(e.iter().map(|x| x.abs().powi(2)).sum::<f64>() <= fro2 + 1e-8);
    }
}
