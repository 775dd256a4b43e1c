//! Hook points: every place an activation can be read or changed, named as in TransformerLens.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{nearest_hint, Error, Result};
use crate::model::Config;

/// Which norm a `hook_scale` / `hook_normalized` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormSite {
    /// Before attention (`blocks.L.ln1`).
    Ln1,
    /// Before the MLP (`blocks.L.ln2`).
    Ln2,
}

/// A place in the forward pass where an activation passes through `Hooks::at`.
///
/// Shapes use TransformerLens's conventions: `[batch, pos, ...]`, heads before `d_head`,
/// attention maps as `[batch, head, query_pos, key_pos]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed` — token embeddings `[batch, pos, d_model]`.
    Embed,
    /// `hook_pos_embed` — learned position embeddings `[batch, pos, d_model]`.
    PosEmbed,
    /// `blocks.L.hook_resid_pre` — residual stream entering block L.
    ResidPre(usize),
    /// `blocks.L.ln1|ln2.hook_scale` — the norm's divisor `[batch, pos, 1]`.
    NormScale(usize, NormSite),
    /// `blocks.L.ln1|ln2.hook_normalized` — the norm's output `[batch, pos, d_model]`.
    NormNormalized(usize, NormSite),
    /// `blocks.L.attn.hook_q` — queries `[batch, pos, n_heads, d_head]`.
    Q(usize),
    /// `blocks.L.attn.hook_k` — keys `[batch, pos, n_kv_heads, d_head]`.
    K(usize),
    /// `blocks.L.attn.hook_v` — values `[batch, pos, n_kv_heads, d_head]`.
    V(usize),
    /// `blocks.L.attn.hook_q_normed` — queries after the q RMSNorm (OLMoE, Qwen3)
    /// `[batch, pos, n_heads, d_head]`.
    QNormed(usize),
    /// `blocks.L.attn.hook_k_normed` — keys after the k RMSNorm `[batch, pos, n_kv_heads, d_head]`.
    KNormed(usize),
    /// `blocks.L.attn.hook_rot_q` — queries after rotary embedding.
    RotQ(usize),
    /// `blocks.L.attn.hook_rot_k` — keys after rotary embedding.
    RotK(usize),
    /// `blocks.L.attn.hook_attn_scores` — scaled, masked scores `[batch, head, q, k]`.
    AttnScores(usize),
    /// `blocks.L.attn.hook_pattern` — attention probabilities `[batch, head, q, k]`.
    Pattern(usize),
    /// `blocks.L.attn.hook_z` — pattern-weighted values `[batch, pos, n_heads, d_head]`.
    Z(usize),
    /// `blocks.L.attn.hook_result` — each head's output `[batch, pos, n_heads, d_model]`.
    Result(usize),
    /// `blocks.L.hook_attn_out` — attention output added to the residual.
    AttnOut(usize),
    /// `blocks.L.hook_resid_mid` — residual between attention and MLP.
    ResidMid(usize),
    /// `blocks.L.mlp.hook_pre` — MLP (gate) pre-activation `[batch, pos, d_mlp]`.
    MlpPre(usize),
    /// `blocks.L.mlp.hook_pre_linear` — gated MLP's linear (up) branch `[batch, pos, d_mlp]`.
    MlpPreLinear(usize),
    /// `blocks.L.mlp.hook_post` — MLP hidden activation `[batch, pos, d_mlp]`.
    MlpPost(usize),
    /// `blocks.L.mlp.gate.hook_in` — what a routing layer's router reads `[batch, pos, d_model]`.
    RouterIn(usize),
    /// `blocks.L.mlp.gate.hook_out` — router logits `[batch, pos, n_experts]`; an edit here
    /// (switch-off, forcing, a bias) changes the routing.
    RouterLogits(usize),
    /// `blocks.L.mlp.hook_expert_weights` — TransformerLens's full softmax (or sigmoid) over
    /// every expert before top-k, `[batch·pos, n_experts]`; editing it changes the selection.
    ExpertWeights(usize),
    /// `blocks.L.mlp.hook_expert_indices` — chosen experts `[batch·pos, top_k]` (as numbers).
    ExpertIndices(usize),
    /// `blocks.L.mlp.hook_topk_weights` — the chosen experts' final weights (renormalised and
    /// scaled the family's way) `[batch·pos, top_k]`.
    TopkWeights(usize),
    /// `blocks.L.mlp.experts.E.hook_pre|hook_pre_linear|hook_post` — one expert's hidden
    /// activations over the tokens routed to it, `[n_routed, d_expert]` in token order.
    Expert(usize, u32, ExpertSite),
    /// `blocks.L.mlp.shared_expert.hook_out` — the shared expert's output (after its gate)
    /// `[batch, pos, d_model]`.
    SharedOut(usize),
    /// `blocks.L.hook_mlp_out` — MLP output added to the residual.
    MlpOut(usize),
    /// `blocks.L.hook_resid_post` — residual leaving block L.
    ResidPost(usize),
    /// `ln_final.hook_scale`.
    FinalScale,
    /// `ln_final.hook_normalized`.
    FinalNormalized,
    /// `logits` — the output `[batch, pos, d_vocab]`.
    Logits,
    /// `<point>.hook_sae_*` — a point of an SAE spliced at a block's point (SAELens's names);
    /// it exists only while an SAE is spliced there.
    Sae(SaeAt, SaeSite),
}

