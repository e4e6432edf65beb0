//! The task stack's rows (`tasks`, `task_deps`). The rules (readiness, which states
//! may follow which) live in `crate::work::tasks`; this file only reads and writes.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

/// A task's stored state.
/// What a grade is computed from (`work::grade::inputs` gathers it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradeInputs {
    /// Times the task was marked failed.
    pub failures: u64,
    /// Sessions that worked on it.
    pub sessions: u64,
    /// Of those, sessions that did not wrap at or past the hard stop.
    pub clean_sessions: u64,
    /// Sessions its estimate warrants (None without an estimate or a token budget: then
    /// speed is 1).
    pub expected_sessions: Option<u64>,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: Option<u64>,
    /// The estimate.
    pub estimated_tokens: Option<u64>,
    /// Tokens its sessions used.
    pub tokens_used: u64,
}

/// A grade: the four terms, the score and the letter (`work::grade` computes it; the
/// row keeps it as `grade_detail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    /// A, B, C, D or F.
    pub letter: String,
    /// The weighted sum, 0..=1.
    pub score: f64,
    /// 1 / (1 + failures).
    pub success_rate: f64,
    /// min(1, expected_sessions / sessions).
    pub speed: f64,
    /// completeness × clean_wraps.
    pub quality: f64,
    /// min(1, estimated / used).
    pub efficiency: f64,
    /// What it was computed from.
    pub inputs: GradeInputs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued: waits for its dependencies or for a session to take it.
    Pending,
    /// A session took it and it is not finished (possibly across several sessions).
    InProgress,
    /// Finished and graded; stays as the archive.
    Completed,
    /// Marked failed (`task fail`); `task retry` queues it again.
    Failed,
}

impl TaskStatus {
    /// The word in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    /// Parses [`TaskStatus::as_str`] (unknown words are pending).
    pub fn parse(s: &str) -> TaskStatus {
        match s {
            "in_progress" => TaskStatus::InProgress,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            _ => TaskStatus::Pending,
        }
    }
}

/// Who runs a task.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// The agent's own work: `perpetual run` starts the agent's `command` on it (or a
    /// person runs `session start`).
    #[default]
    Agent,
    /// Integrate the files waiting in the agent's inbox; the loop runs it in-process.
    Ingest,
    /// Integrate an archive folder of session exports (`crate::work::backfill::run_task`); the
    /// loop runs it in-process, inside budgeted sessions of the agent.
    Backfill,
    /// The quality report (`crate::dataset::quality`), run in-process in a session.
    Quality,
    /// Near-duplicate clusters (`crate::dataset::near_dups`), run in-process in a session.
    #[value(name = "near_dups")]
    NearDups,
    /// Coverage against a master list (`crate::dataset::coverage`), run in-process in a
    /// session.
    Coverage,
    /// Import an SQLite database (`crate::engine::import_db`), run in-process in a session.
    #[value(name = "import_db")]
    ImportDb,
    /// A standing duty of the agent (monitor quality, validate the schema): its command
    /// runs it for one session, whose wrap completes it whatever its progress. Usually
    /// recurring (`every`), so it comes back each period; it never counts toward the
    /// agent's queue depth, so an agent on duty is never "running dry".
    Duty,
    /// The RAG export (`crate::work::deliverables`); run in-process.
    #[value(name = "export_rag")]
    ExportRag,
    /// The next request batch for the batch embeddings API; run in-process.
    #[value(name = "export_embeddings")]
    ExportEmbeddings,
    /// Store the vectors of a batch embeddings results file; run in-process.
    #[value(name = "import_embeddings")]
    ImportEmbeddings,
    /// Stable train/val/test splits; run in-process.
    Split,
    /// The visualizations/ folder; run in-process.
    Charts,
}

