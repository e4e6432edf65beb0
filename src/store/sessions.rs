//! Sessions and their checkpoints (`sessions`, `checkpoints`). The lifecycle (start,
//! checkpoint, wrap) lives in `crate::work::session`; this file only reads and writes.

use crate::budget::{Budget, Level};
use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// A session as read back.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// `session_20251106_001355` (with `_2`, `_3`... when several start in one second).
    pub id: String,
    /// The agent working.
    pub agent: String,
    /// The task it works on (None if that task was removed since).
    pub task_id: Option<String>,
    /// `active` or `wrapped`.
    pub status: String,
    /// The budget in force when it started.
    pub budget: Budget,
    /// Tokens used, as last reported.
    pub tokens_used: u64,
    /// The task's progress when the session began.
    pub done_at_start: u64,
    /// Start time.
    pub started_at: String,
    /// Wrap time.
    pub wrapped_at: Option<String>,
    /// Budget level at the wrap.
    pub level: Option<Level>,
    /// What the next session should do.
    pub next_action: Option<String>,
    /// The handoff document, relative to the root.
    pub handoff_path: Option<String>,
    /// The backup made at the wrap, relative to the root.
    pub backup_path: Option<String>,
    /// The git commit made at the wrap.
    pub commit_id: Option<String>,
    /// Each wrap step and its outcome.
    pub wrap_steps: Option<serde_json::Value>,
}

impl SessionRow {
    /// Whether it is still running.
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// A checkpoint as read back.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRow {
    /// Row id (order of recording).
    pub id: i64,
    /// The session.
    pub session_id: String,
    /// The task the session worked on.
    pub task_id: Option<String>,
    /// When.
    pub at: String,
    /// Progress after it, when given.
    pub done: Option<u64>,
    /// Units in all, when given.
    pub total: Option<u64>,
    /// The session's tokens so far, when given.
    pub tokens: Option<u64>,
    /// API calls made since the previous checkpoint.
    pub api_calls: u64,
    /// Free text.
    pub note: Option<String>,
    /// Budget level after it.
    pub level: Level,
}

/// Inserts an active session named `base`, or `base_2`, `base_3`... when taken, and
/// returns the id. Call inside an IMMEDIATE transaction so two starts in the same
/// second cannot pick the same name.
pub fn insert(
    conn: &Connection,
    base: &str,
    agent: &str,
    task_id: &str,
    budget: &Budget,
    done_at_start: u64,
    now: &str,
) -> Result<String> {
    let mut n = 1;
    loop {
        let id = if n == 1 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        };
        let taken = conn
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [&id], |_| Ok(()))
            .optional()?
            .is_some();
        if !taken {
            conn.execute(
                "INSERT INTO sessions (id, agent, task_id, status, token_budget, api_calls_per_day,
                                       slots, wall_minutes, done_at_start, started_at)
                 VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    agent,
                    task_id,
                    budget.tokens_per_session as i64,
                    budget.api_calls_per_day as i64,
                    budget.slots as i64,
                    budget.wall_minutes_per_session as i64,
                    done_at_start as i64,
                    now
                ],
            )?;
            return Ok(id);
        }
        n += 1;
    }
}

/// One session.
pub fn get(conn: &Connection, id: &str) -> Result<Option<SessionRow>> {
    Ok(conn
        .query_row(&format!("{SELECT} WHERE id = ?1"), [id], from_row)
        .optional()?)
}

