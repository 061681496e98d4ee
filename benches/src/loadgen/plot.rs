//! A run's report as a PNG: latency percentiles per second (log scale) over
//! throughput and errors per second, over resident memory. The font is bundled (DejaVu Sans), so
//! plotting needs nothing from the system.

use std::{path::Path, sync::Once};

use plotters::{prelude::*, style::FontStyle};

use super::report::{LoadReport, Second};

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // The bundled font is a valid TrueType file.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// One line of a chart: a label, a colour, the seconds and what to draw of
/// each (nothing for a second without samples).
type Series<'a> = (&'a str, RGBColor, &'a [Second], fn(&Second) -> Option<f64>);

/// Writes `report` as a PNG of `width` × `height` pixels to `path`.
pub fn write_png<O>(
    report: &LoadReport<O>,
    title: &str,
    path: &Path,
    (width, height): (u32, u32),
) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (upper, rest) = root.split_vertically(height * 45 / 100);
    let (lower, bottom) = rest.split_vertically(height * 30 / 100);
    let seconds = report.timeline.len().max(1) as f64;

    let e2e = report
        .end_to_end
        .as_ref()
        .map_or(&[][..], |e| e.timeline.as_slice());
    let series: [Series; 4] = [
        ("publish p50", BLUE, &report.timeline, |s| {
            s.latency_ms.map(|p| p.p50)
        }),
        ("publish p99", RED, &report.timeline, |s| {
            s.latency_ms.map(|p| p.p99)
        }),
        (
            "publish max",
            RGBColor(160, 160, 160),
            &report.timeline,
            |s| s.latency_ms.map(|p| p.max),
        ),
        ("end-to-end p99", RGBColor(0, 140, 0), e2e, |s| {
            s.latency_ms.map(|p| p.p99)
        }),
    ];
    let highest = series
        .iter()
        .flat_map(|(_, _, seconds, f)| seconds.iter().filter_map(f))
        .fold(1.0_f64, f64::max);
    let mut latency = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("latency per second (ms, log scale)", ("sans-serif", 16))
        .build_cartesian_2d(0.0..seconds, (0.05..highest * 1.5).log_scale())?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()?;
    for (label, color, seconds, value) in series {
        latency
            .draw_series(LineSeries::new(
                seconds
                    .iter()
                    .filter_map(|s| value(s).map(|v| (s.second as f64 + 0.5, v.max(0.05)))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let top = report
        .timeline
        .iter()
        .chain(e2e)
        .map(|s| s.ok.max(s.errors))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut rate = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("messages per second", ("sans-serif", 16))
        .build_cartesian_2d(0.0..seconds, 0.0..top * 1.1)?;
    rate.configure_mesh().x_desc("seconds").draw()?;
    let throughput: [Series; 3] = [
        ("acknowledged", BLUE, &report.timeline, |s| {
            Some(s.ok as f64)
        }),
        ("refused or failed", RED, &report.timeline, |s| {
            Some(s.errors as f64)
        }),
        (
            "arrived at the destination",
            RGBColor(0, 140, 0),
            e2e,
            |s| Some(s.ok as f64),
        ),
    ];
    for (label, color, seconds, value) in throughput {
        if seconds.is_empty() {
            continue;
        }
        rate.draw_series(LineSeries::new(
            seconds
                .iter()
                .filter_map(|s| value(s).map(|v| (s.second as f64 + 0.5, v))),
            color.stroke_width(2),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    rate.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    let memory: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .filter_map(|s| s.rss_mib.map(|m| (s.second as f64 + 0.5, m)))
        .collect();
    let most = memory.iter().map(|(_, m)| *m).fold(1.0_f64, f64::max);
    let mut rss = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption(
            "resident memory of the watched process (MiB)",
            ("sans-serif", 16),
        )
        .build_cartesian_2d(0.0..seconds, 0.0..most * 1.1)?;
    rss.configure_mesh().x_desc("seconds").draw()?;
    rss.draw_series(LineSeries::new(memory, BLACK.stroke_width(2)))?;
    root.present()?;
    Ok(())
}
