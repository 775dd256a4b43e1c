//! Direct logit attribution, the Hydra effect, head detectors and extreme tokens.

use patchclamp_lab::analysis::dla::Dla;
use patchclamp_lab::analysis::extremes::{ExtremeReport, ExtremeSpec};
use patchclamp_lab::analysis::heads::{best_head, HeadReport};
use patchclamp_lab::analysis::hydra::Hydra;
use serde::Serialize;

use crate::error::Result;
use crate::output::{layer_head_map, Outcome, Page};
use crate::plot::{Heatmap, LinePlot, Series};
use crate::vocab::Vocab;

/// Direct logit attribution of a logit (difference) over prompts.
#[derive(Serialize)]
pub struct DlaOutcome {
    pub model: String,
    /// The token whose logit is attributed, as given.
    pub target: String,
    /// The token whose logit is subtracted, as given.
    pub baseline: Option<String>,
    pub prompts: Vec<String>,
    pub dla: Dla,
}

impl DlaOutcome {
    fn what(&self) -> String {
        match &self.baseline {
            Some(b) => format!("logit[{}] - logit[{b}]", self.target),
            None => format!("logit[{}]", self.target),
        }
    }
}

impl Outcome for DlaOutcome {
    fn title(&self) -> String {
        "Direct logit attribution".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let d = &self.dla;
        let mean_total = d.total.iter().sum::<f64>() / d.total.len() as f64;
        let mut ranked: Vec<(usize, f64)> = (0..d.labels.len())
            .map(|k| {
                let sum: f64 = d.components.iter().map(|c| c[k]).sum();
                (k, sum / d.components.len() as f64)
            })
            .collect();
        ranked.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
        let mut line = format!(
            "{}: mean {mean_total:.4} over {} prompts; largest parts:",
            self.what(),
            self.prompts.len()
        );
        for (k, v) in ranked.iter().take(6) {
            line.push_str(&format!(" {} {v:+.3};", d.labels[*k]));
        }
        vec![line]
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let d = &self.dla;
        // Heads, and the MLPs as an extra column.
        let mut grid = d.heads.clone();
        if !d.mlps.is_empty() {
            for (row, m) in grid.iter_mut().zip(&d.mlps) {
                row.push(*m);
            }
        }
        let mut heat = layer_head_map(
            &format!("direct logit attribution of {}", self.what()),
            &grid,
            "mean contribution",
        );
        if let (false, Some(last)) = (d.mlps.is_empty(), heat.col_labels.last_mut()) {
            *last = "MLP".into();
        }
        page.heatmap(
            "dla",
            "Mean over prompts of each head's (and MLP's) direct contribution, final-norm scale frozen",
            heat,
        );
        Ok(())
    }
}

/// Direct versus total effects of resample-ablating each layer output.
#[derive(Serialize)]
pub struct HydraOutcome {
    pub model: String,
    pub prompts: Vec<String>,
    pub sources: Vec<String>,
    pub hydra: Hydra,
}

impl Outcome for HydraOutcome {
    fn title(&self) -> String {
        "Hydra effect".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let h = &self.hydra;
        let (i, _) = h
            .direct
            .iter()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |b, (i, &d)| {
                    if d.abs() > b.1 {
                        (i, d.abs())
                    } else {
                        b
                    }
                },
            );
        vec![format!(
            "largest direct effect: {} DE {:.3}, TE {:.3} (compensation {:.3})",
            h.labels[i],
            h.direct[i],
            h.total[i],
            h.direct[i] - h.total[i]
        )]
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let h = &self.hydra;
        let xs: Vec<f64> = (0..h.labels.len()).map(|i| i as f64).collect();
        page.line("effects", "Direct effect (frozen unembedding) vs total effect (downstream recomputed) of resample-ablating each layer output, in forward order", LinePlot {
            title: "direct vs total effect".into(),
            x_label: "layer output (attn, mlp, … in order)".into(),
            y_label: "logit drop".into(),
            series: vec![
                Series { name: "direct".into(), xs: xs.clone(), ys: h.direct.clone(), dashed: false },
                Series { name: "total".into(), xs, ys: h.total.clone(), dashed: false },
            ],
            markers: vec![],
            hline: Some((0.0, String::new())),
            y_range: None,
        });
        let n = h.labels.len();
        let short: Vec<String> = h
            .labels
            .iter()
            .map(|l| {
                l.replace("blocks.", "")
                    .replace(".hook_", " ")
                    .replace("_out", "")
            })
            .collect();
        page.heatmap(
            "compensation",
            "Change of each downstream layer's direct effect when a layer is ablated (row)",
            Heatmap {
                title: "compensation".into(),
                values: h.compensation.iter().flatten().map(|&x| x as f32).collect(),
                rows: n,
                cols: n,
                row_labels: short.clone(),
                col_labels: short,
                x_label: "downstream layer output".into(),
                y_label: "ablated".into(),
                colorbar_label: "change of direct effect".into(),
            },
        );
        Ok(())
    }
}

