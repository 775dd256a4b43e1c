//! Directional ablation (Arditi et al. 2024): remove a direction `r̂` from the residual stream
//! everywhere by projecting it out of the embedding and of every write into the stream (each
//! block's attention and MLP outputs), so no layer ever sees a component along it.

use patchclamp_core::hooks::Values;
use patchclamp_core::{Config, HookPoint, Intervention, Op};

use crate::error::{Error, Result};

/// The interventions that ablate `direction` (any non-zero length; it is normalised).
pub fn directional_ablation(cfg: &Config, direction: &[f32]) -> Result<Vec<Intervention>> {
    if direction.len() != cfg.d_model {
        return Err(Error::Input(format!(
            "the direction has {} values; the model's width is {}",
            direction.len(),
            cfg.d_model
        )));
    }
    let norm = direction
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(Error::Input(
            "the direction to ablate must be finite and non-zero".into(),
        ));
    }
    let unit: Vec<f64> = direction.iter().map(|&x| x as f64 / norm).collect();
    let project_out = |at: HookPoint| Intervention {
        at,
        select: Default::default(),
        op: Op::ProjectOut {
            basis: Values::Vector(unit.clone()),
        },
        when: Default::default(),
        decode: None,
    };
    let mut out = vec![project_out(HookPoint::ResidPre(0))];
    for l in 0..cfg.n_layers {
        out.push(project_out(HookPoint::AttnOut(l)));
        if cfg.has_mlp() {
            out.push(project_out(HookPoint::MlpOut(l)));
        }
    }
    Ok(out)
}
