//! The charts (`perpetual charts`): `visualizations/` with
//!
//! - `coverage_heatmap.svg`: pairs per indicator × category (× agent when no pair has a
//!   category), the [`HEATMAP_ROWS`] indicators with the most pairs;
//! - `answer_lengths.svg`: a histogram of answer lengths in characters;
//! - `categories.svg`: pairs per category;
//! - `quality.svg`: flagged pairs by flag and the flagged share by category, from the
//!   latest quality run (written only once `perpetual quality` has run);
//! - `growth.svg`: distinct pairs over time against the goal;
//! - `index.html` (an askama template, `src/dataset/templates/charts_index.html`): every chart with
//!   its caption and the figures behind it, and `data.json`, the same figures for
//!   programs.
//!
//! Drawn with plotters' SVG backend: text stays text (readable at any zoom, and
//! searchable), every axis has a description, and the same database gives the same
//! bytes (no timestamps; every list is ordered).

use crate::dataset::output::{Outputs, Progress, WrittenFile};
use crate::store::dataset as store;
use crate::store::documents;
use anyhow::{Context, Result};
use askama::Template;
use plotters::coord::Shift;
use plotters::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The folder the charts go to, inside the output folder.
pub const DIR: &str = "visualizations";
/// Indicators shown in the heatmap (those with the most pairs).
pub const HEATMAP_ROWS: usize = 30;
/// Columns shown in the heatmap; the rest are summed into "other".
pub const HEATMAP_COLUMNS: usize = 12;
/// Bars shown in the categories chart; the rest are summed into "other".
pub const CATEGORY_BARS: usize = 25;
/// Bins of the answer-length histogram (the last one is open-ended).
pub const LENGTH_BINS: usize = 30;

const FONT: &str = "sans-serif";
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(214, 96, 24);
const RED: RGBColor = RGBColor(200, 40, 40);

/// One named count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// What is counted.
    pub name: String,
    /// Pairs.
    pub pairs: u64,
    /// Share of all pairs (or of the category, for quality), percent, 2 decimals.
    pub percent: f64,
}

/// The heatmap's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// `category` or `agent`: what the columns are.
    pub columns_are: &'static str,
    /// The indicators shown (rows), most pairs first.
    pub indicators: Vec<String>,
    /// The columns, most pairs first (`other` last when some were summed).
    pub columns: Vec<String>,
    /// Pairs per row and column.
    pub counts: Vec<Vec<u64>>,
    /// Indicators in the snapshot (`(none)` counts as one).
    pub indicators_total: usize,
    /// Pairs of the indicators not shown.
    pub pairs_not_shown: u64,
}

/// One bin of the answer-length histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    /// Lengths from (inclusive).
    pub from: u64,
    /// Lengths to (exclusive); `None` for the last, open-ended bin.
    pub to: Option<u64>,
    /// Pairs.
    pub pairs: u64,
}

/// The histogram's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lengths {
    /// Characters per bin.
    pub bin_width: u64,
    /// The bins.
    pub bins: Vec<Bin>,
    /// Shortest answer.
    pub min: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 90th percentile (nearest rank).
    pub p90: u64,
    /// Longest answer.
    pub max: u64,
}

/// The quality chart's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// The quality run they come from (`dataset_runs` id).
    pub run: i64,
    /// Flagged pairs of the snapshot.
    pub flagged: u64,
    /// Pairs with each flag.
    pub by_flag: Vec<Bar>,
    /// Flagged pairs and their share per category.
    pub by_category: Vec<Bar>,
}

/// One point of the growth line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The end of the period (UTC RFC 3339).
    pub at: String,
    /// Distinct pairs stored by then.
    pub pairs: u64,
}

/// The growth chart's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    /// The goal (`goal` in perpetual.toml).
    pub goal: u64,
    /// `hour` or `day`: the period of each point.
    pub period: &'static str,
    /// Pairs at the end of each period with new pairs.
    pub points: Vec<Point>,
}

