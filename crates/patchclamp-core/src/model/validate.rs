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
        let want = [
            1,
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
        if prefix.len() + s > self.cfg.n_ctx {
            return Err(Error::Input(format!(
                "{} cached and {s} new positions exceed the model's context of {} tokens",
                prefix.len(),
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

    /// Checks each weight has the shape the config implies.
    pub(super) fn check_shapes(&self) -> Result<()> {
        let c = &self.cfg;
        let w = &self.weights;
        let (d, qd, kvd) = (
            c.d_model,
            c.attn.n_heads * c.attn.d_head,
            c.attn.n_kv_heads * c.attn.d_head,
        );
        let mut expect: Vec<(String, &Tensor, Vec<usize>)> =
            vec![("W_E".into(), &w.w_e, vec![c.d_vocab, d])];
        if let Some(p) = &w.w_pos {
            expect.push(("W_pos".into(), p, vec![c.n_ctx, d]));
        }
        if let Some(u) = &w.w_u {
            expect.push(("W_U".into(), u, vec![d, c.d_vocab]));
        }
        if w.blocks.len() != c.n_layers {
            return Err(Error::Input(format!(
                "config has {} layers but weights have {}",
                c.n_layers,
                w.blocks.len()
            )));
        }
        for (l, blk) in w.blocks.iter().enumerate() {
            let a = &blk.attn;
            expect.push((format!("blocks.{l}.attn.W_Q"), &a.w_q, vec![d, qd]));
            expect.push((format!("blocks.{l}.attn.W_K"), &a.w_k, vec![d, kvd]));
            expect.push((format!("blocks.{l}.attn.W_V"), &a.w_v, vec![d, kvd]));
            expect.push((format!("blocks.{l}.attn.W_O"), &a.w_o, vec![qd, d]));
            if let Some(m) = &blk.mlp {
                expect.push((format!("blocks.{l}.mlp.W_in"), &m.w_in, vec![d, c.d_mlp()]));
                expect.push((
                    format!("blocks.{l}.mlp.W_out"),
                    &m.w_out,
                    vec![c.d_mlp(), d],
                ));
            }
        }
        for (name, t, shape) in expect {
            if t.dims() != shape.as_slice() {
                return Err(Error::WeightShape {
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Fails with the first tensor that holds a NaN or infinity.
    pub fn check_finite(&self) -> Result<()> {
        let w = &self.weights;
        let mut named: Vec<(String, &Tensor)> = vec![("W_E".into(), &w.w_e)];
        if let Some(u) = &w.w_u {
            named.push(("W_U".into(), u));
        }
        for (l, b) in w.blocks.iter().enumerate() {
            named.push((format!("blocks.{l}.attn.W_Q"), &b.attn.w_q));
            named.push((format!("blocks.{l}.attn.W_K"), &b.attn.w_k));
            named.push((format!("blocks.{l}.attn.W_V"), &b.attn.w_v));
            named.push((format!("blocks.{l}.attn.W_O"), &b.attn.w_o));
            if let Some(m) = &b.mlp {
                named.push((format!("blocks.{l}.mlp.W_in"), &m.w_in));
                named.push((format!("blocks.{l}.mlp.W_out"), &m.w_out));
            }
        }
        for (name, t) in named {
            ensure_finite(t, &name)?;
        }
        Ok(())
    }
}