impl TaskKind {
    /// The word in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Agent => "agent",
            TaskKind::Ingest => "ingest",
            TaskKind::Backfill => "backfill",
            TaskKind::Quality => "quality",
            TaskKind::NearDups => "near_dups",
            TaskKind::Coverage => "coverage",
            TaskKind::ImportDb => "import_db",
            TaskKind::Duty => "duty",
            TaskKind::ExportRag => "export_rag",
            TaskKind::ExportEmbeddings => "export_embeddings",
            TaskKind::ImportEmbeddings => "import_embeddings",
            TaskKind::Split => "split",
            TaskKind::Charts => "charts",
        }
    }

    /// Whether the loop runs it itself (no agent command).
    pub fn is_builtin(self) -> bool {
        !matches!(self, TaskKind::Agent | TaskKind::Duty)
    }

    /// The word in the `kind` column, back (an unknown word is an agent task).
    pub fn parse(s: &str) -> TaskKind {
        match s {
            "ingest" => TaskKind::Ingest,
            "backfill" => TaskKind::Backfill,
            "quality" => TaskKind::Quality,
            "near_dups" => TaskKind::NearDups,
            "coverage" => TaskKind::Coverage,
            "import_db" => TaskKind::ImportDb,
            "duty" => TaskKind::Duty,
            "export_rag" => TaskKind::ExportRag,
            "export_embeddings" => TaskKind::ExportEmbeddings,
            "import_embeddings" => TaskKind::ImportEmbeddings,
            "split" => TaskKind::Split,
            "charts" => TaskKind::Charts,
            _ => TaskKind::Agent,
        }
    }
}

/// A task as read back, with what is derived from its sessions.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// The task id.
    pub id: String,
    /// Whose queue it is in.
    pub agent: String,
    /// 1 runs first.
    pub priority: i64,
    /// Order inside a priority (lower first).
    #[serde(skip)]
    pub position: i64,
    /// Free text.
    pub description: Option<String>,
    /// Who runs it.
    pub kind: TaskKind,
    /// What a built-in kind needs (JSON; see `crate::work::backfill::Params`).
    pub params: Option<serde_json::Value>,
    /// Stored state.
    pub status: TaskStatus,
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// The estimate given when it was added.
    pub estimated_tokens: Option<u64>,
    /// Tokens its sessions used (sum over its sessions).
    pub tokens_used: u64,
    /// Sessions that worked on it.
    pub sessions: u64,
    /// Times it was marked failed.
    pub failures: u64,
    /// The last failure's reason.
    pub fail_reason: Option<String>,
    /// Why a person should look at it, if so.
    pub needs_review: Option<String>,
    /// The grade, once completed.
    pub grade: Option<Grade>,
    /// The tasks it depends on, sorted.
    pub depends_on: Vec<String>,
    /// When it was added.
    pub created_at: String,
    /// When a session first took it.
    pub started_at: Option<String>,
    /// When it completed or failed.
    pub finished_at: Option<String>,
    /// The template it was made from (by the assigner, or a recurring task's own).
    pub template_id: Option<i64>,
    /// Where the estimate came from when the assigner set it from history (None: given
    /// by whoever added or edited the task, or no estimate).
    pub estimate_source: Option<String>,
}

/// The columns a new task needs.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    /// Task id.
    pub id: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Priority (1 first).
    pub priority: i64,
    /// Free text.
    pub description: Option<&'a str>,
    /// Units in all.
    pub total: Option<u64>,
    /// Token estimate.
    pub estimated_tokens: Option<u64>,
    /// Who runs it.
    pub kind: TaskKind,
    /// What a built-in kind needs.
    pub params: Option<&'a serde_json::Value>,
    /// Timestamp.
    pub now: &'a str,
}

/// Adds a pending task behind every task already queued at its priority.
pub fn insert(conn: &Connection, t: &NewTask<'_>) -> Result<()> {
    conn.execute(
        "INSERT INTO tasks (id, agent, priority, position, description, status, total,
                            estimated_tokens, created_at, kind, params)
         VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(position), 0) + 1 FROM tasks), ?4, 'pending',
                 ?5, ?6, ?7, ?8, ?9)",
        params![
            t.id,
            t.agent,
            t.priority,
            t.description,
            t.total.map(|n| n as i64),
            t.estimated_tokens.map(|n| n as i64),
            t.now,
            t.kind.as_str(),
            t.params.map(|p| p.to_string())
        ],
    )?;
    Ok(())
}

