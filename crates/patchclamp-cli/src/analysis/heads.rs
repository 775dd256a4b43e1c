//! `patchclamp heads`: every head detector, as score grids.

use patchclamp_lab::heads::{best_head, head_report, HeadProbe};
use serde_json::json;

use super::{layer_head_map, Common, Output, Subject};

/// Arguments of `heads`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Random sequences in the probe.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Length of the random block (repeated `--repeats` times).
    #[arg(long, default_value_t = 24)]
    block: usize,
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let s = Subject::load(&a.common)?;
    let mut probe = HeadProbe::for_model(&s.model, a.block);
    probe.n = a.n;
    probe.repeats = a.repeats;
    probe.seed = a.seed;
    let rep = head_report(&s.model, &probe)?;
    let sc = &rep.scores;
    let mut out = Output::new("Head detectors", json!({}));
    let mut summary = String::new();
    for (stem, name, grid) in [
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
        ("copying", "copying score (OV eigenvalues)", &rep.copying),
    ] {
        let (l, h, v) = best_head(grid);
        summary.push_str(&format!("{name:<44} best L{l}H{h} {v:.3}\n"));
        out.heatmap(stem, name, layer_head_map(name, grid, "score"));
    }
    for c in &rep.composition {
        let mx = c.scores.iter().flatten().fold(0f32, |m, &x| m.max(x));
        if c.l2 == c.l1 + 1 {
            summary.push_str(&format!(
                "{:?}-composition L{} -> L{}: max {mx:.3} (random {:.3})\n",
                c.kind, c.l1, c.l2, c.baseline
            ));
        }
    }
    out.result = json!({ "model": a.common.model, "heads": rep });
    out.write(&a.common, summary.trim_end())
}
