//! Two bigram "styles" over one vocabulary (METHODS.md K8): each content token has disjoint
//! sets of successors under style A and style B, and a sequence starts with a style token
//! (A's, B's, or a neutral one whose style is left to the sequence itself).

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::languages::to_batch;
use super::{Batch, Task};

/// The styles: `vocab` content tokens, then the start tokens A, B and neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwoStyles {
    pub vocab: usize,
    pub seq_len: usize,
    /// Successors per token in each style (2 · branching ≤ vocab).
    pub branching: usize,
    pub table_seed: u64,
}

/// Which style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Style {
    A,
    B,
}

impl Default for TwoStyles {
    fn default() -> Self {
        TwoStyles {
            vocab: 24,
            seq_len: 32,
            branching: 3,
            table_seed: 0,
        }
    }
}

impl TwoStyles {
    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.branching == 0 || 2 * self.branching > self.vocab || self.seq_len < 2 {
            return Err(crate::Error::Spec(format!(
                "two styles need 1 ≤ branching ≤ vocab / 2 (got {} of {}) and seq_len ≥ 2",
                self.branching, self.vocab
            )));
        }
        Ok(())
    }

    /// The start token of a style, or the neutral one.
    pub fn start(&self, style: Option<Style>) -> u32 {
        (self.vocab
            + match style {
                Some(Style::A) => 0,
                Some(Style::B) => 1,
                None => 2,
            }) as u32
    }

    /// `prev`'s successors under `style` (disjoint between the styles).
    pub fn successors(&self, style: Style, prev: u32) -> Vec<u32> {
        let mut rng = Rng::new(
            self.table_seed
                .wrapping_mul(1_000_003)
                .wrapping_add(prev as u64),
        );
        let mut perm: Vec<u32> = (0..self.vocab as u32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let b = self.branching;
        match style {
            Style::A => perm[..b].to_vec(),
            Style::B => perm[b..2 * b].to_vec(),
        }
    }

    /// Whether `prev → next` is a legal bigram of `style`.
    pub fn legal(&self, style: Style, prev: u32, next: u32) -> bool {
        (prev as usize) < self.vocab && self.successors(style, prev).contains(&next)
    }

    /// The fraction of the bigrams of `prev` followed by `generated` that are legal under A
    /// (`None` for no bigram).
    pub fn a_rate(&self, prev: u32, generated: &[u32]) -> Option<f64> {
        if generated.is_empty() {
            return None;
        }
        let mut last = prev;
        let mut legal = 0;
        for &t in generated {
            legal += self.legal(Style::A, last, t) as usize;
            last = t;
        }
        Some(legal as f64 / generated.len() as f64)
    }

    /// A walk of `len` content tokens in `style` from a uniform first token.
    pub fn walk(&self, rng: &mut Rng, style: Style, len: usize) -> Vec<u32> {
        let mut x = vec![rng.below(self.vocab as u64) as u32];
        while x.len() < len {
            let next = self.successors(style, *x.last().expect("non-empty"));
            x.push(next[rng.below(next.len() as u64) as usize]);
        }
        x
    }

    /// One training sequence of `seq_len + 1` tokens: a start token (A's, B's or the neutral
    /// one, equally often), then a walk in the drawn style.
    pub fn sequence(&self, rng: &mut Rng) -> Vec<u32> {
        let style = if rng.below(2) == 0 {
            Style::A
        } else {
            Style::B
        };
        let start = match rng.below(3) {
            0 => None,
            _ => Some(style),
        };
        let mut x = vec![self.start(start)];
        x.extend(self.walk(rng, style, self.seq_len));
        x
    }
}

impl Task for TwoStyles {
    fn name(&self) -> &'static str {
        "two_styles"
    }
    fn vocab(&self) -> usize {
        self.vocab + 3
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        to_batch((0..n).map(|_| self.sequence(rng)).collect())
    }
}
