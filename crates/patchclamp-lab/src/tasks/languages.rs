//! Synthetic "languages" for neuron census checks (METHODS.md K10): disjoint vocabulary
//! blocks, each with its own bigram statistics.

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::bigram::BigramTable;
use super::{Batch, Task};

/// `languages` blocks of `vocab_per_language` tokens; a sequence is a bigram walk inside one
/// block, the language drawn uniformly per sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Languages {
    pub languages: usize,
    pub vocab_per_language: usize,
    pub seq_len: usize,
    /// Successors per token in each bigram table.
    pub branching: usize,
    pub table_seed: u64,
}

impl Default for Languages {
    fn default() -> Self {
        Languages {
            languages: 3,
            vocab_per_language: 16,
            seq_len: 32,
            branching: 3,
            table_seed: 0,
        }
    }
}

impl Languages {
    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.languages == 0 || self.vocab_per_language < 2 || self.seq_len < 2 {
            return Err(crate::Error::Spec(
                "languages needs ≥ 1 language of ≥ 2 tokens and seq_len ≥ 2".into(),
            ));
        }
        Ok(())
    }

    /// Language `l`'s bigram table (over its own block, ids relative to the block).
    pub fn table(&self, l: usize) -> BigramTable {
        BigramTable::random(
            self.vocab_per_language,
            self.branching,
            self.table_seed.wrapping_mul(31).wrapping_add(l as u64),
        )
    }

    /// The language a token belongs to.
    pub fn language_of(&self, token: u32) -> usize {
        token as usize / self.vocab_per_language
    }

    /// `n` sequences of `seq_len + 1` tokens in language `lang`.
    pub fn sequences(&self, rng: &mut Rng, n: usize, lang: usize) -> Vec<Vec<u32>> {
        let table = self.table(lang);
        let base = (lang * self.vocab_per_language) as u32;
        (0..n)
            .map(|_| {
                let mut x = vec![rng.below(self.vocab_per_language as u64) as usize];
                while x.len() < self.seq_len + 1 {
                    let next = table.next(rng, *x.last().expect("non-empty"));
                    x.push(next);
                }
                x.into_iter().map(|t| base + t as u32).collect()
            })
            .collect()
    }

    /// `n` lists of `seq_len + 1` uniform random tokens from the whole vocabulary (the
    /// localizer's control stimuli).
    pub fn random_lists(&self, rng: &mut Rng, n: usize) -> Vec<Vec<u32>> {
        let v = self.languages * self.vocab_per_language;
        (0..n)
            .map(|_| {
                (0..=self.seq_len)
                    .map(|_| rng.below(v as u64) as u32)
                    .collect()
            })
            .collect()
    }

    /// A batch of `n` sequences of language `lang`.
    pub fn batch_of(&self, rng: &mut Rng, n: usize, lang: usize) -> Batch {
        to_batch(self.sequences(rng, n, lang))
    }
}

/// Next-token batch from full sequences (every position counts).
pub fn to_batch(seqs: Vec<Vec<u32>>) -> Batch {
    let mut b = Batch::default();
    for x in seqs {
        let s = x.len() - 1;
        b.tokens.push(x[..s].to_vec());
        b.targets.push(x[1..].to_vec());
        b.weights.push(vec![1.0; s]);
        b.in_context.push(vec![false; s]);
    }
    b
}

impl Task for Languages {
    fn name(&self) -> &'static str {
        "languages"
    }
    fn vocab(&self) -> usize {
        self.languages * self.vocab_per_language
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        let seqs = (0..n)
            .flat_map(|_| {
                let lang = rng.below(self.languages as u64) as usize;
                self.sequences(rng, 1, lang)
            })
            .collect();
        to_batch(seqs)
    }
}
