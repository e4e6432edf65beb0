//! Read-back queries for `perpetual stats`.

use anyhow::Result;
use rusqlite::Connection;
use serde::Serialize;

/// A name and how many pairs carry it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Count {
    /// Agent, category or indicator; `(none)` when unset.
    pub name: String,
    /// Pairs.
    pub pairs: u64,
}

/// What `perpetual stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Distinct pairs stored.
    pub pairs: u64,
    /// The configured goal.
    pub goal: u64,
    /// pairs / goal, in percent.
    pub goal_percent: f64,
    /// Files whose pairs are all in.
    pub files_integrated: u64,
    /// Files rejected.
    pub files_rejected: u64,
    /// Files whose bytes had been integrated before.
    pub files_duplicate: u64,
    /// Files interrupted mid-way (resumed by the next ingest).
    pub files_partial: u64,
    /// Inbox entries not read (not regular files, not drops, unreadable), left in place.
    pub files_skipped: u64,
    /// Pairs that failed validation, over all files.
    pub pairs_invalid: u64,
    /// Pairs by the agent that first delivered them.
    pub by_agent: Vec<Count>,
    /// Pairs by category.
    pub by_category: Vec<Count>,
    /// The most common indicators.
    pub top_indicators: Vec<Count>,
    /// Pairs the latest quality report flagged (`perpetual quality`); `None` before the
    /// first one.
    pub flagged: Option<u64>,
}

/// How many indicators `stats` lists unless told otherwise (`--top`, `/api/stats?top=`).
pub const DEFAULT_TOP: usize = 10;

/// Gathers the statistics. `top` bounds the indicator list.
pub fn stats(conn: &Connection, goal: u64, top: usize) -> Result<Stats> {
    let pairs = super::pairs::count(conn)?;
    let mut files = [0u64; 5];
    {
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM files GROUP BY status")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let status: String = r.get(0)?;
            let n = r.get::<_, i64>(1)? as u64;
            let slot = match status.as_str() {
                "integrated" => 0,
                "rejected" => 1,
                "duplicate" => 2,
                "skipped" => 4,
                _ => 3,
            };
            files[slot] += n;
        }
    }
    let pairs_invalid: i64 = conn.query_row(
        "SELECT COALESCE(SUM(pairs_invalid), 0) FROM files WHERE status = 'integrated'",
        [],
        |r| r.get(0),
    )?;
    Ok(Stats {
        pairs,
        goal,
        goal_percent: if goal == 0 {
            0.0
        } else {
            pairs as f64 * 100.0 / goal as f64
        },
        files_integrated: files[0],
        files_rejected: files[1],
        files_duplicate: files[2],
        files_partial: files[3],
        files_skipped: files[4],
        pairs_invalid: pairs_invalid as u64,
        by_agent: group(conn, "agent", usize::MAX)?,
        by_category: group(conn, "category", usize::MAX)?,
        top_indicators: group(conn, "indicator", top)?,
        flagged: match super::dataset::last_run(conn, "quality")? {
            Some(_) => Some(super::dataset::flagged_count(conn)?),
            None => None,
        },
    })
}

fn group(conn: &Connection, column: &str, limit: usize) -> Result<Vec<Count>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare(&format!(
        "SELECT COALESCE({column}, '(none)'), COUNT(*) AS n FROM pairs
         GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?1"
    ))?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok(Count {
                name: r.get(0)?,
                pairs: r.get::<_, i64>(1)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
