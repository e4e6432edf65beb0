//! The perpetual loop's rows: each agent's pause state (`agent_state`), the sessions and
//! built-in tasks the loop ran (`loop_runs`), and the assigner's log (`assign_log`). The
//! rules (the circuit breaker, what the assigner does) live in `crate::run::runloop` and
//! `crate::work::assign`; this file only reads and writes.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// An agent paused by the circuit breaker (or by `agent pause`).
#[derive(Debug, Clone, Serialize)]
pub struct Pause {
    /// When.
    pub at: String,
    /// Why.
    pub reason: String,
    /// The task flagged "needs review" with it.
    pub task: Option<String>,
}

/// The agent's pause, if it is paused.
pub fn pause_of(conn: &Connection, agent: &str) -> Result<Option<Pause>> {
    Ok(conn
        .query_row(
            "SELECT paused_at, pause_reason, paused_task FROM agent_state
             WHERE agent = ?1 AND paused_at IS NOT NULL",
            [agent],
            |r| {
                Ok(Pause {
                    at: r.get(0)?,
                    reason: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    task: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Pauses an agent.
pub fn set_pause(
    conn: &Connection,
    agent: &str,
    at: &str,
    reason: &str,
    task: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_state (agent, paused_at, pause_reason, paused_task) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (agent) DO UPDATE SET paused_at = ?2, pause_reason = ?3, paused_task = ?4",
        params![agent, at, reason, task],
    )?;
    Ok(())
}

/// Unpauses an agent; the breaker then looks only at runs after `run_floor`.
pub fn clear_pause(conn: &Connection, agent: &str, run_floor: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_state (agent, run_floor) VALUES (?1, ?2)
         ON CONFLICT (agent) DO UPDATE SET paused_at = NULL, pause_reason = NULL,
                                           paused_task = NULL, run_floor = ?2",
        params![agent, run_floor],
    )?;
    Ok(())
}

/// The breaker looks only at the agent's runs with a greater id.
pub fn run_floor(conn: &Connection, agent: &str) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT run_floor FROM agent_state WHERE agent = ?1",
            [agent],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// One session (or built-in task) the loop ran.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Row id (order of starting).
    pub id: i64,
    /// The agent.
    pub agent: String,
    /// The task.
    pub task_id: Option<String>,
    /// The task's kind (`agent`, `ingest`, `backfill`).
    pub kind: String,
    /// The session, when it ran in one.
    pub session_id: Option<String>,
    /// The agent command's process id.
    pub pid: Option<u32>,
    /// Start.
    pub started_at: String,
    /// End (None while it runs).
    pub ended_at: Option<String>,
    /// The command's exit status.
    pub exit_code: Option<i32>,
    /// The signal that ended the command.
    pub signal: Option<i32>,
    /// When the loop asked for a wrap.
    pub wrap_requested_at: Option<String>,
    /// `SIGTERM` or `SIGKILL` when the loop had to stop the command.
    pub stopped_with: Option<String>,
    /// The task's progress advanced (or it completed).
    pub progressed: Option<bool>,
    /// What went wrong.
    pub error: Option<String>,
}

/// Records the start of a run; returns its id.
pub fn insert_run(
    conn: &Connection,
    agent: &str,
    task: &str,
    kind: &str,
    session: Option<&str>,
    at: &str,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO loop_runs (agent, task_id, kind, session_id, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![agent, task, kind, session, at],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Records the process id of a run's command.
pub fn set_run_pid(conn: &Connection, id: i64, pid: u32) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET pid = ?2 WHERE id = ?1",
        params![id, pid],
    )?;
    Ok(())
}

/// Records the session a built-in run worked in (backfill starts its own).
pub fn set_run_session(conn: &Connection, id: i64, session: &str) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET session_id = ?2 WHERE id = ?1",
        params![id, session],
    )?;
    Ok(())
}

/// Records that the loop asked the run to wrap.
pub fn set_wrap_requested(conn: &Connection, id: i64, at: &str) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET wrap_requested_at = COALESCE(wrap_requested_at, ?2) WHERE id = ?1",
        params![id, at],
    )?;
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// Exit status of the command.
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// `SIGTERM` / `SIGKILL` when the loop stopped it.
    pub stopped_with: Option<&'static str>,
    /// The task's progress advanced.
    pub progressed: bool,
    /// What went wrong.
    pub error: Option<String>,
}