/// Active sessions, oldest first; only `agent`'s when given.
pub fn active(conn: &Connection, agent: Option<&str>) -> Result<Vec<SessionRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT} WHERE status = 'active' AND (?1 IS NULL OR agent = ?1) ORDER BY started_at, id"
    ))?;
    let rows = stmt
        .query_map([agent], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every session, newest first; only `agent`'s when given.
pub fn list(conn: &Connection, agent: Option<&str>) -> Result<Vec<SessionRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT} WHERE (?1 IS NULL OR agent = ?1) ORDER BY started_at DESC, id DESC"
    ))?;
    let rows = stmt
        .query_map([agent], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The sessions that worked on a task, oldest first.
pub fn of_task(conn: &Connection, task: &str) -> Result<Vec<SessionRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT} WHERE task_id = ?1 ORDER BY started_at, id"
    ))?;
    let rows = stmt
        .query_map([task], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The last wrapped session of a task: the one whose handoff the next session reads.
pub fn last_wrapped_of_task(conn: &Connection, task: &str) -> Result<Option<SessionRow>> {
    Ok(conn
        .query_row(
            &format!(
                "{SELECT} WHERE task_id = ?1 AND status = 'wrapped'
                 ORDER BY wrapped_at DESC, started_at DESC, id DESC LIMIT 1"
            ),
            [task],
            from_row,
        )
        .optional()?)
}

/// Records the tokens a session has used so far.
pub fn set_tokens(conn: &Connection, id: &str, tokens: u64) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET tokens_used = ?2 WHERE id = ?1",
        params![id, tokens as i64],
    )?;
    Ok(())
}

/// Archives a session: wrapped, with its level and the next action.
pub fn mark_wrapped(
    conn: &Connection,
    id: &str,
    level: Level,
    next_action: &str,
    now: &str,
) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET status = 'wrapped', wrapped_at = ?2, level = ?3, next_action = ?4
         WHERE id = ?1",
        params![id, now, level.as_str(), next_action],
    )?;
    Ok(())
}

/// Replaces a wrapped session's next action (once the wrap knows the task's fate).
pub fn set_next_action(conn: &Connection, id: &str, next_action: &str) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET next_action = ?2 WHERE id = ?1",
        params![id, next_action],
    )?;
    Ok(())
}

/// What the wrap produced, recorded after its file steps ran.
pub fn record_wrap_outputs(
    conn: &Connection,
    id: &str,
    handoff: Option<&str>,
    backup: Option<&str>,
    commit: Option<&str>,
    steps: &serde_json::Value,
) -> Result<()> {
    conn.execute(
        "UPDATE sessions SET handoff_path = ?2, backup_path = ?3, commit_id = ?4, wrap_steps = ?5
         WHERE id = ?1",
        params![id, handoff, backup, commit, steps.to_string()],
    )?;
    Ok(())
}

/// The fields of a new checkpoint.
#[derive(Debug, Clone)]
pub struct NewCheckpoint<'a> {
    /// The session.
    pub session_id: &'a str,
    /// Its agent.
    pub agent: &'a str,
    /// Its task.
    pub task_id: Option<&'a str>,
    /// When.
    pub at: &'a str,
    /// Progress, when given.
    pub progress: Option<(u64, Option<u64>)>,
    /// Session tokens so far, when given.
    pub tokens: Option<u64>,
    /// API calls since the previous checkpoint.
    pub api_calls: u64,
    /// Free text.
    pub note: Option<&'a str>,
    /// Level after it.
    pub level: Level,
}

/// Records a checkpoint.
pub fn insert_checkpoint(conn: &Connection, c: &NewCheckpoint<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO checkpoints (session_id, agent, task_id, at, done, total, tokens, api_calls,
                                  note, level)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            c.session_id,
            c.agent,
            c.task_id,
            c.at,
            c.progress.map(|p| p.0 as i64),
            c.progress.and_then(|p| p.1).map(|n| n as i64),
            c.tokens.map(|n| n as i64),
            c.api_calls as i64,
            c.note,
            c.level.as_str()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// A session's checkpoints, in order.
pub fn checkpoints_of(conn: &Connection, session: &str) -> Result<Vec<CheckpointRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT_CHECKPOINT} WHERE session_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([session], checkpoint_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The latest checkpoint recorded for a task, over all its sessions.
pub fn last_checkpoint_of_task(conn: &Connection, task: &str) -> Result<Option<CheckpointRow>> {
    Ok(conn
        .query_row(
            &format!("{SELECT_CHECKPOINT} WHERE task_id = ?1 ORDER BY id DESC LIMIT 1"),
            [task],
            checkpoint_from_row,
        )
        .optional()?)
}

/// How many checkpoints were recorded for a task, over all its sessions.
pub fn count_checkpoints_of_task(conn: &Connection, task: &str) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM checkpoints WHERE task_id = ?1",
        [task],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// API calls the agent's checkpoints recorded in `[from, to)` (timestamps in the
/// clock's format, which sort as text).
pub fn api_calls_between(conn: &Connection, agent: &str, from: &str, to: &str) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(api_calls), 0) FROM checkpoints
         WHERE agent = ?1 AND at >= ?2 AND at < ?3",
        params![agent, from, to],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

