//! Spliced SAEs: an SAE run inside the forward pass at its hook point, its stages exposed as
//! the `hook_sae_*` points (SAELens's names), editable like any other point.
//!
//! With the error term on, the SAE's output is its reconstruction plus what the clean
//! reconstruction missed, `x̂(edited) + (x − x̂(clean))`: downstream activations are unchanged
//! until a latent is edited. When nothing edits the SAE's points the output *is* `x`, bit for
//! bit (SAELens's sum equals it to rounding). A transcoder reads one point and replaces a
//! later one (`hook_name_out`); its error term is `y − ŷ(clean)` at that point.

use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::hooks::{HookPoint, SaeAt, SaeSite};
use crate::model::Config;
use crate::sae::{Kind, Sae};

/// An SAE spliced at a hook point.
#[derive(Debug, Clone)]
pub struct Splice {
    /// The SAE.
    pub sae: Arc<Sae>,
    /// Where it reads; its points are `<base>.hook_sae_*`.
    pub at: SaeAt,
    /// Where its output replaces the activation: `at`'s base for an SAE, `hook_name_out`
    /// for a transcoder.
    pub out: HookPoint,
    /// Whether the output adds the clean reconstruction's error back (downstream unchanged).
    pub error_term: bool,
}

impl Splice {
    /// Splices `sae` at the hook its config names (`metadata.hook_name`, and `hook_name_out`
    /// for a transcoder).
    pub fn new(sae: Arc<Sae>, error_term: bool) -> Result<Splice> {
        let Some(base) = sae.cfg.hook_in()? else {
            return Err(Error::Input(
                "the SAE's cfg.json names no metadata.hook_name: say where to splice it".into(),
            ));
        };
        Splice::at(sae, base, error_term)
    }

    /// Splices `sae` reading at `base` (overriding its config's `hook_name`).
    pub fn at(sae: Arc<Sae>, base: HookPoint, error_term: bool) -> Result<Splice> {
        let at = SaeAt::new(base).ok_or_else(|| {
            Error::Input(format!(
                "an SAE splices at a block's point (blocks.L.…), not at {base}"
            ))
        })?;
        let out = match sae.cfg.kind {
            Kind::Sae => base,
            _ => sae.cfg.hook_out()?.ok_or_else(|| {
                Error::Input("a transcoder needs metadata.hook_name_out (where it writes)".into())
            })?,
        };
        Ok(Splice {
            sae,
            at,
            out,
            error_term,
        })
    }

    /// The point of this splice at `site`.
    pub fn point(&self, site: SaeSite) -> HookPoint {
        self.at.point(site)
    }

    /// The shape of `site`'s activation for a `batch × seq` input.
    pub fn shape(&self, site: SaeSite, cfg: &Config, batch: usize, seq: usize) -> Vec<usize> {
        let c = &self.sae.cfg;
        match site {
            SaeSite::Input => vec![batch, seq, c.d_in],
            SaeSite::ActsPre | SaeSite::ActsPost => vec![batch, seq, c.d_sae],
            SaeSite::Recons => vec![batch, seq, c.d_out],
            SaeSite::Error | SaeSite::Output => self.out.shape(cfg, batch, seq),
        }
    }

    /// Checks the splice fits `cfg`: both points exist, the widths match, a transcoder
    /// writes after it reads.
    pub fn check(&self, cfg: &Config) -> Result<()> {
        let base = self.at.base();
        HookPoint::parse_for(&base.to_string(), cfg)?;
        HookPoint::parse_for(&self.out.to_string(), cfg)?;
        let c = &self.sae.cfg;
        let width = |p: HookPoint| -> usize {
            let s = p.shape(cfg, 1, 1);
            if c.reshape_hook_z && s.len() == 4 {
                s[2] * s[3]
            } else {
                *s.last().unwrap_or(&0)
            }
        };
        if width(base) != c.d_in {
            return Err(Error::Input(format!(
                "the SAE's d_in is {} but {base} has width {}{}",
                c.d_in,
                width(base),
                if c.reshape_hook_z {
                    " (heads × d_head)"
                } else {
                    ""
                }
            )));
        }
        if c.reshape_hook_z && base.head_dim().is_none() {
            return Err(Error::Input(format!(
                "the SAE reshapes hook_z activations but {base} has no head dimension"
            )));
        }
        if self.out != base {
            let all = HookPoint::all(cfg);
            let pos = |p: HookPoint| all.iter().position(|&q| q == p);
            if pos(self.out) <= pos(base) {
                return Err(Error::Input(format!(
                    "the transcoder writes {} but reads {base}, which comes later",
                    self.out
                )));
            }
            if *self.out.shape(cfg, 1, 1).last().unwrap_or(&0) != c.d_out {
                return Err(Error::Input(format!(
                    "the transcoder's d_out is {} but {} has width {}",
                    c.d_out,
                    self.out,
                    self.out.shape(cfg, 1, 1).last().unwrap_or(&0)
                )));
            }
        }
        Ok(())
    }
}

/// What a transcoder computed at its input point, waiting for its output point.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The (possibly edited) output, skip path included.
    pub y: Tensor,
    /// The clean output, for the error term (`None` when nothing edited the latents).
    pub clean: Option<Tensor>,
}

/// Every point of `splices`, each SAE's after its base point in `all`.
pub(crate) fn with_points(all: Vec<HookPoint>, splices: &[Splice]) -> Vec<HookPoint> {
    if splices.is_empty() {
        return all;
    }
    let mut out = Vec::with_capacity(all.len() + 6 * splices.len());
    for p in all {
        out.push(p);
        for s in splices.iter().filter(|s| s.at.base() == p) {
            out.extend(SaeSite::ALL.map(|site| s.point(site)));
        }
    }
    out
}
