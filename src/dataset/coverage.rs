//! Coverage against a master list (`perpetual coverage --plan PLAN`): the seeds' plan is
//! "227 indicators, each 100+ pairs". The plan names each indicator, its category, its
//! target and the aliases it goes by in the data; the report gives, per indicator, the
//! pairs found, the target, the gap and a status, per category the totals, and the
//! names in the data that match no indicator. The gaps are stored (`coverage_gaps`) so
//! the assigner can turn the largest into tasks (`{gap_indicators}` in a template).
//!
//! A plan is TOML:
//!
//! ```toml
//! default_target = 100
//! [[indicator]]
//! name = "RSI"
//! category = "momentum"
//! target = 150                           # optional: default_target
//! aliases = ["Relative Strength Index"]  # optional
//! ```
//!
//! or CSV with the header `indicator,category,target,aliases` (aliases separated by `|`,
//! an empty target meaning 100). Names match when they are equal once lower-cased with
//! everything but letters and digits removed (`Fear & Greed Index` = `fear_greed_index`).

use crate::dataset::output::{Outputs, WrittenFile};
use crate::store::dataset::{self as store, CoverageGap};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// The target of an indicator whose plan gives none.
pub const DEFAULT_TARGET: u64 = 100;

/// One indicator of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanIndicator {
    /// Its name.
    pub name: String,
    /// Its category.
    pub category: String,
    /// Pairs wanted (default: the plan's `default_target`, else 100).
    #[serde(default)]
    pub target: Option<u64>,
    /// Other names it goes by in the data.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPlan {
    default_target: Option<u64>,
    #[serde(default, rename = "indicator")]
    indicators: Vec<PlanIndicator>,
}

/// A master list, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The indicators, in the plan's order, each with its target filled in.
    pub indicators: Vec<PlanIndicator>,
}

/// Lower case, letters and digits only: how names are matched.
pub fn match_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl Plan {
    /// Reads a `.toml` or `.csv` plan (by extension; anything else is read as TOML).
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the plan {}", path.display()))?;
        let csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let plan = if csv {
            Plan::from_csv(&text)
        } else {
            Plan::from_toml(&text)
        };
        plan.with_context(|| format!("invalid plan {}", path.display()))
    }

    /// Parses a TOML plan.
    pub fn from_toml(text: &str) -> Result<Plan> {
        let p: TomlPlan = toml::from_str(text)?;
        let default = p.default_target.unwrap_or(DEFAULT_TARGET);
        Plan::checked(
            p.indicators
                .into_iter()
                .map(|mut i| {
                    i.target = Some(i.target.unwrap_or(default));
                    i
                })
                .collect(),
        )
    }

    /// Parses a CSV plan (header `indicator,category,target,aliases`).
    pub fn from_csv(text: &str) -> Result<Plan> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers: Vec<String> = reader
            .headers()?
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.as_str()));
        let (Some(name), Some(category)) = (col(&["indicator", "name"]), col(&["category"])) else {
            bail!(
                "the CSV header must name the columns indicator and category (and may name target, aliases); found: {}",
                headers.join(",")
            );
        };
        let (target, aliases) = (col(&["target"]), col(&["aliases"]));
        let mut indicators = Vec::new();
        for record in reader.records() {
            let r = record?;
            let line = r.position().map_or(0, |p| p.line());
            let field = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("").to_string();
            let target = match field(target).as_str() {
                "" => DEFAULT_TARGET,
                t => t
                    .parse()
                    .with_context(|| format!("line {line}: target {t:?} is not a whole number"))?,
            };
            indicators.push(PlanIndicator {
                name: field(Some(name)),
                category: field(Some(category)),
                target: Some(target),
                aliases: field(aliases)
                    .split('|')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect(),
            });
        }
        Plan::checked(indicators)
    }

    fn checked(indicators: Vec<PlanIndicator>) -> Result<Plan> {
        anyhow::ensure!(!indicators.is_empty(), "the plan lists no indicator");
        let mut seen: HashMap<String, (usize, String)> = HashMap::new();
        for (at, i) in indicators.iter().enumerate() {
            anyhow::ensure!(
                !match_key(&i.name).is_empty(),
                "an indicator has no name (category {:?})",
                i.category
            );
            anyhow::ensure!(
                !i.category.trim().is_empty(),
                "indicator {:?} has no category",
                i.name
            );
            for n in std::iter::once(&i.name).chain(&i.aliases) {
                if let Some((other_at, other)) = seen.insert(match_key(n), (at, i.name.clone()))
                    && other_at != at
                {
                    bail!(
                        "{n:?} names both {other:?} and {:?} (names match ignoring case, spaces and punctuation)",
                        i.name
                    );
                }
            }
        }
        Ok(Plan { indicators })
    }
}