/// `visualizations/data.json`: every figure the charts show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// The snapshot: pairs with `id <= max_pair_id`.
    pub max_pair_id: i64,
    /// The heatmap.
    pub coverage: Coverage,
    /// The histogram.
    pub answer_lengths: Lengths,
    /// Pairs per category.
    pub categories: Vec<Bar>,
    /// Quality, once a quality run exists.
    pub quality: Option<Quality>,
    /// Growth.
    pub growth: Growth,
}

/// What `perpetual charts` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct ChartsSummary {
    /// Pairs in the snapshot.
    pub pairs: u64,
    /// The charts drawn (file names).
    pub charts: Vec<String>,
    /// Whether the quality chart was drawn (a quality run exists).
    pub quality: bool,
    /// The run's id (`dataset_runs`).
    pub run: i64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// A quality chart of an earlier run removed because no quality run exists now.
    pub removed: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// The process's peak resident memory in KiB, when the command line reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kb: Option<u64>,
}

fn name_of(s: &Option<String>) -> String {
    match s.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "(none)".to_string(),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// Sorted most first, then by name.
fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Gathers the figures of the snapshot.
pub fn figures(conn: &Connection, goal: u64, progress: &mut Progress) -> Result<Figures> {
    let (max_id, pairs) = store::snapshot(conn)?;
    let quality_run = store::last_run(conn, "quality")?;
    // Flagged pairs as (id, bit set of flag names), in id order like the pairs read below,
    // so the two are merged with a cursor: 16 bytes a flagged pair, not a map of strings.
    let mut flag_names: Vec<String> = Vec::new();
    let mut flags: Vec<(i64, u64)> = Vec::new();
    if quality_run.is_some() {
        documents::for_each_flagged(conn, max_id, &mut |pair_id, names| {
            let mut bits = 0u64;
            for name in names {
                let i = match flag_names.iter().position(|n| *n == name) {
                    Some(i) => i,
                    None => {
                        flag_names.push(name);
                        flag_names.len() - 1
                    }
                };
                bits |= 1u64 << i.min(63);
            }
            flags.push((pair_id, bits));
            Ok(())
        })?;
    }
    let mut next_flag = 0usize;
    let mut by_cell: HashMap<(String, String), u64> = HashMap::new();
    let mut by_cell_agent: HashMap<(String, String), u64> = HashMap::new();
    let mut by_indicator: HashMap<String, u64> = HashMap::new();
    let mut by_category: HashMap<String, u64> = HashMap::new();
    let mut by_agent: HashMap<String, u64> = HashMap::new();
    let mut flagged_by_category: HashMap<String, u64> = HashMap::new();
    let mut by_flag: HashMap<String, u64> = HashMap::new();
    let mut lengths: BTreeMap<u64, u64> = BTreeMap::new();
    let mut by_hour: BTreeMap<String, u64> = BTreeMap::new();
    let mut any_category = false;
    let mut first_at: Option<String> = None;
    let mut last_at: Option<String> = None;
    progress.stage("reading pairs", pairs);
    documents::for_each_shape(conn, max_id, &mut |s| {
        let indicator = name_of(&s.indicator);
        let category = name_of(&s.category);
        any_category |= s.category.as_deref().is_some_and(|c| !c.trim().is_empty());
        *by_cell
            .entry((indicator.clone(), category.clone()))
            .or_default() += 1;
        *by_cell_agent
            .entry((indicator.clone(), s.agent.clone()))
            .or_default() += 1;
        *by_indicator.entry(indicator).or_default() += 1;
        *by_agent.entry(s.agent.clone()).or_default() += 1;
        while next_flag < flags.len() && flags[next_flag].0 < s.id {
            next_flag += 1;
        }
        if let Some(&(id, bits)) = flags.get(next_flag)
            && id == s.id
        {
            *flagged_by_category.entry(category.clone()).or_default() += 1;
            for (i, name) in flag_names.iter().enumerate() {
                if bits & (1u64 << i.min(63)) != 0 {
                    *by_flag.entry(name.clone()).or_default() += 1;
                }
            }
        }
        *by_category.entry(category).or_default() += 1;
        *lengths.entry(s.answer_chars).or_default() += 1;
        if first_at.as_ref().is_none_or(|f| s.created_at < *f) {
            first_at = Some(s.created_at.clone());
        }
        if last_at.as_ref().is_none_or(|l| s.created_at > *l) {
            last_at = Some(s.created_at.clone());
        }
        *by_hour
            .entry(s.created_at.get(..13).unwrap_or(&s.created_at).to_string())
            .or_default() += 1;
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();

    // Growth: hours when everything arrived within two days, days otherwise.
    let span_days = match (&first_at, &last_at) {
        (Some(f), Some(l)) => {
            let f = parse_time(f).unwrap_or(0);
            let l = parse_time(l).unwrap_or(0);
            (l - f) as f64 / 86_400.0
        }
        _ => 0.0,
    };
    let (period, cut) = if span_days <= 2.0 {
        ("hour", 13)
    } else {
        ("day", 10)
    };
    let mut by_period: BTreeMap<String, u64> = BTreeMap::new();
    for (hour, n) in by_hour {
        let key = hour.get(..cut).unwrap_or(&hour).to_string();
        *by_period.entry(key).or_default() += n;
    }
    let mut total = 0;
    let points = by_period
        .into_iter()
        .map(|(key, n)| {
            total += n;
            Point {
                at: period_end(&key, period),
                pairs: total,
            }
        })
        .collect();

    // Coverage: columns are categories when any pair has one, else agents.
    let (columns_are, cells, column_totals) = if any_category || pairs == 0 {
        ("category", by_cell, by_category.clone())
    } else {
        ("agent", by_cell_agent, by_agent.clone())
    };
    let indicators_ranked = ranked(by_indicator);
    let indicators_total = indicators_ranked.len();
    let shown: Vec<(String, u64)> = indicators_ranked
        .iter()
        .take(HEATMAP_ROWS)
        .cloned()
        .collect();
    let pairs_not_shown = indicators_ranked
        .iter()
        .skip(HEATMAP_ROWS)
        .map(|(_, n)| n)
        .sum();
    let columns_ranked = ranked(column_totals);
    let mut columns: Vec<String> = columns_ranked
        .iter()
        .take(HEATMAP_COLUMNS)
        .map(|(n, _)| n.clone())
        .collect();
    let other_columns = columns_ranked.len() > HEATMAP_COLUMNS;
    if other_columns {
        columns.push("other".into());
    }
    let column_of: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let row_of: HashMap<&str, usize> = shown
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let mut counts = vec![vec![0u64; columns.len()]; shown.len()];
    for ((indicator, column), n) in &cells {
        if let Some(&r) = row_of.get(indicator.as_str()) {
            let c = column_of
                .get(column.as_str())
                .copied()
                .unwrap_or(columns.len() - 1);
            counts[r][c] += n;
        }
    }

    // Lengths: bins of a round width covering up to the 99th percentile.
    let nearest_rank = |p: f64| -> u64 {
        let want = ((p / 100.0) * pairs as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (len, n) in &lengths {
            seen += n;
            if seen >= want {
                return *len;
            }
        }
        0
    };
    let p99 = nearest_rank(99.0);
    let bin_width = round_width(p99.max(1).div_ceil(LENGTH_BINS as u64 - 1));
    // Enough bins to reach past the 99th percentile, the last one open-ended.
    let nbins = ((p99 / bin_width) as usize + 2).min(LENGTH_BINS);
    let mut bins: Vec<Bin> = (0..nbins as u64)
        .map(|i| Bin {
            from: i * bin_width,
            to: (i + 1 < nbins as u64).then_some((i + 1) * bin_width),
            pairs: 0,
        })
        .collect();
    for (len, n) in &lengths {
        let i = ((len / bin_width) as usize).min(nbins - 1);
        bins[i].pairs += n;
    }
    let answer_lengths = Lengths {
        bin_width,
        bins,
        min: lengths.keys().next().copied().unwrap_or(0),
        p50: nearest_rank(50.0),
        p90: nearest_rank(90.0),
        max: lengths.keys().next_back().copied().unwrap_or(0),
    };

    let mut categories: Vec<Bar> = Vec::new();
    let cats = ranked(by_category.clone());
    for (name, n) in cats.iter().take(CATEGORY_BARS) {
        categories.push(Bar {
            name: name.clone(),
            pairs: *n,
            percent: percent(*n, pairs),
        });
    }
    if cats.len() > CATEGORY_BARS {
        let rest: u64 = cats.iter().skip(CATEGORY_BARS).map(|(_, n)| n).sum();
        categories.push(Bar {
            name: format!("other ({} categories)", cats.len() - CATEGORY_BARS),
            pairs: rest,
            percent: percent(rest, pairs),
        });
    }

    let quality = quality_run.map(|run| {
        let flagged = flags.len() as u64;
        let by_flag = ranked(by_flag)
            .into_iter()
            .map(|(name, n)| Bar {
                percent: percent(n, pairs),
                name,
                pairs: n,
            })
            .collect();
        let mut by_category: Vec<Bar> = by_category
            .iter()
            .map(|(name, total)| {
                let f = flagged_by_category.get(name).copied().unwrap_or(0);
                Bar {
                    name: name.clone(),
                    pairs: f,
                    percent: percent(f, *total),
                }
            })
            .collect();
        by_category.sort_by(|a, b| {
            b.percent
                .total_cmp(&a.percent)
                .then_with(|| b.pairs.cmp(&a.pairs))
                .then_with(|| a.name.cmp(&b.name))
        });
        by_category.truncate(CATEGORY_BARS);
        Quality {
            run: run.id,
            flagged,
            by_flag,
            by_category,
        }
    });

    Ok(Figures {
        pairs,
        max_pair_id: max_id,
        coverage: Coverage {
            columns_are,
            indicators: shown.into_iter().map(|(n, _)| n).collect(),
            columns,
            counts,
            indicators_total,
            pairs_not_shown,
        },
        answer_lengths,
        categories,
        quality,
        growth: Growth {
            goal,
            period,
            points,
        },
    })
}

/// A bin width people read easily: 1, 2 or 5 times a power of ten, at least `w`.
fn round_width(w: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            if base * m >= w {
                return base * m;
            }
        }
        base *= 10;
    }
}

/// Seconds since the epoch of an RFC 3339 time.
fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp())
}