/// Every head detector's scores.
#[derive(Serialize)]
pub struct HeadsOutcome {
    pub model: String,
    pub heads: HeadReport,
}

impl HeadsOutcome {
    fn grids(&self) -> [(&'static str, &'static str, &Vec<Vec<f64>>); 6] {
        let sc = &self.heads.scores;
        [
            ("prev_token", "previous-token score", &sc.prev_token),
            ("induction", "induction score", &sc.induction),
            (
                "prefix_matching",
                "prefix-matching score",
                &sc.prefix_matching,
            ),
            ("duplicate", "duplicate-token score", &sc.duplicate),
            (
                "sink",
                "attention-sink score (mass on position 0)",
                &sc.sink,
            ),
            (
                "copying",
                "copying score (OV eigenvalues)",
                &self.heads.copying,
            ),
        ]
    }
}

impl Outcome for HeadsOutcome {
    fn title(&self) -> String {
        "Head detectors".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let mut lines: Vec<String> = self
            .grids()
            .iter()
            .map(|(_, name, grid)| {
                let (l, h, v) = best_head(grid);
                format!("{name:<44} best L{l}H{h} {v:.3}")
            })
            .collect();
        for c in self.heads.composition.iter().filter(|c| c.l2 == c.l1 + 1) {
            let mx = c.scores.iter().flatten().fold(0f32, |m, &x| m.max(x));
            lines.push(format!(
                "{:?}-composition L{} -> L{}: max {mx:.3} (random {:.3})",
                c.kind, c.l1, c.l2, c.baseline
            ));
        }
        lines
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        for (stem, name, grid) in self.grids() {
            page.heatmap(stem, name, layer_head_map(name, grid, "score"));
        }
        Ok(())
    }
}

/// Attention sinks, value drains, residual peaks and massive activations over prompts.
#[derive(Serialize)]
pub struct ExtremesOutcome {
    pub model: String,
    pub spec: ExtremeSpec,
    pub extremes: ExtremeReport,
}

impl Outcome for ExtremesOutcome {
    fn title(&self) -> String {
        "Extreme tokens".into()
    }

    fn summary_lines(&self, _: &Vocab) -> Vec<String> {
        let rep = &self.extremes;
        let (sl, sh, sv) = best_head(&rep.sink);
        let peak = rep.residual_peak.iter().cloned().fold(f64::MIN, f64::max);
        let mut line = format!(
            "{} prompts: strongest sink L{sl}H{sh} {sv:.3}; largest residual peak {peak:.2}; {} massive activations",
            rep.prompts,
            rep.massive.len()
        );
        let mut dims: Vec<(usize, usize)> = rep.massive.iter().map(|m| (m.layer, m.dim)).collect();
        dims.sort();
        dims.dedup();
        if !dims.is_empty() {
            line.push_str(&format!(
                " in (layer, dim) {:?}",
                &dims[..dims.len().min(10)]
            ));
        }
        vec![line]
    }

    fn figures(&self, _: &Vocab, page: &mut Page) -> Result<()> {
        let rep = &self.extremes;
        page.heatmap(
            "sink",
            "Attention on the first token from later queries",
            layer_head_map("attention sink", &rep.sink, "mean attention on position 0"),
        );
        if !rep.prev_trigger.is_empty() {
            page.heatmap(
                "prev_trigger",
                "Attention to the previous token from trigger queries",
                layer_head_map(
                    "previous token on triggers",
                    &rep.prev_trigger,
                    "mean A[t, t-1]",
                ),
            );
        }
        page.heatmap(
            "value_drain",
            "‖v_0‖ / mean ‖v_t‖ per key/value head",
            layer_head_map("value-state drain", &rep.value_drain, "ratio"),
        );
        let xs: Vec<f64> = (0..rep.residual_peak.len()).map(|l| l as f64).collect();
        page.line(
            "residual_peak",
            "‖x_l[0]‖ / median ‖x_l[t]‖ of the residual leaving each block",
            LinePlot {
                title: "residual-state peak on the first token".into(),
                x_label: "layer".into(),
                y_label: "norm ratio".into(),
                series: vec![Series {
                    name: "peak".into(),
                    xs,
                    ys: rep.residual_peak.clone(),
                    dashed: false,
                }],
                markers: vec![],
                hline: Some((1.0, "no peak".into())),
                y_range: None,
            },
        );
        Ok(())
    }
}
