//! The charts: the live growth chart (distinct pairs over the last 24 hours, drawn with
//! plotters as SVG, inline on `/` and at `/charts/growth.svg`), and the workbench's own
//! SVGs, served from `outbox/<agent>/visualizations/` when they exist.

use super::{App, Failure};
use crate::clock;
use crate::human::thousands;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use plotters::prelude::*;
use std::sync::Arc;

/// Largest workbench chart served (an SVG is text; anything bigger is not a chart).
const MAX_CHART_BYTES: u64 = 16 * 1024 * 1024;

/// The growth chart's size in SVG units (it scales to the page's width).
const SIZE: (u32, u32) = (760, 260);

/// Draws distinct pairs over time (`points` from `view::growth`) as an SVG document.
pub fn growth_svg(points: &[(DateTime<Utc>, u64)], now: DateTime<Utc>) -> anyhow::Result<String> {
    let hours = |t: &DateTime<Utc>| (*t - now).num_seconds() as f64 / 3600.0;
    let x_min: f64 = points
        .first()
        .map(|(t, _)| hours(t))
        .unwrap_or(-24.0)
        .min(-1.0);
    let y_top = points.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let y_max = ((y_top as f64) * 1.15).max(10.0);
    let label_time = |h: &f64| {
        let t = now + Duration::seconds((h * 3600.0).round() as i64);
        t.format("%H:%M").to_string()
    };
    let line = RGBColor(0x1f, 0x6f, 0xb5);
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        area.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&area)
            .margin_top(12)
            .margin_right(18)
            .margin_left(6)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..0.0, 0.0..y_max)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_labels(7)
            .y_labels(5)
            .x_label_formatter(&label_time)
            .y_label_formatter(&|v| thousands(v.max(0.0).round() as u64))
            .x_desc("time (UTC)")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_error)?;
        chart
            .draw_series(
                AreaSeries::new(
                    points.iter().map(|(t, n)| (hours(t), *n as f64)),
                    0.0,
                    line.mix(0.18),
                )
                .border_style(line.stroke_width(2)),
            )
            .map_err(draw_error)?;
        area.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the growth chart: {e:?}")
}

/// Whether a file name may be served as a workbench chart: a plain `.svg` name in the
/// safe alphabet of agent names (no path, no dotfile).
pub fn is_chart_name(name: &str) -> bool {
    name.len() > 4
        && name.ends_with(".svg")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `GET /charts/growth.svg`.
pub(crate) async fn growth(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    let svg = app
        .readers
        .read(|conn| {
            let now = clock::now();
            let total = crate::store::pairs::count(conn)?;
            growth_svg(&super::view::growth(conn, now, total)?, now)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// `GET /charts/<agent>/<file>.svg`: a workbench chart, served so that any script it may
/// hold never runs with the faucet's origin (sandboxed by its own CSP).
pub(crate) async fn workbench(
    State(app): State<Arc<App>>,
    Path((agent, file)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let not_found = || Failure::NotFound(format!("no chart {agent}/{file}\n"));
    if crate::root::check_agent_name(&agent).is_err() || !is_chart_name(&file) {
        return Err(not_found());
    }
    let path = app
        .root
        .outbox_of(&agent)
        .join("visualizations")
        .join(&file);
    let bytes = tokio::task::spawn_blocking(move || -> Option<Vec<u8>> {
        // Regular files only: a symbolic link could point anywhere.
        let meta = std::fs::symlink_metadata(&path).ok()?;
        (meta.is_file() && meta.len() <= MAX_CHART_BYTES)
            .then(|| std::fs::read(&path).ok())
            .flatten()
    })
    .await
    .map_err(|e| Failure::Internal(e.into()))?
    .ok_or_else(not_found)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_names() {
        for (name, ok) in [
            ("category_distribution.svg", true),
            ("quality-2026.svg", true),
            (".hidden.svg", false),
            ("..svg", false),
            ("a/b.svg", false),
            ("chart.png", false),
            (".svg", false),
            ("x y.svg", false),
        ] {
            assert_eq!(is_chart_name(name), ok, "{name}");
        }
    }

    #[test]
    fn growth_chart_is_svg_with_the_total() {
        let now = clock::parse("2026-01-01T12:00:00Z").unwrap();
        let points = vec![
            (now - Duration::hours(2), 0),
            (now - Duration::hours(1), 1_200),
            (now, 2_500),
        ];
        let svg = growth_svg(&points, now).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("12:00"), "the x axis ends at now: {svg}");
        assert!(svg.contains("2,500") || svg.contains("2,000"), "{svg}");
    }
}
