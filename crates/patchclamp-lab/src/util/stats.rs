//! Statistics the analyses share: streaming per-unit moments, bounded frequent-item counts,
//! Welch's t-test, the t distribution, average precision and percentiles.
//!
//! Accumulators merge exactly: counts are integers and sums are f64, so a census over many
//! batches equals the census over their concatenation (up to f64 summation order).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Per-unit running count, sum, sum of squares, maximum and "active" (> 0) count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitMoments {
    /// Observations per unit (the same for every unit).
    pub n: u64,
    pub sum: Vec<f64>,
    pub sumsq: Vec<f64>,
    pub max: Vec<f32>,
    /// Observations with a value > 0.
    pub active: Vec<u64>,
}

impl UnitMoments {
    /// Empty moments for `units` units.
    pub fn new(units: usize) -> Self {
        UnitMoments {
            n: 0,
            sum: vec![0.0; units],
            sumsq: vec![0.0; units],
            max: vec![f32::NEG_INFINITY; units],
            active: vec![0; units],
        }
    }

    /// Adds one observation (one value per unit).
    pub fn push(&mut self, row: &[f32]) {
        debug_assert_eq!(row.len(), self.sum.len());
        self.n += 1;
        for (i, &x) in row.iter().enumerate() {
            let x64 = x as f64;
            self.sum[i] += x64;
            self.sumsq[i] += x64 * x64;
            if x > self.max[i] {
                self.max[i] = x;
            }
            self.active[i] += (x > 0.0) as u64;
        }
    }

    /// Mean per unit (0 before any observation).
    pub fn mean(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Unbiased variance per unit.
    pub fn variance(&self) -> Vec<f64> {
        let n = self.n as f64;
        if self.n < 2 {
            return vec![0.0; self.sum.len()];
        }
        self.sum
            .iter()
            .zip(&self.sumsq)
            .map(|(s, q)| ((q - s * s / n) / (n - 1.0)).max(0.0))
            .collect()
    }

    /// Fraction of observations with a value > 0, per unit.
    pub fn frequency(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.active.iter().map(|&a| a as f64 / n).collect()
    }
}

/// Counts of the most frequent items of a stream in bounded memory (Misra–Gries): exact for
/// every item when the stream holds at most `capacity` distinct items; otherwise each count is
/// low by at most `dropped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrequentItems {
    pub capacity: usize,
    pub counts: HashMap<u64, u64>,
    /// Total decrement applied to every counter (0 while exact).
    pub dropped: u64,
    /// Items seen.
    pub total: u64,
}

impl FrequentItems {
    /// A summary keeping at most `capacity` counters.
    pub fn new(capacity: usize) -> Self {
        FrequentItems {
            capacity: capacity.max(1),
            counts: HashMap::new(),
            dropped: 0,
            total: 0,
        }
    }

    /// Counts one occurrence of `item`.
    pub fn push(&mut self, item: u64) {
        self.total += 1;
        if let Some(c) = self.counts.get_mut(&item) {
            *c += 1;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(item, 1);
            return;
        }
        // Full: every counter (and the new item's) loses one.
        self.dropped += 1;
        self.counts.retain(|_, c| {
            *c -= 1;
            *c > 0
        });
    }

    /// Whether every count is exact.
    pub fn exact(&self) -> bool {
        self.dropped == 0
    }

    /// Items by decreasing count (ties by item), at most `k`.
    pub fn top(&self, k: usize) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.counts.iter().map(|(&i, &c)| (i, c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

/// Welch's t statistic and degrees of freedom for `mean(a) > mean(b)` from moments.
pub fn welch_t(n1: f64, m1: f64, v1: f64, n2: f64, m2: f64, v2: f64) -> (f64, f64) {
    let (s1, s2) = (v1 / n1, v2 / n2);
    let se = (s1 + s2).sqrt();
    if se == 0.0 {
        let d = m1 - m2;
        return (
            if d == 0.0 {
                0.0
            } else {
                d.signum() * f64::INFINITY
            },
            1.0,
        );
    }
    let t = (m1 - m2) / se;
    let df = (s1 + s2).powi(2) / (s1 * s1 / (n1 - 1.0) + s2 * s2 / (n2 - 1.0));
    (t, df)
}

/// Welch's t-test of two samples: `(t, df, two-sided p)`.
pub fn welch_test(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mv = |x: &[f64]| {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (n, m, v)
    };
    let ((n1, m1, v1), (n2, m2, v2)) = (mv(a), mv(b));
    let (t, df) = welch_t(n1, m1, v1, n2, m2, v2);
    (t, df, t_two_sided_p(t, df))
}

/// Two-sided p-value of Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t.is_nan() { f64::NAN } else { 0.0 };
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The regularised incomplete beta function `I_x(a, b)` (continued fraction, Lentz).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Average precision of `scores` ranking the positives of `labels` first (scikit-learn's
/// definition: `Σ (R_k − R_{k−1}) P_k` over thresholds, ties grouped).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let n_pos = labels.iter().filter(|&&l| l).count();
    if n_pos == 0 {
        return 0.0;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        // One threshold per distinct score.
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / n_pos as f64;
        ap += (recall - prev_recall) * tp as f64 / (tp + fp) as f64;
        prev_recall = recall;
    }
    ap
}

/// The `k`-th smallest value (1-based, like `torch.kthvalue`) of `values`.
pub fn kth_smallest(values: &[f64], k: usize) -> f64 {
    let mut v = values.to_vec();
    let k = k.clamp(1, v.len().max(1)) - 1;
    let (_, x, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *x
}

/// Median of `values` (the mean of the middle two for even counts).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// A fixed-bin histogram of values in `[lo, hi]` (values outside go to the end bins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    /// `bins` equal bins over `[lo, hi]`.
    pub fn new(lo: f64, hi: f64, bins: usize) -> Self {
        Histogram {
            lo,
            hi,
            counts: vec![0; bins.max(1)],
        }
    }

    /// Counts `x`.
    pub fn push(&mut self, x: f64) {
        let n = self.counts.len();
        let f = (x - self.lo) / (self.hi - self.lo);
        let i = if f.is_nan() {
            0
        } else {
            ((f * n as f64).floor().max(0.0) as usize).min(n - 1)
        };
        self.counts[i] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_test_p_values_match_tables() {
        // Two-sided critical values: t = 2.228 at df 10 and t = 1.96 at df = ∞ give p = 0.05.
        assert!((t_two_sided_p(2.228, 10.0) - 0.05).abs() < 5e-4);
        assert!((t_two_sided_p(1.959_964, 1e7) - 0.05).abs() < 1e-4);
        assert!((t_two_sided_p(0.0, 5.0) - 1.0).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn average_precision_matches_hand_computation() {
        // Ranking: + - + -  → AP = (1/2)(1/1) + (1/2)(2/3) = 0.8333…
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]);
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(average_precision(&[1.0, 0.0], &[true, false]), 1.0);
    }

    #[test]
    fn frequent_items_are_exact_below_capacity_and_bounded_above() {
        let mut f = FrequentItems::new(3);
        for x in [1, 2, 1, 3, 1, 2] {
            f.push(x);
        }
        assert!(f.exact());
        assert_eq!(f.top(1), vec![(1, 3)]);
        f.push(4);
        assert!(!f.exact());
        // True count of 1 is 3; the summary may be low by at most `dropped`.
        let c1 = f.counts.get(&1).copied().unwrap_or(0);
        assert!(c1 + f.dropped >= 3 && c1 <= 3);
    }
}