/// A point inside one routed expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpertSite {
    /// `hook_pre` — the gate branch's pre-activation.
    Pre,
    /// `hook_pre_linear` — the linear (up) branch.
    PreLinear,
    /// `hook_post` — the hidden activation fed to `W_out` (scaling it scales the expert's output).
    Post,
}

impl ExpertSite {
    /// Every site, in firing order.
    pub const ALL: [ExpertSite; 3] = [ExpertSite::Pre, ExpertSite::PreLinear, ExpertSite::Post];

    /// TransformerLens's suffix.
    pub fn name(&self) -> &'static str {
        match self {
            ExpertSite::Pre => "hook_pre",
            ExpertSite::PreLinear => "hook_pre_linear",
            ExpertSite::Post => "hook_post",
        }
    }
}

/// The block point an SAE is spliced at (`blocks.L.hook_resid_post`, …), kept `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaeAt {
    layer: usize,
    kind: u8,
}

impl SaeAt {
    /// The splice site at `base`; `None` for a point outside the blocks or an SAE point.
    pub fn new(base: HookPoint) -> Option<SaeAt> {
        let layer = base.layer()?;
        if matches!(base, HookPoint::Sae(..)) {
            return None;
        }
        let kind = LAYER_KINDS.iter().position(|(_, f)| f(layer) == base)?;
        Some(SaeAt {
            layer,
            kind: kind as u8,
        })
    }

    /// The hook point the SAE reads.
    pub fn base(&self) -> HookPoint {
        (LAYER_KINDS[self.kind as usize].1)(self.layer)
    }

    /// This site's point `site`.
    pub fn point(&self, site: SaeSite) -> HookPoint {
        HookPoint::Sae(*self, site)
    }
}

/// The points of a spliced SAE, in the order they fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SaeSite {
    /// `hook_sae_input` — what the SAE reads, reshaped to `[batch, pos, d_in]`.
    Input,
    /// `hook_sae_acts_pre` — encoder pre-activations `[batch, pos, d_sae]`.
    ActsPre,
    /// `hook_sae_acts_post` — the latents `[batch, pos, d_sae]`.
    ActsPost,
    /// `hook_sae_recons` — the decoder's reconstruction `[batch, pos, d_out]`.
    Recons,
    /// `hook_sae_error` — what the reconstruction misses (with the error term) `[batch, pos, d_out]`.
    Error,
    /// `hook_sae_output` — what replaces the activation, in the activation's shape.
    Output,
}

