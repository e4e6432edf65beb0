//! The read-back queries of the daily report (`crate::run::report`) and the loop's
//! heartbeats. Every query takes a window `[from, to)` of timestamps in the clock's
//! format, which sort as text.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

/// Pairs first stored in the window, counted by agent, by category and by indicator (a
/// missing value is `(none)`). One pass over the window's rows, not one per column: the
/// rows are reached through `pairs_by_created`, and each lookup is the expensive part.
pub fn pairs_added(conn: &Connection, from: &str, to: &str) -> Result<PairsAdded> {
    let mut stmt = conn.prepare(
        "SELECT agent, COALESCE(category, '(none)'), COALESCE(indicator, '(none)'), COUNT(*)
         FROM pairs WHERE created_at >= ?1 AND created_at < ?2 GROUP BY 1, 2, 3",
    )?;
    let mut out = PairsAdded::default();
    for row in stmt.query_map(params![from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)? as u64,
        ))
    })? {
        let (agent, category, indicator, n) = row?;
        *out.by_agent.entry(agent).or_default() += n;
        *out.by_category.entry(category).or_default() += n;
        *out.by_indicator.entry(indicator).or_default() += n;
    }
    Ok(out)
}

/// Pairs added in a window, by agent, category and indicator.
#[derive(Debug, Clone, Default)]
pub struct PairsAdded {
    /// By agent.
    pub by_agent: BTreeMap<String, u64>,
    /// By category.
    pub by_category: BTreeMap<String, u64>,
    /// By indicator.
    pub by_indicator: BTreeMap<String, u64>,
}

/// Files the ledger finished in the window, by status (`integrated`, `rejected`,
/// `duplicate`), and the invalid pairs inside the integrated ones.
pub fn files_finished(
    conn: &Connection,
    from: &str,
    to: &str,
) -> Result<(BTreeMap<String, u64>, u64)> {
    let mut stmt = conn.prepare(
        "SELECT status, COUNT(*), COALESCE(SUM(pairs_invalid), 0) FROM files
         WHERE finished_at >= ?1 AND finished_at < ?2 GROUP BY status",
    )?;
    let mut by = BTreeMap::new();
    let mut invalid = 0;
    for row in stmt.query_map(params![from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })? {
        let (status, n, inv) = row?;
        if status == "integrated" {
            invalid += inv;
        }
        by.insert(status, n);
    }
    Ok((by, invalid))
}

/// A task that completed in the window.
#[derive(Debug, Clone)]
pub struct Completed {
    /// Task id.
    pub id: String,
    /// Its agent.
    pub agent: String,
    /// Grade letter.
    pub grade: Option<String>,
    /// When it was added.
    pub created_at: String,
    /// When a session first took it.
    pub started_at: Option<String>,
    /// When it completed.
    pub finished_at: String,
}

