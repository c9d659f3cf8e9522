//! The chart: starts per second over time, one panel per scenario, one line per strategy,
//! with the quota's refill rate as a dashed line. SVG always; PNG with the `png` feature
//! (plotters' bitmap backend, text drawn with a TrueType font read at run time).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::common::BenchError;

/// One panel of the chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// The quota's refill rate, starts per second (the dashed line).
    pub refill_per_second: f64,
    /// (strategy name, starts in each second since the first invocation).
    pub lines: Vec<(String, Vec<u64>)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),  // naive: red
    RGBColor(255, 127, 14), // sdk-adaptive: orange
    RGBColor(44, 160, 44),  // ours: green
    RGBColor(31, 119, 180),
];

/// A step line: the count of second `i` drawn flat over `[i, i + 1)`.
fn steps(counts: &[u64]) -> Vec<(f64, f64)> {
    counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| [(i as f64, c as f64), ((i + 1) as f64, c as f64)])
        .collect()
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<(), BenchError>
where
    DB::ErrorType: 'static,
{
    let seconds = panel.lines.iter().map(|(_, s)| s.len()).max().unwrap_or(1).max(1) as f64;
    let top = panel
        .lines
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .max()
        .unwrap_or(0) as f64;
    let top = top.max(panel.refill_per_second * 1.2).max(1.0) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(|e| format!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first invocation")
        .y_desc("executions started per second")
        .light_line_style(WHITE.mix(0.0))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| format!("chart mesh: {e}"))?;
    for (i, (name, counts)) in panel.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(steps(counts), color.stroke_width(2)))
            .map_err(|e| format!("chart series: {e}"))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    let refill = panel.refill_per_second;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, refill), (seconds, refill)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(|e| format!("chart refill line: {e}"))?
        .label(format!("quota refill {refill}/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| format!("chart legend: {e}"))?;
    Ok(())
}

fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    columns: usize,
) -> Result<(), BenchError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| format!("chart background: {e}"))?;
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let areas = root.split_evenly((rows, columns));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| format!("writing the chart: {e}"))?;
    Ok(())
}

/// The size of one panel, pixels.
const PANEL: (u32, u32) = (640, 400);

/// Writes the panels as an SVG at `path`, `columns` panels per row.
pub fn svg(path: &Path, panels: &[Panel], columns: usize) -> Result<(), BenchError> {
    let rows = panels.len().div_ceil(columns.max(1)).max(1) as u32;
    let size = (PANEL.0 * columns.max(1) as u32, PANEL.1 * rows);
    draw_all(SVGBackend::new(path, size).into_drawing_area(), panels, columns)
}

/// Fonts tried for the PNG's text, after `$BENCH_FONT`.
#[cfg(feature = "png")]
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a TrueType font as "sans-serif" (the `png` feature draws text with it, in both
/// backends). Returns the font's path.
#[cfg(feature = "png")]
pub fn register_font() -> Result<String, BenchError> {
    let candidates: Vec<String> = std::env::var("BENCH_FONT")
        .into_iter()
        .chain(FONTS.iter().map(|s| s.to_string()))
        .collect();
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // The font lives as long as the process (plotters wants &'static bytes).
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(path.clone());
            }
        }
    }
    Err(format!(
        "the `png` feature needs a TrueType font: none of {candidates:?} could be read (set BENCH_FONT, or build without --features png)"
    )
    .into())
}

/// Writes the panels as a PNG at `path` (the `png` feature).
#[cfg(feature = "png")]
pub fn png(path: &Path, panels: &[Panel], columns: usize) -> Result<(), BenchError> {
    let rows = panels.len().div_ceil(columns.max(1)).max(1) as u32;
    let size = (PANEL.0 * columns.max(1) as u32, PANEL.1 * rows);
    draw_all(BitMapBackend::new(path, size).into_drawing_area(), panels, columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_hold_each_second_flat() {
        assert_eq!(steps(&[3, 5]), vec![(0.0, 3.0), (1.0, 3.0), (1.0, 5.0), (2.0, 5.0)]);
        assert!(steps(&[]).is_empty());
    }
}