/// The end of the period `key` (`YYYY-MM-DDTHH` or `YYYY-MM-DD`), RFC 3339.
fn period_end(key: &str, period: &str) -> String {
    let start = if period == "hour" {
        format!("{key}:00:00Z")
    } else {
        format!("{key}T00:00:00Z")
    };
    let step = if period == "hour" { 3_600 } else { 86_400 };
    match parse_time(&start) {
        Some(t) => time_text(t + step),
        None => start,
    }
}

fn time_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e:?}")
}

/// Shortens a label to `n` characters (with an ellipsis).
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn svg(width: u32, height: u32, draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(s)
}

/// The heatmap of pairs per indicator × column.
pub fn coverage_svg(c: &Coverage) -> Result<String> {
    // At least two segments a side: plotters cannot place a range of one value.
    let rows = c.indicators.len().max(2);
    let cols = c.columns.len().max(2);
    let cell_w = 96u32;
    let cell_h = 30u32;
    let width = 260 + cell_w * cols as u32 + 40;
    let height = 150 + cell_h * rows as u32;
    let max = c.counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    svg(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Pairs per indicator × {} ({} of {} indicators)",
                    c.columns_are,
                    c.indicators.len(),
                    c.indicators_total
                ),
                (FONT, 26),
            )
            .margin(12)
            .x_label_area_size(60)
            .y_label_area_size(210)
            .build_cartesian_2d(
                (0..cols as i32 - 1).into_segmented(),
                (0..rows as i32 - 1).into_segmented(),
            )
            .map_err(draw_err)?;
        let columns = c.columns.clone();
        // Row 0 (the indicator with the most pairs) at the top.
        let indicators = c.indicators.clone();
        let x_fmt = move |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => columns
                .get(*i as usize)
                .map(|s| short(s, 11))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let y_fmt = move |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => (rows as i32 - 1 - *i)
                .try_into()
                .ok()
                .and_then(|r: usize| indicators.get(r))
                .map(|s| short(s, 26))
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 17))
            .axis_desc_style((FONT, 21))
            .x_desc(c.columns_are)
            .y_desc("indicator")
            .draw()
            .map_err(draw_err)?;
        for (r, row) in c.counts.iter().enumerate() {
            let y = (rows - 1 - r) as i32;
            for (x, n) in row.iter().enumerate() {
                let share = *n as f64 / max as f64;
                let fill = RGBColor(
                    (247.0 - share * 239.0) as u8,
                    (251.0 - share * 203.0) as u8,
                    (255.0 - share * 148.0) as u8,
                );
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(x as i32), SegmentValue::Exact(y)),
                            (
                                SegmentValue::Exact(x as i32 + 1),
                                SegmentValue::Exact(y + 1),
                            ),
                        ],
                        fill.filled(),
                    )))
                    .map_err(draw_err)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        crate::human::thousands(*n),
                        (SegmentValue::CenterOf(x as i32), SegmentValue::CenterOf(y)),
                        (FONT, 16).into_font().color(&ink).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    )))
                    .map_err(draw_err)?;
            }
        }
        Ok(())
    })
}

