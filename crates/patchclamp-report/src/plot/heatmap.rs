//! A labelled heatmap as SVG (text) and PNG (a raster drawn with the embedded bitmap font).

use std::fmt::Write;

use super::font_data;
use super::raster::{text_width, Raster};
use crate::html::esc;

/// A matrix with labelled rows and columns, drawn with a diverging colour map centred on 0.
#[derive(Clone)]
pub struct Heatmap {
    pub title: String,
    /// Row-major `rows × cols`.
    pub values: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    pub x_label: String,
    pub y_label: String,
    pub colorbar_label: String,
}

const CELL: usize = 26;
/// Longest axis label drawn, in characters (longer ones are shortened with "..").
const MAX_LABEL: usize = 13;
const MARGIN_LEFT: usize = 110;
const MARGIN_TOP: usize = 40;
const MARGIN_BOTTOM: usize = 110;
const BAR_W: usize = 16;
const BAR_GAP: usize = 24;
const MARGIN_RIGHT: usize = 110;

/// Diverging blue–white–red colour for `t` in [-1, 1].
pub fn diverging(t: f32) -> [u8; 3] {
    const NEG: [f32; 3] = [33.0, 102.0, 172.0];
    const MID: [f32; 3] = [247.0, 247.0, 247.0];
    const POS: [f32; 3] = [178.0, 24.0, 43.0];
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (a, b, u) = if t < 0.0 {
        (MID, NEG, -t)
    } else {
        (MID, POS, t)
    };
    [0, 1, 2].map(|i| (a[i] + (b[i] - a[i]) * u).round() as u8)
}

/// A colour-bar value: three decimals, or scientific notation for tiny ranges.
fn tick(v: f32) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

impl Heatmap {
    /// The colour scale's half-range: the largest |value| (1 if all are zero).
    fn limit(&self) -> f32 {
        let m = self
            .values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        if m > 0.0 {
            m
        } else {
            1.0
        }
    }

    fn size(&self) -> (usize, usize) {
        let bar_x = MARGIN_LEFT + self.cols * CELL + BAR_GAP;
        let w = (bar_x + BAR_W + MARGIN_RIGHT)
            .max(MARGIN_LEFT + text_width(&self.title) + 10)
            .max(bar_x + text_width(&self.colorbar_label) + 10);
        let h = MARGIN_TOP + self.rows * CELL + MARGIN_BOTTOM;
        (w, h)
    }

