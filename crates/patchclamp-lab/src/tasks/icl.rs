//! Singh et al. 2024's in-context classification: `x1 ℓ1 x2 ℓ2 x_q`, labels re-drawn per
//! sequence, so only in-context learning solves it. Fixed Gaussian vectors stand in for the
//! paper's Omniglot ResNet features (METHODS.md §1b).

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::{Batch, Task};

/// Tokens `0..classes` are exemplars, `classes..classes+labels` are labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IclClassification {
    pub classes: usize,
    pub labels: usize,
    /// Unordered label pairs used for training; the rest are held out (`fs_relabel_split`).
    pub train_pairs: usize,
    /// Seed of the fixed exemplar vectors.
    pub exemplar_seed: u64,
}

impl Default for IclClassification {
    fn default() -> Self {
        IclClassification {
            classes: 50,
            labels: 5,
            train_pairs: 8,
            exemplar_seed: 0,
        }
    }
}

/// Which label pairs to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

impl IclClassification {
    /// Checks the counts.
    pub fn validate(&self) -> crate::Result<()> {
        let pairs = self.labels * self.labels.saturating_sub(1) / 2;
        if self.classes < 2 || self.labels < 2 || self.train_pairs == 0 || self.train_pairs > pairs
        {
            return Err(crate::Error::Spec(format!(
                "icl task needs ≥ 2 classes, ≥ 2 labels and 1..={pairs} training label pairs (got {} classes, {} labels, {} pairs)",
                self.classes, self.labels, self.train_pairs
            )));
        }
        Ok(())
    }

    /// The unordered label pairs of a split (a fixed shuffle of all pairs, then cut).
    pub fn pairs(&self, split: Split) -> Vec<(u32, u32)> {
        let mut all = vec![];
        for a in 0..self.labels as u32 {
            for b in a + 1..self.labels as u32 {
                all.push((a, b));
            }
        }
        let mut rng = Rng::new(self.exemplar_seed ^ 0x5eed_1abe);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i as u64 + 1) as usize);
        }
        match split {
            Split::Train => all[..self.train_pairs].to_vec(),
            Split::HeldOut => all[self.train_pairs..].to_vec(),
        }
    }

    /// Fixed unit-norm Gaussian exemplar vectors `[classes, dim]`, row-major.
    pub fn exemplars(&self, dim: usize) -> Vec<f32> {
        let mut rng = Rng::new(self.exemplar_seed);
        let mut out = Vec::with_capacity(self.classes * dim);
        for _ in 0..self.classes {
            let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            out.extend(v.iter().map(|x| (x / n) as f32));
        }
        out
    }

    /// `n` sequences with label pairs from `split`.
    pub fn batch_split(&self, rng: &mut Rng, n: usize, split: Split) -> Batch {
        let pairs = self.pairs(split);
        let c = self.classes as u32;
        let mut b = Batch::default();
        for _ in 0..n {
            let x1 = rng.below(c as u64) as u32;
            let x2 = (x1 + 1 + rng.below(c as u64 - 1) as u32) % c;
            let (mut l1, mut l2) = pairs[rng.below(pairs.len() as u64) as usize];
            if rng.below(2) == 1 {
                std::mem::swap(&mut l1, &mut l2);
            }
            let (q, lq) = if rng.below(2) == 0 {
                (x1, l1)
            } else {
                (x2, l2)
            };
            b.tokens.push(vec![x1, c + l1, x2, c + l2, q]);
            // Only the query's label is scored; targets elsewhere are placeholders.
            b.targets.push(vec![c, c, c, c, c + lq]);
            b.weights.push(vec![0.0, 0.0, 0.0, 0.0, 1.0]);
            b.in_context.push(vec![false, false, false, false, true]);
        }
        b
    }
}

impl Task for IclClassification {
    fn name(&self) -> &'static str {
        "icl"
    }

    fn vocab(&self) -> usize {
        self.classes + self.labels
    }

    fn seq_len(&self) -> usize {
        5
    }

    fn classes(&self) -> Option<std::ops::Range<usize>> {
        Some(self.classes..self.classes + self.labels)
    }

    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        self.batch_split(rng, n, Split::Train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_follow_the_paper_layout() {
        let t = IclClassification::default();
        assert_eq!(t.pairs(Split::Train).len(), 8);
        assert_eq!(t.pairs(Split::HeldOut).len(), 2);
        let b = t.batch(&mut Rng::new(1), 4000);
        let train: Vec<(u32, u32)> = t.pairs(Split::Train);
        let (mut first, mut swapped) = (0, 0);
        for (toks, tg) in b.tokens.iter().zip(&b.targets) {
            let (x1, l1, x2, l2, q) = (toks[0], toks[1] - 50, toks[2], toks[3] - 50, toks[4]);
            assert_ne!(x1, x2, "context classes are distinct");
            assert_ne!(l1, l2);
            assert!(
                train.contains(&(l1.min(l2), l1.max(l2))),
                "train label pairs only"
            );
            assert!(q == x1 || q == x2, "burstiness 1: the query is in context");
            assert_eq!(tg[4] - 50, if q == x1 { l1 } else { l2 });
            first += (q == x1) as usize;
            swapped += (l1 > l2) as usize;
        }
        // Query side and label order are fair coins (4000 draws: ±4 sd ≈ ±126).
        assert!((first as i64 - 2000).abs() < 130 && (swapped as i64 - 2000).abs() < 130);
        let ex = t.exemplars(64);
        let norm: f32 = ex[..64].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
