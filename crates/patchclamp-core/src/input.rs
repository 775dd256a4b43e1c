//! Model inputs: token ids with padding, attention mask and position ids for ragged batches.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which side short prompts are padded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Pad before the prompt, so every prompt ends at the last position (good for generation).
    Left,
    /// Pad after the prompt (TransformerLens's default).
    #[default]
    Right,
}

/// A batch of token sequences ready for the forward pass.
#[derive(Debug, Clone)]
pub struct Input {
    /// Token ids `[batch, pos]` (u32).
    pub tokens: Tensor,
    /// Position ids `[batch, pos]` (u32): each prompt counts from 0 at its first real token.
    pub positions: Tensor,
    /// `[batch, pos]` 1 for real tokens, 0 for padding; `None` when nothing is padded.
    pub mask: Option<Tensor>,
    /// Each row's real length.
    pub lengths: Vec<usize>,
    /// Where padding went.
    pub padding: Padding,
}

impl Input {
    /// One unpadded sequence.
    pub fn single(tokens: &[u32], device: &Device) -> Result<Input> {
        Input::batch(&[tokens.to_vec()], Padding::Right, 0, device)
    }

    /// One unpadded sequence that continues `start` positions already seen (held in a
    /// [`KvCache`](crate::model::KvCache)): its position ids count from `start`.
    pub fn continuing(tokens: &[u32], start: usize, device: &Device) -> Result<Input> {
        let mut input = Input::single(tokens, device)?;
        input.positions = (input.positions + start as f64)?;
        Ok(input)
    }

    /// One new position per row (a batched generation step): token `tokens[r]` at absolute
    /// position `positions[r]` of row `r`.
    pub fn step(tokens: &[u32], positions: &[u32], device: &Device) -> Result<Input> {
        let b = tokens.len();
        if b == 0 || positions.len() != b {
            return Err(Error::Input(format!(
                "a step needs one position per token, got {b} tokens and {} positions",
                positions.len()
            )));
        }
        Ok(Input {
            tokens: Tensor::from_vec(tokens.to_vec(), (b, 1), device)?,
            positions: Tensor::from_vec(positions.to_vec(), (b, 1), device)?,
            mask: None,
            lengths: vec![1; b],
            padding: Padding::Left,
        })
    }

    /// Pads `seqs` to one length; `pad_id` fills the gaps (its value never matters).
    pub fn batch(
        seqs: &[Vec<u32>],
        padding: Padding,
        pad_id: u32,
        device: &Device,
    ) -> Result<Input> {
        if seqs.is_empty() {
            return Err(Error::Input("empty batch: give at least one prompt".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(Error::Input(format!("prompt {i} has no tokens")));
        }
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let n = *lengths.iter().max().unwrap_or(&0);
        let b = seqs.len();
        let mut toks = Vec::with_capacity(b * n);
        let mut pos = Vec::with_capacity(b * n);
        let mut mask = Vec::with_capacity(b * n);
        for s in seqs {
            let pad = n - s.len();
            let (before, after) = match padding {
                Padding::Left => (pad, 0),
                Padding::Right => (0, pad),
            };
            toks.extend(std::iter::repeat_n(pad_id, before));
            toks.extend_from_slice(s);
            toks.extend(std::iter::repeat_n(pad_id, after));
            pos.extend(std::iter::repeat_n(0u32, before));
            pos.extend(0..s.len() as u32);
            // Right padding continues counting so positions stay inside the context.
            pos.extend((s.len() as u32..).take(after));
            mask.extend(std::iter::repeat_n(0u8, before));
            mask.extend(std::iter::repeat_n(1u8, s.len()));
            mask.extend(std::iter::repeat_n(0u8, after));
        }
        let padded = lengths.iter().any(|&l| l != n);
        Ok(Input {
            tokens: Tensor::from_vec(toks, (b, n), device)?,
            positions: Tensor::from_vec(pos, (b, n), device)?,
            mask: if padded {
                Some(Tensor::from_vec(mask, (b, n), device)?)
            } else {
                None
            },
            lengths,
            padding,
        })
    }

    /// Batch size and padded length.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.tokens.dims2()?)
    }

    /// Index of row `row`'s real token `i` (0-based) in the padded sequence.
    pub fn index_of(&self, row: usize, i: usize) -> usize {
        let n = self.tokens.dims()[1];
        match self.padding {
            Padding::Left => n - self.lengths[row] + i,
            Padding::Right => i,
        }
    }

    /// Index of row `row`'s last real token.
    pub fn last_index(&self, row: usize) -> usize {
        self.index_of(row, self.lengths[row] - 1)
    }
}
