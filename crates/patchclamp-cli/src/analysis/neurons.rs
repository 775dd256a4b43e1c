//! `patchclamp neurons`: the MLP neuron census streamed over a prompt file — frequencies, dead
//! and lazy neurons, token / bigram / positional detectors with their vocabulary projections,
//! and, when prompts carry labels, LAPE language-specific neurons and average-precision experts.

use patchclamp_lab::analysis::neurons::{
    expert_units, lape, stream_census, vocab_projection, CensusSpec, LabelledCensus, LapeSpec,
};
use patchclamp_report::html::esc;
use patchclamp_report::plot::{LinePlot, Series};
use patchclamp_report::{Assembled, Page, Prompt};
use serde_json::json;

use super::{progress, report, Common, PromptArgs};

/// Arguments of `neurons`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Detectors listed per layer (all are in result.json).
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// LAPE: fraction of neurons selected (lowest entropy over labels); the paper uses 0.01.
    #[arg(long, default_value_t = 0.01)]
    lape_top_rate: f64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let model = &s.model;
    let total: u64 = prompts.iter().map(|p| p.tokens.len() as u64).sum();
    let bar = progress(total, "tokens")?;
    let stream: Vec<(Vec<u32>, Option<String>)> = prompts
        .iter()
        .map(|p| (p.tokens.clone(), p.label.clone()))
        .collect();
    let LabelledCensus {
        all: census,
        by_label,
        pooled,
    } = stream_census(model, &stream, a.batch, CensusSpec::default(), |n| {
        bar.inc(n)
    })?;
    let pooled: Vec<Vec<f64>> = pooled.into_iter().map(|(_, m)| m).collect();
    bar.finish_and_clear();
    let rep = census.report();
    let mut out = Page::default();
    let mut summary = format!(
        "{} tokens, {} layers × {} neurons\n",
        rep.tokens,
        rep.layers.len(),
        model.cfg.d_mlp
    );
    let layers: Vec<f64> = (0..rep.layers.len()).map(|l| l as f64).collect();
    for (l, lr) in rep.layers.iter().enumerate() {
        summary.push_str(&format!(
            "L{l}: dead {:.1}%, active per token {:.1}%, {} token detectors, {} bigram detectors, {} positional\n",
            100.0 * lr.dead_fraction,
            100.0 * lr.sparsity,
            lr.token_detectors.len(),
            lr.bigram_detectors.len(),
            lr.positional.len()
        ));
    }
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
    out.line(
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
    out.line(
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
    // Detector tables with each neuron's output-vocabulary projection.
    let mut detectors = vec![];
    out.html.push_str("<h3>Token detectors</h3><table><tr><th>neuron</th><th>fires on</th><th>promotes</th><th>suppresses</th></tr>");
    for (l, lr) in rep.layers.iter().enumerate() {
        for d in lr
            .token_detectors
            .iter()
            .chain(&lr.bigram_detectors)
            .take(a.top)
        {
            let (up, down) = vocab_projection(model, l, d.neuron, 5)?;
            let show = |v: &[(u32, f32)]| v.iter().map(|(t, _)| s.show(*t)).collect::<Vec<_>>();
            let fires: Vec<String> = d
                .items
                .iter()
                .map(|it| it.iter().map(|&t| s.show(t)).collect::<Vec<_>>().join(""))
                .collect();
            out.html.push_str(&format!(
                "<tr><td>L{l}N{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                d.neuron,
                esc(&format!("{fires:?}")),
                esc(&format!("{:?}", show(&up))),
                esc(&format!("{:?}", show(&down)))
            ));
            detectors.push(json!({"layer": l, "neuron": d.neuron, "fires_on": d.items, "promotes": up, "suppresses": down}));
        }
    }
    out.html.push_str("</table>");
    let mut lape_json = serde_json::Value::Null;
    if by_label.len() >= 2 {
        let names: Vec<&String> = by_label.keys().collect();
        let probs: Vec<Vec<Vec<f64>>> = by_label.values().map(|c| c.probabilities()).collect();
        let sel = lape(
            &probs,
            LapeSpec {
                top_rate: a.lape_top_rate,
                ..LapeSpec::default()
            },
        )?;
        for (n, ns) in names.iter().zip(&sel) {
            summary.push_str(&format!("LAPE: {} neurons specific to {n:?}\n", ns.len()));
        }
        lape_json = json!(names
            .iter()
            .zip(&sel)
            .map(|(n, ns)| json!({"label": n, "neurons": ns}))
            .collect::<Vec<_>>());
    }
    // Average-precision experts per label (labelled prompts only): each neuron's mean response
    // per prompt ranks that label's prompts against the rest.
    let mut experts_json = serde_json::Value::Null;
    let labelled: Vec<&Prompt> = prompts.iter().filter(|p| p.label.is_some()).collect();
    if by_label.len() >= 2 {
        let m = model.cfg.d_mlp;
        let mut per = vec![];
        for name in by_label.keys() {
            let labels: Vec<bool> = labelled
                .iter()
                .map(|p| p.label.as_ref() == Some(name))
                .collect();
            let ex = expert_units(&pooled, &labels, a.top);
            if let Some((u, ap)) = ex.first() {
                summary.push_str(&format!(
                    "best {name:?} expert: L{}N{} (AP {ap:.3})\n",
                    u / m,
                    u % m
                ));
            }
            per.push(json!({"label": name, "experts": ex.iter().map(|(u, ap)| json!({"layer": u / m, "neuron": u % m, "ap": ap})).collect::<Vec<_>>()}));
        }
        experts_json = json!(per);
    }
    let outcome = Assembled {
        title: "Neuron census".into(),
        result: json!({ "model": a.common.model, "census": rep, "detectors": detectors, "lape": lape_json, "experts": experts_json }),
        page: out,
        summary: summary.trim_end().to_string(),
    };
    report(&a.common, "neurons", &s, &outcome)
}
