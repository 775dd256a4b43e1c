//! Guo et al. 2024's Bigram-Backcopy task (METHODS.md §4.1): a bigram Markov chain, except
//! after a trigger token, where the next token copies the one before the trigger.
//!
//! The paper estimates its bigram table from a character-level corpus; with no corpus at hand
//! this one is a seeded random table with a few successors per token (a documented deviation).

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::bigram::BigramTable;
use super::{Batch, Task};

/// Bigram-Backcopy sequences: `<s>` (id `vocab`) then a bigram walk with back-copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigramBackcopy {
    /// Ordinary tokens (the BoS token is one more).
    pub vocab: usize,
    pub seq_len: usize,
    /// Trigger tokens: the `triggers` most frequent tokens of the chain.
    pub triggers: usize,
    /// Successors per token in the bigram table.
    pub branching: usize,
    /// Seed of the bigram table.
    pub table_seed: u64,
}

impl Default for BigramBackcopy {
    fn default() -> Self {
        BigramBackcopy {
            vocab: 32,
            seq_len: 64,
            triggers: 3,
            branching: 4,
            table_seed: 0,
        }
    }
}

impl BigramBackcopy {
    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.vocab < 4 || self.triggers == 0 || self.triggers >= self.vocab / 2 {
            return Err(crate::Error::Spec(format!(
                "bigram_backcopy needs vocab ≥ 4 and 1 ≤ triggers < vocab/2 (got vocab {}, triggers {})",
                self.vocab, self.triggers
            )));
        }
        if self.seq_len < 3 || self.branching == 0 {
            return Err(crate::Error::Spec(
                "bigram_backcopy needs seq_len ≥ 3 and branching ≥ 1".into(),
            ));
        }
        Ok(())
    }

    /// The bigram table over the ordinary tokens.
    pub fn table(&self) -> BigramTable {
        BigramTable::random(self.vocab, self.branching, self.table_seed)
    }

    /// The BoS token id.
    pub fn bos(&self) -> u32 {
        self.vocab as u32
    }

    /// The trigger tokens: the most frequent under the chain's stationary distribution.
    pub fn trigger_tokens(&self) -> Vec<u32> {
        let pi = self.table().stationary();
        let mut idx: Vec<usize> = (0..self.vocab).collect();
        idx.sort_by(|&a, &b| pi[b].total_cmp(&pi[a]).then(a.cmp(&b)));
        let mut t: Vec<u32> = idx[..self.triggers].iter().map(|&i| i as u32).collect();
        t.sort();
        t
    }

    /// One sequence of `seq_len + 1` tokens.
    pub fn sequence(&self, rng: &mut Rng, table: &BigramTable, triggers: &[u32]) -> Vec<u32> {
        let is_trigger = |t: u32| triggers.contains(&t);
        let mut x = vec![self.bos()];
        // The first token is not a trigger, so a back-copy never copies <s>.
        let first = loop {
            let t = rng.below(self.vocab as u64) as u32;
            if !is_trigger(t) {
                break t;
            }
        };
        x.push(first);
        while x.len() < self.seq_len + 1 {
            let i = x.len() - 1;
            let next = if is_trigger(x[i]) {
                x[i - 1]
            } else {
                table.next(rng, x[i] as usize) as u32
            };
            x.push(next);
        }
        x
    }
}

impl Task for BigramBackcopy {
    fn name(&self) -> &'static str {
        "bigram_backcopy"
    }
    fn vocab(&self) -> usize {
        self.vocab + 1
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        let table = self.table();
        let triggers = self.trigger_tokens();
        let mut b = Batch::default();
        for _ in 0..n {
            let x = self.sequence(rng, &table, &triggers);
            let s = self.seq_len;
            b.tokens.push(x[..s].to_vec());
            b.targets.push(x[1..].to_vec());
            b.weights.push(vec![1.0; s]);
            b.in_context
                .push(x[..s].iter().map(|t| triggers.contains(t)).collect());
        }
        b
    }
}
