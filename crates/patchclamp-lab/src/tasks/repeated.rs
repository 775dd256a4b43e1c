//! Random-token sequences with one segment of random length repeated at random offsets.
//!
//! Length and offsets are random because a fixed layout lets a single head copy by relative
//! position, which is not induction (METHODS.md §2.1b).

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::{Batch, Task};

/// Uniform random tokens; a segment of length in `[min_len, max_len]` occurs twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatedSegments {
    pub vocab: usize,
    pub seq_len: usize,
    pub min_len: usize,
    pub max_len: usize,
}

impl Default for RepeatedSegments {
    fn default() -> Self {
        RepeatedSegments {
            vocab: 64,
            seq_len: 64,
            min_len: 8,
            max_len: 32,
        }
    }
}

impl RepeatedSegments {
    /// Checks that two copies of the longest segment fit.
    pub fn validate(&self) -> crate::Result<()> {
        if self.vocab < 2 || self.min_len < 2 || self.min_len > self.max_len {
            return Err(crate::Error::Spec(format!(
                "repeated task needs vocab ≥ 2 and 2 ≤ min_len ≤ max_len (got vocab {}, lengths {}..={})",
                self.vocab, self.min_len, self.max_len
            )));
        }
        if 2 * self.max_len > self.seq_len + 1 {
            return Err(crate::Error::Spec(format!(
                "two segments of length {} do not fit in {} positions",
                self.max_len, self.seq_len
            )));
        }
        Ok(())
    }

    /// One sequence of `seq_len + 1` tokens with the segment's two starts and its length.
    pub fn sequence(&self, rng: &mut Rng) -> (Vec<u32>, usize, usize, usize) {
        let n = self.seq_len + 1;
        let mut toks: Vec<u32> = (0..n)
            .map(|_| rng.below(self.vocab as u64) as u32)
            .collect();
        let len = self.min_len + rng.below((self.max_len - self.min_len + 1) as u64) as usize;
        // Two sorted uniform cut points split the free room into before / gap / after.
        let free = (n - 2 * len) as u64;
        let (u, v) = (rng.below(free + 1), rng.below(free + 1));
        let (first, gap) = (u.min(v) as usize, (u.max(v) - u.min(v)) as usize);
        let second = first + len + gap;
        for i in 0..len {
            toks[second + i] = toks[first + i];
        }
        (toks, first, second, len)
    }
}

impl Task for RepeatedSegments {
    fn name(&self) -> &'static str {
        "repeated"
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        let s = self.seq_len;
        let mut b = Batch {
            tokens: Vec::with_capacity(n),
            targets: Vec::with_capacity(n),
            weights: vec![vec![1.0; s]; n],
            in_context: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let (toks, _, second, len) = self.sequence(rng);
            // Input t predicts t+1: inside the second copy every next token is in context.
            let ctx = (0..s)
                .map(|t| t >= second && t + 1 < second + len)
                .collect();
            b.tokens.push(toks[..s].to_vec());
            b.targets.push(toks[1..].to_vec());
            b.in_context.push(ctx);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_repeat_with_random_lengths_and_offsets() {
        let task = RepeatedSegments::default();
        let mut rng = Rng::new(3);
        let (mut lens, mut firsts) = (vec![], vec![]);
        for _ in 0..2000 {
            let (t, a, b, l) = task.sequence(&mut rng);
            assert_eq!(t.len(), 65);
            assert!(b >= a + l && b + l <= 65);
            assert_eq!(t[a..a + l], t[b..b + l]);
            lens.push(l);
            firsts.push(a);
        }
        // Every length in 8..=32 occurs, roughly uniformly (expected 2000/25 = 80 each).
        for l in 8..=32 {
            let c = lens.iter().filter(|&&x| x == l).count();
            assert!((40..=130).contains(&c), "length {l} drawn {c} times");
        }
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 30, "offsets vary: {}", distinct.len());
        // Token frequencies are uniform over the vocabulary (chi-square-ish bound).
        let b = task.batch(&mut Rng::new(4), 500);
        let mut counts = vec![0usize; 64];
        b.tokens
            .iter()
            .flatten()
            .for_each(|&t| counts[t as usize] += 1);
        let mean = (500 * 64) as f64 / 64.0;
        assert!(counts.iter().all(|&c| (c as f64 - mean).abs() < 0.2 * mean));
        // In-context targets equal the earlier copy's next token.
        for (r, ctx) in b.in_context.iter().enumerate() {
            let n = ctx.iter().filter(|&&c| c).count();
            assert!((7..=31).contains(&n));
            for t in (0..64).filter(|&t| ctx[t]) {
                let tok = b.tokens[r][t];
                assert!((0..t).any(|j| b.tokens[r][j] == tok && b.targets[r][j] == b.targets[r][t]));
            }
        }
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let t = RepeatedSegments {
            max_len: 40,
            ..Default::default()
        };
        assert!(t.validate().unwrap_err().to_string().contains("do not fit"));
    }
}