/// The histogram of answer lengths.
pub fn lengths_svg(l: &Lengths) -> Result<String> {
    let n = l.bins.len().max(1);
    let max = l.bins.iter().map(|b| b.pairs).max().unwrap_or(0).max(1);
    svg(1000, 560, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Answer length: median {} characters, 90% at most {}",
                    crate::human::thousands(l.p50),
                    crate::human::thousands(l.p90)
                ),
                (FONT, 26),
            )
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0u64..n as u64 * l.bin_width, 0u64..max + max / 10 + 1)
            .map_err(draw_err)?;
        let last_from = l.bins.last().map(|b| b.from).unwrap_or(0);
        let x_fmt = move |v: &u64| {
            if *v >= last_from && last_from > 0 {
                format!("{}+", crate::human::thousands(*v))
            } else {
                crate::human::thousands(*v)
            }
        };
        let y_fmt = |v: &u64| crate::human::thousands(*v);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(10)
            .y_labels(8)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 21))
            .x_desc("answer length (characters); the last bar counts every longer answer")
            .y_desc("pairs")
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(l.bins.iter().map(|b| {
                let to = b.to.unwrap_or(b.from + l.bin_width);
                Rectangle::new([(b.from, 0), (to, b.pairs)], BLUE.filled())
            }))
            .map_err(draw_err)?;
        Ok(())
    })
}

