//! How tokens are written in figures, tables and summaries.

use patchclamp_core::Tokenizer;

/// Token ids as text: through the model's tokenizer, or as numbers when it has none.
#[derive(Clone, Copy)]
pub struct Vocab<'a> {
    tok: Option<&'a Tokenizer>,
}

impl<'a> Vocab<'a> {
    /// Tokens written through `tok`, or as ids.
    pub fn new(tok: Option<&'a Tokenizer>) -> Self {
        Vocab { tok }
    }

    /// A token's text (its id when it does not decode).
    pub fn show(&self, id: u32) -> String {
        match self.tok {
            Some(t) => t.decode(&[id]).unwrap_or_else(|_| id.to_string()),
            None => id.to_string(),
        }
    }
}
