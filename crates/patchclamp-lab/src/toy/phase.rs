//! The three-factor toy model of the phase change (Singh et al. 2024, `simple_model_solver.py`):
//! learn `T = a*⊗b*⊗c*` as `a⊗b⊗c` by gradient descent; clamping factors to their true values
//! (at init and after every step) shortens or removes the plateau (METHODS.md K3).

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// Settings of one toy run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThreeFactor {
    /// Length of each factor vector.
    pub n: usize,
    pub lr: f64,
    pub iters: usize,
    /// Draws the true factors, then the initial ones, all `N(0, I)`.
    pub seed: u64,
}

impl Default for ThreeFactor {
    fn default() -> Self {
        ThreeFactor {
            n: 20,
            lr: 1.0,
            iters: 1000,
            seed: 0,
        }
    }
}

/// Which factors are clamped: `[a, b, c]`.
pub type Clamp = [bool; 3];

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

impl ThreeFactor {
    /// The loss `½·mean_ijk (T_ijk − a_i b_j c_k)²` before the first and after every step.
    pub fn run(&self, clamp: Clamp) -> Vec<f64> {
        let mut rng = Rng::new(self.seed);
        let mut draw = || (0..self.n).map(|_| rng.normal()).collect::<Vec<f64>>();
        let truth = [draw(), draw(), draw()];
        let mut f = [draw(), draw(), draw()];
        let n3 = (self.n as f64).powi(3);
        let clamp_now = |f: &mut [Vec<f64>; 3]| {
            for i in 0..3 {
                if clamp[i] {
                    f[i] = truth[i].clone();
                }
            }
        };
        clamp_now(&mut f);
        // With T rank one, every sum over the cube factorises into dot products.
        let loss = |f: &[Vec<f64>; 3]| {
            let tt: f64 = truth.iter().map(|t| dot(t, t)).product();
            let tf: f64 = (0..3).map(|i| dot(&truth[i], &f[i])).product();
            let ff: f64 = f.iter().map(|x| dot(x, x)).product();
            0.5 * (tt - 2.0 * tf + ff) / n3
        };
        let mut out = vec![loss(&f)];
        for _ in 0..self.iters {
            let mut grads = [vec![], vec![], vec![]];
            for i in 0..3 {
                let (j, k) = ((i + 1) % 3, (i + 2) % 3);
                let cross = dot(&truth[j], &f[j]) * dot(&truth[k], &f[k]);
                let own = dot(&f[j], &f[j]) * dot(&f[k], &f[k]);
                grads[i] = (0..self.n)
                    .map(|m| -(truth[i][m] * cross - f[i][m] * own) / n3)
                    .collect();
            }
            for i in 0..3 {
                for m in 0..self.n {
                    f[i][m] -= self.lr * grads[i][m];
                }
            }
            clamp_now(&mut f);
            out.push(loss(&f));
        }
        out
    }
}

/// The first iteration whose loss is below `frac` of the initial loss.
pub fn time_to(losses: &[f64], frac: f64) -> Option<usize> {
    let l0 = losses[0];
    losses.iter().position(|&l| l < frac * l0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_step_lowers_the_loss_to_first_order() {
        // The decrease of one step is η‖∇L‖² + O(η²): positive and linear in η. (That the
        // gradient is the right one is shown by K3's convergence to 1e-6 of the initial loss.)
        let drop = |lr: f64| {
            let t = ThreeFactor {
                iters: 1,
                lr,
                ..Default::default()
            };
            let l = t.run([false; 3]);
            l[0] - l[1]
        };
        let (a, b) = (drop(1e-4), drop(2e-4));
        assert!(a > 0.0, "a small step lowers the loss");
        assert!(
            (b / a - 2.0).abs() < 1e-3,
            "first-order decrease: ratio {}",
            b / a
        );
    }
}