/// One indicator in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IndicatorCoverage {
    /// The plan's name.
    pub indicator: String,
    /// Its category.
    pub category: String,
    /// Pairs found (its name and aliases).
    pub pairs: u64,
    /// Pairs wanted.
    pub target: u64,
    /// `max(0, target - pairs)`.
    pub gap: u64,
    /// `complete` (pairs ≥ target), `partial` or `missing` (no pair).
    pub status: &'static str,
    /// The names it was found under in the data, with their pairs.
    pub found_as: BTreeMap<String, u64>,
}

/// One category's totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CategoryCoverage {
    /// The category.
    pub category: String,
    /// Indicators in it.
    pub indicators: u64,
    /// Of those, complete.
    pub complete: u64,
    /// Pairs found.
    pub pairs: u64,
    /// Pairs wanted.
    pub target: u64,
    /// Sum of the gaps.
    pub gap: u64,
    /// Share of the target met (each indicator counting at most its target), percent.
    pub percent: f64,
}

/// A name in the data that matches no indicator.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unmatched {
    /// The name as stored.
    pub name: String,
    /// Its pairs.
    pub pairs: u64,
}

/// `coverage_report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pairs read.
    pub snapshot: crate::dataset::quality::Snapshot,
    /// Counts.
    pub totals: Totals,
    /// Per indicator, in the plan's order.
    pub indicators: Vec<IndicatorCoverage>,
    /// Per category, by name.
    pub categories: Vec<CategoryCoverage>,
    /// The largest gaps first (then plan order): what to work on next.
    pub largest_gaps: Vec<String>,
    /// Names in the data that match no indicator, most pairs first.
    pub unmatched: Vec<Unmatched>,
}

/// Report totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// Indicators in the plan.
    pub indicators: u64,
    /// Complete ones.
    pub complete: u64,
    /// Partial ones.
    pub partial: u64,
    /// Missing ones.
    pub missing: u64,
    /// Pairs wanted.
    pub target: u64,
    /// Pairs matched to an indicator.
    pub pairs_matched: u64,
    /// Sum of the gaps.
    pub gap: u64,
    /// Pairs whose indicator is not in the plan.
    pub pairs_unmatched: u64,
    /// Pairs without an indicator.
    pub pairs_without_indicator: u64,
}

/// What `perpetual coverage` reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Indicators in the plan.
    pub indicators: u64,
    /// Complete ones.
    pub complete: u64,
    /// Partial ones.
    pub partial: u64,
    /// Missing ones.
    pub missing: u64,
    /// Sum of the gaps.
    pub gap: u64,
    /// The ten largest gaps.
    pub largest_gaps: Vec<String>,
    /// Names in the data that match no indicator.
    pub unmatched: u64,
    /// The run's id in the manifest.
    pub run: i64,
    /// Files written.
    pub files: Vec<WrittenFile>,
    /// Wall time.
    pub seconds: f64,
}