/// Horizontal bars, one per name.
fn bars_svg(
    title: &str,
    bars: &[Bar],
    x_desc: &str,
    y_desc: &str,
    value: impl Fn(&Bar) -> f64,
    label: impl Fn(&Bar) -> String,
    color: RGBColor,
) -> Result<String> {
    let n = bars.len().max(1);
    let height = 140 + 32 * n as u32;
    let max = bars.iter().map(&value).fold(0.0, f64::max).max(1.0);
    svg(1000, height, |root| {
        draw_bars(
            root, title, bars, x_desc, y_desc, &value, &label, color, max,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn draw_bars(
    root: &Area<'_>,
    title: &str,
    bars: &[Bar],
    x_desc: &str,
    y_desc: &str,
    value: &dyn Fn(&Bar) -> f64,
    label: &dyn Fn(&Bar) -> String,
    color: RGBColor,
    max: f64,
) -> Result<()> {
    let n = bars.len().max(2);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 24))
        .margin(14)
        .x_label_area_size(55)
        .y_label_area_size(200)
        .build_cartesian_2d(0f64..max * 1.18, (0..n as i32 - 1).into_segmented())
        .map_err(draw_err)?;
    let names: Vec<String> = bars.iter().map(|b| short(&b.name, 24)).collect();
    let y_fmt = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => (n as i32 - 1 - *i)
            .try_into()
            .ok()
            .and_then(|r: usize| names.get(r))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    let x_fmt = |v: &f64| {
        if *v >= 1000.0 || v.fract() == 0.0 {
            crate::human::thousands(*v as u64)
        } else {
            format!("{v:.1}")
        }
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .x_labels(8)
        .y_label_formatter(&y_fmt)
        .x_label_formatter(&x_fmt)
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 21))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;
    for (i, b) in bars.iter().enumerate() {
        let y = (n - 1 - i) as i32;
        let v = value(b);
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (v, SegmentValue::Exact(y + 1)),
            ],
            color.filled(),
        );
        // A gap between neighbouring bars.
        bar.set_margin(3, 3, 0, 0);
        chart.draw_series(std::iter::once(bar)).map_err(draw_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label(b),
                (v + max * 0.01, SegmentValue::CenterOf(y)),
                (FONT, 16)
                    .into_font()
                    .color(&BLACK)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Center,
                    )),
            )))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Pairs per category.
