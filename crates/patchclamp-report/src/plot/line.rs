//! Line charts as SVG: training curves with several series and marked steps.

use std::fmt::Write;

use crate::html::esc;

/// One curve.
#[derive(Clone)]
pub struct Series {
    pub name: String,
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    /// Dashed (for secondary curves, e.g. a run without its clamp).
    pub dashed: bool,
}

/// A vertical marker (e.g. the phase change of a run).
#[derive(Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    /// Index of the series whose colour the marker takes.
    pub series: usize,
}

/// A chart of curves against a shared x axis.
#[derive(Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// A horizontal reference line and its label.
    pub hline: Option<(f64, String)>,
    /// Fixed y range; from the data when absent.
    pub y_range: Option<(f64, f64)>,
}

/// Distinct colours (Tableau 10).
const COLORS: [&str; 10] = [
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// Colour of series `i`.
pub fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// Width of the plotting area and everything left of the legend.
const W: f64 = 640.0;
const H: f64 = 380.0;
const LEFT: f64 = 64.0;
/// The legend column's least width; it grows with the longest series name.
const RIGHT: f64 = 180.0;
/// Advance of one character of the 11-px sans-serif legend text, generously (DejaVu Sans's
/// widest common glyphs are ~0.62 em), so no label runs past the picture's edge.
const LEGEND_CHAR: f64 = 7.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// About five round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = vec![];
    while t <= hi + 1e-9 * span {
        out.push(t);
        t += step;
    }
    out
}

impl LinePlot {
    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        let finite = |v: &f64| v.is_finite();
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.xs.iter())
            .copied()
            .filter(finite);
        let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let (x0, x1) = if x0 <= x1 {
            (x0, x1.max(x0 + 1.0))
        } else {
            (0.0, 1.0)
        };
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let ys = self
                .series
                .iter()
                .flat_map(|s| s.ys.iter())
                .copied()
                .filter(finite);
            let (a, b) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
            let (a, b) = if a <= b { (a, b) } else { (0.0, 1.0) };
            let pad = ((b - a) * 0.05).max(1e-6);
            (a - pad, b + pad)
        });
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        // The legend's column holds the longest name whole: the picture widens instead.
        let longest = self
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let width = W.max(LEFT + pw + 12.0 + 22.0 + LEGEND_CHAR * longest as f64 + 8.0);
        let height = H.max(TOP + 8.0 + 18.0 * self.series.len() as f64 + 8.0);
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + (1.0 - (y.clamp(y0, y1) - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="DejaVu Sans, sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#,
            esc(&self.title)
        );
        for t in ticks(x0, x1) {
            let x = px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                fmt_num(t)
            );
        }
        for t in ticks(y0, y1) {
            let y = py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{y:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                fmt_num(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        if let Some((y, label)) = &self.hline {
            let yy = py(*y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#888" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" fill="#666">{}</text>"##,
                LEFT + pw,
                LEFT + 4.0,
                yy - 4.0,
                esc(label)
            );
        }
        for (i, ser) in self.series.iter().enumerate() {
            let pts: Vec<String> = ser
                .xs
                .iter()
                .zip(&ser.ys)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let dash = if ser.dashed {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"><title>{}</title></polyline>"#,
                color(i),
                pts.join(" "),
                esc(&ser.name)
            );
            let ly = TOP + 8.0 + 18.0 * i as f64;
            let lx = LEFT + pw + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{ly}" dominant-baseline="middle">{}</text>"#,
                lx + 18.0,
                color(i),
                lx + 22.0,
                esc(&ser.name)
            );
        }
        for (j, m) in self.markers.iter().enumerate() {
            if !m.x.is_finite() {
                continue;
            }
            let x = px(m.x);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="{}" font-size="10">{}</text>"#,
                TOP + ph,
                color(m.series),
                x + 3.0,
                TOP + 12.0 + 12.0 * j as f64,
                color(m.series),
                esc(&m.label)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 10.0,
            esc(&self.x_label)
        );
        let ym = TOP + ph / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="16" y="{ym:.1}" text-anchor="middle" transform="rotate(-90 16 {ym:.1})">{}</text>"#,
            esc(&self.y_label)
        );
        s.push_str("</svg>\n");
        s
    }
}

/// A tick label: integers plainly, others with up to three decimals.
fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1000.0),
            vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        let t = ticks(0.37, 4.2);
        assert!(t.first().unwrap() >= &0.37 && t.last().unwrap() <= &4.2 && t.len() >= 3);
    }

    #[test]
    fn svg_has_every_series_and_marker() {
        let p = LinePlot {
            title: "loss <in context>".into(),
            x_label: "step".into(),
            y_label: "nats".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    xs: vec![0.0, 1.0],
                    ys: vec![2.0, 1.0],
                    dashed: false,
                },
                Series {
                    name: "b".into(),
                    xs: vec![0.0, 1.0],
                    ys: vec![f64::NAN, 1.5],
                    dashed: true,
                },
            ],
            markers: vec![Marker {
                x: 0.5,
                label: "phase change".into(),
                series: 0,
            }],
            hline: Some((1.2, "threshold".into())),
            y_range: None,
        };
        let s = p.svg();
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("phase change") && s.contains("&lt;in context&gt;"));
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn the_legend_holds_long_names_whole() {
        let name = "head 0.0 clamped to prev-token (clamps off)";
        let p = LinePlot {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: name.into(),
                xs: vec![0.0, 1.0],
                ys: vec![0.0, 1.0],
                dashed: false,
            }],
            markers: vec![],
            hline: None,
            y_range: None,
        };
        let s = p.svg();
        let width: f64 = s
            .split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let x: f64 = s
            .split(&format!(">{name}</text>"))
            .next()
            .unwrap()
            .rsplit("<text x=\"")
            .next()
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            x + LEGEND_CHAR * name.len() as f64 <= width,
            "legend text at {x} runs past {width}"
        );
    }
}
