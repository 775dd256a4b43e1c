//! `patchclamp extremes`: attention sinks, value drains, residual peaks, massive activations.

use patchclamp_lab::extremes::{extremes, ExtremeSpec};
use patchclamp_lab::heads::best_head;
use patchclamp_lab::tasks::TaskSpec;
use serde_json::json;

use super::{layer_head_map, Common, Output, PromptArgs, Subject};
use crate::plot::line::{LinePlot, Series};

/// Arguments of `extremes`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Trigger tokens (Bigram-Backcopy): their queries are scored separately (repeatable;
    /// prompts from a Bigram-Backcopy --task bring their own).
    #[arg(long)]
    trigger: Vec<String>,
    /// Massive activations: |x| above this…
    #[arg(long, default_value_t = 100.0)]
    abs_min: f32,
    /// …and at least this many times the median |x| of the hidden state.
    #[arg(long, default_value_t = 1000.0)]
    ratio: f32,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = Subject::load(&a.common)?;
    let prompts = s.prompts(&a.prompts)?;
    let mut triggers: Vec<u32> = a
        .trigger
        .iter()
        .map(|t| s.token(t))
        .collect::<anyhow::Result<_>>()?;
    // Prompts drawn from a Bigram-Backcopy task come with its triggers.
    if let (true, Some(TaskSpec::BigramBackcopy(bb))) =
        (triggers.is_empty(), a.prompts.task_spec()?)
    {
        triggers = bb.trigger_tokens();
    }
    let spec = ExtremeSpec {
        triggers,
        abs_min: a.abs_min,
        ratio: a.ratio,
    };
    let toks: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
    let rep = extremes(&s.model, &toks, &spec)?;
    let mut out = Output::new("Extreme tokens", json!({}));
    out.heatmap(
        "sink",
        "Attention on the first token from later queries",
        layer_head_map("attention sink", &rep.sink, "mean attention on position 0"),
    );
    if !rep.prev_trigger.is_empty() {
        out.heatmap(
            "prev_trigger",
            "Attention to the previous token from trigger queries",
            layer_head_map(
                "previous token on triggers",
                &rep.prev_trigger,
                "mean A[t, t-1]",
            ),
        );
    }
    out.heatmap(
        "value_drain",
        "‖v_0‖ / mean ‖v_t‖ per key/value head",
        layer_head_map("value-state drain", &rep.value_drain, "ratio"),
    );
    let xs: Vec<f64> = (0..rep.residual_peak.len()).map(|l| l as f64).collect();
    out.line(
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
    let (sl, sh, sv) = best_head(&rep.sink);
    let peak = rep.residual_peak.iter().cloned().fold(f64::MIN, f64::max);
    let mut summary = format!(
        "{} prompts: strongest sink L{sl}H{sh} {sv:.3}; largest residual peak {peak:.2}; {} massive activations",
        rep.prompts,
        rep.massive.len()
    );
    let mut dims: Vec<(usize, usize)> = rep.massive.iter().map(|m| (m.layer, m.dim)).collect();
    dims.sort();
    dims.dedup();
    if !dims.is_empty() {
        summary.push_str(&format!(
            " in (layer, dim) {:?}",
            &dims[..dims.len().min(10)]
        ));
    }
    out.result = json!({ "model": a.common.model, "spec": spec, "extremes": rep });
    out.write(&a.common, &summary)
}