impl SaeSite {
    /// Every site, in firing order.
    pub const ALL: [SaeSite; 6] = [
        SaeSite::Input,
        SaeSite::ActsPre,
        SaeSite::ActsPost,
        SaeSite::Recons,
        SaeSite::Error,
        SaeSite::Output,
    ];

    /// SAELens's hook name.
    pub fn name(&self) -> &'static str {
        match self {
            SaeSite::Input => "hook_sae_input",
            SaeSite::ActsPre => "hook_sae_acts_pre",
            SaeSite::ActsPost => "hook_sae_acts_post",
            SaeSite::Recons => "hook_sae_recons",
            SaeSite::Error => "hook_sae_error",
            SaeSite::Output => "hook_sae_output",
        }
    }
}

/// Per-layer point kinds, in forward order, with their TransformerLens suffixes.
/// Builds a point of one kind for a layer.
type LayerKind = fn(usize) -> HookPoint;

const LAYER_KINDS: &[(&str, LayerKind)] = &[
    ("hook_resid_pre", HookPoint::ResidPre),
    ("ln1.hook_scale", |l| HookPoint::NormScale(l, NormSite::Ln1)),
    ("ln1.hook_normalized", |l| {
        HookPoint::NormNormalized(l, NormSite::Ln1)
    }),
    ("attn.hook_q", HookPoint::Q),
    ("attn.hook_k", HookPoint::K),
    ("attn.hook_v", HookPoint::V),
    ("attn.hook_q_normed", HookPoint::QNormed),
    ("attn.hook_k_normed", HookPoint::KNormed),
    ("attn.hook_rot_q", HookPoint::RotQ),
    ("attn.hook_rot_k", HookPoint::RotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::Pattern),
    ("attn.hook_z", HookPoint::Z),
    ("attn.hook_result", HookPoint::Result),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_scale", |l| HookPoint::NormScale(l, NormSite::Ln2)),
    ("ln2.hook_normalized", |l| {
        HookPoint::NormNormalized(l, NormSite::Ln2)
    }),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("mlp.gate.hook_in", HookPoint::RouterIn),
    ("mlp.gate.hook_out", HookPoint::RouterLogits),
    ("mlp.hook_expert_weights", HookPoint::ExpertWeights),
    ("mlp.hook_expert_indices", HookPoint::ExpertIndices),
    ("mlp.hook_topk_weights", HookPoint::TopkWeights),
    ("mlp.shared_expert.hook_out", HookPoint::SharedOut),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

/// Global point kinds with their names.
const GLOBAL_KINDS: &[(&str, HookPoint)] = &[
    ("hook_embed", HookPoint::Embed),
    ("hook_pos_embed", HookPoint::PosEmbed),
    ("ln_final.hook_scale", HookPoint::FinalScale),
    ("ln_final.hook_normalized", HookPoint::FinalNormalized),
    ("logits", HookPoint::Logits),
];

impl HookPoint {
    /// Whether this point comes after a block's keys and values and holds query positions:
    /// what a forward that reads only the last position may compute for that position alone.
    pub fn is_query_side(&self) -> bool {
        use HookPoint::*;
        if let Sae(at, _) = self {
            return at.base().is_query_side();
        }
        !matches!(
            self,
            Embed
                | PosEmbed
                | ResidPre(_)
                | NormScale(_, NormSite::Ln1)
                | NormNormalized(_, NormSite::Ln1)
                | K(_)
                | V(_)
                | KNormed(_)
                | RotK(_)
        )
    }

    /// The block this point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        use HookPoint::*;
        match *self {
            ResidPre(l)
            | NormScale(l, _)
            | NormNormalized(l, _)
            | Q(l)
            | K(l)
            | V(l)
            | QNormed(l)
            | KNormed(l)
            | RotQ(l)
            | RotK(l)
            | AttnScores(l)
            | Pattern(l)
            | Z(l)
            | Result(l)
            | AttnOut(l)
            | ResidMid(l)
            | MlpPre(l)
            | MlpPreLinear(l)
            | MlpPost(l)
            | RouterIn(l)
            | RouterLogits(l)
            | ExpertWeights(l)
            | ExpertIndices(l)
            | TopkWeights(l)
            | Expert(l, ..)
            | SharedOut(l)
            | MlpOut(l)
            | ResidPost(l) => Some(l),
            Sae(at, _) => Some(at.layer),
            Embed | PosEmbed | FinalScale | FinalNormalized | Logits => None,
        }
    }

    /// The name without the `blocks.L.` prefix (`attn.hook_z`, `hook_embed`); an SAE point's
    /// is its site's (`hook_sae_acts_post`).
    pub fn kind_name(&self) -> &'static str {
        if let HookPoint::Sae(_, site) = self {
            site.name()
        } else if let HookPoint::Expert(_, _, site) = self {
            match site {
                ExpertSite::Pre => "mlp.experts.*.hook_pre",
                ExpertSite::PreLinear => "mlp.experts.*.hook_pre_linear",
                ExpertSite::Post => "mlp.experts.*.hook_post",
            }
        } else if let Some(l) = self.layer() {
            LAYER_KINDS
                .iter()
                .find(|(_, f)| f(l) == *self)
                .map(|(n, _)| *n)
                .unwrap_or("?")
        } else {
            GLOBAL_KINDS
                .iter()
                .find(|(_, p)| p == self)
                .map(|(n, _)| *n)
                .unwrap_or("?")
        }
    }

    /// The dimension of this activation that indexes (query) positions: 2 for attention maps
    /// `[batch, head, query, key]`, 1 for everything else `[batch, pos, ...]`.
    pub fn pos_dim(&self) -> usize {
        match self {
            HookPoint::AttnScores(_) | HookPoint::Pattern(_) => 2,
            _ => 1,
        }
    }

    /// The dimension of this activation that indexes heads, if any: 1 for attention maps,
    /// 2 for per-head activations `[batch, pos, head, d_head]`.
    pub fn head_dim(&self) -> Option<usize> {
        match self {
            HookPoint::AttnScores(_) | HookPoint::Pattern(_) => Some(1),
            p if p.has_heads() => Some(2),
            _ => None,
        }
    }

    /// Whether heads index a dimension of this activation.
    pub fn has_heads(&self) -> bool {
        use HookPoint::*;
        matches!(
            self,
            Q(_) | K(_)
                | V(_)
                | QNormed(_)
                | KNormed(_)
                | RotQ(_)
                | RotK(_)
                | AttnScores(_)
                | Pattern(_)
                | Z(_)
                | Result(_)
        )
    }

    /// Whether this activation's first dimension runs over tokens (`[batch·pos, …]`, or an
    /// expert's routed tokens) instead of `[batch, pos, …]`: row and position selections do
    /// not apply (select at `blocks.L.mlp.gate.hook_out` instead).
    pub fn is_flat(&self) -> bool {
        use HookPoint::*;
        matches!(
            self,
            ExpertWeights(_) | ExpertIndices(_) | TopkWeights(_) | Expert(..)
        )
    }

    /// The SAE site this point belongs to, for `<point>.hook_sae_*` names.
    pub fn sae(&self) -> Option<(SaeAt, SaeSite)> {
        match *self {
            HookPoint::Sae(at, site) => Some((at, site)),
            _ => None,
        }
    }

    /// Every hook point `cfg` has, in forward order.
    pub fn all(cfg: &Config) -> Vec<HookPoint> {
        let mut out = vec![HookPoint::Embed];
        if cfg.positions == crate::model::Positions::Learned {
            out.push(HookPoint::PosEmbed);
        }
        for l in 0..cfg.n_layers {
            for (_, f) in LAYER_KINDS {
                let p = f(l);
                if p == HookPoint::SharedOut(l) {
                    // Experts fire between the selection and the shared expert.
                    if let Some(m) = cfg.moe_at(l) {
                        for e in 0..m.n_experts as u32 {
                            for site in ExpertSite::ALL {
                                out.push(HookPoint::Expert(l, e, site));
                            }
                        }
                    }
                }
                if p.exists_in(cfg) {
                    out.push(p);
                }
            }
        }
        if cfg.norm.final_norm && cfg.has_norm() {
            out.push(HookPoint::FinalScale);
            out.push(HookPoint::FinalNormalized);
        }
        out.push(HookPoint::Logits);
        out
    }

    /// Whether this point exists in a model of config `cfg`.
    pub fn exists_in(&self, cfg: &Config) -> bool {
        use HookPoint::*;
        if let Some(l) = self.layer() {
            if l >= cfg.n_layers {
                return false;
            }
        }
        match self {
            PosEmbed => cfg.positions == crate::model::Positions::Learned,
            NormScale(_, NormSite::Ln1) | NormNormalized(_, NormSite::Ln1) => cfg.has_norm(),
            NormScale(_, NormSite::Ln2) | NormNormalized(_, NormSite::Ln2) => {
                cfg.has_norm() && cfg.has_mlp()
            }
            RotQ(_) | RotK(_) => cfg.rotary().is_some(),
            QNormed(_) | KNormed(_) => cfg.attn.qk_norm.is_some(),
            ResidMid(_) | MlpOut(_) => cfg.has_mlp(),
            MlpPre(l) | MlpPost(l) => cfg.dense_mlp_at(*l),
            MlpPreLinear(l) => cfg.gated_mlp() && cfg.dense_mlp_at(*l),
            RouterIn(l) | RouterLogits(l) | ExpertWeights(l) | ExpertIndices(l)
            | TopkWeights(l) => cfg.moe_at(*l).is_some(),
            Expert(l, e, _) => cfg.moe_at(*l).is_some_and(|m| (*e as usize) < m.n_experts),
            SharedOut(l) => cfg.moe_at(*l).is_some_and(|m| m.shared.is_some()),
            FinalScale | FinalNormalized => cfg.norm.final_norm && cfg.has_norm(),
            Sae(at, _) => at.base().exists_in(cfg),
            _ => true,
        }
    }

    /// The activation's shape for a `batch × pos` input. An SAE point's shape depends on the
    /// SAE: this gives its base point's (`Hooks` knows the spliced SAE's).
    pub fn shape(&self, cfg: &Config, batch: usize, pos: usize) -> Vec<usize> {
        use HookPoint::*;
        let (d, h, kv, dh) = (
            cfg.d_model,
            cfg.attn.n_heads,
            cfg.attn.n_kv_heads,
            cfg.attn.d_head,
        );
        match self {
            Embed | PosEmbed | ResidPre(_) | ResidMid(_) | ResidPost(_) | AttnOut(_)
            | MlpOut(_) | NormNormalized(..) | FinalNormalized | RouterIn(_) | SharedOut(_) => {
                vec![batch, pos, d]
            }
            RouterLogits(_) => vec![batch, pos, moe_n(cfg)],
            ExpertWeights(_) => vec![batch * pos, moe_n(cfg)],
            ExpertIndices(_) | TopkWeights(_) => {
                vec![batch * pos, cfg.moe().map_or(0, |m| m.top_k)]
            }
            // At most every token (each token visits an expert once); how many is the router's.
            Expert(..) => vec![batch * pos, cfg.moe().map_or(0, |m| m.d_expert)],
            NormScale(..) | FinalScale => vec![batch, pos, 1],
            Q(_) | QNormed(_) | RotQ(_) | Z(_) => vec![batch, pos, h, dh],
            K(_) | V(_) | KNormed(_) | RotK(_) => vec![batch, pos, kv, dh],
            AttnScores(_) | Pattern(_) => vec![batch, h, pos, pos],
            Result(_) => vec![batch, pos, h, d],
            MlpPre(_) | MlpPreLinear(_) | MlpPost(_) => vec![batch, pos, cfg.d_mlp()],
            Logits => vec![batch, pos, cfg.d_vocab],
            Sae(at, _) => at.base().shape(cfg, batch, pos),
        }
    }

    /// Parses `name` and checks it exists in `cfg`, with a helpful error otherwise.
    ///
    /// An expert point of a layer that routes names its expert range; one of a dense layer,
    /// the layers that route.
    pub fn parse_for(name: &str, cfg: &Config) -> Result<HookPoint> {
        let p: HookPoint = name.parse()?;
        if let Some(l) = p.layer() {
            if l >= cfg.n_layers {
                return Err(Error::OutOfRange {
                    what: "layer",
                    index: l as i64,
                    limit: format!("{} layers (0..={})", cfg.n_layers, cfg.n_layers - 1),
                });
            }
        }
        if let (Some(l), Some(m)) = (p.layer(), cfg.moe()) {
            let routed = p.is_routing();
            if routed && !m.routes(l) {
                return Err(Error::Input(format!(
                    "{name}: layer {l} has a dense MLP, not experts (layers that route: {})",
                    join_layers(&cfg.moe_layers())
                )));
            }
            if let HookPoint::Expert(_, e, _) = p {
                if e as usize >= m.n_experts {
                    return Err(Error::OutOfRange {
                        what: "expert",
                        index: e as i64,
                        limit: format!("{} experts in layer {l}", m.n_experts),
                    });
                }
            }
        }
        if !p.exists_in(cfg) {
            let names: Vec<String> = HookPoint::all(cfg).iter().map(|p| p.to_string()).collect();
            return Err(Error::UnknownHook {
                name: format!("{name}' (this model has no such point"),
                near: nearest_hint(name, names.iter().map(|s| s.as_str()), 3)
                    .replacen("; did", "); did", 1),
            });
        }
        Ok(p)
    }

    /// Whether this point belongs to a layer's routing (router, selection, experts).
    pub fn is_routing(&self) -> bool {
        use HookPoint::*;
        matches!(
            self,
            RouterIn(_)
                | RouterLogits(_)
                | ExpertWeights(_)
                | ExpertIndices(_)
                | TopkWeights(_)
                | Expert(..)
                | SharedOut(_)
        )
    }

    /// Canonical names of every point of a generic 1-layer model, for suggestions.
    fn vocabulary() -> Vec<String> {
        let mut v: Vec<String> = GLOBAL_KINDS.iter().map(|(n, _)| n.to_string()).collect();
        for (n, _) in LAYER_KINDS {
            v.push(format!("blocks.0.{n}"));
        }
        for site in ExpertSite::ALL {
            v.push(format!("blocks.0.mlp.experts.0.{}", site.name()));
        }
        v
    }
}

