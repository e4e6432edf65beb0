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
    /// Who paused it: `breaker`, `hand` (`agent pause`) or `command` (its command
    /// cannot be started).
    pub by: String,
    /// The breaker's cooldown: seconds from the pause to its trial session.
    pub cooldown_secs: Option<u64>,
    /// When the breaker half-opens: one trial session may start from then on.
    pub trial_at: Option<String>,
}

/// The agent's pause, if it is paused.
pub fn pause_of(conn: &Connection, agent: &str) -> Result<Option<Pause>> {
    Ok(conn
        .query_row(
            "SELECT paused_at, pause_reason, paused_task, paused_by, cooldown_secs, trial_at
             FROM agent_state WHERE agent = ?1 AND paused_at IS NOT NULL",
            [agent],
            |r| {
                Ok(Pause {
                    at: r.get(0)?,
                    reason: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    task: r.get(2)?,
                    by: r
                        .get::<_, Option<String>>(3)?
                        .unwrap_or_else(|| "breaker".to_string()),
                    cooldown_secs: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                    trial_at: r.get(5)?,
                })
            },
        )
        .optional()?)
}

/// Pauses an agent by hand (`agent pause`): no trial session, until `agent resume`.
pub fn set_pause(
    conn: &Connection,
    agent: &str,
    at: &str,
    reason: &str,
    task: Option<&str>,
) -> Result<()> {
    set_pause_by(conn, agent, at, reason, task, "hand", None, None)
}

/// Pauses an agent: `by` is `breaker`, `hand` or `command`; the breaker's pause carries
/// its cooldown and the time of its trial session.
#[allow(clippy::too_many_arguments)]
pub fn set_pause_by(
    conn: &Connection,
    agent: &str,
    at: &str,
    reason: &str,
    task: Option<&str>,
    by: &str,
    cooldown_secs: Option<u64>,
    trial_at: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_state (agent, paused_at, pause_reason, paused_task, paused_by,
                                  cooldown_secs, trial_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (agent) DO UPDATE SET paused_at = ?2, pause_reason = ?3, paused_task = ?4,
                                           paused_by = ?5, cooldown_secs = ?6, trial_at = ?7",
        params![
            agent,
            at,
            reason,
            task,
            by,
            cooldown_secs.map(|n| n as i64),
            trial_at
        ],
    )?;
    Ok(())
}

/// Unpauses an agent; the breaker then looks only at runs after `run_floor`, and crash
/// backoff starts afresh.
pub fn clear_pause(conn: &Connection, agent: &str, run_floor: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_state (agent, run_floor) VALUES (?1, ?2)
         ON CONFLICT (agent) DO UPDATE SET paused_at = NULL, pause_reason = NULL,
                                           paused_task = NULL, paused_by = NULL,
                                           cooldown_secs = NULL, trial_at = NULL,
                                           failures_in_row = 0, backoff_until = NULL,
                                           run_floor = ?2",
        params![agent, run_floor],
    )?;
    Ok(())
}

/// An agent's crash backoff: sessions in a row that ended with an error, and the time
/// before which no session of it starts.
pub fn backoff_of(conn: &Connection, agent: &str) -> Result<(u64, Option<String>)> {
    Ok(conn
        .query_row(
            "SELECT failures_in_row, backoff_until FROM agent_state WHERE agent = ?1",
            [agent],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, None)))
}

/// Records an agent's crash backoff (0 and None after a session without an error).
pub fn set_backoff(
    conn: &Connection,
    agent: &str,
    failures_in_row: u64,
    until: Option<&str>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO agent_state (agent, failures_in_row, backoff_until) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent) DO UPDATE SET failures_in_row = ?2, backoff_until = ?3",
        params![agent, failures_in_row as i64, until],
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
    /// The process group it leads.
    pub pgid: Option<i32>,
    /// Its start time (field 22 of `/proc/<pid>/stat`): with the pid, names it exactly.
    pub proc_start: Option<u64>,
    /// The transcript followed, placeholders replaced.
    pub transcript: Option<String>,
    /// Processes left behind when the command exited, which the loop ended.
    pub remains: Option<u64>,
    /// When a later loop took over following it (the one that started it had died).
    pub adopted_at: Option<String>,
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

/// Records the process of a run's command: its pid, the process group it leads and
/// its start time.
pub fn set_run_process(conn: &Connection, id: i64, pid: u32, pgid: i32, start: u64) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET pid = ?2, pgid = ?3, proc_start = ?4 WHERE id = ?1",
        params![id, pid, pgid, start as i64],
    )?;
    Ok(())
}

/// Records the transcript a run follows.
pub fn set_run_transcript(conn: &Connection, id: i64, path: &str) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET transcript = ?2 WHERE id = ?1",
        params![id, path],
    )?;
    Ok(())
}

/// Records that a loop took over following a run another loop started.
pub fn set_run_adopted(conn: &Connection, id: i64, at: &str) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET adopted_at = ?2 WHERE id = ?1",
        params![id, at],
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
    /// Processes left behind when the command exited, which the loop ended.
    pub remains: Option<u64>,
}