pub fn categories_svg(bars: &[Bar]) -> Result<String> {
    bars_svg(
        "Pairs per category",
        bars,
        "pairs",
        "category",
        |b| b.pairs as f64,
        |b| format!("{} ({:.1}%)", crate::human::thousands(b.pairs), b.percent),
        BLUE,
    )
}

/// Flags and flagged shares, side by side.
pub fn quality_svg(q: &Quality, pairs: u64) -> Result<String> {
    let n = q.by_flag.len().max(q.by_category.len()).max(1);
    let height = 140 + 32 * n as u32;
    svg(1500, height, |root| {
        let (left, right) = root.split_horizontally(750);
        let max_flag = q
            .by_flag
            .iter()
            .map(|b| b.pairs as f64)
            .fold(0.0, f64::max)
            .max(1.0);
        draw_bars(
            &left,
            &format!(
                "Flagged pairs by flag ({} of {} pairs flagged)",
                crate::human::thousands(q.flagged),
                crate::human::thousands(pairs)
            ),
            &q.by_flag,
            "pairs with the flag",
            "flag",
            &|b| b.pairs as f64,
            &|b| crate::human::thousands(b.pairs),
            ORANGE,
            max_flag,
        )?;
        let max_share = q
            .by_category
            .iter()
            .map(|b| b.percent)
            .fold(0.0, f64::max)
            .max(1.0);
        draw_bars(
            &right,
            "Flagged share by category",
            &q.by_category,
            "flagged pairs (% of the category)",
            "category",
            &|b| b.percent,
            &|b| format!("{:.1}% ({})", b.percent, crate::human::thousands(b.pairs)),
            RED,
            max_share,
        )
    })
}

/// Distinct pairs over time against the goal.
pub fn growth_svg(g: &Growth) -> Result<String> {
    let times: Vec<i64> = g.points.iter().filter_map(|p| parse_time(&p.at)).collect();
    let step = if g.period == "hour" { 3_600 } else { 86_400 };
    let start = times.first().map(|t| t - step).unwrap_or(0);
    let end = times
        .last()
        .copied()
        .unwrap_or(start + step)
        .max(start + step);
    let top = g
        .points
        .last()
        .map(|p| p.pairs)
        .unwrap_or(0)
        .max(g.goal)
        .max(1);
    svg(1000, 560, |root| {
        let reached = g.points.last().map(|p| p.pairs).unwrap_or(0);
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Distinct pairs over time: {} of the goal of {} ({:.1}%)",
                    crate::human::thousands(reached),
                    crate::human::thousands(g.goal),
                    percent(reached, g.goal)
                ),
                (FONT, 26),
            )
            .margin(16)
            .x_label_area_size(60)
            .y_label_area_size(90)
            .build_cartesian_2d(start..end, 0u64..top + top / 10 + 1)
            .map_err(draw_err)?;
        let hourly = g.period == "hour";
        let x_fmt = move |t: &i64| {
            chrono::DateTime::from_timestamp(*t, 0)
                .map(|d| {
                    if hourly {
                        d.format("%m-%d %H:%M").to_string()
                    } else {
                        d.format("%Y-%m-%d").to_string()
                    }
                })
                .unwrap_or_default()
        };
        let y_fmt = |v: &u64| crate::human::thousands(*v);
        chart
            .configure_mesh()
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 18))
            .axis_desc_style((FONT, 21))
            .x_desc(if hourly {
                "time (UTC, hourly)"
            } else {
                "date (UTC)"
            })
            .y_desc("distinct pairs")
            .draw()
            .map_err(draw_err)?;
        let mut line: Vec<(i64, u64)> = vec![(start, 0)];
        line.extend(times.iter().zip(&g.points).map(|(t, p)| (*t, p.pairs)));
        chart
            .draw_series(LineSeries::new(line.clone(), BLUE.stroke_width(3)))
            .map_err(draw_err)?
            .label("distinct pairs")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
        chart
            .draw_series(
                line.iter()
                    .skip(1)
                    .map(|p| Circle::new(*p, 3, BLUE.filled())),
            )
            .map_err(draw_err)?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(start, g.goal), (end, g.goal)],
                10,
                6,
                RED.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("goal ({})", crate::human::thousands(g.goal)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    })
}