/// The number of routed experts of `cfg` (0 for a dense model).
fn moe_n(cfg: &Config) -> usize {
    cfg.moe().map_or(0, |m| m.n_experts)
}

/// `0, 2, 3` (or `none`).
fn join_layers(layers: &[usize]) -> String {
    if layers.is_empty() {
        return "none".into();
    }
    layers
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let HookPoint::Sae(at, site) = self {
            return write!(f, "{}.{}", at.base(), site.name());
        }
        if let HookPoint::Expert(l, e, site) = self {
            return write!(f, "blocks.{l}.mlp.experts.{e}.{}", site.name());
        }
        match self.layer() {
            Some(l) => write!(f, "blocks.{l}.{}", self.kind_name()),
            None => f.write_str(self.kind_name()),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let unknown = || {
            let vocab = HookPoint::vocabulary();
            // Suggest with the user's layer number kept, so "blocks.3.attn.hook_zz" suggests
            // "blocks.3.attn.hook_z".
            let layer = name
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next());
            let vocab: Vec<String> = match layer {
                Some(l) if l.parse::<usize>().is_ok() => vocab
                    .iter()
                    .map(|v| v.replacen("blocks.0.", &format!("blocks.{l}."), 1))
                    .collect(),
                _ => vocab,
            };
            Error::UnknownHook {
                name: name.to_string(),
                near: nearest_hint(name, vocab.iter().map(|s| s.as_str()), 3),
            }
        };
        if let Some(&(_, p)) = GLOBAL_KINDS.iter().find(|(n, _)| *n == name) {
            return Ok(p);
        }
        // TransformerLens spells the final norm "ln_final"; accept the bare logits alias too.
        if name == "hook_logits" || name == "unembed.hook_out" {
            return Ok(HookPoint::Logits);
        }
        if let Some((base, site)) = name.rsplit_once('.') {
            if let Some(site) = SaeSite::ALL.into_iter().find(|s| s.name() == site) {
                let base: HookPoint = base.parse()?;
                let at = SaeAt::new(base).ok_or_else(|| Error::UnknownHook {
                    name: name.to_string(),
                    near: format!(
                        " (an SAE splices at a block's point, blocks.L.…, not at {base})"
                    ),
                })?;
                return Ok(HookPoint::Sae(at, site));
            }
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, kind) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        if let Some(rest) = kind.strip_prefix("mlp.experts.") {
            let (e, site) = rest.split_once('.').ok_or_else(unknown)?;
            let e: u32 = e.parse().map_err(|_| unknown())?;
            let site = ExpertSite::ALL
                .into_iter()
                .find(|s| s.name() == site)
                .ok_or_else(unknown)?;
            return Ok(HookPoint::Expert(layer, e, site));
        }
        LAYER_KINDS
            .iter()
            .find(|(n, _)| *n == kind)
            .map(|(_, f)| f(layer))
            .ok_or_else(unknown)
    }
}

