//! Optimisers (SGD, Adam, AdamW) and learning-rate schedules, on plain f32 buffers so an
//! update is deterministic and its state saves and restores exactly.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimSpec {
    /// `p -= lr · (g + wd·p)`, with optional heavy-ball momentum.
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with L2 weight decay added to the gradient.
    Adam {
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    AdamW {
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "wd")]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}
fn wd() -> f64 {
    0.01
}

impl Default for OptimSpec {
    fn default() -> Self {
        OptimSpec::Adam {
            beta1: beta1(),
            beta2: beta2(),
            eps: eps(),
            weight_decay: 0.0,
        }
    }
}

/// Learning rate over steps: linear warmup, then constant, linear or cosine decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub lr: f64,
    #[serde(default)]
    pub warmup: u64,
    #[serde(default)]
    pub decay: Decay,
    /// The final rate as a fraction of `lr` (linear and cosine decay).
    #[serde(default)]
    pub min_ratio: f64,
}

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    #[default]
    Constant,
    Linear,
    Cosine,
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            lr,
            warmup: 0,
            decay: Decay::Constant,
            min_ratio: 0.0,
        }
    }

    /// The rate of update number `step` (0-based) of `total`.
    pub fn at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = total.saturating_sub(self.warmup).max(1) as f64;
        let frac = ((step - self.warmup) as f64 / span).min(1.0);
        let m = self.min_ratio;
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - (1.0 - m) * frac,
            Decay::Cosine => m + (1.0 - m) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
        };
        self.lr * factor
    }
}

/// A piece of one parameter, its gradient, state (empty where the rule keeps none) and mask.
struct Part<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    frozen: &'a [bool],
}

