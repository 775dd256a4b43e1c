//! What a forward pass checks before computing: the weights against the config, the input
//! against the model, rows joining later blocks, a key-value cache against its input.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::input::Input;
use crate::model::forward::Model;
use crate::model::kv::KvCache;
use crate::model::ops::ensure_finite;

impl Model {
    /// Checks a key-value prefix against the model and an `s`-position input that follows it.
    pub(super) fn check_prefix(&self, prefix: &KvCache, input: &Input, s: usize) -> Result<()> {
        if input.mask.is_some() {
            return Err(Error::Input(
                "a key-value prefix needs an unpadded input".into(),
            ));
        }
        if prefix.layers.len() != self.cfg.n_layers {
            return Err(Error::Input(format!(
                "the key-value prefix has {} blocks, the model {}",
                prefix.layers.len(),
                self.cfg.n_layers
            )));
        }
        let (b, _) = input.dims()?;
        let rows = prefix.rows();
        if rows != 1 && rows != b {
            return Err(Error::Input(format!(
                "the key-value prefix has {rows} rows for an input of {b}: give one row per row, or one for all"
            )));
        }
        let want = [
            rows,
            prefix.len(),
            self.cfg.attn.n_kv_heads,
            self.cfg.attn.d_head,
        ];
        for (l, (k, v)) in prefix.layers.iter().enumerate() {
            if k.dims() != want || v.dims() != want {
                return Err(Error::Input(format!(
                    "the key-value prefix at block {l} has shapes {:?} and {:?}, expected {want:?}",
                    k.dims(),
                    v.dims()
                )));
            }
        }
        let longest = (0..rows).map(|r| prefix.length_of(r)).max().unwrap_or(0);
        if longest + s > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "{longest} cached and {s} new positions exceed the model's context of {} tokens",
                self.cfg.n_ctx
            )));
        }
        Ok(())
    }

    /// Checks a span's late rows against a `b × s` input run over blocks `first..stop`;
    /// returns the number of rows present from the start.
    pub(super) fn check_joins(
        &self,
        joins: &[(usize, Tensor)],
        b: usize,
        s: usize,
        first: usize,
        stop: usize,
    ) -> Result<usize> {
        let mut late = 0;
        let mut prev = first;
        for (l, rows) in joins {
            if *l < prev || *l >= stop {
                return Err(Error::OutOfRange {
                    what: "join layer",
                    index: *l as i64,
                    limit: format!("ascending layers in {prev}..{stop}"),
                });
            }
            prev = *l;
            let dims = rows.dims();
            if dims.len() != 3 || dims[1..] != [s, self.cfg.d_model] {
                return Err(Error::Input(format!(
                    "rows joining at layer {l} have shape {dims:?}, expected [_, {s}, {}]",
                    self.cfg.d_model
                )));
            }
            late += dims[0];
        }
        if late >= b {
            return Err(Error::Input(format!(
                "{late} joining rows leave none of the input's {b} rows to start the forward"
            )));
        }
        Ok(b - late)
    }

    /// Rejects inputs the model cannot run: ids outside the vocabulary, too many positions.
    pub(super) fn check_input(&self, input: &Input) -> Result<()> {
        let (_, s) = input.dims()?;
        if s > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "the input has {s} positions but the model's context is {} tokens",
                self.cfg.n_ctx
            )));
        }
        let max = input
            .tokens
            .max_all()?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?;
        if max as usize >= self.cfg.d_vocab {
            return Err(Error::OutOfRange {
                what: "token id",
                index: max as i64,
                limit: format!("a vocabulary of {} tokens", self.cfg.d_vocab),
            });
        }
        Ok(())
    }

    /// Checks each weight has the shape the config implies ([`crate::model::Param::shape`]).
    pub(super) fn check_shapes(&self) -> Result<()> {
        let (c, w) = (&self.cfg, &self.weights);
        if w.blocks.len() != c.n_layers {
            return Err(Error::Input(format!(
                "config has {} layers but weights have {}",
                c.n_layers,
                w.blocks.len()
            )));
        }
        for (p, t) in w.params() {
            let expected = p.shape(c);
            if t.dims() != expected.as_slice() {
                return Err(Error::WeightShape {
                    name: p.to_string(),
                    expected,
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Fails with the first tensor that holds a NaN or infinity.
    pub fn check_finite(&self) -> Result<()> {
        for (p, t) in self.weights.params() {
            ensure_finite(&t, &p.to_string())?;
        }
        Ok(())
    }
}
