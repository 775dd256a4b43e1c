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
        if let Some(name) = &self.metric_name {
            page.line(
                "metric",
                &format!("{name}, mean over the prompts, against the vector's scale"),
                LinePlot {
                    title: format!("{name} by scale"),
                    x_label: "scale".into(),
                    y_label: name.clone(),
                    series: vec![Series {
                        name: name.clone(),
                        xs: xs.clone(),
                        ys: self
                            .columns
                            .iter()
                            .map(|c| c.metric.unwrap_or(f64::NAN))
                            .collect(),
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