/// Records the end of a run.
pub fn finish_run(conn: &Connection, id: i64, at: &str, end: &RunEnd) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET ended_at = ?2, exit_code = ?3, signal = ?4, stopped_with = ?5,
                              progressed = ?6, error = ?7
         WHERE id = ?1",
        params![
            id,
            at,
            end.exit_code,
            end.signal,
            end.stopped_with,
            end.progressed,
            end.error
        ],
    )?;
    Ok(())
}

/// Runs that never recorded their end (the loop died under them), oldest first.
pub fn unfinished_runs(conn: &Connection) -> Result<Vec<RunRow>> {
    let mut stmt = conn.prepare(&format!("{SELECT_RUN} WHERE ended_at IS NULL ORDER BY id"))?;
    let rows = stmt
        .query_map([], run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The agent's last `n` finished sessions (runs of its command and backfills; not the
/// inbox ingests) with an id above `floor`, newest first.
pub fn last_runs(conn: &Connection, agent: &str, floor: i64, n: usize) -> Result<Vec<RunRow>> {
    let mut stmt = conn.prepare(&format!(
        "{SELECT_RUN} WHERE agent = ?1 AND id > ?2 AND ended_at IS NOT NULL AND kind <> 'ingest'
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![agent, floor, n as i64], run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The highest run id (0 when none).
pub fn max_run_id(conn: &Connection) -> Result<i64> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM loop_runs", [], |r| {
            r.get(0)
        })?,
    )
}

const SELECT_RUN: &str = "SELECT id, agent, task_id, kind, session_id, pid, started_at, ended_at,
        exit_code, signal, wrap_requested_at, stopped_with, progressed, error
    FROM loop_runs";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        task_id: r.get(2)?,
        kind: r.get(3)?,
        session_id: r.get(4)?,
        pid: r.get(5)?,
        started_at: r.get(6)?,
        ended_at: r.get(7)?,
        exit_code: r.get(8)?,
        signal: r.get(9)?,
        wrap_requested_at: r.get(10)?,
        stopped_with: r.get(11)?,
        progressed: r.get(12)?,
        error: r.get(13)?,
    })
}

/// One thing the assigner did.
#[derive(Debug, Clone, Serialize)]
pub struct AssignEntry {
    /// When.
    pub at: String,
    /// `ingest`, `retry`, `retry_limit` or `template`.
    pub action: String,
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task_id: Option<String>,
    /// What, in words.
    pub detail: String,
}

/// Logs one thing the assigner did.
pub fn log_assign(conn: &Connection, e: &AssignEntry) -> Result<()> {
    conn.execute(
        "INSERT INTO assign_log (at, action, agent, task_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.at, e.action, e.agent, e.task_id, e.detail],
    )?;
    Ok(())
}

/// The assigner's last `n` entries, newest first.
pub fn assign_log(conn: &Connection, n: usize) -> Result<Vec<AssignEntry>> {
    let mut stmt = conn.prepare(
        "SELECT at, action, agent, task_id, detail FROM assign_log ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([n as i64], |r| {
            Ok(AssignEntry {
                at: r.get(0)?,
                action: r.get(1)?,
                agent: r.get(2)?,
                task_id: r.get(3)?,
                detail: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The latest time the agent did something the database saw: a session start, a
/// checkpoint or a wrap.
pub fn last_activity(conn: &Connection, agent: &str) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT MAX(t) FROM (
             SELECT MAX(started_at) AS t FROM sessions WHERE agent = ?1
             UNION ALL SELECT MAX(wrapped_at) FROM sessions WHERE agent = ?1
             UNION ALL SELECT MAX(at) FROM checkpoints WHERE agent = ?1
             UNION ALL SELECT MAX(ended_at) FROM loop_runs WHERE agent = ?1)",
        [agent],
        |r| r.get(0),
    )?)
}
