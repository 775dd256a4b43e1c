//! The SAE outcomes: K11's toy superposition, an SAE's evaluation on a model, a training run.

use serde::Serialize;

use patchclamp_lab::sae::eval::SaeMetrics;
use patchclamp_lab::sae::toy::ToyResult;

use crate::error::Result;
use crate::output::{Outcome, Page};
use crate::plot::{LinePlot, Series};
use crate::vocab::Vocab;

/// K11 as `lab sae-toy` writes it.
#[derive(Serialize)]
pub struct SaeToyOutcome {
    pub result: ToyResult,
}

impl Outcome for SaeToyOutcome {
    fn title(&self) -> String {
        "K11: sparse autoencoders on a known superposition".into()
    }

    fn summary_lines(&self, _vocab: &Vocab) -> Vec<String> {
        let r = &self.result;
        let s = &r.spec;
        let mut lines = vec![format!(
            "{} features in d = {}, p = {}, magnitudes U(0, 1); {} latents; {} steps × {} samples; evaluated on {} fresh samples",
            s.n_features, s.d, s.p_active, s.ratio * s.d, s.steps, s.batch, s.eval_samples
        )];
        for v in &r.variants {
            lines.push(format!(
                "{:<30} MMCS {:.3}  FVU {:.3}  L0 {:.2} (true {:.2})  dead {:.1}% (counter {} = brute force {})",
                v.name,
                v.mmcs,
                v.fvu,
                v.l0,
                v.true_l0,
                100.0 * v.dead_fraction,
                v.dead_counter,
                v.dead_brute_force
            ));
        }
        lines.push(format!(
            "FVU floor of a linear encoder: an oracle knowing every true support, reading magnitudes as projections, has FVU {:.3}",
            r.oracle_fvu
        ));
        lines.push(format!(
            "loss recovered on a K1-shaped model: identity {:.4}, zeros {:.4}",
            r.loss_recovered_identity, r.loss_recovered_zero
        ));
        lines.extend(super::checks::check_lines(&r.checks, 4));
        lines
    }

    fn figures(&self, _vocab: &Vocab, page: &mut Page) -> Result<()> {
        let r = &self.result;
        let curve = |pick: fn(&(u64, f64, f64)) -> f64| -> Vec<Series> {
            r.variants
                .iter()
                .map(|v| Series {
                    name: v.name.clone(),
                    xs: v.curve.iter().map(|c| c.0 as f64).collect(),
                    ys: v.curve.iter().map(pick).collect(),
                    dashed: false,
                })
                .collect()
        };
        page.line(
            "fvu",
            "Fraction of variance unexplained on each training batch; the line is the support oracle's floor",
            LinePlot {
                title: "FVU during training".into(),
                x_label: "step".into(),
                y_label: "FVU".into(),
                series: curve(|c| c.1),
                markers: vec![],
                hline: Some((r.oracle_fvu, "oracle floor".into())),
                y_range: Some((0.0, 1.0)),
            },
        );
        let true_l0 = r.variants.first().map_or(0.0, |v| v.true_l0);
        page.line(
            "l0",
            "Active latents per sample during training; the line is the true mean number of active features",
            LinePlot {
                title: "L0 during training".into(),
                x_label: "step".into(),
                y_label: "L0".into(),
                series: curve(|c| c.2),
                markers: vec![],
                hline: Some((true_l0, "true".into())),
                y_range: None,
            },
        );
        page.html
            .push_str(&super::checks::checks_table(&r.checks, 4));
        Ok(())
    }
}

/// `sae eval`: the SAE, the corpus and the metrics.
#[derive(Serialize)]
pub struct SaeEvalOutcome {
    pub sae: String,
    pub architecture: String,
    pub hook: String,
    pub contexts: usize,
    pub context_size: usize,
    pub metrics: SaeMetrics,
}

/// The `log10(frequency)` histogram SAELens logs: 50 bins over [-10, 0] (never-firing
/// latents in the lowest).
pub fn log_density_histogram(freqs: &[f64]) -> (Vec<f64>, Vec<f64>) {
    const BINS: usize = 50;
    let (lo, hi) = (-10.0, 0.0);
    let width = (hi - lo) / BINS as f64;
    let mut counts = vec![0.0; BINS];
    for &f in freqs {
        let l = (f + 1e-10).log10().clamp(lo, hi - 1e-9);
        counts[((l - lo) / width) as usize] += 1.0;
    }
    let centres = (0..BINS).map(|i| lo + width * (i as f64 + 0.5)).collect();
    (centres, counts)
}

impl Outcome for SaeEvalOutcome {
    fn title(&self) -> String {
        format!("SAE evaluation: {} at {}", self.architecture, self.hook)
    }

    fn summary_lines(&self, _vocab: &Vocab) -> Vec<String> {
        let m = &self.metrics;
        vec![
            format!(
                "{} ({}) at {}: {} contexts of {} tokens, {} reconstructed tokens",
                self.sae, self.architecture, self.hook, self.contexts, self.context_size, m.tokens
            ),
            format!(
                "L0 {:.2}   explained variance {:.4}   MSE {:.4}   cos {:.4}   L2 ratio {:.4}",
                m.l0, m.explained_variance, m.mse, m.cossim, m.l2_ratio
            ),
            format!(
                "CE clean {:.4}   with SAE {:.4}   zero-ablated {:.4}   CE-loss score {:.4}   delta LM loss {:.4}",
                m.ce_clean, m.ce_sae, m.ce_zero, m.ce_loss_score, m.delta_lm_loss
            ),
            format!(
                "KL with SAE {:.4}   zero-ablated {:.4}   KL score {:.4}",
                m.kl_sae, m.kl_zero, m.kl_div_score
            ),
            format!(
                "dead latents {} of {}   dense (> 10% of tokens) {}",
                m.dead,
                m.frequencies.len(),
                m.dense
            ),
        ]
    }

    fn figures(&self, _vocab: &Vocab, page: &mut Page) -> Result<()> {
        let (xs, ys) = log_density_histogram(&self.metrics.frequencies);
        page.tensors.push((
            "frequencies".into(),
            vec![self.metrics.frequencies.len()],
            self.metrics.frequencies.iter().map(|&f| f as f32).collect(),
        ));
        page.line(
            "log_density",
            "Latents by log10 firing frequency (50 bins; never-firing latents in the leftmost)",
            LinePlot {
                title: "log10 feature density".into(),
                x_label: "log10 frequency".into(),
                y_label: "latents".into(),
                series: vec![Series {
                    name: "latents".into(),
                    xs,
                    ys,
                    dashed: false,
                }],
                markers: vec![],
                hline: None,
                y_range: None,
            },
        );
        Ok(())
    }
}
