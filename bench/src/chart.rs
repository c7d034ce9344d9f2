//! SVG charts for docs/benchmarks.md (plotters' SVG backend: no fonts or images needed).

use std::io;
use std::path::Path;

use plotters::prelude::*;

/// Colours for up to eight series; the first two (Ringside) stand out.
const COLOURS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("chart: {e}"))
}

/// Grouped bar chart: one group per entry of `groups`, one bar per series in each
/// (`values[group][series]`; NaN leaves a gap).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[&str],
    values: &[Vec<f64>],
) -> io::Result<()> {
    let max = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, (1280, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..top)
        .map_err(err)?;
    let names = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let g = x.floor() as usize;
            // Label only the middle of each group.
            if (x - g as f64 - 0.5).abs() < 1e-6 {
                names.get(g).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (s, name) in series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let bars = values.iter().enumerate().filter_map(move |(g, row)| {
            let v = *row.get(s)?;
            v.is_finite().then(|| {
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], colour.filled())
            })
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_every_series() {
        let path = std::env::temp_dir().join(format!("chart-{}.svg", std::process::id()));
        let groups = vec!["10 x 1 KiB".to_owned(), "100 x 20 B".to_owned()];
        let values = vec![vec![1.0, 2.0, f64::NAN], vec![3.0, 0.5, 4.0]];
        grouped_bars(&path, "test", &groups, &["a", "b", "c"], &values).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in ["\ntest\n", "\n100 x 20 B\n", "\na\n", "\nc\n"] {
            assert!(svg.contains(text), "{text:?} missing");
        }
    }
}
