//! The steering outcomes: a sweep's generations per scale, side by side, and its metric
//! against the scale.

use serde::Serialize;

use crate::error::Result;
use crate::html::esc;
use crate::outcomes::ShownGeneration;
use crate::output::{Outcome, Page};
use crate::plot::{LinePlot, Series};
use crate::vocab::Vocab;

/// One column of a sweep: the generations at one scale.
#[derive(Serialize)]
pub struct SweepColumn {
    pub scale: f64,
    /// One per prompt, in order.
    pub generations: Vec<ShownGeneration>,
    /// The metric's mean over the prompts.
    pub metric: Option<f64>,
    /// Mean number of generated tokens.
    pub mean_tokens: f64,
}

impl SweepColumn {
    /// The columns of a sweep's runs: each generation shown with its prompt (`prompts[i]`:
    /// as given, and its ids) and its text (`text` decodes ids).
    pub fn of(
        runs: Vec<patchclamp_lab::steering::sweep::ScaleRun>,
        prompts: &[(String, Vec<u32>)],
        text: impl Fn(&[u32]) -> String,
    ) -> Vec<SweepColumn> {
        runs.into_iter()
            .map(|r| SweepColumn {
                scale: r.scale,
                metric: r.metric,
                mean_tokens: r.mean_tokens,
                generations: prompts
                    .iter()
                    .zip(r.generations)
                    .map(|((prompt, ids), g)| ShownGeneration {
                        prompt: prompt.clone(),
                        prompt_tokens: ids.clone(),
                        text: text(&g.tokens),
                        tokens: g.tokens,
                        stop: g.stop,
                    })
                    .collect(),
            })
            .collect()
    }
}

/// `steer sweep`'s outcome.
#[derive(Serialize)]
pub struct SweepOutcome {
    /// The vector files and the blocks they act on.
    pub vectors: Vec<String>,
    /// What the metric measures (e.g. `contains " happy"`), when one was given.
    pub metric_name: Option<String>,
    pub columns: Vec<SweepColumn>,
}

impl Outcome for SweepOutcome {
    fn title(&self) -> String {
        "Steering sweep".into()
    }

    fn summary_lines(&self, _vocab: &Vocab) -> Vec<String> {
        let n = self.columns.first().map_or(0, |c| c.generations.len());
        let mut lines = vec![format!(
            "{} prompts × {} scales of {}",
            n,
            self.columns.len(),
            self.vectors.join(" + ")
        )];
        for c in &self.columns {
            let metric = match (&self.metric_name, c.metric) {
                (Some(name), Some(m)) => format!("  {name}: {m:.3}"),
                _ => String::new(),
            };
            let first = c
                .generations
                .first()
                .map_or(String::new(), |g| format!("  first: {:?}", g.text));
            lines.push(format!(
                "scale {:>6}: {:.1} tokens{metric}{first}",
                c.scale, c.mean_tokens
            ));
        }
        lines
    }

    fn figures(&self, _vocab: &Vocab, page: &mut Page) -> Result<()> {
        let xs: Vec<f64> = self.columns.iter().map(|c| c.scale).collect();
        let measured: Vec<(f64, f64)> = self
            .columns
            .iter()
            .filter_map(|c| Some((c.scale, c.metric?)))
            .collect();
        if let (Some(name), false) = (&self.metric_name, measured.is_empty()) {
            page.line(
                "metric",
                &format!("{name}, mean over the prompts, against the vector's scale"),
                LinePlot {
                    title: format!("{name} by scale"),
                    x_label: "scale".into(),
                    y_label: name.clone(),
                    series: vec![Series {
                        name: name.clone(),
                        xs: measured.iter().map(|m| m.0).collect(),
                        ys: measured.iter().map(|m| m.1).collect(),
                        dashed: false,
                    }],
                    markers: vec![],
                    hline: None,
                    y_range: None,
                },
            );
        }
        page.line(
            "length",
            "Mean generated tokens against the vector's scale (a stop token ends a generation early)",
            LinePlot {
                title: "generated tokens by scale".into(),
                x_label: "scale".into(),
                y_label: "tokens".into(),
                series: vec![Series {
                    name: "mean tokens".into(),
                    xs,
                    ys: self.columns.iter().map(|c| c.mean_tokens).collect(),
                    dashed: false,
                }],
                markers: vec![],
                hline: None,
                y_range: None,
            },
        );
        // The generations side by side: one row per prompt, one column per scale.
        let mut t = String::from("<h2>Generations</h2><table><tr><th>prompt</th>");
        for c in &self.columns {
            t.push_str(&format!("<th>scale {}</th>", c.scale));
        }
        t.push_str("</tr>");
        let n = self.columns.first().map_or(0, |c| c.generations.len());
        for i in 0..n {
            let prompt = &self.columns[0].generations[i].prompt;
            t.push_str(&format!("<tr><td><code>{}</code></td>", esc(prompt)));
            for c in &self.columns {
                t.push_str(&format!("<td>{}</td>", esc(&c.generations[i].text)));
            }
            t.push_str("</tr>");
        }
        t.push_str("</table>");
        page.html.push_str(&t);
        Ok(())
    }
}