const SELECT: &str = "SELECT id, agent, task_id, status, token_budget, api_calls_per_day, slots,
        wall_minutes, tokens_used, done_at_start, started_at, wrapped_at, level, next_action,
        handoff_path, backup_path, commit_id, wrap_steps
    FROM sessions";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
    let level: Option<String> = r.get(12)?;
    let steps: Option<String> = r.get(17)?;
    Ok(SessionRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        task_id: r.get(2)?,
        status: r.get(3)?,
        budget: Budget {
            tokens_per_session: r.get::<_, i64>(4)? as u64,
            api_calls_per_day: r.get::<_, i64>(5)? as u64,
            slots: r.get::<_, i64>(6)? as u64,
            wall_minutes_per_session: r.get::<_, i64>(7)? as u64,
        },
        tokens_used: r.get::<_, i64>(8)? as u64,
        done_at_start: r.get::<_, i64>(9)? as u64,
        started_at: r.get(10)?,
        wrapped_at: r.get(11)?,
        level: level.map(|l| Level::parse(&l)),
        next_action: r.get(13)?,
        handoff_path: r.get(14)?,
        backup_path: r.get(15)?,
        commit_id: r.get(16)?,
        wrap_steps: steps.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

const SELECT_CHECKPOINT: &str =
    "SELECT id, session_id, task_id, at, done, total, tokens, api_calls, note, level
    FROM checkpoints";

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<CheckpointRow> {
    let level: String = r.get(9)?;
    Ok(CheckpointRow {
        id: r.get(0)?,
        session_id: r.get(1)?,
        task_id: r.get(2)?,
        at: r.get(3)?,
        done: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
        total: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        tokens: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
        api_calls: r.get::<_, i64>(7)? as u64,
        note: r.get(8)?,
        level: Level::parse(&level),
    })
}

/// A wrapped session whose wrap commit failed: its outputs go with the next wrap's.
#[derive(Debug, Clone)]
pub struct PendingCommit {
    /// The session.
    pub id: String,
    /// Its agent (its `outbox/<agent>/` is an output).
    pub agent: String,
    /// Its handoff, relative to the root.
    pub handoff_path: Option<String>,
}

/// Sessions whose wrap commit failed and was not retried yet, oldest first.
pub fn commit_pending(conn: &Connection) -> Result<Vec<PendingCommit>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, agent, handoff_path FROM sessions WHERE commit_pending = 1 ORDER BY started_at",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(PendingCommit {
                id: r.get(0)?,
                agent: r.get(1)?,
                handoff_path: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The session's wrap commit failed: the next wrap retries its outputs.
pub fn set_commit_pending(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("UPDATE sessions SET commit_pending = 1 WHERE id = ?1", [id])?;
    Ok(())
}

/// The outputs of `ids` were committed (in `commit`, or they held no change).
pub fn clear_commit_pending(conn: &Connection, ids: &[&str], commit: Option<&str>) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE sessions SET commit_pending = 0, commit_id = COALESCE(commit_id, ?2) WHERE id = ?1",
    )?;
    for id in ids {
        stmt.execute(params![id, commit])?;
    }
    Ok(())
}