/// Per-parameter optimiser state: first and second moments (empty for plain SGD).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl OptimSpec {
    /// Checks the hyper-parameters.
    pub fn validate(&self) -> crate::Result<()> {
        let (b1, b2, e, wd) = match *self {
            OptimSpec::Sgd {
                momentum,
                weight_decay,
            } => (momentum, 0.0, 1.0, weight_decay),
            OptimSpec::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimSpec::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => (beta1, beta2, eps, weight_decay),
        };
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) || e <= 0.0 || wd < 0.0 {
            return Err(crate::Error::Spec(format!(
                "optimiser settings out of range: {self:?}"
            )));
        }
        Ok(())
    }

    /// Fresh state for a parameter of `n` elements.
    pub fn init(&self, n: usize) -> Moments {
        match self {
            OptimSpec::Sgd { momentum, .. } if *momentum == 0.0 => Moments::default(),
            OptimSpec::Sgd { .. } => Moments {
                m: vec![0.0; n],
                v: vec![],
            },
            _ => Moments {
                m: vec![0.0; n],
                v: vec![0.0; n],
            },
        }
    }

    /// Updates `p` in place from gradient `g` (update number `t`, 1-based) at rate `lr`;
    /// elements where `frozen` is true are left alone.
    pub fn update(
        &self,
        p: &mut [f32],
        g: &[f32],
        s: &mut Moments,
        t: u64,
        lr: f64,
        frozen: &[bool],
    ) {
        let (m, v) = (&mut s.m, &mut s.v);
        self.update_part(Part { p, g, m, v, frozen }, t, lr)
    }

    /// [`OptimSpec::update`] of a whole parameter split into pieces updated in parallel (each
    /// element's arithmetic is the same, so the result does not depend on the split).
    pub fn update_parallel(
        &self,
        p: &mut [f32],
        g: &[f32],
        s: &mut Moments,
        t: u64,
        lr: f64,
        frozen: &[bool],
    ) {
        const PIECE: usize = 1 << 14;
        let n = p.len();
        if n <= PIECE || rayon::current_num_threads() == 1 {
            return self.update(p, g, s, t, lr, frozen);
        }
        // Optional state and mask split alongside (empty ones stay empty).
        fn split(v: &mut [f32], pieces: usize) -> Vec<&mut [f32]> {
            if v.is_empty() {
                (0..pieces).map(|_| &mut [][..]).collect()
            } else {
                v.chunks_mut(PIECE).collect()
            }
        }
        let pieces = n.div_ceil(PIECE);
        let (ms, vs) = (split(&mut s.m, pieces), split(&mut s.v, pieces));
        let fz: Vec<&[bool]> = if frozen.is_empty() {
            vec![&[]; pieces]
        } else {
            frozen.chunks(PIECE).collect()
        };
        p.par_chunks_mut(PIECE)
            .zip(g.par_chunks(PIECE))
            .zip(ms.into_par_iter().zip(vs))
            .zip(fz)
            .for_each(|(((p, g), (m, v)), frozen)| {
                self.update_part(Part { p, g, m, v, frozen }, t, lr)
            });
    }

    fn update_part(&self, part: Part, t: u64, lr: f64) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { self.update_avx512(part, t, lr) };
        }
        self.update_generic(part, t, lr)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_avx512(&self, part: Part, t: u64, lr: f64) {
        self.update_generic(part, t, lr)
    }

    /// The update rules, written element by element (the same arithmetic at any vector width).
    #[inline(always)]
    fn update_generic(&self, part: Part, t: u64, lr: f64) {
        let Part { p, g, m, v, frozen } = part;
        let lr = lr as f32;
        let live = |i: usize| frozen.is_empty() || !frozen[i];
        match *self {
            OptimSpec::Sgd {
                momentum,
                weight_decay,
            } => {
                let (mu, wd) = (momentum as f32, weight_decay as f32);
                for i in (0..p.len()).filter(|&i| live(i)) {
                    let mut d = g[i] + wd * p[i];
                    if !m.is_empty() {
                        m[i] = mu * m[i] + d;
                        d = m[i];
                    }
                    p[i] -= lr * d;
                }
            }
            OptimSpec::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimSpec::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let decoupled = matches!(self, OptimSpec::AdamW { .. });
                let (b1, b2, e, wd) = (beta1 as f32, beta2 as f32, eps as f32, weight_decay as f32);
                let c1 = 1.0 - beta1.powi(t as i32) as f32;
                let c2 = 1.0 - beta2.powi(t as i32) as f32;
                let one = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
                    let gi = if decoupled { g } else { g + wd * *p };
                    *m = b1 * *m + (1.0 - b1) * gi;
                    *v = b2 * *v + (1.0 - b2) * gi * gi;
                    let step = (*m / c1) / ((*v / c2).sqrt() + e);
                    if decoupled {
                        *p -= lr * wd * *p;
                    }
                    *p -= lr * step;
                };
                if frozen.is_empty() {
                    // Zipped, no indices: the loop vectorises.
                    for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v)) {
                        one(p, g, m, v);
                    }
                } else {
                    for i in (0..p.len()).filter(|&i| live(i)) {
                        one(&mut p[i], g[i], &mut m[i], &mut v[i]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_minimises_a_quadratic_and_sgd_takes_exact_steps() {
        // f(p) = ½‖p − 3‖², gradient p − 3.
        let opt = OptimSpec::default();
        let mut p = vec![0.0f32; 4];
        let mut s = opt.init(4);
        for t in 1..=2000 {
            let g: Vec<f32> = p.iter().map(|x| x - 3.0).collect();
            opt.update(&mut p, &g, &mut s, t, 0.01, &[]);
        }
        assert!(p.iter().all(|x| (x - 3.0).abs() < 1e-3), "{p:?}");
        // Adam's first step moves each coordinate by lr (bias-corrected m/sqrt(v) = ±1).
        let mut q = vec![0.0f32, 10.0];
        let mut s = opt.init(2);
        opt.update(&mut q, &[-5.0, 2.0], &mut s, 1, 0.1, &[]);
        assert!(
            (q[0] - 0.1).abs() < 1e-6 && (q[1] - 9.9).abs() < 1e-6,
            "{q:?}"
        );
        let sgd = OptimSpec::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        };
        let mut r = vec![1.0f32, 1.0];
        sgd.update(
            &mut r,
            &[2.0, 4.0],
            &mut sgd.init(2),
            1,
            0.5,
            &[false, true],
        );
        assert_eq!(r, vec![0.0, 1.0], "frozen elements stay");
    }

    #[test]
    fn parallel_updates_equal_the_sequential_rule_bit_for_bit() {
        // 40,000 elements: several parallel pieces, a frozen stretch across a piece boundary.
        let n = 40_000;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let frozen: Vec<bool> = (0..n).map(|i| (16_000..17_000).contains(&i)).collect();
        for opt in [
            OptimSpec::default(),
            OptimSpec::AdamW {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            OptimSpec::Sgd {
                momentum: 0.9,
                weight_decay: 0.01,
            },
        ] {
            let (mut p, mut q) = (vec![0.5f32; n], vec![0.5f32; n]);
            let (mut s, mut r) = (opt.init(n), opt.init(n));
            for t in 1..=3 {
                opt.update(&mut p, &g, &mut s, t, 0.01, &frozen);
                opt.update_parallel(&mut q, &g, &mut r, t, 0.01, &frozen);
            }
            assert!(p == q && s == r, "{opt:?}");
            assert!(
                p[16_500] == 0.5 && p[0] != 0.5,
                "{opt:?}: frozen stay, others move"
            );
        }
    }

    #[test]
    fn schedules_warm_up_and_decay() {
        let s = LrSchedule {
            lr: 1.0,
            warmup: 10,
            decay: Decay::Cosine,
            min_ratio: 0.1,
        };
        assert!((s.at(0, 110) - 0.1).abs() < 1e-12);
        assert!((s.at(9, 110) - 1.0).abs() < 1e-12);
        assert!((s.at(10, 110) - 1.0).abs() < 1e-12);
        assert!((s.at(60, 110) - 0.55).abs() < 1e-12);
        assert!((s.at(110, 110) - 0.1).abs() < 1e-12);
        let l = LrSchedule {
            decay: Decay::Linear,
            ..s
        };
        assert!((l.at(60, 110) - 0.55).abs() < 1e-12);
    }
}
