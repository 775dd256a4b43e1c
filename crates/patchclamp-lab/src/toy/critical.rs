//! Critical learning periods in deep linear networks (Kleinman, Achille & Soatto 2024;
//! METHODS.md §7.11, K12): a deficit early in training changes the end state for good, the
//! same deficit late does not.

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// Two pathways, each a depth-`depth` chain of scalar factors, learning one singular mode σ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pathways {
    pub depth: usize,
    pub sigma: f64,
    /// Input noise ν (penalises each pathway's gain).
    pub noise: f64,
    pub lr: f64,
    pub steps: usize,
    pub init: f64,
    pub seed: u64,
}

impl Default for Pathways {
    fn default() -> Self {
        Pathways {
            depth: 4,
            sigma: 10.0,
            noise: 0.1,
            lr: 2e-3,
            steps: 40_000,
            init: 0.1,
            seed: 0,
        }
    }
}

impl Pathways {
    /// Final share `K_b / (K_a + K_b)` of pathway B when its input is removed during
    /// `deficit` (steps `[from, until)`), and the curve of `(K_a, K_b)` every 100 steps.
    pub fn run(&self, deficit: Option<(usize, usize)>) -> (f64, Vec<(f64, f64)>) {
        let mut rng = Rng::new(self.seed);
        let mut init = || -> Vec<f64> {
            (0..self.depth)
                .map(|_| self.init * (1.0 + 0.01 * rng.normal()))
                .collect()
        };
        let (mut a, mut b) = (init(), init());
        let prod = |x: &[f64]| x.iter().product::<f64>();
        let mut curve = vec![];
        for t in 0..self.steps {
            let blind = deficit.is_some_and(|(s, e)| t >= s && t < e);
            let (ka, kb) = (prod(&a), prod(&b));
            // Loss ½[(σ − K_a − K_b)² + ν²(K_a² + K_b²)]; a blind pathway sends nothing.
            let out = ka + if blind { 0.0 } else { kb };
            let err = self.sigma - out;
            let ga = -err + self.noise * self.noise * ka;
            let gb = if blind {
                0.0
            } else {
                -err + self.noise * self.noise * kb
            };
            let step = |x: &mut Vec<f64>, g: f64| {
                let k = prod(x);
                let grads: Vec<f64> = x.iter().map(|&xi| g * k / xi).collect();
                for (xi, gi) in x.iter_mut().zip(grads) {
                    *xi -= self.lr * gi;
                }
            };
            step(&mut a, ga);
            step(&mut b, gb);
            if t % 100 == 0 {
                curve.push((ka, kb));
            }
        }
        let (ka, kb) = (prod(&a), prod(&b));
        (kb / (ka + kb), curve)
    }
}

/// Matrix completion with a deep linear network `W = W_D ⋯ W_1`: pre-train on task 1 (the
/// deficit) for `t_critical` steps, then on task 2 on the same observed entries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub n: usize,
    pub observed: usize,
    pub rank1: usize,
    pub rank2: usize,
    pub depth: usize,
    pub lr: f64,
    pub init_std: f64,
    pub steps_after: usize,
    pub seed: u64,
}

impl Default for Completion {
    fn default() -> Self {
        Completion {
            n: 30,
            observed: 360,
            rank1: 6,
            rank2: 3,
            depth: 3,
            lr: 0.01,
            init_std: 0.01,
            steps_after: 20_000,
            seed: 1,
        }
    }
}

type Mat = Vec<f64>;

/// `x @ y` for `n × n` row-major matrices.
fn mm(x: &[f64], y: &[f64], n: usize) -> Mat {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let a = x[i * n + k];
            if a == 0.0 {
                continue;
            }
            let (row, yk) = (&mut out[i * n..(i + 1) * n], &y[k * n..(k + 1) * n]);
            for (o, &b) in row.iter_mut().zip(yk) {
                *o += a * b;
            }
        }
    }
    out
}

fn tr(x: &[f64], n: usize) -> Mat {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[j * n + i] = x[i * n + j];
        }
    }
    out
}

fn identity(n: usize) -> Mat {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        out[i * n + i] = 1.0;
    }
    out
}

impl Completion {
    /// A random rank-`r` matrix with unit RMS.
    fn low_rank(&self, rng: &mut Rng, r: usize) -> Mat {
        let n = self.n;
        let u: Vec<f64> = (0..n * r).map(|_| rng.normal()).collect();
        let v: Vec<f64> = (0..n * r).map(|_| rng.normal()).collect();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..r).map(|k| u[i * r + k] * v[j * r + k]).sum();
            }
        }
        let rms = (m.iter().map(|x| x * x).sum::<f64>() / (n * n) as f64).sqrt();
        m.iter().map(|x| x / rms).collect()
    }

    /// Test MSE on all entries of task 2 after `t_critical` steps on task 1 and
    /// `steps_after` on task 2.
    pub fn run(&self, t_critical: usize) -> f64 {
        let n = self.n;
        let mut rng = Rng::new(self.seed);
        let m1 = self.low_rank(&mut rng, self.rank1);
        let m2 = self.low_rank(&mut rng, self.rank2);
        let mut mask = vec![0.0; n * n];
        let mut cells: Vec<usize> = (0..n * n).collect();
        for i in 0..self.observed {
            let j = i + rng.below((n * n - i) as u64) as usize;
            cells.swap(i, j);
            mask[cells[i]] = 1.0;
        }
        let mut ws: Vec<Mat> = (0..self.depth)
            .map(|_| (0..n * n).map(|_| self.init_std * rng.normal()).collect())
            .collect();
        for t in 0..t_critical + self.steps_after {
            let target = if t < t_critical { &m1 } else { &m2 };
            self.step(&mut ws, target, &mask);
        }
        let w = self.product(&ws);
        w.iter().zip(&m2).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (n * n) as f64
    }

    /// `W_D ⋯ W_1`.
    fn product(&self, ws: &[Mat]) -> Mat {
        ws.iter()
            .fold(identity(self.n), |acc, w| mm(w, &acc, self.n))
    }

    /// One gradient step on `½ Σ_obs (W − M)²`.
    fn step(&self, ws: &mut [Mat], target: &[f64], mask: &[f64]) {
        let n = self.n;
        let d = ws.len();
        // below[i] = W_{i-1} ⋯ W_1 (identity for i = 0); above[i] = W_D ⋯ W_{i+1}.
        let mut below = vec![identity(n)];
        for i in 0..d - 1 {
            below.push(mm(&ws[i], &below[i], n));
        }
        let mut above = vec![identity(n); d];
        for i in (0..d - 1).rev() {
            above[i] = mm(&above[i + 1], &ws[i + 1], n);
        }
        let w = mm(&above[0], &ws[0], n);
        let g: Mat = (0..n * n).map(|k| mask[k] * (w[k] - target[k])).collect();
        for i in 0..d {
            let grad = mm(&mm(&tr(&above[i], n), &g, n), &tr(&below[i], n), n);
            for (x, gx) in ws[i].iter_mut().zip(grad) {
                *x -= self.lr * gx;
            }
        }
    }
}
