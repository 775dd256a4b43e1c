//! `patchclamp lens`: the logit lens over layers and positions, and the latent-language curves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::analysis::lens::{latent_language, logit_lens, LatentPrompt};
use serde::Deserialize;
use serde_json::json;

use super::{report, Common, PromptArgs};
use patchclamp_report::html::esc;
use patchclamp_report::plot::{Heatmap, LinePlot, Series};
use patchclamp_report::{Assembled, Page, Subject};

/// Arguments of `lens`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Top tokens reported per layer and position.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Also report the probability of this token everywhere (repeatable).
    #[arg(long)]
    track: Vec<String>,
    /// Latent-language analysis (Wendler et al.): a JSONL file of {"text"|"tokens", "sets":
    /// {"name": ["token", …], …}}; plots each set's probability at the last position by layer.
    #[arg(long)]
    latent: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatentLine {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tokens: Option<Vec<u32>>,
    sets: BTreeMap<String, Vec<String>>,
}

/// Most prompts drawn as lens heatmaps (all are in result.json).
const MAX_FIGURES: usize = 8;

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let tracked: Vec<u32> = a
        .track
        .iter()
        .map(|t| s.token(t))
        .collect::<patchclamp_report::Result<_>>()?;
    let mut out = Page::default();
    let mut lenses = vec![];
    let mut summary = String::new();
    let prompts =
        if a.prompts.prompt.is_empty() && a.prompts.prompts.is_none() && a.latent.is_some() {
            vec![]
        } else {
            s.prompts(&a.prompts.source()?)?
        };
    for (i, p) in prompts.iter().enumerate() {
        let lens = logit_lens(&s.model, &p.tokens, a.top_k, &tracked)?;
        let last = lens.top.last().and_then(|r| r.last()).map(|t| t[0]);
        if let Some((id, prob)) = last {
            summary.push_str(&format!(
                "prompt {i}: final top-1 {:?} ({prob:.3}); first layer where it is top-1: {}\n",
                s.show(id),
                lens.top
                    .iter()
                    .position(|l| l.last().is_some_and(|t| t[0].0 == id))
                    .map(|k| lens.layers[k].clone())
                    .unwrap_or_default()
            ));
        }
        if i < MAX_FIGURES {
            let cols = p.tokens.len();
            let heat = Heatmap {
                title: format!("logit lens: P(next token), prompt {i}"),
                values: lens.next_token.iter().flatten().copied().collect(),
                rows: lens.layers.len(),
                cols,
                row_labels: lens.layers.iter().map(|l| short(l)).collect(),
                col_labels: p
                    .tokens
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| format!("{t}:{}", s.show(id)))
                    .collect(),
                x_label: "position (input token)".into(),
                y_label: "layer".into(),
                colorbar_label: "probability of the next token".into(),
            };
            out.heatmap(
                &format!("lens_{i}"),
                &format!("Prompt {i}: {}", p.text),
                heat,
            );
            out.html.push_str(&top_table(&s, &lens, i));
        }
        lenses.push(lens);
    }
    let mut result = json!({ "model": a.common.model, "prompts": prompts.iter().map(|p| &p.text).collect::<Vec<_>>(), "lens": lenses });
    if let Some(path) = &a.latent {
        let text = patchclamp_report::read_text(path)?;
        let mut names: Vec<String> = vec![];
        let mut items = vec![];
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = || format!("{}:{}", path.display(), i + 1);
            let l: LatentLine = serde_json::from_str(line).with_context(at)?;
            let tokens = match (l.text, l.tokens) {
                (Some(t), None) => s.encode(&t).with_context(at)?,
                (None, Some(ids)) => ids,
                _ => bail!("{}: give exactly one of \"text\" or \"tokens\"", at()),
            };
            let these: Vec<String> = l.sets.keys().cloned().collect();
            if names.is_empty() {
                names = these.clone();
            } else if names != these {
                bail!(
                    "{}: token sets {these:?} differ from the first line's {names:?}",
                    at()
                );
            }
            let sets = l
                .sets
                .values()
                .map(|ts| {
                    ts.iter()
                        .map(|t| s.token(t))
                        .collect::<patchclamp_report::Result<Vec<u32>>>()
                })
                .collect::<patchclamp_report::Result<_>>()
                .with_context(at)?;
            items.push(LatentPrompt { tokens, sets });
        }
        let curves = latent_language(&s.model, &items, &names)?;
        let xs: Vec<f64> = (0..curves.layers.len()).map(|x| x as f64).collect();
        out.line(
            "latent",
            "Mean probability of each token set at the last position, by layer (0 = embeddings)",
            LinePlot {
                title: format!("latent language over {} prompts", curves.prompts),
                x_label: "layer".into(),
                y_label: "probability".into(),
                series: curves
                    .names
                    .iter()
                    .zip(&curves.mean)
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
        for (n, m) in curves.names.iter().zip(&curves.mean) {
            let (k, best) =
                m.iter()
                    .enumerate()
                    .fold((0, f64::MIN), |b, (k, &x)| if x > b.1 { (k, x) } else { b });
            summary.push_str(&format!(
                "set {n}: peak {best:.3} at {}\n",
                curves.layers[k]
            ));
        }
        result["latent"] = serde_json::to_value(&curves)?;
    }
    let outcome = Assembled {
        title: "Logit lens".into(),
        result,
        page: out,
        summary: summary.trim_end().to_string(),
    };
    report(&a.common, "lens", &s, &outcome)
}

/// `blocks.3.hook_resid_post` → `L3`.
fn short(label: &str) -> String {
    label
        .strip_prefix("blocks.")
        .and_then(|r| r.split('.').next())
        .map(|l| format!("L{l}"))
        .unwrap_or_else(|| label.to_string())
}

/// An HTML table of the top-1 token per layer and position.
fn top_table(s: &Subject, lens: &patchclamp_lab::analysis::lens::LogitLens, i: usize) -> String {
    let mut h = format!("<h3>Top-1 token by layer, prompt {i}</h3><table><tr><th></th>");
    for &t in &lens.tokens {
        h.push_str(&format!("<th>{}</th>", esc(&s.show(t))));
    }
    h.push_str("</tr>");
    for (l, row) in lens.top.iter().enumerate() {
        h.push_str(&format!("<tr><th>{}</th>", esc(&short(&lens.layers[l]))));
        for cell in row {
            let (id, p) = cell[0];
            h.push_str(&format!("<td title=\"{p:.3}\">{}</td>", esc(&s.show(id))));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}