/// Records that `task` runs only after `depends_on` completes.
pub fn add_dependency(conn: &Connection, task: &str, depends_on: &str) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?1, ?2)",
        params![task, depends_on],
    )?;
    Ok(())
}

/// Whether a task with this id exists.
pub fn exists(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM tasks WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// One task.
pub fn get(conn: &Connection, id: &str) -> Result<Option<TaskRow>> {
    Ok(conn
        .query_row(&format!("{SELECT} WHERE t.id = ?1"), [id], from_row)
        .optional()?)
}

/// Every task, in queue order: priority, then position (older first).
pub fn all(conn: &Connection) -> Result<Vec<TaskRow>> {
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY t.priority, t.position"))?;
    let rows = stmt
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The tasks not completed (pending, in progress, failed), in queue order. What the
/// loop looks at every round: its cost follows the open tasks, not the history.
pub fn open(conn: &Connection) -> Result<Vec<TaskRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE t.status IN ('pending', 'in_progress', 'failed')
         ORDER BY t.priority, t.position"
    ))?;
    let rows = stmt
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The stored status of each of `ids` that exists.
pub fn statuses(
    conn: &Connection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, TaskStatus>> {
    let mut stmt = conn.prepare_cached("SELECT status FROM tasks WHERE id = ?1")?;
    let mut out = std::collections::HashMap::new();
    for id in ids {
        if let Some(s) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
            out.insert(id.to_string(), TaskStatus::parse(&s));
        }
    }
    Ok(out)
}

/// The latest `limit` completed tasks made from the template `template`, newest first.
pub fn completed_of_template(
    conn: &Connection,
    template: i64,
    limit: usize,
) -> Result<Vec<TaskRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE t.template_id = ?1 AND t.status = 'completed'
         ORDER BY t.finished_at DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![template, limit as i64], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The latest `limit` completed tasks of `agent` of `kind`, newest first.
pub fn completed_of(
    conn: &Connection,
    agent: &str,
    kind: TaskKind,
    limit: usize,
) -> Result<Vec<TaskRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE t.agent = ?1 AND t.kind = ?2 AND t.status = 'completed'
         ORDER BY t.finished_at DESC LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![agent, kind.as_str(), limit as i64], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every agent with an open (pending, in-progress or failed) task, sorted.
pub fn agents_with_open_tasks(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT agent FROM tasks
         WHERE status IN ('pending', 'in_progress', 'failed') ORDER BY agent",
    )?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// Deletes completed `ingest` tasks finished at or before `before` that no task depends
/// on (their files stay in the ledger); returns how many.
pub fn prune_completed_ingest(conn: &Connection, before: &str) -> Result<usize> {
    Ok(conn.execute(
        "DELETE FROM tasks WHERE status = 'completed' AND kind = 'ingest' AND finished_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM task_deps d WHERE d.depends_on = tasks.id)",
        [before],
    )?)
}

/// Every agent with a task in the stack, sorted.
pub fn agents(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT agent FROM tasks ORDER BY agent")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// The tasks that depend on `id`, sorted.
pub fn dependents(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT task_id FROM task_deps WHERE depends_on = ?1 ORDER BY task_id")?;
    let rows = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// Records progress.
pub fn set_progress(conn: &Connection, id: &str, done: u64, total: Option<u64>) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET done = ?2, total = ?3 WHERE id = ?1",
        params![id, done as i64, total.map(|n| n as i64)],
    )?;
    Ok(())
}

/// A session took the task: in progress, first start time kept.
pub fn mark_started(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET status = 'in_progress', started_at = COALESCE(started_at, ?2)
         WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// The task is finished, with its grade.
pub fn mark_completed(conn: &Connection, id: &str, grade: &Grade, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET status = 'completed', finished_at = ?2, grade = ?3, grade_detail = ?4
         WHERE id = ?1",
        params![id, now, grade.letter, serde_json::to_string(grade)?],
    )?;
    Ok(())
}

