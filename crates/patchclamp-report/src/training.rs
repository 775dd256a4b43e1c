//! The report folder of training runs: loss and head-score curves with the phase change
//! marked, final attention patterns, `summary.json`, and a self-contained `report.html`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use patchclamp_core::{HookPoint, Hooks, Op};
use patchclamp_lab::analysis::heads::HeadProbe;
use patchclamp_lab::experiment::FinishedRun as RunOutput;
use patchclamp_lab::tasks::TaskSpec;
use patchclamp_lab::train::{EvalRecord, Summary};
use serde::Serialize;

use crate::error::Result;
use crate::html::esc;
use crate::plot::{Heatmap, LinePlot, Marker, Series};
use crate::run_dir::RunDir;

/// `summary.json` of a training report: every run's headline numbers, its exact experiment
/// and where it lives.
#[derive(Serialize)]
pub struct TrainingSummary<'a> {
    pub command: &'a str,
    pub git_revision: String,
    pub experiment_file: Option<String>,
    pub runs: Vec<RunSummary<'a>>,
}

/// One run in `summary.json`.
#[derive(Serialize)]
pub struct RunSummary<'a> {
    pub label: &'a str,
    pub folder: String,
    pub summary: &'a Option<Summary>,
    #[serde(rename = "final")]
    pub last: Option<&'a EvalRecord>,
    pub experiment: &'a str,
}

fn steps(r: &RunOutput) -> Vec<f64> {
    r.result.evals.iter().map(|e| e.step as f64).collect()
}

/// Curves of one per-eval quantity for every run (and dashed, clamps removed, if present).
fn curve_plot(
    title: &str,
    y_label: &str,
    runs: &[RunOutput],
    get: impl Fn(&EvalRecord) -> Option<f32>,
    get_free: impl Fn(&EvalRecord) -> Option<f32>,
) -> LinePlot {
    let mut series = vec![];
    for r in runs {
        series.push(Series {
            name: r.label.clone(),
            xs: steps(r),
            ys: r
                .result
                .evals
                .iter()
                .map(|e| get(e).map_or(f64::NAN, |v| v as f64))
                .collect(),
            dashed: false,
        });
    }
    for r in runs {
        let ys: Vec<f64> = r
            .result
            .evals
            .iter()
            .map(|e| get_free(e).map_or(f64::NAN, |v| v as f64))
            .collect();
        if ys.iter().any(|y| y.is_finite()) {
            series.push(Series {
                name: format!("{} (clamps off)", r.label),
                xs: steps(r),
                ys,
                dashed: true,
            });
        }
    }
    LinePlot {
        title: title.into(),
        x_label: "training step".into(),
        y_label: y_label.into(),
        series,
        markers: vec![],
        hline: None,
        y_range: None,
    }
}

