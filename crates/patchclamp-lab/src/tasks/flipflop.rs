//! Liu et al. 2023's flip-flop language (METHODS.md §4.3): write/read/ignore instructions, each
//! followed by a bit; a read's bit must equal the most recent write's.

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::{Batch, Task};

/// Token ids: the instructions `w r i` and the bits.
pub const WRITE: u32 = 0;
pub const READ: u32 = 1;
pub const IGNORE: u32 = 2;
pub const ZERO: u32 = 3;
pub const ONE: u32 = 4;

/// FFL(p): `T` tokens (`T/2` instruction–bit pairs), interior instructions ignore with
/// probability `p_ignore`, write or read with `(1 − p)/2` each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlipFlop {
    /// Tokens per sequence (even).
    pub length: usize,
    pub p_ignore: f64,
    /// Train on the read bits only (the rest are coin flips or free instructions).
    #[serde(default = "yes")]
    pub reads_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for FlipFlop {
    fn default() -> Self {
        FlipFlop {
            length: 128,
            p_ignore: 0.8,
            reads_only: true,
        }
    }
}

impl FlipFlop {
    /// Checks the numbers.
    pub fn validate(&self) -> crate::Result<()> {
        if self.length < 4 || !self.length.is_multiple_of(2) {
            return Err(crate::Error::Spec(format!(
                "flip-flop length must be even and ≥ 4, got {}",
                self.length
            )));
        }
        if !(0.0..=1.0).contains(&self.p_ignore) {
            return Err(crate::Error::Spec(format!(
                "p_ignore must lie in [0, 1], got {}",
                self.p_ignore
            )));
        }
        Ok(())
    }

    /// One sequence of `length` tokens: `w b … r b`.
    pub fn sequence(&self, rng: &mut Rng) -> Vec<u32> {
        let pairs = self.length / 2;
        let mut x = Vec::with_capacity(self.length);
        let mut memory = ZERO;
        for k in 0..pairs {
            let op = if k == 0 {
                WRITE
            } else if k == pairs - 1 {
                READ
            } else {
                let u = rng.uniform();
                let pw = (1.0 - self.p_ignore) / 2.0;
                if u < pw {
                    WRITE
                } else if u < 2.0 * pw {
                    READ
                } else {
                    IGNORE
                }
            };
            let bit = match op {
                READ => memory,
                _ => ZERO + rng.below(2) as u32,
            };
            if op == WRITE {
                memory = bit;
            }
            x.push(op);
            x.push(bit);
        }
        x
    }
}

/// The reference interpreter: whether every read's bit equals the last written bit.
pub fn valid(x: &[u32]) -> bool {
    let mut memory = None;
    x.chunks(2).all(|pair| match pair {
        [WRITE, b @ (ZERO | ONE)] => {
            memory = Some(*b);
            true
        }
        [READ, b] => memory == Some(*b),
        [IGNORE, ZERO | ONE] => true,
        _ => false,
    })
}

impl Task for FlipFlop {
    fn name(&self) -> &'static str {
        "flip_flop"
    }
    fn vocab(&self) -> usize {
        5
    }
    fn seq_len(&self) -> usize {
        self.length - 1
    }
    fn batch(&self, rng: &mut Rng, n: usize) -> Batch {
        let mut b = Batch::default();
        for _ in 0..n {
            let x = self.sequence(rng);
            let s = self.length - 1;
            // Input t predicts token t+1; the read bits are the targets after a READ.
            let reads: Vec<bool> = (0..s).map(|t| t % 2 == 0 && x[t] == READ).collect();
            b.weights.push(
                reads
                    .iter()
                    .map(|&r| if r || !self.reads_only { 1.0 } else { 0.0 })
                    .collect(),
            );
            b.tokens.push(x[..s].to_vec());
            b.targets.push(x[1..].to_vec());
            b.in_context.push(reads);
        }
        b
    }
}
