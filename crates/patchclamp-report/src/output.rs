//! What an analysis leaves in its run folder: `result.json` (the typed outcome, serialised),
//! `result.safetensors` (its grids), each figure as SVG (and PNG for heatmaps), and one
//! self-contained `report.html` — all through a [`RunDir`].

use candle_core::Tensor;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::html::esc;
use crate::plot::{Heatmap, LinePlot};
use crate::run_dir::RunDir;
use crate::vocab::Vocab;

/// A typed result that knows how to show itself: every face writes it the same way.
pub trait Outcome: Serialize {
    /// The page's title.
    fn title(&self) -> String;
    /// The lines a person reads first (printed by the CLI, shown at the top of the page).
    fn summary_lines(&self, vocab: &Vocab) -> Vec<String>;
    /// Adds the figures, tensors and tables of the page.
    fn figures(&self, vocab: &Vocab, page: &mut Page) -> Result<()>;
}

/// One figure of a page.
#[derive(Clone)]
pub enum Figure {
    /// A heatmap (SVG and PNG).
    Heat(Heatmap),
    /// A line chart (SVG).
    Line(LinePlot),
}

/// The figures, tensors and tables of one report page.
#[derive(Default, Clone)]
pub struct Page {
    /// Named tensors for result.safetensors: `(name, shape, values)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Figures: `(file stem, caption, figure)`.
    pub figures: Vec<(String, String, Figure)>,
    /// Extra HTML (tables) after the figures.
    pub html: String,
}

impl Page {
    /// Adds a `[rows, cols]` heatmap figure and its grid as the tensor `stem`.
    pub fn heatmap(&mut self, stem: &str, caption: &str, heat: Heatmap) {
        self.tensors.push((
            stem.to_string(),
            vec![heat.rows, heat.cols],
            heat.values.clone(),
        ));
        self.figure(stem, caption, Figure::Heat(heat));
    }

    /// Adds a line chart.
    pub fn line(&mut self, stem: &str, caption: &str, plot: LinePlot) {
        self.figure(stem, caption, Figure::Line(plot));
    }

    /// Adds a figure without a tensor.
    pub fn figure(&mut self, stem: &str, caption: &str, figure: Figure) {
        self.figures
            .push((stem.to_string(), caption.to_string(), figure));
    }

    /// Adds a `[rows, cols]` grid (row-major) as a tensor.
    pub fn grid(&mut self, name: &str, rows: usize, cols: usize, values: &[f32]) {
        self.tensors
            .push((name.to_string(), vec![rows, cols], values.to_vec()));
    }
}

/// What writing an outcome produced, for the face to print.
pub struct Written {
    /// result.json's text.
    pub json: String,
    /// The summary lines.
    pub summary: String,
}

/// Writes `outcome` into `run`: result.json, result.safetensors, figures, report.html.
pub fn write_outcome(
    run: &mut RunDir,
    outcome: &impl Outcome,
    vocab: &Vocab,
    model: &str,
) -> Result<Written> {
    let json = serde_json::to_string_pretty(outcome)?;
    let summary = outcome.summary_lines(vocab).join("\n");
    let mut page = Page::default();
    outcome.figures(vocab, &mut page)?;
    run.write("result.json", json.as_bytes())?;
    if !page.tensors.is_empty() {
        run.write("result.safetensors", &tensor_file(&page.tensors)?)?;
    }
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}figure{{margin:1em 0}}</style></head><body><h1>{t}</h1><p>model <code>{m}</code>; written by patchclamp {v}</p><pre>{s}</pre>",
        t = esc(&outcome.title()),
        m = esc(model),
        v = env!("CARGO_PKG_VERSION"),
        s = esc(&summary),
    );
    for (stem, caption, figure) in &page.figures {
        let svg = match figure {
            Figure::Heat(h) => {
                run.write(&format!("{stem}.png"), &h.png())?;
                h.svg()
            }
            Figure::Line(l) => l.svg(),
        };
        run.write(&format!("{stem}.svg"), svg.as_bytes())?;
        html.push_str(&format!(
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            esc(caption)
        ));
    }
    html.push_str(&page.html);
    html.push_str("<p>Numbers: <a href=\"result.json\">result.json</a></p></body></html>");
    run.write("report.html", html.as_bytes())?;
    Ok(Written { json, summary })
}

/// Named f32 tensors as safetensors bytes.
pub fn tensor_file(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let dev = candle_core::Device::Cpu;
    let ts = tensors
        .iter()
        .map(|(k, shape, v)| {
            Ok((
                k.as_str(),
                Tensor::from_vec(v.clone(), shape.as_slice(), &dev)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(ts.iter().map(|(k, t)| (*k, t)), None)
        .map_err(|e| Error::Tensors(e.to_string()))
}

/// A `rows × cols` heatmap of `grid` with `L{l}` rows and `H{h}` columns.
pub fn layer_head_map(title: &str, grid: &[Vec<f64>], colorbar: &str) -> Heatmap {
    let rows = grid.len();
    let cols = grid.first().map_or(0, |r| r.len());
    Heatmap {
        title: title.to_string(),
        values: grid.iter().flatten().map(|&x| x as f32).collect(),
        rows,
        cols,
        row_labels: (0..rows).map(|l| format!("L{l}")).collect(),
        col_labels: (0..cols).map(|h| format!("H{h}")).collect(),
        x_label: "head".into(),
        y_label: "layer".into(),
        colorbar_label: colorbar.to_string(),
    }
}
