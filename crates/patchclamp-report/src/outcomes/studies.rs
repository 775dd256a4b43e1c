//! The logit lens, the neuron census, linear probes and the localizer.

use patchclamp_lab::analysis::lens::{LatentCurves, LogitLens};
use patchclamp_lab::analysis::linear_probe::{PointProbes, Tcav};
use patchclamp_lab::analysis::neurons::{CensusStudy, Localized, UnitAblation};
use serde::Serialize;

use crate::error::Result;
use crate::html::esc;
use crate::output::{Outcome, Page};
use crate::plot::{Heatmap, LinePlot, Series};
use crate::vocab::Vocab;

/// Most prompts drawn as lens heatmaps (all are in result.json).
pub const MAX_LENS_FIGURES: usize = 8;

/// The logit lens of each prompt, and the latent-language curves when asked for.
#[derive(Serialize)]
pub struct LensOutcome {
    pub model: String,
    pub prompts: Vec<String>,
    pub lens: Vec<LogitLens>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latent: Option<LatentCurves>,
}

/// `blocks.3.hook_resid_post` → `L3`.
fn short_layer(label: &str) -> String {
    label
        .strip_prefix("blocks.")
        .and_then(|r| r.split('.').next())
        .map(|l| format!("L{l}"))
        .unwrap_or_else(|| label.to_string())
}

