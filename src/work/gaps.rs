//! `{gap_indicators}` in a `[[template]]`: the assigner turns the largest coverage gaps
//! into tasks ("continue through all 227 indicators" becomes "RSI, MACD, ...: 100 pairs
//! each").
//!
//! The gaps are the latest coverage report's (`perpetual coverage`, kept in
//! `coverage_gaps`), largest first. Each task made from such a template takes the next
//! [`PER_TASK`] indicators that no other task has claimed, and records them in its params
//! (`gap_indicators`). An indicator is claimed by a task that is pending or in progress,
//! or that finished after the latest coverage report (the report does not know yet
//! what it added). With no report, or every gap claimed, the template makes no task.

use crate::store::dataset as store_dataset;
use crate::store::tasks::{self as store_tasks, TaskStatus};
use anyhow::Result;
use rusqlite::Connection;
use std::collections::HashSet;

/// The placeholder, in a template's id or description.
pub const PLACEHOLDER: &str = "{gap_indicators}";
/// Indicators per task (the seeds' batches: "5 indicators, 100 pairs each").
pub const PER_TASK: usize = 5;

/// A task's id, description and params once the gaps are filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// The id, `{gap_indicators}` replaced by the indicators' slugs joined with `-`.
    pub id: String,
    /// The description, `{gap_indicators}` replaced by their names joined with `, `.
    pub description: Option<String>,
    /// `{"gap_indicators": [...]}` when the placeholder was used.
    pub params: Option<serde_json::Value>,
}

/// Fills `{gap_indicators}` in a task made from a template. Without the placeholder the
/// task is unchanged; `None` when it needs gaps and none is free.
pub fn fill(conn: &Connection, id: String, description: Option<String>) -> Result<Option<Filled>> {
    let wanted = id.contains(PLACEHOLDER)
        || description
            .as_deref()
            .is_some_and(|d| d.contains(PLACEHOLDER));
    if !wanted {
        return Ok(Some(Filled {
            id,
            description,
            params: None,
        }));
    }
    let Some(report) = store_dataset::last_run(conn, "coverage")? else {
        return Ok(None);
    };
    let report_at = report.finished_at.unwrap_or_default();
    let mut claimed = HashSet::new();
    for t in store_tasks::all(conn)? {
        let open = matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress);
        let since = t
            .finished_at
            .as_deref()
            .is_some_and(|f| f > report_at.as_str());
        if !(open || since) {
            continue;
        }
        if let Some(list) = t
            .params
            .as_ref()
            .and_then(|p| p.get("gap_indicators"))
            .and_then(|v| v.as_array())
        {
            claimed.extend(list.iter().filter_map(|v| v.as_str().map(String::from)));
        }
    }
    let names: Vec<String> = store_dataset::coverage_gaps(conn)?
        .into_iter()
        .map(|g| g.indicator)
        .filter(|n| !claimed.contains(n))
        .take(PER_TASK)
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let slug = names.iter().map(|n| slug(n)).collect::<Vec<_>>().join("-");
    Ok(Some(Filled {
        id: id.replace(PLACEHOLDER, &slug),
        description: description.map(|d| d.replace(PLACEHOLDER, &names.join(", "))),
        params: Some(serde_json::json!({ "gap_indicators": names })),
    }))
}

/// An indicator's name as a task id allows: lower case, letters and digits, `_` between
/// words.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_task_id_safe() {
        assert_eq!(slug("Fear & Greed Index"), "fear_greed_index");
        assert_eq!(slug("Williams %R"), "williams_r");
        assert_eq!(slug("200-day EMA"), "200_day_ema");
    }
}
