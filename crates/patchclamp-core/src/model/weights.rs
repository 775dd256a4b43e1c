//! The model's tensors in one canonical layout, and the checkpoint reader that fills them.
//!
//! Matrices are stored the way activations multiply them, `x @ W` (input dimension first), so
//! `W_Q` is `[d_model, n_heads·d_head]` — TransformerLens's orientation with heads flattened.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{nearest_hint, Error, Result};

/// A norm's optional gain and bias (absent once folded away).
#[derive(Debug, Clone)]
pub struct NormWeights {
    pub w: Option<Tensor>,
    pub b: Option<Tensor>,
}

/// One attention layer.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[d_model, n_heads·d_head]`
    pub w_q: Tensor,
    pub b_q: Option<Tensor>,
    /// `[d_model, n_kv_heads·d_head]`
    pub w_k: Tensor,
    pub b_k: Option<Tensor>,
    /// `[d_model, n_kv_heads·d_head]`
    pub w_v: Tensor,
    pub b_v: Option<Tensor>,
    /// `[n_heads·d_head, d_model]`
    pub w_o: Tensor,
    pub b_o: Option<Tensor>,
}

/// One MLP layer.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// Gate projection `[d_model, d_mlp]` (gated MLPs only).
    pub w_gate: Option<Tensor>,
    pub b_gate: Option<Tensor>,
    /// Input (up) projection `[d_model, d_mlp]`.
    pub w_in: Tensor,
    pub b_in: Option<Tensor>,
    /// Output projection `[d_mlp, d_model]`.
    pub w_out: Tensor,
    pub b_out: Option<Tensor>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub ln1: NormWeights,
    pub attn: AttnWeights,
    pub ln2: NormWeights,
    pub mlp: Option<MlpWeights>,
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding `[d_vocab, d_model]`.
    pub w_e: Tensor,
    /// Learned positions `[n_ctx, d_model]`.
    pub w_pos: Option<Tensor>,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: NormWeights,
    /// Unembedding `[d_model, d_vocab]`; `None` means tied to `w_e`.
    pub w_u: Option<Tensor>,
    pub b_u: Option<Tensor>,
}

impl Weights {
    /// The unembedding matrix `[d_model, d_vocab]`, materialising a tied one as `w_eᵀ`.
    pub fn unembed(&self) -> Tensor {
        match &self.w_u {
            Some(w) => w.clone(),
            None => self.w_e.t().expect("2-D embedding"),
        }
    }
}

/// Safetensors files of a checkpoint, memory-mapped, read tensor by tensor.
pub struct Checkpoint {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    device: Device,
}

impl Checkpoint {
    /// Memory-maps `files`, checking each parses as safetensors.
    pub fn open(files: &[PathBuf], device: &Device) -> Result<Self> {
        for f in files {
            if !f.is_file() {
                return Err(Error::NotFound {
                    what: "weights file",
                    path: f.clone(),
                    hint: String::new(),
                });
            }
            // Parse each file on its own first so an error names the broken file.
            // SAFETY: the file is mapped read-only; patchclamp never writes model files.
            unsafe { MmapedSafetensors::new(f) }.map_err(|e| Error::Safetensors {
                path: f.clone(),
                msg: short_candle_msg(&e),
            })?;
        }
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Safetensors {
            path: files.first().cloned().unwrap_or_default(),
            msg: short_candle_msg(&e),
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            st,
            names,
            device: device.clone(),
        })
    }

    /// Whether the checkpoint holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| s.as_str())
    }

    /// Loads `name` as f32, checking it has `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.has(name) {
            return Err(Error::MissingWeight {
                name: name.to_string(),
                near: nearest_hint(name, self.names(), 3),
            });
        }
        let view = self.st.get(name).map_err(Error::Candle)?;
        let found: Vec<usize> = view.shape().to_vec();
        use safetensors::Dtype as D;
        if !matches!(view.dtype(), D::F32 | D::F16 | D::BF16 | D::F64) {
            return Err(Error::WeightDtype {
                name: name.into(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if found != shape {
            return Err(Error::WeightShape {
                name: name.into(),
                expected: shape.to_vec(),
                found,
            });
        }
        let t = self.st.load(name, &self.device)?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Loads `name` if present (optional biases).
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Candle's errors carry backtraces in Display; keep the first line.
fn short_candle_msg(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}