/// `lab steering`'s outcome: the K8 battery's measurements and checks.
#[derive(Serialize)]
pub struct BatteryOutcome {
    pub spec: patchclamp_lab::steering::battery::BatterySpec,
    pub result: patchclamp_lab::steering::battery::BatteryResult,
}

impl Outcome for BatteryOutcome {
    fn title(&self) -> String {
        "K8 steering battery: two-style toy LM".into()
    }

    fn summary_lines(&self, _vocab: &Vocab) -> Vec<String> {
        let r = &self.result;
        let mut lines = vec![format!(
            "trained {} steps (final loss {:.3}); unsteered style-A rate: A-start {:.2}, B-start {:.2}, neutral {:.2}",
            self.spec.steps, r.final_loss, r.a_start_rate, r.b_start_rate, r.neutral_rate
        )];
        let curve = |c: &patchclamp_lab::steering::battery::Curve| {
            c.strengths
                .iter()
                .zip(&c.rates)
                .map(|(s, r)| format!("{s}: {r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(format!("CAA rate by α: {}", curve(&r.caa)));
        lines.push(format!("Linear-AcT rate by λ: {}", curve(&r.act)));
        lines.push(format!(
            "Dyn: α_t in [{:.2}, {:.2}], step 1 {:.2} vs steps 10–20 {:.2}; rate {:.2} (fixed α = 2: {:.2}; fixed at its mean α: {:.2})",
            r.dynamic.min_alpha,
            r.dynamic.max_alpha,
            r.dynamic.first_alpha,
            r.dynamic.late_alpha,
            r.dynamic.rate,
            r.dynamic.fixed_rate,
            r.dynamic.fixed_mean_rate
        ));
        lines.push(format!(
            "ablation: probe {:.2} → {:.2}, A-start rate {:.2} → {:.2}",
            r.ablation.probe_before,
            r.ablation.probe_after,
            r.ablation.a_rate_before,
            r.ablation.a_rate_after
        ));
        lines.push(format!(
            "function vector (heads {:?}): neutral rate {:.2} → {:.2}",
            r.fv.heads, r.fv.rate_without, r.fv.rate_with
        ));
        lines.extend(super::checks::check_lines(&r.checks, 3));
        lines
    }

    fn figures(&self, _vocab: &Vocab, page: &mut Page) -> Result<()> {
        let r = &self.result;
        let rate_plot =
            |title: &str, x: &str, c: &patchclamp_lab::steering::battery::Curve| LinePlot {
                title: title.into(),
                x_label: x.into(),
                y_label: "style-A rate".into(),
                series: vec![Series {
                    name: "style-A rate".into(),
                    xs: c.strengths.clone(),
                    ys: c.rates.clone(),
                    dashed: false,
                }],
                markers: vec![],
                hline: Some((r.neutral_rate, "unsteered".into())),
                y_range: Some((0.0, 1.0)),
            };
        page.line(
            "caa",
            "CAA: the style-A rate of neutral-start generations against the vector's multiplier α",
            rate_plot("CAA: style-A rate by α", "α", &r.caa),
        );
        page.line(
            "linear_act",
            "Linear-AcT (B → A at the same block): the style-A rate against the strength λ",
            rate_plot("Linear-AcT: style-A rate by λ", "λ", &r.act),
        );
        let steps = r.dynamic.mean_alpha.len();
        page.line(
            "dynamic_alpha",
            "Dynamic composition: the strength α_t at each step, averaged over the prompts",
            LinePlot {
                title: "Dyn: mean α_t by step".into(),
                x_label: "generated token".into(),
                y_label: "α_t".into(),
                series: vec![Series {
                    name: "mean α_t".into(),
                    xs: (0..steps).map(|t| t as f64 + 1.0).collect(),
                    ys: r.dynamic.mean_alpha.clone(),
                    dashed: false,
                }],
                markers: vec![],
                hline: None,
                y_range: Some((0.0, 2.0)),
            },
        );
        page.html
            .push_str(&super::checks::checks_table(&r.checks, 3));
        Ok(())
    }
}