/// The task failed.
pub fn mark_failed(conn: &Connection, id: &str, reason: &str, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET status = 'failed', failures = failures + 1, fail_reason = ?2,
                          finished_at = ?3
         WHERE id = ?1",
        params![id, reason, now],
    )?;
    Ok(())
}

/// A failed task is queued again, at the front of its priority (ahead of its old place).
pub fn requeue_first(conn: &Connection, id: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET status = 'pending', finished_at = NULL,
                          position = (SELECT COALESCE(MIN(position), 0) - 1 FROM tasks)
         WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Sets a task's priority (the assigner raises a failed task's priority when it retries it).
pub fn set_priority(conn: &Connection, id: &str, priority: i64) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET priority = ?2 WHERE id = ?1",
        params![id, priority],
    )?;
    Ok(())
}

/// Sets a task's description (None clears it).
pub fn set_description(conn: &Connection, id: &str, description: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET description = ?2 WHERE id = ?1",
        params![id, description],
    )?;
    Ok(())
}

/// Sets a task's token estimate (None clears it), as given by a person: no source.
pub fn set_estimate(conn: &Connection, id: &str, tokens: Option<u64>) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET estimated_tokens = ?2, estimate_source = NULL WHERE id = ?1",
        params![id, tokens.map(|n| n as i64)],
    )?;
    Ok(())
}

/// Sets a task's token estimate with where it came from (the assigner, from history).
pub fn set_estimate_from(conn: &Connection, id: &str, tokens: u64, source: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET estimated_tokens = ?2, estimate_source = ?3 WHERE id = ?1",
        params![id, tokens as i64, source],
    )?;
    Ok(())
}

/// Moves a task to another agent's queue.
pub fn set_agent(conn: &Connection, id: &str, agent: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET agent = ?2 WHERE id = ?1",
        params![id, agent],
    )?;
    Ok(())
}

/// Removes one dependency; returns whether there was one.
pub fn remove_dependency(conn: &Connection, task: &str, depends_on: &str) -> Result<bool> {
    let n = conn.execute(
        "DELETE FROM task_deps WHERE task_id = ?1 AND depends_on = ?2",
        params![task, depends_on],
    )?;
    Ok(n > 0)
}

/// Clears a task's review flag.
pub fn clear_review(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("UPDATE tasks SET needs_review = NULL WHERE id = ?1", [id])?;
    Ok(())
}

/// Flags the task for a person's review.
pub fn flag_review(conn: &Connection, id: &str, reason: &str) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET needs_review = ?2 WHERE id = ?1",
        params![id, reason],
    )?;
    Ok(())
}

/// Deletes a task (its own dependency rows go with it).
pub fn delete(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM tasks WHERE id = ?1", [id])?;
    Ok(())
}

/// A task template (`[[template]]` in a plan): the assigner makes tasks from it to keep
/// its agent's queue from running dry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateRow {
    /// Row id.
    pub id: i64,
    /// Whose queue its tasks join.
    pub agent: String,
    /// The task id, with `{n}` where the number goes.
    pub pattern: String,
    /// The description, `{n}` replaced too.
    pub description: Option<String>,
    /// Priority of its tasks.
    pub priority: i64,
    /// Token estimate of each task.
    pub estimated_tokens: Option<u64>,
    /// Units of each task.
    pub total: Option<u64>,
    /// The number the next task gets.
    pub next_n: u64,
    /// Its tasks' kind (agent or duty).
    pub kind: TaskKind,
    /// Recurring: how often a fresh task is added (`clock::Every`'s text); None for a
    /// template that tops up queues.
    pub every: Option<String>,
    /// The latest task made from it.
    pub last_task: Option<String>,
    /// When that task was added.
    pub last_added_at: Option<String>,
}

/// Adds a template unless the agent already has one with this pattern; returns whether
/// it was added.
pub fn insert_template(conn: &Connection, t: &TemplateRow) -> Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO task_templates
             (agent, pattern, description, priority, estimated_tokens, total, next_n, kind,
              every, last_task, last_added_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            t.agent,
            t.pattern,
            t.description,
            t.priority,
            t.estimated_tokens.map(|n| n as i64),
            t.total.map(|n| n as i64),
            t.next_n as i64,
            t.kind.as_str(),
            t.every,
            t.last_task,
            t.last_added_at
        ],
    )?;
    Ok(n > 0)
}

