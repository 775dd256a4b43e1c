//! Seeded task generators: each draws training and evaluation batches from an [`Rng`].

mod bigram;
mod bigram_backcopy;
pub mod flipflop;
mod icl;
mod languages;
pub mod loss;
mod repeated;
mod styles;

pub use bigram::BigramTable;
pub use bigram_backcopy::BigramBackcopy;
pub use flipflop::FlipFlop;
pub use icl::{IclClassification, Split};
pub use languages::{to_batch, Languages};
pub use repeated::RepeatedSegments;
pub use styles::{Style, TwoStyles};

use patchclamp_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// A batch of next-token examples: inputs, targets and which targets count.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Input tokens `[batch][seq]`.
    pub tokens: Vec<Vec<u32>>,
    /// Target token for each input position `[batch][seq]`.
    pub targets: Vec<Vec<u32>>,
    /// Loss weight per position (0 = ignored).
    pub weights: Vec<Vec<f32>>,
    /// Positions whose target can only be predicted by copying from context (the second
    /// occurrence of a repeated segment; the query of a classification sequence).
    pub in_context: Vec<Vec<bool>>,
}

impl Batch {
    /// `(rows, positions)`.
    pub fn dims(&self) -> (usize, usize) {
        (
            self.tokens.len(),
            self.tokens.first().map_or(0, |r| r.len()),
        )
    }
}

/// A seeded source of batches.
pub trait Task: Send + Sync {
    /// Short name (`repeated`, `icl`).
    fn name(&self) -> &'static str;
    /// Tokens the model must embed.
    fn vocab(&self) -> usize;
    /// Input positions per sequence.
    fn seq_len(&self) -> usize;
    /// The logits the loss reads (a slice of the vocabulary), when not all of them.
    fn classes(&self) -> Option<std::ops::Range<usize>> {
        None
    }
    /// Draws `n` sequences.
    fn batch(&self, rng: &mut Rng, n: usize) -> Batch;
}

/// A task as written in an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Random tokens with one segment repeated (induction heads).
    Repeated(RepeatedSegments),
    /// Singh et al. 2024 in-context classification with fixed Gaussian exemplars.
    Icl(IclClassification),
    /// Guo et al.'s Bigram-Backcopy task (attention sinks).
    BigramBackcopy(BigramBackcopy),
    /// Liu et al.'s flip-flop language (attention glitches).
    FlipFlop(FlipFlop),
    /// Disjoint-vocabulary bigram languages (neuron census).
    Languages(Languages),
    /// Two bigram styles over one vocabulary (the steering battery).
    TwoStyles(TwoStyles),
}

impl TaskSpec {
    /// The generator.
    pub fn task(&self) -> &dyn Task {
        match self {
            TaskSpec::Repeated(t) => t,
            TaskSpec::Icl(t) => t,
            TaskSpec::BigramBackcopy(t) => t,
            TaskSpec::FlipFlop(t) => t,
            TaskSpec::Languages(t) => t,
            TaskSpec::TwoStyles(t) => t,
        }
    }

    /// The loss level that marks the phase change: 0.4 of the loss of guessing among the
    /// candidates the task leaves open at a scored position.
    pub fn phase_threshold(&self) -> f32 {
        match self {
            TaskSpec::Repeated(r) => 0.4 * (r.vocab as f32).ln(),
            TaskSpec::Icl(_) | TaskSpec::FlipFlop(_) => 0.4 * 2f32.ln(),
            TaskSpec::BigramBackcopy(t) => 0.4 * (t.vocab as f32).ln(),
            TaskSpec::Languages(t) => 0.4 * (t.vocab_per_language as f32).ln(),
            TaskSpec::TwoStyles(t) => 0.4 * (t.branching.max(2) as f32).ln(),
        }
    }

    /// Checks the parameters make sense.
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            TaskSpec::Repeated(t) => t.validate(),
            TaskSpec::Icl(t) => t.validate(),
            TaskSpec::BigramBackcopy(t) => t.validate(),
            TaskSpec::FlipFlop(t) => t.validate(),
            TaskSpec::Languages(t) => t.validate(),
            TaskSpec::TwoStyles(t) => t.validate(),
        }
    }
}
