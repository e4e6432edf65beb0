//! What people and the machine did, as rows: every change to a task (`task_history`)
//! and every state-changing command with who ran it (`commands`). Who counts as a
//! person lives in `crate::work::history`; this file only reads and writes.

use anyhow::Result;
use rusqlite::{Connection, params};
use serde::Serialize;

/// One change to a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    /// When.
    pub at: String,
    /// Who or what: `person (alice)`, `session session_20260101_000000`, `assigner`, ...
    pub actor: String,
    /// `edit`, `review_clear`, `retry`, `estimate`, `recur`, ...
    pub action: String,
    /// What changed, in words (`priority 5 → 2`).
    pub detail: String,
}

/// Appends one change to a task's history.
pub fn insert_task_event(conn: &Connection, task: &str, e: &TaskEvent) -> Result<()> {
    conn.execute(
        "INSERT INTO task_history (task_id, at, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![task, e.at, e.actor, e.action, e.detail],
    )?;
    Ok(())
}

/// A task's history, oldest first.
pub fn task_events(conn: &Connection, task: &str) -> Result<Vec<TaskEvent>> {
    let mut stmt = conn.prepare(
        "SELECT at, actor, action, detail FROM task_history WHERE task_id = ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([task], |r| {
            Ok(TaskEvent {
                at: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                detail: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One state-changing command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRow {
    /// When it ran.
    pub at: String,
    /// Who ran it.
    pub actor: String,
    /// A person ran it by hand: an intervention.
    pub manual: bool,
    /// What it was, e.g. `task edit build_x`.
    pub command: String,
}

/// Records a command.
pub fn insert_command(conn: &Connection, c: &CommandRow) -> Result<()> {
    conn.execute(
        "INSERT INTO commands (at, actor, manual, command) VALUES (?1, ?2, ?3, ?4)",
        params![c.at, c.actor, c.manual, c.command],
    )?;
    Ok(())
}

/// The commands a person ran in `[from, to)`, oldest first.
pub fn manual_commands_between(conn: &Connection, from: &str, to: &str) -> Result<Vec<CommandRow>> {
    let mut stmt = conn.prepare(
        "SELECT at, actor, manual, command FROM commands
         WHERE manual = 1 AND at >= ?1 AND at < ?2 ORDER BY at, id",
    )?;
    let rows = stmt
        .query_map(params![from, to], command_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The last command a person ran before `before`, if any.
pub fn last_manual_command_before(conn: &Connection, before: &str) -> Result<Option<CommandRow>> {
    let mut stmt = conn.prepare(
        "SELECT at, actor, manual, command FROM commands
         WHERE manual = 1 AND at < ?1 ORDER BY at DESC, id DESC LIMIT 1",
    )?;
    let mut rows = stmt.query_map([before], command_from_row)?;
    Ok(rows.next().transpose()?)
}

/// How many commands were run in `[from, to)`, by people and by everything else.
pub fn count_commands_between(conn: &Connection, from: &str, to: &str) -> Result<(u64, u64)> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(manual = 1), 0), COALESCE(SUM(manual = 0), 0) FROM commands
         WHERE at >= ?1 AND at < ?2",
        params![from, to],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?)
}

fn command_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CommandRow> {
    Ok(CommandRow {
        at: r.get(0)?,
        actor: r.get(1)?,
        manual: r.get(2)?,
        command: r.get(3)?,
    })
}
