//! `patchclamp probe`: linear probes on labelled prompts (held-out accuracy per layer), and TCAV
//! for a concept with its random-concept significance test.

use anyhow::bail;
use patchclamp_core::HookPoint;
use patchclamp_lab::analysis::linear_probe::{
    features, logit_gradients, tcav, train_probe, FitSpec, Pooling,
};
use serde_json::json;

use super::{progress, report, Common, PromptArgs};
use patchclamp_report::plot::{LinePlot, Series};
use patchclamp_report::{Assembled, Page};

/// Arguments of `probe`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Labelled prompts: a .jsonl file with a "label" on every line.
    #[command(flatten)]
    prompts: PromptArgs,
    /// Probe this hook point (TransformerLens name); default: every layer's hook_resid_post.
    #[arg(long)]
    point: Option<String>,
    /// Read the last token's activation or the mean over tokens.
    #[arg(long, value_enum, default_value = "last")]
    pooling: PoolingArg,
    /// Fraction of prompts held out for the accuracy.
    #[arg(long, default_value_t = 0.25)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// TCAV: the label of the concept's examples (needs --point, --tcav-random, --tcav-class).
    #[arg(long)]
    tcav_concept: Option<String>,
    /// TCAV: the label of the random examples.
    #[arg(long)]
    tcav_random: Option<String>,
    /// TCAV: the class token whose logit's sensitivity is scored.
    #[arg(long)]
    tcav_class: Option<String>,
    /// TCAV: the label of the inputs scored (default: every other prompt).
    #[arg(long)]
    tcav_inputs: Option<String>,
    /// TCAV: concept-vs-random runs (and random-vs-random runs).
    #[arg(long, default_value_t = 10)]
    tcav_runs: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PoolingArg {
    Last,
    Mean,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = a.common.subject()?;
    let prompts = s.prompts(&a.prompts.source()?)?;
    let cfg = &s.model.cfg;
    let pooling = match a.pooling {
        PoolingArg::Last => Pooling::Last,
        PoolingArg::Mean => Pooling::Mean,
    };
    let points: Vec<HookPoint> = match &a.point {
        Some(p) => vec![HookPoint::parse_for(p, cfg)?],
        None => (0..cfg.n_layers).map(HookPoint::ResidPost).collect(),
    };
    let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let mut out = Page::default();
    let mut summary = String::new();
    let mut result =
        json!({ "model": a.common.model, "pooling": format!("{pooling:?}").to_lowercase() });

    let labelled: Vec<&str> = prompts.iter().filter_map(|p| p.label.as_deref()).collect();
    let mut classes: Vec<&str> = labelled.clone();
    classes.sort();
    classes.dedup();
    if a.tcav_concept.is_none() {
        if labelled.len() != prompts.len() || classes.len() < 2 {
            bail!("probing needs a \"label\" on every prompt and at least two labels (got {} labelled of {}, labels {classes:?})", labelled.len(), prompts.len());
        }
        let y: Vec<usize> = labelled
            .iter()
            .map(|l| classes.iter().position(|c| c == l).expect("a class"))
            .collect();
        let bar = progress(points.len() as u64, "probing")?;
        let mut rows = vec![];
        for &p in &points {
            let x = features(&s.model, &toks, p, pooling)?;
            let r = train_probe(
                &x,
                &y,
                classes.len(),
                a.test_fraction,
                a.seed,
                FitSpec::default(),
            )?;
            summary.push_str(&format!(
                "{p}: held-out accuracy {:.3} (train {:.3}, majority {:.3}, {} test prompts)\n",
                r.test_accuracy, r.train_accuracy, r.majority_baseline, r.n_test
            ));
            rows.push(json!({"point": p.to_string(), "train_accuracy": r.train_accuracy, "test_accuracy": r.test_accuracy,
                "majority_baseline": r.majority_baseline, "n_train": r.n_train, "n_test": r.n_test}));
            bar.inc(1);
            if points.len() == 1 {
                result["probe_weights"] = serde_json::to_value(&r.model)?;
            }
        }
        bar.finish_and_clear();
        if points.len() > 1 {
            let xs: Vec<f64> = (0..rows.len()).map(|l| l as f64).collect();
            let acc = |k: &str| {
                rows.iter()
                    .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                    .collect::<Vec<_>>()
            };
            out.line(
                "accuracy",
                "Held-out probe accuracy at each layer's residual stream",
                LinePlot {
                    title: format!("linear probe for {} labels", classes.len()),
                    x_label: "layer".into(),
                    y_label: "accuracy".into(),
                    series: vec![
                        Series {
                            name: "held-out".into(),
                            xs: xs.clone(),
                            ys: acc("test_accuracy"),
                            dashed: false,
                        },
                        Series {
                            name: "train".into(),
                            xs,
                            ys: acc("train_accuracy"),
                            dashed: true,
                        },
                    ],
                    markers: vec![],
                    hline: Some((
                        rows[0]["majority_baseline"].as_f64().unwrap_or(0.0),
                        "majority".into(),
                    )),
                    y_range: Some((0.0, 1.0)),
                },
            );
        }
        result["classes"] = json!(classes);
        result["probes"] = json!(rows);
    } else {
        let (Some(concept), Some(random), Some(class), Some(_)) =
            (&a.tcav_concept, &a.tcav_random, &a.tcav_class, &a.point)
        else {
            bail!("TCAV needs --point, --tcav-concept, --tcav-random and --tcav-class");
        };
        let point = points[0];
        let pick = |want: &dyn Fn(Option<&str>) -> bool| -> Vec<Vec<u32>> {
            prompts
                .iter()
                .filter(|p| want(p.label.as_deref()))
                .map(|p| p.tokens.clone())
                .collect()
        };
        let cx = pick(&|l| l == Some(concept.as_str()));
        let rx = pick(&|l| l == Some(random.as_str()));
        let ix = match &a.tcav_inputs {
            Some(lab) => pick(&|l| l == Some(lab.as_str())),
            None => pick(&|l| l != Some(concept.as_str()) && l != Some(random.as_str())),
        };
        if cx.is_empty() || ix.is_empty() {
            bail!("TCAV: no prompts labelled {concept:?} or no inputs to score");
        }
        let class_id = s.token(class)?;
        let fc = features(&s.model, &cx, point, Pooling::Last)?;
        let fr = features(&s.model, &rx, point, Pooling::Last)?;
        let grads = logit_gradients(&s.model, &ix, point, class_id)?;
        let t = tcav(&fc, &fr, &grads, a.tcav_runs, a.seed, 1)?;
        summary = format!(
            "TCAV of {concept:?} for {class:?} at {point}: {:.3} (random CAVs {:.3}), p = {:.2e}, {}",
            t.mean,
            t.random_mean,
            t.p_value,
            if t.significant { "significant" } else { "not significant" }
        );
        result["tcav"] = serde_json::to_value(&t)?;
    }
    let outcome = Assembled {
        title: "Linear probes".into(),
        result,
        page: out,
        summary: summary.trim_end().to_string(),
    };
    report(&a.common, "probe", &s, &outcome)
}
