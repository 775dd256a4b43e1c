//! The toy experiments' folders (`summary.json`, figures) and the Singh ablation table.

use patchclamp_lab::experiment::singh::Ablation;
use patchclamp_lab::toy::protocols::{CriticalPeriods, ToyPhase};

use crate::error::Result;
use crate::plot::{LinePlot, Series};
use crate::run_dir::RunDir;

/// Writes the three-factor toy's `summary.json` and `loss.svg`; returns the lines to print.
pub fn write_toy_phase(run: &mut RunDir, t: &ToyPhase) -> Result<Vec<String>> {
    let mut lines = vec![];
    let mut series = vec![];
    for r in &t.runs {
        let l = &r.loss;
        lines.push(format!(
            "{:<14} t10 = {:>5}   L(100)/L(0) = {:.3}",
            r.clamp,
            r.t10.map_or("never".into(), |x| x.to_string()),
            l[100.min(l.len() - 1)] / l[0]
        ));
        series.push(Series {
            name: r.clamp.clone(),
            xs: (0..l.len()).map(|i| i as f64).collect(),
            ys: l.iter().map(|x| (x / l[0]).max(1e-8).log10()).collect(),
            dashed: false,
        });
    }
    let plot = LinePlot {
        title: "Three-factor toy: log10 loss / initial loss".into(),
        x_label: "gradient step".into(),
        y_label: "log10 L/L0".into(),
        series,
        markers: vec![],
        hline: Some((-1.0, "10% of initial".into())),
        y_range: None,
    };
    run.write("loss.svg", plot.svg().as_bytes())?;
    run.write("summary.json", serde_json::to_string_pretty(t)?.as_bytes())?;
    Ok(lines)
}

/// Writes the critical-period experiments' `summary.json`; returns the lines to print.
pub fn write_critical_periods(run: &mut RunDir, c: &CriticalPeriods) -> Result<Vec<String>> {
    let mut lines = vec![
        "multi-pathway (σ = 10, deficit on pathway B for 6000 of 40000 steps): final B share"
            .to_string(),
    ];
    for p in &c.pathways {
        lines.push(format!(
            "  depth {}: no deficit {:.3}  early {:.3}  late {:.3}",
            p.depth, p.none, p.early, p.late
        ));
    }
    lines.push(
        "matrix completion (task 1 rank 6 for T steps, then task 2 rank 3): test MSE on task 2"
            .into(),
    );
    for m in &c.completion {
        let cells: Vec<String> = m
            .t_critical
            .iter()
            .zip(&m.test_mse)
            .map(|(t, e)| format!("T={t} {e:.3}"))
            .collect();
        lines.push(format!("  depth {}: {}", m.depth, cells.join("  ")));
    }
    run.write("summary.json", serde_json::to_string_pretty(c)?.as_bytes())?;
    Ok(lines)
}

/// Writes `ablations.json`; returns the lines to print.
pub fn write_ablations(run: &mut RunDir, rows: &[Ablation]) -> Result<Vec<String>> {
    let mut lines = vec![format!(
        "ablations of the trained baseline (accuracy on {} training-split sequences):",
        patchclamp_lab::experiment::singh::SEQUENCES
    )];
    for r in rows {
        lines.push(format!("  {:<58} {:.4}", r.ablation, r.accuracy));
    }
    run.write(
        "ablations.json",
        serde_json::to_string_pretty(rows)?.as_bytes(),
    )?;
    Ok(lines)
}