/// One chart on the index page.
struct Section {
    file: String,
    title: String,
    caption: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Template)]
#[template(path = "charts_index.html")]
struct Index {
    pairs: String,
    max_pair_id: i64,
    sections: Vec<Section>,
    missing: Vec<String>,
}

fn thousands(n: u64) -> String {
    crate::human::thousands(n)
}

fn sections(f: &Figures) -> Vec<Section> {
    let mut out = Vec::new();
    let c = &f.coverage;
    let mut headers = vec!["indicator".to_string()];
    headers.extend(c.columns.iter().cloned());
    headers.push("total".into());
    out.push(Section {
        file: "coverage_heatmap.svg".into(),
        title: "Indicator coverage".into(),
        caption: format!(
            "Pairs per indicator (rows) and {} (columns) for the {} indicators with the most pairs, of {} in all; {} pairs belong to the indicators not shown. Darker cells hold more pairs; an empty row or a pale column is where the database is thin.",
            c.columns_are,
            c.indicators.len(),
            c.indicators_total,
            thousands(c.pairs_not_shown)
        ),
        headers,
        rows: c
            .indicators
            .iter()
            .zip(&c.counts)
            .map(|(name, row)| {
                let mut r = vec![name.clone()];
                r.extend(row.iter().map(|n| thousands(*n)));
                r.push(thousands(row.iter().sum()));
                r
            })
            .collect(),
    });
    let l = &f.answer_lengths;
    out.push(Section {
        file: "answer_lengths.svg".into(),
        title: "Answer lengths".into(),
        caption: format!(
            "Answers by length in characters, in bins of {}; the last bin holds every answer of {} characters or more. Shortest {}, median {}, 90th percentile {}, longest {}.",
            thousands(l.bin_width),
            thousands(l.bins.last().map(|b| b.from).unwrap_or(0)),
            thousands(l.min),
            thousands(l.p50),
            thousands(l.p90),
            thousands(l.max)
        ),
        headers: vec!["characters".into(), "pairs".into()],
        rows: l
            .bins
            .iter()
            .map(|b| {
                vec![
                    match b.to {
                        Some(to) => format!("{} to {}", thousands(b.from), thousands(to - 1)),
                        None => format!("{} or more", thousands(b.from)),
                    },
                    thousands(b.pairs),
                ]
            })
            .collect(),
    });
    out.push(Section {
        file: "categories.svg".into(),
        title: "Categories".into(),
        caption: format!(
            "Pairs per category, with each category's share of the {} pairs.",
            thousands(f.pairs)
        ),
        headers: vec!["category".into(), "pairs".into(), "share".into()],
        rows: f
            .categories
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    thousands(b.pairs),
                    format!("{:.2}%", b.percent),
                ]
            })
            .collect(),
    });
    if let Some(q) = &f.quality {
        let mut rows: Vec<Vec<String>> = q
            .by_flag
            .iter()
            .map(|b| {
                vec![
                    format!("flag: {}", b.name),
                    thousands(b.pairs),
                    format!("{:.2}% of all pairs", b.percent),
                ]
            })
            .collect();
        rows.extend(q.by_category.iter().map(|b| {
            vec![
                format!("category: {}", b.name),
                thousands(b.pairs),
                format!("{:.2}% of the category", b.percent),
            ]
        }));
        out.push(Section {
            file: "quality.svg".into(),
            title: "Quality".into(),
            caption: format!(
                "From quality run {}: {} of {} pairs flagged ({:.2}%). Left, pairs per flag (a pair may have several); right, the flagged share of each category.",
                q.run,
                thousands(q.flagged),
                thousands(f.pairs),
                percent(q.flagged, f.pairs)
            ),
            headers: vec!["what".into(), "pairs".into(), "share".into()],
            rows,
        });
    }
    let g = &f.growth;
    out.push(Section {
        file: "growth.svg".into(),
        title: "Growth".into(),
        caption: format!(
            "Distinct pairs stored by the end of each {} with new pairs, against the goal of {} (the dashed line).",
            g.period,
            thousands(g.goal)
        ),
        headers: vec![format!("end of {}", g.period), "distinct pairs".into()],
        rows: g
            .points
            .iter()
            .map(|p| vec![p.at.clone(), thousands(p.pairs)])
            .collect(),
    });
    out
}

