//! Activation patching (exact and attribution) and causal tracing.

use patchclamp_lab::causal::patching::{PatchingConfig, PatchingResult};
use patchclamp_lab::causal::tracing::TraceResult;
use serde::Serialize;

use crate::error::Result;
use crate::output::{Figure, Outcome, Page};
use crate::plot::Heatmap;
use crate::vocab::Vocab;

/// A patching sweep over (layer, position) or (layer, head), with what was asked.
#[derive(Serialize)]
pub struct PatchOutcome {
    pub model: String,
    pub clean: String,
    pub corrupted: String,
    pub clean_tokens: Vec<u32>,
    pub corrupted_tokens: Vec<u32>,
    /// `i:clean/corrupted` per position (one token where they agree).
    pub token_labels: Vec<String>,
    /// `patching` or `attribution patching`.
    pub method: String,
    pub config: PatchingConfig,
    pub n_layers: usize,
    pub n_cols: usize,
    pub col_labels: Vec<String>,
    pub clean_metric: f32,
    pub corrupt_metric: f32,
    pub values: Vec<f32>,
    pub normalized: Vec<f32>,
    pub unchanged: usize,
    /// The point and metric as the user named them (for the figure's title).
    #[serde(skip)]
    pub point: String,
    #[serde(skip)]
    pub metric_name: String,
}

impl PatchOutcome {
    /// The outcome of sweep `r` between two token sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &str,
        (clean, corrupted): (&str, &str),
        (clean_tokens, corrupted_tokens): (Vec<u32>, Vec<u32>),
        method: &str,
        config: PatchingConfig,
        r: PatchingResult,
        vocab: &Vocab,
        (point, metric_name): (&str, &str),
    ) -> PatchOutcome {
        let token_labels: Vec<String> = clean_tokens
            .iter()
            .zip(&corrupted_tokens)
            .enumerate()
            .map(|(i, (&c, &k))| {
                let (c, k) = (vocab.show(c), vocab.show(k));
                if c == k {
                    format!("{i}:{c}")
                } else {
                    format!("{i}:{c}/{k}")
                }
            })
            .collect();
        let col_labels = if config.site.per_head() {
            (0..r.n_cols).map(|h| format!("H{h}")).collect()
        } else {
            token_labels.clone()
        };
        PatchOutcome {
            model: model.to_string(),
            clean: clean.to_string(),
            corrupted: corrupted.to_string(),
            clean_tokens,
            corrupted_tokens,
            token_labels,
            method: method.to_string(),
            config,
            n_layers: r.n_layers,
            n_cols: r.n_cols,
            col_labels,
            clean_metric: r.clean_metric,
            corrupt_metric: r.corrupt_metric,
            values: r.values,
            normalized: r.normalized,
            unchanged: r.unchanged,
            point: point.to_string(),
            metric_name: metric_name.to_string(),
        }
    }

    fn noising(&self) -> bool {
        self.config.direction == patchclamp_lab::causal::patching::Direction::Noise
    }
}

impl Outcome for PatchOutcome {
    fn title(&self) -> String {
        format!("Activation {}", self.method)
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        vec![format!(
            "clean {:.4}, corrupted {:.4}; {} layers × {} {}",
            self.clean_metric,
            self.corrupt_metric,
            self.n_layers,
            self.n_cols,
            if self.config.site.per_head() {
                "heads"
            } else {
                "positions"
            },
        )]
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let heat = Heatmap {
            title: format!(
                "{} {} of {}, metric {}",
                if self.noising() {
                    "noising"
                } else {
                    "denoising"
                },
                self.method,
                self.point,
                self.metric_name
            ),
            values: self.normalized.clone(),
            rows: self.n_layers,
            cols: self.n_cols,
            row_labels: (0..self.n_layers).map(|l| format!("L{l}")).collect(),
            col_labels: self.col_labels.clone(),
            x_label: if self.config.site.per_head() {
                "head".into()
            } else {
                "position (clean/corrupted token)".into()
            },
            y_label: "layer".into(),
            colorbar_label: "normalised recovery".into(),
        };
        page.grid("values", self.n_layers, self.n_cols, &self.values);
        page.grid("normalized", self.n_layers, self.n_cols, &self.normalized);
        page.figure(
            "heatmap",
            "Normalised recovery of the metric: 0 = corrupted run, 1 = clean run",
            Figure::Heat(heat),
        );
        Ok(())
    }
}

/// A causal trace (ROME), with what was asked.
#[derive(Serialize)]
pub struct TraceOutcome {
    pub model: String,
    pub prompt: String,
    pub tokens: Vec<u32>,
    /// `i:token`, with `*` on the noised subject.
    pub token_labels: Vec<String>,
    #[serde(flatten)]
    pub trace: TraceResult,
    /// What was restored, as the user named it.
    #[serde(skip)]
    pub kind_name: String,
}

impl TraceOutcome {
    /// The outcome of trace `r` of `tokens`.
    pub fn new(
        model: &str,
        prompt: &str,
        tokens: Vec<u32>,
        trace: TraceResult,
        vocab: &Vocab,
        kind_name: &str,
    ) -> TraceOutcome {
        let token_labels = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let s = vocab.show(t);
                if trace.config.subject.contains(&i) {
                    format!("{i}:{s}*")
                } else {
                    format!("{i}:{s}")
                }
            })
            .collect();
        TraceOutcome {
            model: model.to_string(),
            prompt: prompt.to_string(),
            tokens,
            token_labels,
            trace,
            kind_name: kind_name.to_string(),
        }
    }
}

impl Outcome for TraceOutcome {
    fn title(&self) -> String {
        "Causal tracing".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let r = &self.trace;
        vec![format!(
            "P(answer): clean {:.4}, corrupted {:.4} (total effect {:.4}, noise ν = {:.3})",
            r.clean_metric, r.corrupt_metric, r.total_effect, r.noise
        )]
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let r = &self.trace;
        let heat = Heatmap {
            title: format!(
                "causal trace ({}, window {}{}): indirect effect on P(answer)",
                self.kind_name,
                r.config.window,
                if r.config.severed { ", severed" } else { "" }
            ),
            values: r.indirect_effect.clone(),
            rows: r.n_layers,
            cols: r.n_positions,
            row_labels: (0..r.n_layers).map(|l| format!("L{l}")).collect(),
            col_labels: self.token_labels.clone(),
            x_label: "position (* = subject, noised)".into(),
            y_label: "layer".into(),
            colorbar_label: "indirect effect".into(),
        };
        page.grid("restored", r.n_layers, r.n_positions, &r.restored);
        page.grid(
            "indirect_effect",
            r.n_layers,
            r.n_positions,
            &r.indirect_effect,
        );
        page.figure(
            "heatmap",
            "Indirect effect of restoring each state to its clean value in the noised run",
            Figure::Heat(heat),
        );
        Ok(())
    }
}