impl Serialize for HookPoint {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HookPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (n, f) in LAYER_KINDS {
            let p = f(7);
            assert_eq!(p.to_string(), format!("blocks.7.{n}"));
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        for (n, p) in GLOBAL_KINDS {
            assert_eq!(p.to_string(), *n);
            assert_eq!(n.parse::<HookPoint>().unwrap(), *p);
        }
    }

    #[test]
    fn expert_names_round_trip() {
        for site in ExpertSite::ALL {
            let p = HookPoint::Expert(2, 13, site);
            let name = format!("blocks.2.mlp.experts.13.{}", site.name());
            assert_eq!(p.to_string(), name);
            assert_eq!(name.parse::<HookPoint>().unwrap(), p);
        }
        assert!("blocks.2.mlp.experts.x.hook_pre"
            .parse::<HookPoint>()
            .is_err());
        assert!("blocks.2.mlp.experts.1.hook_mid"
            .parse::<HookPoint>()
            .is_err());
    }

    #[test]
    fn sae_names_round_trip() {
        for (n, f) in LAYER_KINDS {
            for site in SaeSite::ALL {
                let at = SaeAt::new(f(3)).unwrap();
                let p = at.point(site);
                assert_eq!(p.to_string(), format!("blocks.3.{n}.{}", site.name()));
                assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
                assert_eq!(p.layer(), Some(3));
            }
        }
        let e = "hook_embed.hook_sae_input"
            .parse::<HookPoint>()
            .unwrap_err();
        assert!(e.to_string().contains("block's point"), "{e}");
    }

    #[test]
    fn unknown_name_suggests_nearest_with_layer_kept() {
        let e = "blocks.3.attn.hook_zz"
            .parse::<HookPoint>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown hook point 'blocks.3.attn.hook_zz'"),
            "{e}"
        );
        assert!(e.contains("'blocks.3.attn.hook_z'"), "{e}");
        let e = "hook_embd".parse::<HookPoint>().unwrap_err().to_string();
        assert!(e.contains("'hook_embed'"), "{e}");
    }
}