/// Draws every chart of the snapshot into `visualizations/`.
pub fn run(
    conn: &Connection,
    goal: u64,
    out: &mut Outputs,
    progress: &mut Progress,
) -> Result<ChartsSummary> {
    let started = Instant::now();
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "charts",
        &serde_json::json!({"goal": goal}),
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let f = figures(conn, goal, progress)?;
    let mut charts = Vec::new();
    let mut put = |out: &mut Outputs, name: &str, svg: String| -> Result<()> {
        out.write(&format!("{DIR}/{name}"), svg.as_bytes())?;
        charts.push(name.to_string());
        Ok(())
    };
    put(out, "coverage_heatmap.svg", coverage_svg(&f.coverage)?)?;
    put(out, "answer_lengths.svg", lengths_svg(&f.answer_lengths)?)?;
    put(out, "categories.svg", categories_svg(&f.categories)?)?;
    let mut removed = Vec::new();
    match &f.quality {
        Some(q) => put(out, "quality.svg", quality_svg(q, f.pairs)?)?,
        None => {
            let stale = out.dir().join(DIR).join("quality.svg");
            if stale.exists() {
                std::fs::remove_file(&stale)?;
                removed.push(format!("{DIR}/quality.svg"));
            }
        }
    }
    put(out, "growth.svg", growth_svg(&f.growth)?)?;
    let index = Index {
        pairs: thousands(f.pairs),
        max_pair_id: f.max_pair_id,
        sections: sections(&f),
        missing: if f.quality.is_none() {
            vec!["Quality: no quality run yet. Run `perpetual quality`, then `perpetual charts` again.".into()]
        } else {
            Vec::new()
        },
    };
    let html = index.render().context("cannot render index.html")?;
    out.write(&format!("{DIR}/index.html"), html.as_bytes())?;
    out.write_json(&format!("{DIR}/data.json"), &f)?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    Ok(ChartsSummary {
        pairs,
        charts,
        quality: f.quality.is_some(),
        run: run_id,
        files,
        removed,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kb: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_widths_are_round() {
        assert_eq!(round_width(1), 1);
        assert_eq!(round_width(3), 5);
        assert_eq!(round_width(37), 50);
        assert_eq!(round_width(101), 200);
    }

    #[test]
    fn periods_end_an_hour_or_a_day_later() {
        assert_eq!(period_end("2026-01-01T23", "hour"), "2026-01-02T00:00:00Z");
        assert_eq!(period_end("2026-01-31", "day"), "2026-02-01T00:00:00Z");
    }
}