/// Every template, by agent, in the order they were added.
pub fn templates(conn: &Connection) -> Result<Vec<TemplateRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, agent, pattern, description, priority, estimated_tokens, total, next_n,
                kind, every, last_task, last_added_at
         FROM task_templates ORDER BY agent, id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(TemplateRow {
                id: r.get(0)?,
                agent: r.get(1)?,
                pattern: r.get(2)?,
                description: r.get(3)?,
                priority: r.get(4)?,
                estimated_tokens: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
                total: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
                next_n: r.get::<_, i64>(7)? as u64,
                kind: TaskKind::parse(&r.get::<_, String>(8)?),
                every: r.get(9)?,
                last_task: r.get(10)?,
                last_added_at: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records the number the template's next task gets.
pub fn set_template_next(conn: &Connection, id: i64, next_n: u64) -> Result<()> {
    conn.execute(
        "UPDATE task_templates SET next_n = ?2 WHERE id = ?1",
        params![id, next_n as i64],
    )?;
    Ok(())
}

/// Records the task a template just made: its number, id and time.
pub fn set_template_added(
    conn: &Connection,
    id: i64,
    next_n: u64,
    task: &str,
    at: &str,
) -> Result<()> {
    conn.execute(
        "UPDATE task_templates SET next_n = ?2, last_task = ?3, last_added_at = ?4 WHERE id = ?1",
        params![id, next_n as i64, task, at],
    )?;
    Ok(())
}

/// Links a task to the template it was made from.
pub fn set_template_of(conn: &Connection, task: &str, template: i64) -> Result<()> {
    conn.execute(
        "UPDATE tasks SET template_id = ?2 WHERE id = ?1",
        params![task, template],
    )?;
    Ok(())
}

const SELECT: &str = "SELECT t.id, t.agent, t.priority, t.position, t.description, t.status,
        t.done, t.total, t.estimated_tokens,
        (SELECT COALESCE(SUM(s.tokens_used), 0) FROM sessions s WHERE s.task_id = t.id),
        (SELECT COUNT(*) FROM sessions s WHERE s.task_id = t.id),
        t.failures, t.fail_reason, t.needs_review, t.grade_detail,
        (SELECT group_concat(d.depends_on, ',') FROM task_deps d WHERE d.task_id = t.id),
        t.created_at, t.started_at, t.finished_at, t.kind, t.params, t.template_id,
        t.estimate_source
    FROM tasks t";

fn from_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    let status: String = r.get(5)?;
    let grade: Option<String> = r.get(14)?;
    let deps: Option<String> = r.get(15)?;
    let mut depends_on: Vec<String> = deps
        .map(|d| d.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    depends_on.sort();
    let kind: String = r.get(19)?;
    let params: Option<String> = r.get(20)?;
    Ok(TaskRow {
        kind: TaskKind::parse(&kind),
        params: params.and_then(|p| serde_json::from_str(&p).ok()),
        id: r.get(0)?,
        agent: r.get(1)?,
        priority: r.get(2)?,
        position: r.get(3)?,
        description: r.get(4)?,
        status: TaskStatus::parse(&status),
        done: r.get::<_, i64>(6)? as u64,
        total: r.get::<_, Option<i64>>(7)?.map(|n| n as u64),
        estimated_tokens: r.get::<_, Option<i64>>(8)?.map(|n| n as u64),
        tokens_used: r.get::<_, i64>(9)? as u64,
        sessions: r.get::<_, i64>(10)? as u64,
        failures: r.get::<_, i64>(11)? as u64,
        fail_reason: r.get(12)?,
        needs_review: r.get(13)?,
        grade: grade.and_then(|g| serde_json::from_str(&g).ok()),
        depends_on,
        created_at: r.get(16)?,
        started_at: r.get(17)?,
        finished_at: r.get(18)?,
        template_id: r.get(21)?,
        estimate_source: r.get(22)?,
    })
}
