//! Figures researchers expect: heatmaps as SVG and PNG, line charts as SVG.

mod font_data;
mod heatmap;
mod line;
mod raster;

pub use heatmap::{diverging, Heatmap};
pub use line::{color, LinePlot, Marker, Series};