/// Tasks completed in the window, in the order they completed.
pub fn tasks_completed(conn: &Connection, from: &str, to: &str) -> Result<Vec<Completed>> {
    let mut stmt = conn.prepare(
        "SELECT id, agent, grade, created_at, started_at, finished_at FROM tasks
         WHERE status = 'completed' AND finished_at >= ?1 AND finished_at < ?2
         ORDER BY finished_at, id",
    )?;
    let rows = stmt
        .query_map(params![from, to], |r| {
            Ok(Completed {
                id: r.get(0)?,
                agent: r.get(1)?,
                grade: r.get(2)?,
                created_at: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Tasks added, and tasks marked failed (their last failure), in the window.
pub fn tasks_added_and_failed(conn: &Connection, from: &str, to: &str) -> Result<(u64, u64)> {
    Ok(conn.query_row(
        "SELECT (SELECT COUNT(*) FROM tasks WHERE created_at >= ?1 AND created_at < ?2),
                (SELECT COUNT(*) FROM tasks
                  WHERE status = 'failed' AND finished_at >= ?1 AND finished_at < ?2)",
        params![from, to],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?)
}

/// One session's span and what it used.
#[derive(Debug, Clone)]
pub struct SessionSpan {
    /// Its agent.
    pub agent: String,
    /// Start.
    pub started_at: String,
    /// Wrap (None while active).
    pub wrapped_at: Option<String>,
    /// Level at the wrap.
    pub level: Option<String>,
    /// Tokens, as last reported.
    pub tokens_used: u64,
}

/// Sessions that overlap the window (started before its end, not wrapped before its start).
pub fn sessions_overlapping(conn: &Connection, from: &str, to: &str) -> Result<Vec<SessionSpan>> {
    let mut stmt = conn.prepare(
        "SELECT agent, started_at, wrapped_at, level, tokens_used FROM sessions
         WHERE started_at < ?2 AND (wrapped_at IS NULL OR wrapped_at >= ?1)
         ORDER BY started_at, id",
    )?;
    let rows = stmt
        .query_map(params![from, to], |r| {
            Ok(SessionSpan {
                agent: r.get(0)?,
                started_at: r.get(1)?,
                wrapped_at: r.get(2)?,
                level: r.get(3)?,
                tokens_used: r.get::<_, i64>(4)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// How the loop's runs that ended in the window went: stopped with SIGTERM, with
/// SIGKILL, ended with an error.
pub fn runs_ended(conn: &Connection, from: &str, to: &str) -> Result<(u64, u64, u64)> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(stopped_with = 'SIGTERM'), 0), COALESCE(SUM(stopped_with = 'SIGKILL'), 0),
                COALESCE(SUM(error IS NOT NULL), 0)
         FROM loop_runs WHERE ended_at >= ?1 AND ended_at < ?2",
        params![from, to],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )?)
}

/// Agents paused in the window: (agent, reason), oldest first.
pub fn pauses(conn: &Connection, from: &str, to: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT agent, COALESCE(reason, '') FROM agent_pauses WHERE at >= ?1 AND at < ?2 ORDER BY at, id",
    )?;
    let rows = stmt
        .query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records a round of the `perpetual run` process started at `started_at`.
pub fn heartbeat(conn: &Connection, pid: u32, started_at: &str, now: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO loop_heartbeats (pid, started_at, last_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (pid, started_at) DO UPDATE SET last_seen = MAX(last_seen, ?3)",
        params![pid, started_at, now],
    )?;
    Ok(())
}

/// The latest round recorded by the `perpetual run` process `pid` (its newest start),
/// for the faucet's "last round" beside the loop's pid.
pub fn last_round(conn: &Connection, pid: u32) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT last_seen FROM loop_heartbeats WHERE pid = ?1
             ORDER BY started_at DESC LIMIT 1",
            [pid],
            |r| r.get(0),
        )
        .optional()?)
}

/// The loop's spans (start, latest round) that overlap the window.
pub fn loop_spans(conn: &Connection, from: &str, to: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT started_at, last_seen FROM loop_heartbeats
         WHERE started_at < ?2 AND last_seen >= ?1 ORDER BY started_at",
    )?;
    let rows = stmt
        .query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The earliest time anything was recorded (a loop start, a command, a session, a file).
pub fn first_record(conn: &Connection) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT MIN(t) FROM (
             SELECT MIN(started_at) AS t FROM loop_heartbeats
             UNION ALL SELECT MIN(at) FROM commands
             UNION ALL SELECT MIN(started_at) FROM sessions
             UNION ALL SELECT MIN(started_at) FROM files
             UNION ALL SELECT MIN(created_at) FROM tasks)",
        [],
        |r| r.get(0),
    )?)
}

/// Whether the report of `date` was written after that day had ended.
pub fn report_complete(conn: &Connection, date: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT complete FROM daily_reports WHERE date = ?1",
            [date],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

/// Records that the report of `date` was written.
pub fn report_written(conn: &Connection, date: &str, at: &str, complete: bool) -> Result<()> {
    conn.execute(
        "INSERT INTO daily_reports (date, written_at, complete) VALUES (?1, ?2, ?3)
         ON CONFLICT (date) DO UPDATE SET written_at = ?2, complete = ?3",
        params![date, at, complete],
    )?;
    Ok(())
}
