//! The model's tensors in one canonical layout, and the checkpoint reader that fills them.
//!
//! Matrices are stored the way activations multiply them, `x @ W` (input dimension first), so
//! `W_Q` is `[d_model, n_heads·d_head]` — TransformerLens's orientation with heads flattened.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{nearest_hint, Error, Result};
use crate::model::param::{AttnPart, BlockNorm, MlpPart, MoePart, NormPart, Param};

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
    /// Query and key RMSNorm gains (`[d_head]` per head or `[heads·d_head]`), if the model has them.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
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

/// One mixture-of-experts layer.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// Router `[d_model, n_experts]`.
    pub w_router: Tensor,
    /// Selection-only bias `[n_experts]` (DeepSeek-V3's `e_score_correction_bias`).
    pub router_bias: Option<Tensor>,
    /// The routed experts, gated MLPs `[d_model, d_expert]` / `[d_expert, d_model]`.
    pub experts: Vec<MlpWeights>,
    /// The shared expert, if the family has one.
    pub shared: Option<MlpWeights>,
    /// The shared expert's gate `[d_model, 1]` (Qwen2-MoE).
    pub w_shared_gate: Option<Tensor>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub ln1: NormWeights,
    pub attn: AttnWeights,
    pub ln2: NormWeights,
    /// The dense MLP (absent in attention-only blocks and in layers that route).
    pub mlp: Option<MlpWeights>,
    /// The mixture of experts of a layer that routes.
    pub moe: Option<MoeWeights>,
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

    /// A copy with every tensor replaced by `f(name, tensor)`, visited in a fixed order under
    /// TransformerLens state-dict names (`embed.W_E`, `blocks.0.attn.W_Q`, …; our `x @ W`
    /// orientation, heads flattened).
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<Weights> {
        self.map_params(|p, t| f(&p.to_string(), t))
    }

    /// [`Weights::map`] with each tensor's typed handle instead of its name.
    pub fn map_params(
        &self,
        mut f: impl FnMut(Param, &Tensor) -> Result<Tensor>,
    ) -> Result<Weights> {
        let mut one = |p: Param, t: &Tensor| f(p, t);
        let opt =
            |p: Param, t: &Option<Tensor>, f: &mut dyn FnMut(Param, &Tensor) -> Result<Tensor>| {
                t.as_ref().map(|t| f(p, t)).transpose()
            };
        let w_e = one(Param::Embed, &self.w_e)?;
        let w_pos = opt(Param::PosEmbed, &self.w_pos, &mut one)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (layer, b) in self.blocks.iter().enumerate() {
            let norm = |norm: BlockNorm,
                        n: &NormWeights,
                        one: &mut dyn FnMut(Param, &Tensor) -> Result<Tensor>|
             -> Result<NormWeights> {
                let at = |part| Param::Norm { layer, norm, part };
                Ok(NormWeights {
                    w: opt(at(NormPart::Gain), &n.w, one)?,
                    b: opt(at(NormPart::Bias), &n.b, one)?,
                })
            };
            let ln1 = norm(BlockNorm::Ln1, &b.ln1, &mut one)?;
            let (a, at) = (&b.attn, |part| Param::Attn { layer, part });
            let attn = AttnWeights {
                w_q: one(at(AttnPart::WQ), &a.w_q)?,
                b_q: opt(at(AttnPart::BQ), &a.b_q, &mut one)?,
                w_k: one(at(AttnPart::WK), &a.w_k)?,
                b_k: opt(at(AttnPart::BK), &a.b_k, &mut one)?,
                w_v: one(at(AttnPart::WV), &a.w_v)?,
                b_v: opt(at(AttnPart::BV), &a.b_v, &mut one)?,
                w_o: one(at(AttnPart::WO), &a.w_o)?,
                b_o: opt(at(AttnPart::BO), &a.b_o, &mut one)?,
                q_norm: opt(at(AttnPart::QNorm), &a.q_norm, &mut one)?,
                k_norm: opt(at(AttnPart::KNorm), &a.k_norm, &mut one)?,
            };
            let ln2 = norm(BlockNorm::Ln2, &b.ln2, &mut one)?;
            let mlp_of = |m: &MlpWeights,
                          at: &dyn Fn(MlpPart) -> Param,
                          one: &mut dyn FnMut(Param, &Tensor) -> Result<Tensor>|
             -> Result<MlpWeights> {
                Ok(MlpWeights {
                    w_gate: opt(at(MlpPart::WGate), &m.w_gate, one)?,
                    b_gate: opt(at(MlpPart::BGate), &m.b_gate, one)?,
                    w_in: one(at(MlpPart::WIn), &m.w_in)?,
                    b_in: opt(at(MlpPart::BIn), &m.b_in, one)?,
                    w_out: one(at(MlpPart::WOut), &m.w_out)?,
                    b_out: opt(at(MlpPart::BOut), &m.b_out, one)?,
                })
            };
            let mlp = match &b.mlp {
                None => None,
                Some(m) => Some(mlp_of(m, &|part| Param::Mlp { layer, part }, &mut one)?),
            };
            let moe = match &b.moe {
                None => None,
                Some(m) => {
                    let at = |part| Param::Moe { layer, part };
                    let w_router = one(at(MoePart::Router), &m.w_router)?;
                    let router_bias = opt(at(MoePart::RouterBias), &m.router_bias, &mut one)?;
                    let mut experts = Vec::with_capacity(m.experts.len());
                    for (e, x) in m.experts.iter().enumerate() {
                        let at = |part| Param::Moe {
                            layer,
                            part: MoePart::Expert(e as u32, part),
                        };
                        experts.push(mlp_of(x, &at, &mut one)?);
                    }
                    let shared = match &m.shared {
                        None => None,
                        Some(x) => {
                            let at = |part| Param::Moe {
                                layer,
                                part: MoePart::Shared(part),
                            };
                            Some(mlp_of(x, &at, &mut one)?)
                        }
                    };
                    let w_shared_gate = opt(at(MoePart::SharedGate), &m.w_shared_gate, &mut one)?;
                    Some(MoeWeights {
                        w_router,
                        router_bias,
                        experts,
                        shared,
                        w_shared_gate,
                    })
                }
            };
            blocks.push(BlockWeights {
                ln1,
                attn,
                ln2,
                mlp,
                moe,
            });
        }
        let ln_final = NormWeights {
            w: opt(Param::FinalNorm(NormPart::Gain), &self.ln_final.w, &mut one)?,
            b: opt(Param::FinalNorm(NormPart::Bias), &self.ln_final.b, &mut one)?,
        };
        let w_u = opt(Param::Unembed, &self.w_u, &mut one)?;
        let b_u = opt(Param::UnembedBias, &self.b_u, &mut one)?;
        Ok(Weights {
            w_e,
            w_pos,
            blocks,
            ln_final,
            w_u,
            b_u,
        })
    }

    /// Every tensor with its handle, in [`Weights::map`]'s order.
    pub fn params(&self) -> Vec<(Param, Tensor)> {
        let mut out = Vec::new();
        let _ = self.map_params(|p, t| {
            out.push((p, t.clone()));
            Ok(t.clone())
        });
        out
    }

    /// Every tensor under its name, in [`Weights::map`]'s order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let _ = self.map(|name, t| {
            out.push((name.to_string(), t.clone()));
            Ok(t.clone())
        });
        out
    }
}