/// Records the end of a run.
pub fn finish_run(conn: &Connection, id: i64, at: &str, end: &RunEnd) -> Result<()> {
    conn.execute(
        "UPDATE loop_runs SET ended_at = ?2, exit_code = ?3, signal = ?4, stopped_with = ?5,
                              progressed = ?6, error = ?7, remains = ?8
         WHERE id = ?1",
        params![
            id,
            at,
            end.exit_code,
            end.signal,
            end.stopped_with,
            end.progressed,
            end.error,
            end.remains.map(|n| n as i64)
        ],
    )?;
    Ok(())
}

/// The run of a session, if the loop ran it.
pub fn run_of_session(conn: &Connection, session: &str) -> Result<Option<RunRow>> {
    Ok(conn
        .query_row(
            &format!("{SELECT_RUN} WHERE session_id = ?1 ORDER BY id DESC LIMIT 1"),
            [session],
            run_from_row,
        )
        .optional()?)
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
        exit_code, signal, wrap_requested_at, stopped_with, progressed, error,
        pgid, proc_start, transcript, remains, adopted_at
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
        pgid: r.get(14)?,
        proc_start: r.get::<_, Option<i64>>(15)?.map(|n| n as u64),
        transcript: r.get(16)?,
        remains: r.get::<_, Option<i64>>(17)?.map(|n| n as u64),
        adopted_at: r.get(18)?,
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

/// The loop's heartbeat row: which `perpetual run` runs (or ran last) on the root.
#[derive(Debug, Clone, Serialize)]
pub struct LoopState {
    /// Its process id.
    pub pid: i32,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub proc_start: Option<u64>,
    /// When it started.
    pub started_at: String,
    /// Its last heartbeat (every round and every wake).
    pub heartbeat_at: String,
    /// When it stopped cleanly (None while it runs, or when it was killed).
    pub stopped_at: Option<String>,
    /// Rounds it ran.
    pub rounds: u64,
    /// Of those, rounds that started nothing.
    pub idle_rounds: u64,
    /// CPU time of its last idle round, in microseconds.
    pub idle_round_us: Option<u64>,
    /// Why it refuses to start sessions for lack of disk space, while it does.
    pub disk_low: Option<String>,
}

/// A loop started: it replaces the row of the previous one.
pub fn loop_started(conn: &Connection, pid: i32, proc_start: Option<u64>, at: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO loop_state (id, pid, proc_start, started_at, heartbeat_at)
         VALUES (1, ?1, ?2, ?3, ?3)
         ON CONFLICT (id) DO UPDATE SET pid = ?1, proc_start = ?2, started_at = ?3,
             heartbeat_at = ?3, stopped_at = NULL, rounds = 0, idle_rounds = 0,
             idle_round_us = NULL, disk_low = NULL",
        params![pid, proc_start.map(|n| n as i64), at],
    )?;
    Ok(())
}

/// The loop is alive at `at`.
pub fn heartbeat(conn: &Connection, at: &str) -> Result<()> {
    conn.execute("UPDATE loop_state SET heartbeat_at = ?1 WHERE id = 1", [at])?;
    Ok(())
}

/// Counts a round; an idle one records its CPU time.
pub fn count_round(conn: &Connection, at: &str, idle_cpu_us: Option<u64>) -> Result<()> {
    conn.execute(
        "UPDATE loop_state SET heartbeat_at = ?1, rounds = rounds + 1,
             idle_rounds = idle_rounds + (?2 IS NOT NULL),
             idle_round_us = COALESCE(?2, idle_round_us)
         WHERE id = 1",
        params![at, idle_cpu_us.map(|n| n as i64)],
    )?;
    Ok(())
}

/// Records why the loop refuses sessions for disk space (None: it no longer does).
pub fn set_disk_low(conn: &Connection, why: Option<&str>) -> Result<()> {
    conn.execute("UPDATE loop_state SET disk_low = ?1 WHERE id = 1", [why])?;
    Ok(())
}

/// The loop stopped cleanly.
pub fn loop_stopped(conn: &Connection, at: &str) -> Result<()> {
    conn.execute(
        "UPDATE loop_state SET stopped_at = ?1, heartbeat_at = ?1, disk_low = NULL WHERE id = 1",
        [at],
    )?;
    Ok(())
}

/// The heartbeat row, if a loop ever ran on the root.
pub fn loop_state(conn: &Connection) -> Result<Option<LoopState>> {
    Ok(conn
        .query_row(
            "SELECT pid, proc_start, started_at, heartbeat_at, stopped_at, rounds, idle_rounds,
                    idle_round_us, disk_low
             FROM loop_state WHERE id = 1",
            [],
            |r| {
                Ok(LoopState {
                    pid: r.get(0)?,
                    proc_start: r.get::<_, Option<i64>>(1)?.map(|n| n as u64),
                    started_at: r.get(2)?,
                    heartbeat_at: r.get(3)?,
                    stopped_at: r.get(4)?,
                    rounds: r.get::<_, i64>(5)? as u64,
                    idle_rounds: r.get::<_, i64>(6)? as u64,
                    idle_round_us: r.get::<_, Option<i64>>(7)?.map(|n| n as u64),
                    disk_low: r.get(8)?,
                })
            },
        )
        .optional()?)
}