    /// The heatmap as a standalone SVG document.
    pub fn svg(&self) -> String {
        let (w, h) = self.size();
        let lim = self.limit();
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="DejaVu Sans Mono, monospace" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="14">{}</text>"#,
            MARGIN_LEFT,
            esc(&self.title)
        );
        for r in 0..self.rows {
            for c in 0..self.cols {
                let v = self.values[r * self.cols + c];
                let [cr, cg, cb] = diverging(v / lim);
                let (x, y) = (MARGIN_LEFT + c * CELL, MARGIN_TOP + r * CELL);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="rgb({cr},{cg},{cb})"><title>{}, {}: {v:.4}</title></rect>"#,
                    esc(&self.row_labels[r]),
                    esc(&self.col_labels[c])
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>"#,
                MARGIN_LEFT - 6,
                MARGIN_TOP + r * CELL + CELL / 2,
                esc(&short(&self.row_labels[r]))
            );
        }
        let base = MARGIN_TOP + self.rows * CELL + 6;
        for c in 0..self.cols {
            let x = MARGIN_LEFT + c * CELL + CELL / 2;
            let _ = writeln!(
                s,
                r#"<text x="{x}" y="{base}" text-anchor="end" dominant-baseline="middle" transform="rotate(-90 {x} {base})">{}</text>"#,
                esc(&short(&self.col_labels[c]))
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            MARGIN_LEFT + self.cols * CELL / 2,
            h - 8,
            esc(&self.x_label)
        );
        let ym = MARGIN_TOP + self.rows * CELL / 2;
        let _ = writeln!(
            s,
            r#"<text x="14" y="{ym}" text-anchor="middle" transform="rotate(-90 14 {ym})">{}</text>"#,
            esc(&self.y_label)
        );
        // Colour bar: +lim at the top, -lim at the bottom.
        let bx = MARGIN_LEFT + self.cols * CELL + BAR_GAP;
        let bh = self.rows * CELL;
        for i in 0..bh {
            let t = 1.0 - 2.0 * (i as f32 + 0.5) / bh as f32;
            let [cr, cg, cb] = diverging(t);
            let _ = writeln!(
                s,
                r#"<rect x="{bx}" y="{}" width="{BAR_W}" height="1" fill="rgb({cr},{cg},{cb})"/>"#,
                MARGIN_TOP + i
            );
        }
        for (y, v) in [
            (MARGIN_TOP, lim),
            (MARGIN_TOP + bh / 2, 0.0),
            (MARGIN_TOP + bh, -lim),
        ] {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{y}" dominant-baseline="middle">{}</text>"#,
                bx + BAR_W + 4,
                tick(v)
            );
        }
        // The colour bar's label sits under the bar, where nothing else is drawn.
        let _ = writeln!(
            s,
            r#"<text x="{bx}" y="{}" dominant-baseline="hanging">{}</text>"#,
            MARGIN_TOP + bh + 14,
            esc(&self.colorbar_label)
        );
        s.push_str("</svg>\n");
        s
    }

    /// The heatmap as PNG bytes.
    pub fn png(&self) -> Vec<u8> {
        let (w, h) = self.size();
        let lim = self.limit();
        let mut img = Raster::new(w, h);
        img.text(MARGIN_LEFT, 10, &self.title, false);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let color = diverging(self.values[r * self.cols + c] / lim);
                img.fill(
                    MARGIN_LEFT + c * CELL,
                    MARGIN_TOP + r * CELL,
                    CELL,
                    CELL,
                    color,
                );
            }
            let label = short(&self.row_labels[r]);
            let tw = text_width(&label);
            img.text(
                MARGIN_LEFT.saturating_sub(6 + tw),
                MARGIN_TOP + r * CELL + (CELL - font_data::H) / 2,
                &label,
                false,
            );
        }
        let base = MARGIN_TOP + self.rows * CELL + 6;
        for c in 0..self.cols {
            let x = MARGIN_LEFT + c * CELL + (CELL - font_data::H) / 2;
            img.text(x, base, &short(&self.col_labels[c]), true);
        }
        let xl = &self.x_label;
        img.text(
            (MARGIN_LEFT + self.cols * CELL / 2).saturating_sub(text_width(xl) / 2),
            h - 18,
            xl,
            false,
        );
        let ym = MARGIN_TOP + self.rows * CELL / 2;
        img.text(
            4,
            ym.saturating_sub(text_width(&self.y_label) / 2),
            &self.y_label,
            true,
        );
        let bx = MARGIN_LEFT + self.cols * CELL + BAR_GAP;
        let bh = self.rows * CELL;
        for i in 0..bh {
            let t = 1.0 - 2.0 * (i as f32 + 0.5) / bh as f32;
            img.fill(bx, MARGIN_TOP + i, BAR_W, 1, diverging(t));
        }
        for (y, v) in [
            (MARGIN_TOP, lim),
            (MARGIN_TOP + bh / 2, 0.0),
            (MARGIN_TOP + bh, -lim),
        ] {
            img.text(
                bx + BAR_W + 4,
                y.saturating_sub(font_data::H / 2),
                &tick(v),
                false,
            );
        }
        img.text(bx, MARGIN_TOP + bh + 14, &self.colorbar_label, false);
        img.png()
    }
}

/// `s` shortened to at most `MAX_LABEL` characters.
fn short(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL {
        s.to_string()
    } else {
        s.chars().take(MAX_LABEL - 2).chain("..".chars()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_is_diverging_and_centred() {
        assert_eq!(diverging(0.0), [247, 247, 247]);
        assert_eq!(diverging(1.0), [178, 24, 43]);
        assert_eq!(diverging(-1.0), [33, 102, 172]);
        assert_eq!(diverging(f32::NAN), [247, 247, 247]);
    }

    #[test]
    fn heatmap_renders_both_formats() {
        let h = Heatmap {
            title: "t".into(),
            values: vec![-1.0, 0.0, 2.0, 0.5],
            rows: 2,
            cols: 2,
            row_labels: vec!["L0".into(), "L1".into()],
            col_labels: vec!["<bos>".into(), "cat".into()],
            x_label: "position".into(),
            y_label: "layer".into(),
            colorbar_label: "logit diff".into(),
        };
        let svg = h.svg();
        assert!(
            svg.contains("&lt;bos&gt;")
                && svg.contains("rgb(178,24,43)")
                && svg.ends_with("</svg>\n")
        );
        let png = h.png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