/// Writes the report of `runs` into `out`; returns the path of `report.html` and the text of
/// `summary.json`.
pub fn write(
    out: &mut RunDir,
    command: &str,
    runs: &[RunOutput],
    experiment_file: Option<(&Path, &str)>,
) -> Result<(PathBuf, String)> {
    let rev = crate::revision::git_revision();
    let mut figures: Vec<(String, String)> = vec![]; // (file, svg)

    // Loss on in-context tokens, the phase change of each run marked.
    let mut loss = curve_plot(
        "Loss on in-context targets",
        "nats",
        runs,
        |e| Some(e.in_context_loss),
        |e| e.free.as_ref().map(|f| f.in_context_loss),
    );
    if let Some(r) = runs.first() {
        let t = r.exp.task.phase_threshold();
        loss.hline = Some((t as f64, format!("phase-change threshold {t:.2}")));
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(s) = r.summary.as_ref().and_then(|s| s.phase_change_step) {
            loss.markers.push(Marker {
                x: s as f64,
                label: format!("{} @ {s}", r.label),
                series: i,
            });
        }
    }
    figures.push(("loss.svg".into(), loss.svg()));
    let train = curve_plot(
        "Training loss (mean between evaluations) and evaluation loss (dashed: clamps off)",
        "nats",
        runs,
        |e| e.train_loss,
        |e| e.free.as_ref().map(|f| f.loss),
    );
    figures.push(("train_loss.svg".into(), train.svg()));

    for (i, r) in runs.iter().enumerate() {
        let Some(last) = r.result.evals.last() else {
            continue;
        };
        let slug = format!("run{i}");
        let n = last.heads.induction.len();
        if n > 0 {
            let mut series = vec![];
            for (layer, what, name) in [(0, 0, "prev-token"), (n - 1, 1, "induction")] {
                let heads = if what == 0 {
                    &last.heads.prev_token
                } else {
                    &last.heads.induction
                };
                for h in 0..heads[layer].len() {
                    series.push(Series {
                        name: format!("{name} {layer}.{h}"),
                        xs: steps(r),
                        ys: r
                            .result
                            .evals
                            .iter()
                            .map(|e| {
                                let m = if what == 0 {
                                    &e.heads.prev_token
                                } else {
                                    &e.heads.induction
                                };
                                m[layer][h] as f64
                            })
                            .collect(),
                        dashed: what == 0,
                    });
                }
            }
            let plot = LinePlot {
                title: format!(
                    "{}: head scores (solid: layer-{} induction, dashed: layer-0 previous-token)",
                    r.label,
                    n - 1
                ),
                x_label: "training step".into(),
                y_label: "attention score".into(),
                series,
                markers: vec![],
                hline: None,
                y_range: Some((0.0, 1.0)),
            };
            figures.push((format!("heads_{slug}.svg"), plot.svg()));
        }
        if let Some(strength) = &last.induction_strength {
            let series = (0..strength.len())
                .map(|h| Series {
                    name: format!("head {}.{h}", r.model.cfg.n_layers - 1),
                    xs: steps(r),
                    ys: r
                        .result
                        .evals
                        .iter()
                        .map(|e| {
                            e.induction_strength
                                .as_ref()
                                .map_or(f64::NAN, |v| v[h] as f64)
                        })
                        .collect(),
                    dashed: false,
                })
                .collect();
            let plot = LinePlot {
                title: format!("{}: induction strength (Singh et al. 2024)", r.label),
                x_label: "training step".into(),
                y_label: "A[q, correct] − A[q, wrong]".into(),
                series,
                markers: vec![],
                hline: None,
                y_range: Some((-1.0, 1.0)),
            };
            figures.push((format!("strength_{slug}.svg"), plot.svg()));
        }
        // Final attention patterns of the induction and previous-token heads, as trained.
        if let (TaskSpec::Repeated(t), Some(s)) = (&r.exp.task, &r.summary) {
            let probe = HeadProbe {
                n: 1,
                block: (t.seq_len / 2).min(12),
                repeats: 2,
                seed: 7,
                prefix: None,
                chunk: 1,
            }
            .sequences(t.vocab);
            let heads: Vec<(usize, usize, &str)> = [
                s.induction_head.map(|(l, h)| (l, h, "induction")),
                s.prev_token_head.map(|(l, h)| (l, h, "previous-token")),
            ]
            .into_iter()
            .flatten()
            .collect();
            for (l, h, kind) in heads {
                let ivs = r.exp.interventions.iter().filter(|iv| {
                    iv.when.active(s.steps)
                        && !matches!(iv.op, Op::Patch { .. } | Op::SubspacePatch { .. })
                });
                let mut hooks = Hooks::none()
                    .intervene_all(ivs.cloned())
                    .capture(patchclamp_core::Selector::Point(HookPoint::Pattern(l)));
                hooks.set_step(s.steps);
                let input = patchclamp_core::Input::single(&probe[0], r.model.device())?;
                r.model.forward(&input, &mut hooks)?;
                let p = hooks.cache().head(HookPoint::Pattern(l), h)?; // [1, q, k]
                let v: Vec<f32> = p.flatten_all()?.to_vec1()?;
                let labels: Vec<String> = probe[0]
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{i}:{t}"))
                    .collect();
                let heat = Heatmap {
                    title: format!("{}: {kind} head {l}.{h} (tokens r r)", r.label),
                    values: v,
                    rows: labels.len(),
                    cols: labels.len(),
                    row_labels: labels.clone(),
                    col_labels: labels,
                    x_label: "key position:token".into(),
                    y_label: "query position:token".into(),
                    colorbar_label: "attention".into(),
                };
                let name = format!("pattern_{slug}_{l}.{h}");
                out.write(&format!("{name}.png"), &heat.png())?;
                figures.push((format!("{name}.svg"), heat.svg()));
            }
        }
    }
    for (file, svg) in &figures {
        out.write(file, svg.as_bytes())?;
    }

    let summary = TrainingSummary {
        command,
        git_revision: rev.clone(),
        experiment_file: experiment_file.map(|(p, _)| p.display().to_string()),
        runs: runs
            .iter()
            .map(|r| RunSummary {
                label: &r.label,
                folder: r.dir.display().to_string(),
                summary: &r.summary,
                last: r.result.evals.last(),
                experiment: &r.toml,
            })
            .collect(),
    };
    let summary = serde_json::to_string_pretty(&summary)?;
    out.write("summary.json", summary.as_bytes())?;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>patchclamp report</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f4f4f4}}pre{{background:#f7f7f7;padding:8px;overflow:auto}}\
         figure{{display:inline-block;margin:8px}}</style></head><body>\
         <h1>patchclamp report</h1><p><code>{}</code><br>git revision <code>{}</code></p>",
        esc(command),
        esc(&rev)
    );
    html.push_str(
        "<h2>Summary</h2><table><tr><th>run</th><th>steps</th><th>phase change</th>\
         <th>abruptness</th><th>in-context loss (start → end)</th><th>max induction score</th>\
         <th>max prev-token score</th><th>clamps off: loss / induction / prev-token</th></tr>",
    );
    let opt = |v: Option<f32>| v.map_or("–".to_string(), |x| format!("{x:.3}"));
    for r in runs {
        let Some(s) = &r.summary else { continue };
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3} → {:.3}</td>\
             <td>{:.3}{}</td><td>{:.3}{}</td><td>{} / {} / {}</td></tr>",
            esc(&r.label),
            s.steps,
            s.phase_change_step.map_or("none".into(), |x| x.to_string()),
            s.drop.map_or("–".into(), |d| format!("{:.2}", d.abruptness)),
            s.initial_in_context_loss,
            s.final_in_context_loss,
            s.final_max_induction,
            s.induction_head.map_or(String::new(), |(l, h)| format!(" ({l}.{h})")),
            s.final_max_prev_token,
            s.prev_token_head.map_or(String::new(), |(l, h)| format!(" ({l}.{h})")),
            opt(s.free_final_in_context_loss),
            opt(s.free_final_max_induction),
            opt(s.free_final_max_prev_token),
        );
    }
    html.push_str("</table><p>Phase change: first evaluation whose in-context loss is below the threshold (0.4 · ln V). Abruptness: (t₉₀ − t₁₀) / t₉₀ of the in-context loss's drop.</p><h2>Figures</h2>");
    for (file, svg) in &figures {
        let _ = write!(
            html,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            esc(file)
        );
    }
    html.push_str("<h2>Experiments</h2>");
    if let Some((p, text)) = experiment_file {
        let _ = write!(
            html,
            "<h3>{}</h3><pre>{}</pre>",
            esc(&p.display().to_string()),
            esc(text)
        );
    }
    for r in runs {
        let _ = write!(
            html,
            "<h3>{} <small>({})</small></h3><pre>{}</pre>",
            esc(&r.label),
            esc(&r.dir.display().to_string()),
            esc(&r.toml)
        );
    }
    html.push_str("</body></html>\n");
    let path = out.write("report.html", html.as_bytes())?;
    Ok((path, summary))
}