/// An HTML table of the top-1 token per layer and position.
fn top_table(vocab: &Vocab, lens: &LogitLens, i: usize) -> String {
    let mut h = format!("<h3>Top-1 token by layer, prompt {i}</h3><table><tr><th></th>");
    for &t in &lens.tokens {
        h.push_str(&format!("<th>{}</th>", esc(&vocab.show(t))));
    }
    h.push_str("</tr>");
    for (l, row) in lens.top.iter().enumerate() {
        h.push_str(&format!(
            "<tr><th>{}</th>",
            esc(&short_layer(&lens.layers[l]))
        ));
        for cell in row {
            let (id, p) = cell[0];
            h.push_str(&format!(
                "<td title=\"{p:.3}\">{}</td>",
                esc(&vocab.show(id))
            ));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

impl Outcome for LensOutcome {
    fn title(&self) -> String {
        "Logit lens".into()
    }

    fn summary_lines(&self, vocab: &Vocab) -> Vec<String> {
        let mut lines = vec![];
        for (i, lens) in self.lens.iter().enumerate() {
            if let Some((id, prob)) = lens.top.last().and_then(|r| r.last()).map(|t| t[0]) {
                let first = lens
                    .top
                    .iter()
                    .position(|l| l.last().is_some_and(|t| t[0].0 == id))
                    .map(|k| lens.layers[k].clone())
                    .unwrap_or_default();
                lines.push(format!(
                    "prompt {i}: final top-1 {:?} ({prob:.3}); first layer where it is top-1: {first}",
                    vocab.show(id)
                ));
            }
        }
        if let Some(c) = &self.latent {
            for (n, m) in c.names.iter().zip(&c.mean) {
                let (k, best) =
                    m.iter().enumerate().fold(
                        (0, f64::MIN),
                        |b, (k, &x)| {
                            if x > b.1 {
                                (k, x)
                            } else {
                                b
                            }
                        },
                    );
                lines.push(format!("set {n}: peak {best:.3} at {}", c.layers[k]));
            }
        }
        lines
    }

    fn figures(&self, vocab: &Vocab, page: &mut Page) -> Result<()> {
        for (i, (lens, text)) in self
            .lens
            .iter()
            .zip(&self.prompts)
            .enumerate()
            .take(MAX_LENS_FIGURES)
        {
            // Every position but the last has a next token to score.
            let cols = lens.tokens.len() - 1;
            if cols > 0 {
                let heat = Heatmap {
                    title: format!("logit lens: P(next token), prompt {i}"),
                    values: lens.next_token.iter().flatten().copied().collect(),
                    rows: lens.layers.len(),
                    cols,
                    row_labels: lens.layers.iter().map(|l| short_layer(l)).collect(),
                    col_labels: lens.tokens[..cols]
                        .iter()
                        .enumerate()
                        .map(|(t, &id)| format!("{t}:{}", vocab.show(id)))
                        .collect(),
                    x_label: "position (input token)".into(),
                    y_label: "layer".into(),
                    colorbar_label: "probability of the next token".into(),
                };
                page.heatmap(&format!("lens_{i}"), &format!("Prompt {i}: {text}"), heat);
            }
            page.html.push_str(&top_table(vocab, lens, i));
        }
        if let Some(c) = &self.latent {
            let xs: Vec<f64> = (0..c.layers.len()).map(|x| x as f64).collect();
            page.line(
                "latent",
                "Mean probability of each token set at the last position, by layer (0 = embeddings)",
                LinePlot {
                    title: format!("latent language over {} prompts", c.prompts),
                    x_label: "layer".into(),
                    y_label: "probability".into(),
                    series: c
                        .names
                        .iter()
                        .zip(&c.mean)
                        .map(|(n, m)| Series {
                            name: n.clone(),
                            xs: xs.clone(),
                            ys: m.clone(),
                            dashed: false,
                        })
                        .collect(),
                    markers: vec![],
                    hline: None,
                    y_range: Some((0.0, 1.0)),
                },
            );
        }
        Ok(())
    }
}

/// The neuron census over a prompt stream.
#[derive(Serialize)]
pub struct NeuronsOutcome {
    pub model: String,
    #[serde(flatten)]
    pub study: CensusStudy,
    /// MLP width, for the summary.
    #[serde(skip)]
    pub d_mlp: usize,
}

impl Outcome for NeuronsOutcome {
    fn title(&self) -> String {
        "Neuron census".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let rep = &self.study.census;
        let mut lines = vec![format!(
            "{} tokens, {} layers × {} neurons",
            rep.tokens,
            rep.layers.len(),
            self.d_mlp
        )];
        for (l, lr) in rep.layers.iter().enumerate() {
            lines.push(format!(
                "L{l}: dead {:.1}%, active per token {:.1}%, {} token detectors, {} bigram detectors, {} positional",
                100.0 * lr.dead_fraction,
                100.0 * lr.sparsity,
                lr.token_detectors.len(),
                lr.bigram_detectors.len(),
                lr.positional.len()
            ));
        }
        for row in self.study.lape.iter().flatten() {
            lines.push(format!(
                "LAPE: {} neurons specific to {:?}",
                row.neurons.len(),
                row.label
            ));
        }
        for row in self.study.experts.iter().flatten() {
            if let Some(e) = row.experts.first() {
                lines.push(format!(
                    "best {:?} expert: L{}N{} (AP {:.3})",
                    row.label, e.layer, e.neuron, e.ap
                ));
            }
        }
        lines
    }

    fn figures(&self, vocab: &Vocab, page: &mut Page) -> Result<()> {
        let rep = &self.study.census;
        // Histogram of activation frequency per layer (log-spaced would hide dead neurons).
        let bins = 20;
        let series = rep
            .layers
            .iter()
            .enumerate()
            .map(|(l, lr)| {
                let mut h = vec![0f64; bins];
                for &f in &lr.frequency {
                    h[((f * bins as f64) as usize).min(bins - 1)] += 1.0;
                }
                Series {
                    name: format!("L{l}"),
                    xs: (0..bins).map(|b| (b as f64 + 0.5) / bins as f64).collect(),
                    ys: h,
                    dashed: false,
                }
            })
            .collect();
        page.line(
            "frequency",
            "Neurons by activation frequency (fraction of tokens with activation > 0)",
            LinePlot {
                title: "activation frequency histogram".into(),
                x_label: "activation frequency".into(),
                y_label: "neurons".into(),
                series,
                markers: vec![],
                hline: None,
                y_range: None,
            },
        );
        let layers: Vec<f64> = (0..rep.layers.len()).map(|l| l as f64).collect();
        page.line(
            "sparsity",
            "Per layer: dead fraction and mean fraction of active neurons per token",
            LinePlot {
                title: "dead and lazy neurons".into(),
                x_label: "layer".into(),
                y_label: "fraction".into(),
                series: vec![
                    Series {
                        name: "dead".into(),
                        xs: layers.clone(),
                        ys: rep.layers.iter().map(|l| l.dead_fraction).collect(),
                        dashed: false,
                    },
                    Series {
                        name: "active/token".into(),
                        xs: layers,
                        ys: rep.layers.iter().map(|l| l.sparsity).collect(),
                        dashed: false,
                    },
                ],
                markers: vec![],
                hline: None,
                y_range: Some((0.0, 1.0)),
            },
        );
        page.html.push_str("<h3>Token detectors</h3><table><tr><th>neuron</th><th>fires on</th><th>promotes</th><th>suppresses</th></tr>");
        let show = |v: &[(u32, f32)]| v.iter().map(|(t, _)| vocab.show(*t)).collect::<Vec<_>>();
        for d in &self.study.detectors {
            let fires: Vec<String> = d
                .fires_on
                .iter()
                .map(|it| {
                    it.iter()
                        .map(|&t| vocab.show(t))
                        .collect::<Vec<_>>()
                        .join("")
                })
                .collect();
            page.html.push_str(&format!(
                "<tr><td>L{}N{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                d.layer,
                d.neuron,
                esc(&format!("{fires:?}")),
                esc(&format!("{:?}", show(&d.promotes))),
                esc(&format!("{:?}", show(&d.suppresses)))
            ));
        }
        page.html.push_str("</table>");
        Ok(())
    }
}

/// Linear probes per hook point, or one TCAV test.
#[derive(Serialize)]
pub struct ProbeOutcome {
    pub model: String,
    /// `last` or `mean`.
    pub pooling: String,
    #[serde(flatten)]
    pub probes: Option<PointProbes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcav: Option<Tcav>,
    /// What the TCAV test asked (concept, class, point), for the summary.
    #[serde(skip)]
    pub tcav_question: Option<(String, String, String)>,
}

impl Outcome for ProbeOutcome {
    fn title(&self) -> String {
        "Linear probes".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let mut lines = vec![];
        for r in self.probes.iter().flat_map(|p| &p.probes) {
            lines.push(format!(
                "{}: held-out accuracy {:.3} (train {:.3}, majority {:.3}, {} test prompts)",
                r.point, r.test_accuracy, r.train_accuracy, r.majority_baseline, r.n_test
            ));
        }
        if let (Some(t), Some((concept, class, point))) = (&self.tcav, &self.tcav_question) {
            lines.push(format!(
                "TCAV of {concept:?} for {class:?} at {point}: {:.3} (random CAVs {:.3}), p = {:.2e}, {}",
                t.mean,
                t.random_mean,
                t.p_value,
                if t.significant { "significant" } else { "not significant" }
            ));
        }
        lines
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let Some(p) = self.probes.as_ref().filter(|p| p.probes.len() > 1) else {
            return Ok(());
        };
        let xs: Vec<f64> = (0..p.probes.len()).map(|l| l as f64).collect();
        page.line(
            "accuracy",
            "Held-out probe accuracy at each layer's residual stream",
            LinePlot {
                title: format!("linear probe for {} labels", p.classes.len()),
                x_label: "layer".into(),
                y_label: "accuracy".into(),
                series: vec![
                    Series {
                        name: "held-out".into(),
                        xs: xs.clone(),
                        ys: p.probes.iter().map(|r| r.test_accuracy).collect(),
                        dashed: false,
                    },
                    Series {
                        name: "train".into(),
                        xs,
                        ys: p.probes.iter().map(|r| r.train_accuracy).collect(),
                        dashed: true,
                    },
                ],
                markers: vec![],
                hline: Some((p.probes[0].majority_baseline, "majority".into())),
                y_range: Some((0.0, 1.0)),
            },
        );
        Ok(())
    }
}

/// The localizer's selected units and, when asked, their ablation against random units.
#[derive(Serialize)]
pub struct LocalizeOutcome {
    pub model: String,
    /// `resid_post` or `mlp_post`.
    pub units: String,
    pub fraction: f64,
    pub localized: Localized,
    pub ablation: Option<UnitAblation>,
}

impl LocalizeOutcome {
    fn dims(&self) -> (usize, usize) {
        let rows = self.localized.all_t.len();
        (rows, self.localized.all_t.first().map_or(0, |r| r.len()))
    }
}

impl Outcome for LocalizeOutcome {
    fn title(&self) -> String {
        "Localizer".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let loc = &self.localized;
        let (layers, width) = self.dims();
        let mut lines = vec![format!(
            "{} units selected of {} (t from {:.2} to {:.2})",
            loc.units.len(),
            layers * width,
            loc.t.first().copied().unwrap_or(0.0),
            loc.t.last().copied().unwrap_or(0.0)
        )];
        if let Some(ab) = &self.ablation {
            lines.push(format!(
                "ablating them raises the loss by {:.4} nats; random units of the same count: {:.4} (mean of {})",
                ab.selected_increase,
                ab.random_mean,
                ab.random_increases.len()
            ));
        }
        lines
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let (layers, width) = self.dims();
        let per_layer: Vec<f64> = (0..layers)
            .map(|l| self.localized.units.iter().filter(|u| u.0 == l).count() as f64)
            .collect();
        page.line(
            "selected_per_layer",
            "Selected units per layer",
            LinePlot {
                title: format!("top {:.1}% units by Welch t", 100.0 * self.fraction),
                x_label: "layer".into(),
                y_label: "units".into(),
                series: vec![Series {
                    name: "selected".into(),
                    xs: (0..layers).map(|l| l as f64).collect(),
                    ys: per_layer,
                    dashed: false,
                }],
                markers: vec![],
                hline: None,
                y_range: None,
            },
        );
        let t: Vec<f32> = self
            .localized
            .all_t
            .iter()
            .flatten()
            .map(|&x| x as f32)
            .collect();
        page.grid("t", layers, width, &t);
        Ok(())
    }
}
