//! Seeded random bigram tables: the Markov chains behind the Bigram-Backcopy task and the
//! synthetic languages.

use patchclamp_core::rng::Rng;

/// A transition table over `n` tokens; each row puts its mass on `branching` successors.
#[derive(Debug, Clone, PartialEq)]
pub struct BigramTable {
    /// Row-major `P(next | prev)`, `[n][n]`.
    pub probs: Vec<Vec<f64>>,
}

impl BigramTable {
    /// Each token gets `branching` distinct random successors with exponential(1) weights,
    /// normalised (a Dirichlet(1) draw over the chosen successors).
    pub fn random(n: usize, branching: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let b = branching.clamp(1, n);
        let probs = (0..n)
            .map(|_| {
                let mut row = vec![0.0; n];
                let mut picked = 0;
                while picked < b {
                    let j = rng.below(n as u64) as usize;
                    if row[j] == 0.0 {
                        row[j] = -(1.0 - rng.uniform()).ln().max(1e-12);
                        picked += 1;
                    }
                }
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= s);
                row
            })
            .collect();
        BigramTable { probs }
    }

    /// Draws a successor of `prev`.
    pub fn next(&self, rng: &mut Rng, prev: usize) -> usize {
        let u = rng.uniform();
        let row = &self.probs[prev];
        let mut acc = 0.0;
        for (j, &p) in row.iter().enumerate() {
            acc += p;
            if u < acc {
                return j;
            }
        }
        // Rounding left u above the total: the last successor.
        row.iter().rposition(|&p| p > 0.0).unwrap_or(0)
    }

    /// The stationary distribution (power iteration from uniform, mixed with a little
    /// uniform restart so it exists for every table).
    pub fn stationary(&self) -> Vec<f64> {
        let n = self.probs.len();
        let mut pi = vec![1.0 / n as f64; n];
        for _ in 0..500 {
            let mut next = vec![0.01 / n as f64; n];
            for (i, row) in self.probs.iter().enumerate() {
                for (j, &p) in row.iter().enumerate() {
                    next[j] += 0.99 * pi[i] * p;
                }
            }
            pi = next;
        }
        pi
    }
}