/// Safetensors files of a checkpoint, memory-mapped, read tensor by tensor.
pub struct Checkpoint {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    /// Values stored, over every tensor (saturating).
    n_values: usize,
    device: Device,
    /// Names read so far, so a load can tell which tensors nothing asked for.
    read: std::sync::Mutex<BTreeSet<String>>,
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
        let tensors = st.tensors();
        let n_values = tensors.iter().fold(0usize, |n, (_, v)| {
            n.saturating_add(v.shape().iter().fold(1usize, |a, &b| a.saturating_mul(b)))
        });
        let names = tensors.into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            st,
            names,
            n_values,
            device: device.clone(),
            read: Default::default(),
        })
    }

    /// Whether the checkpoint holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Fails when `cfg` declares far more parameters than the files store, before anything
    /// is allocated for them (a `n_layer` of 10^9 would otherwise ask for 144 GB first). A
    /// small shortfall is left to the tensor-by-tensor checks, which name the missing weight.
    pub fn check_holds(&self, cfg: &crate::model::Config) -> Result<()> {
        let declared = cfg.n_params();
        if declared > self.n_values.saturating_mul(2).saturating_add(1 << 20) {
            return Err(Error::Input(format!(
                "the config declares {} parameters ({} layers, d_model {}) but the weights hold {} values; config.json does not describe these weights",
                if declared == usize::MAX { "more than 2^64".to_string() } else { declared.to_string() },
                cfg.n_layers,
                cfg.d_model,
                self.n_values
            )));
        }
        Ok(())
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
        if let Ok(mut read) = self.read.lock() {
            read.insert(name.to_string());
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Marks `name` as accounted for without reading it (a copy the model does not need, such
    /// as a tied unembedding stored twice).
    pub fn skip(&self, name: &str) {
        if let Ok(mut read) = self.read.lock() {
            read.insert(name.to_string());
        }
    }

    /// The tensors no weight was read from, apart from buffers that hold no weights (GPT-2's
    /// causal-mask `attn.bias` / `attn.masked_bias`, rotary `inv_freq` tables).
    pub fn unused(&self) -> Vec<String> {
        let read = self.read.lock().map(|r| r.clone()).unwrap_or_default();
        self.names
            .iter()
            .filter(|n| !read.contains(*n))
            .filter(|n| {
                !(n.ends_with(".attn.bias")
                    || n.ends_with(".attn.masked_bias")
                    || n.ends_with("rotary_emb.inv_freq"))
            })
            .cloned()
            .collect()
    }

    /// Fails when the checkpoint holds tensors the config gave no place to (a 2-layer file
    /// read with `n_layer: 1` would otherwise silently lose a layer).
    pub fn finish(&self) -> Result<()> {
        let unused = self.unused();
        if unused.is_empty() {
            return Ok(());
        }
        let mut shown: Vec<String> = unused.iter().take(4).cloned().collect();
        if unused.len() > 4 {
            shown.push(format!("and {} more", unused.len() - 4));
        }
        Err(Error::UnusedWeights {
            count: unused.len(),
            names: shown.join(", "),
        })
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