/// Computes coverage of `plan`, stores the gaps, writes the report.
pub fn run(
    conn: &rusqlite::Connection,
    plan: &Plan,
    plan_name: &str,
    out: &mut Outputs,
) -> Result<Summary> {
    let started = Instant::now();
    let (max_id, pairs) = store::snapshot(conn)?;
    let run_id = store::begin_run(
        conn,
        "coverage",
        &serde_json::json!({"plan": plan_name, "indicators": plan.indicators.len()}),
        max_id,
        pairs,
        &crate::clock::now_rfc3339(),
    )?;
    let index: HashMap<String, usize> = plan
        .indicators
        .iter()
        .enumerate()
        .flat_map(|(i, ind)| {
            std::iter::once(&ind.name)
                .chain(&ind.aliases)
                .map(move |n| (match_key(n), i))
        })
        .collect();
    let mut found: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); plan.indicators.len()];
    let mut unmatched: BTreeMap<String, u64> = BTreeMap::new();
    let mut without = 0;
    for c in store::indicator_counts(conn, max_id)? {
        let name = c.indicator.as_deref().map(str::trim).unwrap_or("");
        if name.is_empty() {
            without += c.pairs;
            continue;
        }
        match index.get(&match_key(name)) {
            Some(&i) => *found[i].entry(name.to_string()).or_default() += c.pairs,
            None => *unmatched.entry(name.to_string()).or_default() += c.pairs,
        }
    }
    let indicators: Vec<IndicatorCoverage> = plan
        .indicators
        .iter()
        .zip(found)
        .map(|(ind, found_as)| {
            let pairs: u64 = found_as.values().sum();
            let target = ind.target.unwrap_or(DEFAULT_TARGET);
            IndicatorCoverage {
                indicator: ind.name.clone(),
                category: ind.category.clone(),
                pairs,
                target,
                gap: target.saturating_sub(pairs),
                status: if pairs >= target {
                    "complete"
                } else if pairs > 0 {
                    "partial"
                } else {
                    "missing"
                },
                found_as,
            }
        })
        .collect();
    let mut by_category: BTreeMap<String, (CategoryCoverage, u64)> = BTreeMap::new();
    for i in &indicators {
        let (c, met) = by_category.entry(i.category.clone()).or_insert_with(|| {
            (
                CategoryCoverage {
                    category: i.category.clone(),
                    indicators: 0,
                    complete: 0,
                    pairs: 0,
                    target: 0,
                    gap: 0,
                    percent: 0.0,
                },
                0,
            )
        });
        c.indicators += 1;
        c.complete += u64::from(i.status == "complete");
        c.pairs += i.pairs;
        c.target += i.target;
        c.gap += i.gap;
        *met += i.pairs.min(i.target);
    }
    let categories: Vec<CategoryCoverage> = by_category
        .into_values()
        .map(|(mut c, met)| {
            c.percent = if c.target == 0 {
                100.0
            } else {
                (met as f64 * 10_000.0 / c.target as f64).round() / 100.0
            };
            c
        })
        .collect();
    let mut order: Vec<usize> = (0..indicators.len())
        .filter(|&i| indicators[i].gap > 0)
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(indicators[i].gap), i));
    let largest_gaps: Vec<String> = order
        .iter()
        .map(|&i| indicators[i].indicator.clone())
        .collect();
    let mut unmatched: Vec<Unmatched> = unmatched
        .into_iter()
        .map(|(name, pairs)| Unmatched { name, pairs })
        .collect();
    unmatched.sort_by(|a, b| b.pairs.cmp(&a.pairs).then_with(|| a.name.cmp(&b.name)));
    let count = |s: &str| indicators.iter().filter(|i| i.status == s).count() as u64;
    let totals = Totals {
        indicators: indicators.len() as u64,
        complete: count("complete"),
        partial: count("partial"),
        missing: count("missing"),
        target: indicators.iter().map(|i| i.target).sum(),
        pairs_matched: indicators.iter().map(|i| i.pairs).sum(),
        gap: indicators.iter().map(|i| i.gap).sum(),
        pairs_unmatched: unmatched.iter().map(|u| u.pairs).sum(),
        pairs_without_indicator: without,
    };
    let report = Report {
        snapshot: crate::dataset::quality::Snapshot {
            pairs,
            max_pair_id: max_id,
        },
        totals,
        indicators,
        categories,
        largest_gaps,
        unmatched,
    };
    store::replace_coverage_gaps(
        conn,
        run_id,
        &report
            .indicators
            .iter()
            .enumerate()
            .map(|(i, c)| CoverageGap {
                indicator: c.indicator.clone(),
                category: c.category.clone(),
                target: c.target,
                pairs: c.pairs,
                gap: c.gap,
                position: i as u64,
            })
            .collect::<Vec<_>>(),
    )?;
    out.write_json("coverage_report.json", &report)?;
    out.write("coverage_report.md", render_markdown(&report).as_bytes())?;
    let files = out.files().to_vec();
    store::finish_run(
        conn,
        run_id,
        &serde_json::to_value(&files)?,
        &crate::clock::now_rfc3339(),
    )?;
    let t = &report.totals;
    Ok(Summary {
        indicators: t.indicators,
        complete: t.complete,
        partial: t.partial,
        missing: t.missing,
        gap: t.gap,
        largest_gaps: report.largest_gaps.iter().take(10).cloned().collect(),
        unmatched: report.unmatched.len() as u64,
        run: run_id,
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn render_markdown(r: &Report) -> String {
    use crate::human::thousands;
    let t = &r.totals;
    let mut s = String::from("# Indicator coverage\n\n");
    s.push_str(&format!(
        "{} indicators: **{} complete, {} partial, {} missing**; {} of {} pairs wanted are in (gap {}). {} pairs name an indicator outside the plan, {} name none.\n",
        t.indicators,
        t.complete,
        t.partial,
        t.missing,
        thousands(t.target - t.gap),
        thousands(t.target),
        thousands(t.gap),
        thousands(t.pairs_unmatched),
        thousands(t.pairs_without_indicator)
    ));
    s.push_str("\n## By category\n\n| category | indicators | complete | pairs | target | gap | met |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for c in &r.categories {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1}% |\n",
            c.category,
            c.indicators,
            c.complete,
            thousands(c.pairs),
            thousands(c.target),
            thousands(c.gap),
            c.percent
        ));
    }
    s.push_str("\n## Largest gaps\n\n");
    if r.largest_gaps.is_empty() {
        s.push_str("None: every indicator has reached its target.\n");
    } else {
        s.push_str(&format!(
            "{}\n",
            r.largest_gaps
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s.push_str("\n## By indicator\n\n| indicator | category | pairs | target | gap | status |\n| --- | --- | ---: | ---: | ---: | --- |\n");
    for i in &r.indicators {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            i.indicator.replace('|', "\\|"),
            i.category,
            thousands(i.pairs),
            thousands(i.target),
            thousands(i.gap),
            i.status
        ));
    }
    s.push_str("\n## Names in the data outside the plan\n\n");
    if r.unmatched.is_empty() {
        s.push_str("None.\n");
    } else {
        s.push_str("Add them to the plan, or as aliases of an indicator.\n\n| name | pairs |\n| --- | ---: |\n");
        for u in &r.unmatched {
            s.push_str(&format!(
                "| {} | {} |\n",
                u.name.replace('|', "\\|"),
                thousands(u.pairs)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_csv_plans_read_the_same() {
        let toml = r#"
default_target = 120
[[indicator]]
name = "Fear & Greed Index"
category = "sentiment"
aliases = ["FGI"]
[[indicator]]
name = "RSI"
category = "momentum"
target = 150
"#;
        let csv = "indicator,category,target,aliases\nFear & Greed Index,sentiment,120,FGI\nRSI,momentum,150,\n";
        let a = Plan::from_toml(toml).unwrap();
        assert_eq!(a, Plan::from_csv(csv).unwrap());
        assert_eq!(a.indicators[0].target, Some(120));
        assert_eq!(
            match_key("Fear & Greed Index"),
            match_key("fear_greed_index")
        );
    }

    #[test]
    fn plans_that_cannot_be_right_are_refused() {
        let clash = "[[indicator]]\nname = \"RSI\"\ncategory = \"m\"\n[[indicator]]\nname = \"MACD\"\ncategory = \"m\"\naliases = [\"rsi\"]\n";
        let e = format!("{:#}", Plan::from_toml(clash).unwrap_err());
        assert!(e.contains("RSI") && e.contains("MACD"), "{e}");
        assert!(
            Plan::from_toml("[[indicator]]\nname = \"RSI\"\n").is_err(),
            "no category"
        );
        assert!(
            Plan::from_toml("[[indicator]]\nname = \"RSI\"\ncategory = \"m\"\ntargte = 1\n")
                .is_err()
        );
        let e = format!(
            "{:#}",
            Plan::from_csv("name,category,target\nRSI,m,lots\n").unwrap_err()
        );
        assert!(e.contains("line 2") && e.contains("lots"), "{e}");
        assert!(Plan::from_csv("ind,cat\nRSI,m\n").is_err());
    }
}
