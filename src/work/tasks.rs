//! The task stack: each agent's queue of tasks, their dependencies, readiness and states.
//!
//! Order: priority 1 runs first; inside a priority the older task runs first, except
//! that `retry` puts a failed task at the front of its priority (ahead of its old
//! place). States: `pending` → `in_progress` (a session took it) → `completed` (graded,
//! kept as the archive) or `failed` (`retry` makes it pending again).
//!
//! A pending task is **ready** when every task it depends on is completed, **waiting**
//! while one is not, and **blocked** when one failed or is itself blocked: the reason
//! names the failed task. Dependencies may cross agents. Removing a task another
//! depends on is refused, so the graph never points at nothing; dependencies must
//! exist when they are named, so it never has a cycle (a plan is checked as a whole).

use crate::config::Config;
use crate::root::Root;
use crate::store::sessions as store_sessions;
use crate::store::tasks::Grade;
use crate::store::tasks::{self as store, NewTask, TaskKind, TaskRow, TaskStatus, TemplateRow};
use crate::work::grade;
use anyhow::{Context, Result, bail, ensure};
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// The priority of a task added without one.
pub const DEFAULT_PRIORITY: i64 = 5;

/// Where a task stands, derived from its status and its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Pending, every dependency completed: a session may take it.
    Ready,
    /// Pending, some dependency not completed yet.
    Waiting,
    /// Pending, some dependency failed (directly or further down).
    Blocked,
    /// A session took it.
    InProgress,
    /// Done and graded.
    Completed,
    /// Marked failed.
    Failed,
}

impl State {
    /// The word shown in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Waiting => "waiting",
            State::Blocked => "blocked",
            State::InProgress => "in_progress",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }
}

/// A task with its derived state.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// The stored task.
    #[serde(flatten)]
    pub task: TaskRow,
    /// Where it stands.
    pub state: State,
    /// Dependencies not completed yet (waiting or blocked).
    pub waiting_on: Vec<String>,
    /// The failed task that blocks it, when blocked.
    pub blocked_by: Option<String>,
    /// Why it is waiting or blocked, in words.
    pub why: Option<String>,
    /// done / total in percent, when it has a total.
    pub percent: Option<f64>,
}

/// Task ids become file names (`task_reports/<id>.md`): keep them to a safe alphabet.
pub fn check_task_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ensure!(
        ok,
        "invalid task id {id:?}: use letters, digits, `_`, `-` and `.`, not starting with `.`"
    );
    Ok(())
}

/// Parses `DONE/TOTAL` (or `DONE`, keeping the total).
pub fn parse_progress(s: &str) -> Result<(u64, Option<u64>)> {
    let bad = || format!("invalid progress {s:?}: write DONE/TOTAL, e.g. 10/40");
    let (done, total) = match s.split_once('/') {
        Some((d, t)) => (
            d.trim().parse::<u64>().with_context(bad)?,
            Some(t.trim().parse::<u64>().with_context(bad)?),
        ),
        None => (s.trim().parse::<u64>().with_context(bad)?, None),
    };
    if let Some(t) = total {
        ensure!(
            t > 0,
            "invalid progress {s:?}: the total must be at least 1"
        );
        ensure!(
            done <= t,
            "invalid progress {s:?}: done cannot exceed the total"
        );
    }
    Ok((done, total))
}

/// Every task with its state, in queue order (priority, then age). Reads the whole
/// history: listings of it use this; what runs every round uses [`open_views`].
pub fn views(conn: &Connection) -> Result<Vec<TaskView>> {
    Ok(views_of(store::all(conn)?, &HashMap::new()))
}

/// The tasks not completed (pending, in progress, failed) with their states, in queue
/// order. A completed task cannot change the state of another except by being complete,
/// so only the statuses of the dependencies outside this set are read: the cost follows
/// the open tasks, however long the history.
pub fn open_views(conn: &Connection) -> Result<Vec<TaskView>> {
    let rows = store::open(conn)?;
    let open: HashSet<&str> = rows.iter().map(|t| t.id.as_str()).collect();
    let outside: Vec<&str> = rows
        .iter()
        .flat_map(|t| t.depends_on.iter().map(String::as_str))
        .filter(|d| !open.contains(d))
        .collect::<HashSet<&str>>()
        .into_iter()
        .collect();
    let closed = store::statuses(conn, &outside)?;
    Ok(views_of(rows, &closed))
}

/// States of `rows`; a dependency not among them has its status in `closed` (or does
/// not exist).
fn views_of(rows: Vec<TaskRow>, closed: &HashMap<String, TaskStatus>) -> Vec<TaskView> {
    let by_id: HashMap<&str, &TaskRow> = rows.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut memo: HashMap<String, (State, Option<String>)> = closed
        .iter()
        .map(|(id, st)| {
            let state = match st {
                TaskStatus::Completed => State::Completed,
                TaskStatus::Failed => State::Failed,
                TaskStatus::InProgress => State::InProgress,
                TaskStatus::Pending => State::Waiting,
            };
            (id.clone(), (state, None))
        })
        .collect();
    let completed = |d: &str| {
        by_id
            .get(d)
            .map(|x| x.status == TaskStatus::Completed)
            .or_else(|| closed.get(d).map(|s| *s == TaskStatus::Completed))
            .unwrap_or(false)
    };
    let mut out = Vec::with_capacity(rows.len());
    for t in &rows {
        let (state, blocked_by) = state_of(&t.id, &by_id, &mut memo, &mut HashSet::new());
        let waiting_on: Vec<String> = if matches!(state, State::Waiting | State::Blocked) {
            t.depends_on
                .iter()
                .filter(|d| !completed(d))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let why = match state {
            State::Waiting => Some(format!("waiting for {}", waiting_on.join(", "))),
            State::Blocked => {
                let root = blocked_by.clone().unwrap_or_default();
                let reason = by_id
                    .get(root.as_str())
                    .and_then(|r| r.fail_reason.clone())
                    .unwrap_or_default();
                let via = if t.depends_on.contains(&root) {
                    String::new()
                } else {
                    let through: Vec<&str> = waiting_on.iter().map(String::as_str).collect();
                    format!(" (through {})", through.join(", "))
                };
                Some(format!(
                    "blocked: depends on {root}{via}, which failed: {reason}"
                ))
            }
            _ => None,
        };
        out.push(TaskView {
            percent: t
                .total
                .filter(|&n| n > 0)
                .map(|n| t.done as f64 * 100.0 / n as f64),
            task: t.clone(),
            state,
            waiting_on,
            blocked_by,
            why,
        });
    }
    out
}

fn state_of(
    id: &str,
    by_id: &HashMap<&str, &TaskRow>,
    memo: &mut HashMap<String, (State, Option<String>)>,
    visiting: &mut HashSet<String>,
) -> (State, Option<String>) {
    if let Some(s) = memo.get(id) {
        return s.clone();
    }
    let Some(t) = by_id.get(id) else {
        // A dependency that does not exist never completes.
        return (State::Waiting, None);
    };
    let result = match t.status {
        TaskStatus::InProgress => (State::InProgress, None),
        TaskStatus::Completed => (State::Completed, None),
        TaskStatus::Failed => (State::Failed, None),
        TaskStatus::Pending => {
            if !visiting.insert(id.to_string()) {
                return (State::Waiting, None); // a cycle: cannot happen, never ready
            }
            let mut blocked = None;
            let mut all_done = true;
            for d in &t.depends_on {
                let (ds, db) = state_of(d, by_id, memo, visiting);
                match ds {
                    State::Failed => {
                        blocked.get_or_insert(d.clone());
                    }
                    State::Blocked => {
                        blocked.get_or_insert(db.unwrap_or_else(|| d.clone()));
                    }
                    State::Completed => {}
                    _ => all_done = false,
                }
            }
            visiting.remove(id);
            match blocked {
                Some(b) => (State::Blocked, Some(b)),
                None if all_done => (State::Ready, None),
                None => (State::Waiting, None),
            }
        }
    };
    memo.insert(id.to_string(), result.clone());
    result
}

/// One task with its state; an error naming the id when there is none.
pub fn view(conn: &Connection, id: &str) -> Result<TaskView> {
    let t = get(conn, id)?;
    if t.status == TaskStatus::Completed {
        return Ok(views_of(vec![t], &HashMap::new()).remove(0));
    }
    open_views(conn)?
        .into_iter()
        .find(|v| v.task.id == id)
        .with_context(|| format!("no task {id:?} (`perpetual task list --all` lists them)"))
}

/// Every agent perpetual knows: configured, with an inbox folder, or with a task; sorted.
pub fn all_agents(conn: &Connection, root: &Root, config: &Config) -> Result<Vec<String>> {
    let mut agents = root.agents(config)?;
    agents.extend(store::agents(conn)?);
    agents.sort();
    agents.dedup();
    Ok(agents)
}

/// What `task add` needs.
#[derive(Debug, Clone, Default)]
pub struct AddTask {
    /// Task id.
    pub id: String,
    /// Agent whose queue it joins.
    pub agent: String,
    /// 1 runs first; default [`DEFAULT_PRIORITY`].
    pub priority: Option<i64>,
    /// Tasks that must complete first.
    pub after: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Token estimate.
    pub estimated_tokens: Option<u64>,
    /// Units in all.
    pub total: Option<u64>,
    /// Who runs it (default: the agent).
    pub kind: TaskKind,
    /// What a built-in kind needs, as JSON (e.g. `work::backfill::Params`).
    pub params: Option<serde_json::Value>,
}

/// Checks that a task's kind and its params fit together before it is stored. The
/// task stack stores params without knowing them; the kinds' owners check them
/// (`work::kinds::check` knows every built-in kind), which keeps this module below them.
pub type ParamsCheck =
    fn(id: &str, kind: TaskKind, params: Option<&serde_json::Value>) -> Result<()>;

/// Adds a task to an agent's queue, behind the tasks of its priority. Its
/// dependencies must exist.
pub fn add(conn: &mut Connection, t: &AddTask, check: ParamsCheck) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    add_raw(&tx, t, &HashSet::new(), check)?;
    for d in &t.after {
        store::add_dependency(&tx, &t.id, d)?;
    }
    tx.commit()?;
    Ok(())
}

/// Inserts one task without its dependency rows; `also_known` names tasks being added
/// in the same transaction (a plan) that may be named as dependencies before they are
/// inserted, which is why the rows come after every task of the plan.
fn add_raw(
    conn: &Connection,
    t: &AddTask,
    also_known: &HashSet<&str>,
    check: ParamsCheck,
) -> Result<()> {
    check_task_id(&t.id)?;
    crate::root::check_agent_name(&t.agent)?;
    let priority = t.priority.unwrap_or(DEFAULT_PRIORITY);
    ensure!(priority >= 1, "task {}: priority must be 1 or more", t.id);
    if let Some(total) = t.total {
        ensure!(total >= 1, "task {}: total must be at least 1", t.id);
    }
    check(&t.id, t.kind, t.params.as_ref())?;
    ensure!(
        !store::exists(conn, &t.id)?,
        "task {:?} already exists (`perpetual task show {}`)",
        t.id,
        t.id
    );
    for d in &t.after {
        ensure!(d != &t.id, "task {} cannot depend on itself", t.id);
        ensure!(
            also_known.contains(d.as_str()) || store::exists(conn, d)?,
            "task {} depends on {d:?}, which does not exist; add it first",
            t.id
        );
    }
    store::insert(
        conn,
        &NewTask {
            id: &t.id,
            agent: &t.agent,
            priority,
            description: t.description.as_deref(),
            total: t.total,
            estimated_tokens: t.estimated_tokens,
            kind: t.kind,
            params: t.params.as_ref(),
            now: &crate::clock::now_rfc3339(),
        },
    )?;
    Ok(())
}

/// `task list`: the tasks in queue order, only `agent`'s when given, the completed ones
/// (the archive) only when `all`. The CLI's `--json` and the web faucet's `/api/tasks`
/// both print this.
pub fn list(conn: &Connection, agent: Option<&str>, all: bool) -> Result<Vec<TaskView>> {
    // Without --all, the open tasks only: a list that reads the whole history costs more
    // with every completed task (issue 9, observation 13).
    let listed = if all { views(conn)? } else { open_views(conn)? };
    Ok(listed
        .into_iter()
        .filter(|v| agent.is_none_or(|a| v.task.agent == a))
        .filter(|v| all || v.state != State::Completed)
        .collect())
}

/// The agent's next ready task: the first pending task in queue order whose
/// dependencies are all completed. (`session start` resumes an in-progress task first.)
pub fn next(conn: &Connection, agent: &str) -> Result<Option<TaskView>> {
    Ok(open_views(conn)?
        .into_iter()
        .find(|v| v.task.agent == agent && v.state == State::Ready))
}

/// Records progress on a task that is not finished.
pub fn set_progress(conn: &Connection, id: &str, done: u64, total: Option<u64>) -> Result<TaskRow> {
    let t = get(conn, id)?;
    ensure!(
        matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress),
        "task {id} is {}; progress is recorded on pending or in-progress tasks",
        t.status.as_str()
    );
    let total = total.or(t.total);
    if let Some(n) = total {
        ensure!(
            done <= n,
            "task {id}: done ({done}) cannot exceed the total ({n})"
        );
    }
    store::set_progress(conn, id, done, total)?;
    get(conn, id)
}

/// A task as stored; an error naming the id when there is none.
pub fn get(conn: &Connection, id: &str) -> Result<TaskRow> {
    store::get(conn, id)?
        .with_context(|| format!("no task {id:?} (`perpetual task list --all` lists them)"))
}

/// What completing a task produced.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The task id.
    pub task: String,
    /// Its grade.
    pub grade: Grade,
    /// `task_reports/<task>.md`.
    pub report: PathBuf,
}

/// Completes a ready or in-progress task: grades it (`crate::work::grade`), stores the grade
/// and writes `task_reports/<task>.md`.
pub fn complete(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    id: &str,
) -> Result<Completion> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let g = complete_in(&tx, config, id)?;
    tx.commit()?;
    let report = write_report(conn, root, config, id)?;
    Ok(Completion {
        task: id.to_string(),
        grade: g,
        report,
    })
}

/// Completes and grades a ready or in-progress task inside the caller's transaction,
/// without writing its report: a wrap archives its session and completes its task in
/// one transaction, so no one ever sees the task finished but not completed.
pub fn complete_in(conn: &Connection, config: &Config, id: &str) -> Result<Grade> {
    let v = view(conn, id)?;
    match v.state {
        State::Ready | State::InProgress => {}
        State::Completed => bail!("task {id} is already completed"),
        State::Failed => bail!("task {id} failed; `perpetual task retry {id}` queues it again"),
        State::Waiting | State::Blocked => bail!(
            "task {id} cannot complete before its dependencies: {}",
            v.why.unwrap_or_default()
        ),
    }
    let now = crate::clock::now_rfc3339();
    let sessions = store_sessions::of_task(conn, id)?;
    let thresholds = config
        .thresholds_of(&v.task.agent)
        .of(crate::budget::Kind::Tokens);
    let g = grade::grade(grade::inputs(&v.task, &sessions, &thresholds));
    store::mark_completed(conn, id, &g, &now)?;
    Ok(g)
}

/// (Re)writes `task_reports/<task>.md` for a completed task from the database.
pub fn write_report(conn: &Connection, root: &Root, config: &Config, id: &str) -> Result<PathBuf> {
    let task = get(conn, id)?;
    let g = task
        .grade
        .clone()
        .with_context(|| format!("task {id} has no grade yet"))?;
    let mut sessions = Vec::new();
    for s in store_sessions::of_task(conn, id)? {
        let pairs = crate::store::ledger::pairs_of_session(conn, &s.id)?;
        sessions.push((s, pairs));
    }
    let checkpoints = store_sessions::count_checkpoints_of_task(conn, id)? as usize;
    let text = grade::report(
        &task,
        &g,
        &grade::ReportContext {
            sessions: &sessions,
            checkpoints,
            thresholds: &config.thresholds_of(&task.agent),
        },
    );
    let path = root.reports_dir().join(format!("{id}.md"));
    crate::root::write_document(&path, &text)?;
    Ok(path)
}

/// Marks a pending or in-progress task failed; its dependents become blocked.
pub fn fail(conn: &Connection, id: &str, reason: &str) -> Result<()> {
    let t = get(conn, id)?;
    ensure!(
        matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress),
        "task {id} is {}; only pending or in-progress tasks can fail",
        t.status.as_str()
    );
    ensure!(!reason.trim().is_empty(), "a failure needs a reason");
    store::mark_failed(conn, id, reason.trim(), &crate::clock::now_rfc3339())
}

/// Queues a failed task again, at the front of its priority.
pub fn retry(conn: &Connection, id: &str) -> Result<()> {
    let t = get(conn, id)?;
    ensure!(
        t.status == TaskStatus::Failed,
        "task {id} is {}; only failed tasks are retried",
        t.status.as_str()
    );
    store::requeue_first(conn, id)
}

/// Removes a task. Refused while another task depends on it or a session works on it.
pub fn remove(conn: &mut Connection, id: &str) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    get(&tx, id)?;
    let dependents = store::dependents(&tx, id)?;
    ensure!(
        dependents.is_empty(),
        "task {id} cannot be removed: {} depend{} on it (remove or re-plan {} first)",
        dependents.join(", "),
        if dependents.len() == 1 { "s" } else { "" },
        if dependents.len() == 1 { "it" } else { "them" }
    );
    let active: Vec<String> = store_sessions::of_task(&tx, id)?
        .into_iter()
        .filter(|s| s.is_active())
        .map(|s| s.id)
        .collect();
    ensure!(
        active.is_empty(),
        "task {id} cannot be removed: session {} works on it (wrap it first)",
        active.join(", ")
    );
    store::delete(&tx, id)?;
    tx.commit()?;
    Ok(())
}

/// What `task edit` changes; a field left `None` (or an empty list) stays as it is.
#[derive(Debug, Clone, Default)]
pub struct Edit {
    /// New priority (1 runs first).
    pub priority: Option<i64>,
    /// New description; an empty text clears it.
    pub description: Option<String>,
    /// New token estimate; 0 clears it.
    pub estimated_tokens: Option<u64>,
    /// New total of units (at least 1, and not below the units done).
    pub total: Option<u64>,
    /// Tasks that must complete first, added to its dependencies.
    pub after: Vec<String>,
    /// Dependencies removed.
    pub no_after: Vec<String>,
    /// Another agent's queue.
    pub agent: Option<String>,
}

/// One field `task edit` changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `priority`, `description`, `estimated_tokens`, `total`, `after` or `agent`.
    pub field: &'static str,
    /// What it was, as shown.
    pub from: String,
    /// What it is now.
    pub to: String,
}

impl Change {
    /// `priority 5 → 2`: how the history shows it.
    pub fn text(&self) -> String {
        format!("{} {} → {}", self.field, self.from, self.to)
    }
}

/// Edits a task in one transaction: every change, or nothing when one is refused (a
/// dependency cycle, an agent change while a session works on the task, a total below
/// the units done). Each change is recorded in the task's history under `by`; the
/// changes are returned (empty when every value was already so).
pub fn edit(
    conn: &mut Connection,
    id: &str,
    e: &Edit,
    by: &crate::work::history::Actor,
) -> Result<Vec<Change>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = get(&tx, id)?;
    let only_description = e.priority.is_none()
        && e.estimated_tokens.is_none()
        && e.total.is_none()
        && e.after.is_empty()
        && e.no_after.is_empty()
        && e.agent.is_none();
    ensure!(
        t.status != TaskStatus::Completed || only_description,
        "task {id} is completed (its record is the archive): only its description can change"
    );
    let mut changes = Vec::new();
    let none = || "none".to_string();
    if let Some(p) = e.priority {
        ensure!(p >= 1, "task {id}: priority must be 1 or more");
        if p != t.priority {
            store::set_priority(&tx, id, p)?;
            changes.push(Change {
                field: "priority",
                from: t.priority.to_string(),
                to: p.to_string(),
            });
        }
    }
    if let Some(d) = &e.description {
        let d = Some(d.trim()).filter(|d| !d.is_empty());
        if d != t.description.as_deref() {
            store::set_description(&tx, id, d)?;
            changes.push(Change {
                field: "description",
                from: t
                    .description
                    .as_deref()
                    .map_or_else(none, |x| format!("{x:?}")),
                to: d.map_or_else(none, |x| format!("{x:?}")),
            });
        }
    }
    if let Some(n) = e.estimated_tokens {
        let n = Some(n).filter(|&n| n > 0);
        if n != t.estimated_tokens {
            store::set_estimate(&tx, id, n)?;
            changes.push(Change {
                field: "estimated_tokens",
                from: t.estimated_tokens.map_or_else(none, |x| x.to_string()),
                to: n.map_or_else(none, |x| x.to_string()),
            });
        }
    }
    if let Some(n) = e.total {
        ensure!(n >= 1, "task {id}: total must be at least 1");
        ensure!(
            n >= t.done,
            "task {id}: {} unit(s) are done already; the total cannot be below that",
            t.done
        );
        if Some(n) != t.total {
            store::set_progress(&tx, id, t.done, Some(n))?;
            changes.push(Change {
                field: "total",
                from: t.total.map_or_else(none, |x| x.to_string()),
                to: n.to_string(),
            });
        }
    }
    if let Some(both) = e.after.iter().find(|d| e.no_after.contains(d)) {
        bail!("task {id}: {both} is named by both --after and --no-after");
    }
    let mut deps: Vec<String> = t.depends_on.clone();
    for d in &e.no_after {
        ensure!(
            store::remove_dependency(&tx, id, d)?,
            "task {id} does not depend on {d:?} (it depends on {})",
            if t.depends_on.is_empty() {
                "nothing".to_string()
            } else {
                t.depends_on.join(", ")
            }
        );
        deps.retain(|x| x != d);
    }
    for d in &e.after {
        ensure!(d != id, "task {id} cannot depend on itself");
        ensure!(
            store::exists(&tx, d)?,
            "task {id} cannot depend on {d:?}, which does not exist; add it first"
        );
        if !deps.contains(d) {
            if let Some(path) = path_between(&tx, d, id)? {
                bail!(
                    "refused: {id} after {d} would make a dependency cycle ({} → {d}); nothing changed",
                    path.join(" → ")
                );
            }
            store::add_dependency(&tx, id, d)?;
            deps.push(d.clone());
        }
    }
    deps.sort();
    let mut before = t.depends_on.clone();
    before.sort();
    if deps != before {
        let list = |v: &[String]| {
            if v.is_empty() { none() } else { v.join(", ") }
        };
        changes.push(Change {
            field: "after",
            from: list(&before),
            to: list(&deps),
        });
    }
    if let Some(a) = &e.agent {
        crate::root::check_agent_name(a)?;
        if a != &t.agent {
            let active: Vec<String> = store_sessions::of_task(&tx, id)?
                .into_iter()
                .filter(|s| s.is_active())
                .map(|s| s.id)
                .collect();
            ensure!(
                active.is_empty(),
                "refused: session {} of {} works on task {id}; wrap it before moving the task to {a}",
                active.join(", "),
                t.agent
            );
            store::set_agent(&tx, id, a)?;
            changes.push(Change {
                field: "agent",
                from: t.agent.clone(),
                to: a.clone(),
            });
        }
    }
    for c in &changes {
        crate::work::history::task_event(&tx, id, by, "edit", c.text())?;
    }
    tx.commit()?;
    Ok(changes)
}

/// The dependency path from `from` down to `to` (`from` depends on ... on `to`), if one
/// exists: adding "`to` after `from`" would close it into a cycle.
fn path_between(conn: &Connection, from: &str, to: &str) -> Result<Option<Vec<String>>> {
    let rows = store::all(conn)?;
    let deps: HashMap<&str, &[String]> = rows
        .iter()
        .map(|t| (t.id.as_str(), t.depends_on.as_slice()))
        .collect();
    let mut seen = HashSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty").clone();
        if last == to {
            return Ok(Some(path));
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for d in deps.get(last.as_str()).copied().unwrap_or(&[]) {
            let mut next = path.clone();
            next.push(d.clone());
            stack.push(next);
        }
    }
    Ok(None)
}

/// Clears a task's review flag after a person looked; the flag's reason and `note` are
/// kept in the task's history. Returns the reason the flag had.
pub fn clear_review(
    conn: &mut Connection,
    id: &str,
    note: Option<&str>,
    by: &crate::work::history::Actor,
) -> Result<String> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = get(&tx, id)?;
    let reason = t
        .needs_review
        .with_context(|| format!("task {id} is not flagged for review"))?;
    store::clear_review(&tx, id)?;
    let mut detail = format!("review flag cleared (it said: {reason})");
    if let Some(n) = note.map(str::trim).filter(|n| !n.is_empty()) {
        detail.push_str(&format!("; note: {n}"));
    }
    crate::work::history::task_event(&tx, id, by, "review_clear", detail)?;
    tx.commit()?;
    Ok(reason)
}

/// What `task stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Tasks in all.
    pub tasks: u64,
    /// Count per state (ready, waiting, blocked, in_progress, completed, failed).
    pub by_state: BTreeMap<&'static str, u64>,
    /// Tasks flagged for review.
    pub needs_review: u64,
    /// completed / tasks, in percent.
    pub completion_rate: f64,
    /// Sum of the estimates of every task.
    pub tokens_estimated: u64,
    /// Tokens used by every task's sessions.
    pub tokens_used: u64,
    /// Sum of the estimates of completed tasks.
    pub completed_tokens_estimated: u64,
    /// Tokens used by completed tasks.
    pub completed_tokens_used: u64,
    /// Completed tasks per letter (A, B, C, D, F).
    pub grades: BTreeMap<String, u64>,
    /// Mean score of the completed tasks.
    pub mean_score: Option<f64>,
}

/// Counts by state, completion rate, tokens estimated against used, grade distribution.
pub fn stats(conn: &Connection) -> Result<Stats> {
    let views = views(conn)?;
    let mut by_state: BTreeMap<&'static str, u64> = [
        State::Ready,
        State::Waiting,
        State::Blocked,
        State::InProgress,
        State::Completed,
        State::Failed,
    ]
    .iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    let mut grades: BTreeMap<String, u64> = ["A", "B", "C", "D", "F"]
        .iter()
        .map(|l| (l.to_string(), 0))
        .collect();
    let (mut est, mut used, mut c_est, mut c_used, mut review) = (0, 0, 0, 0, 0);
    let mut scores = Vec::new();
    for v in &views {
        *by_state.entry(v.state.as_str()).or_default() += 1;
        let t = &v.task;
        est += t.estimated_tokens.unwrap_or(0);
        used += t.tokens_used;
        review += u64::from(t.needs_review.is_some());
        if t.status == TaskStatus::Completed {
            c_est += t.estimated_tokens.unwrap_or(0);
            c_used += t.tokens_used;
            if let Some(g) = &t.grade {
                *grades.entry(g.letter.clone()).or_default() += 1;
                scores.push(g.score);
            }
        }
    }
    let n = views.len() as u64;
    let completed = by_state["completed"];
    Ok(Stats {
        tasks: n,
        by_state,
        needs_review: review,
        completion_rate: if n == 0 {
            0.0
        } else {
            completed as f64 * 100.0 / n as f64
        },
        tokens_estimated: est,
        tokens_used: used,
        completed_tokens_estimated: c_est,
        completed_tokens_used: c_used,
        grades,
        mean_score: (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64),
    })
}

/// A plan file (`task import PLAN.toml`): `[[task]]` and `[[template]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The tasks, in the order they queue (ties go to the earlier one).
    #[serde(default)]
    pub task: Vec<PlanTask>,
    /// Templates the assigner makes new tasks from when an agent's queue runs low.
    #[serde(default)]
    pub template: Vec<PlanTemplate>,
}

/// One `[[template]]` of a plan: `perpetual assign` adds `id` with `{n}` replaced by the
/// next number (from `start`) whenever the agent has fewer ready tasks than
/// `assign.min_ready`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTemplate {
    /// Agent.
    pub agent: String,
    /// Task id with `{n}`, e.g. `droid_research_batch_{n}`.
    pub id: String,
    /// Description; `{n}` is replaced too.
    pub description: Option<String>,
    /// Priority of its tasks (default 5).
    pub priority: Option<i64>,
    /// Token estimate of each task.
    pub estimated_tokens: Option<u64>,
    /// Units of each task.
    pub total: Option<u64>,
    /// The first number (default 1).
    pub start: Option<u64>,
    /// Its tasks' kind: `agent` (default) or `duty` (a standing duty: one session each).
    pub kind: Option<TaskKind>,
    /// Recurring: a fresh task every period (`"24h"`, `"90m"`, `"7d"`) or each day at a
    /// UTC time (`"06:00"`), once the previous one is complete. A recurring template does
    /// not top up queues.
    pub every: Option<String>,
}

/// A template as `task templates` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateView {
    /// The stored template.
    #[serde(flatten)]
    pub template: TemplateRow,
    /// `tops up the queue to assign.min_ready`, `every 24h`, `daily at 06:00 UTC`.
    pub schedule: String,
    /// Recurring: when the next task is due (once the last one is complete).
    pub next_due: Option<String>,
}

/// Every template, with its schedule and, for recurring ones, when the next is due.
pub fn templates(conn: &Connection) -> Result<Vec<TemplateView>> {
    Ok(store::templates(conn)?
        .into_iter()
        .map(|t| {
            let every = t.every.as_deref().map(crate::clock::Every::parse);
            let schedule = match &every {
                None => "tops up the queue to assign.min_ready".to_string(),
                Some(Ok(e)) => e.to_string(),
                Some(Err(e)) => format!("invalid: {e:#}"),
            };
            let next_due = match (&every, &t.last_added_at) {
                (Some(Ok(e)), Some(at)) => crate::clock::parse(at)
                    .ok()
                    .map(|at| crate::clock::format(e.next_after(at))),
                (Some(Ok(_)), None) => Some("now".to_string()),
                _ => None,
            };
            TemplateView {
                template: t,
                schedule,
                next_due,
            }
        })
        .collect())
}

/// A template's task id for number `n`.
pub fn template_id(pattern: &str, n: u64) -> String {
    pattern.replace("{n}", &n.to_string())
}

/// One `[[task]]` of a plan; the same fields as `task add`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTask {
    /// Task id.
    pub id: String,
    /// Agent.
    pub agent: String,
    /// 1 runs first.
    pub priority: Option<i64>,
    /// Free text.
    pub description: Option<String>,
    /// Token estimate.
    pub estimated_tokens: Option<u64>,
    /// Units in all.
    pub total: Option<u64>,
    /// Tasks (in the plan or already stored) that must complete first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Who runs it: `agent` (default), `ingest` or `backfill`.
    pub kind: Option<TaskKind>,
    /// What a built-in kind needs, e.g. `params = { dir = "/archive", sessions = "101-187" }`.
    pub params: Option<toml::Value>,
    /// Recurring: once it is complete and the period passed, the assigner adds a fresh
    /// copy, `<id>_2`, `<id>_3`, ... (see [`PlanTemplate::every`]).
    pub every: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Tasks added.
    pub added: Vec<String>,
    /// Tasks already stored (left as they are).
    pub kept: Vec<String>,
    /// Templates added (`agent/pattern`).
    pub templates_added: Vec<String>,
    /// Templates already stored (kept).
    pub templates_kept: Vec<String>,
}

/// Imports a plan in one transaction: every task and dependency, or nothing. Tasks
/// already stored are kept as they are, so importing the same plan twice adds nothing.
pub fn import(conn: &mut Connection, text: &str, check: ParamsCheck) -> Result<ImportReport> {
    let plan: Plan = toml::from_str(text).context("invalid plan")?;
    let mut seen = HashSet::new();
    for t in &plan.task {
        ensure!(
            seen.insert(t.id.as_str()),
            "the plan lists task {} twice",
            t.id
        );
    }
    check_plan_acyclic(&plan)?;
    for t in &plan.task {
        if let Some(e) = &t.every {
            check_recurring(&t.id, t.kind.unwrap_or_default(), e)
                .with_context(|| format!("plan task {}", t.id))?;
        }
    }
    for t in &plan.template {
        if let Some(e) = &t.every {
            crate::clock::Every::parse(e).with_context(|| format!("plan template {}", t.id))?;
        }
        ensure!(
            matches!(t.kind.unwrap_or_default(), TaskKind::Agent | TaskKind::Duty),
            "plan template {}: a template makes agent or duty tasks (a built-in kind needs params)",
            t.id
        );
        // `{gap_indicators}` becomes indicator slugs (work::gaps), which ids allow.
        check_task_id(&template_id(&t.id, 1).replace("{gap_indicators}", "gaps"))
            .with_context(|| format!("plan template {}", t.id))?;
        crate::root::check_agent_name(&t.agent)?;
        ensure!(
            t.id.contains("{n}"),
            "plan template {} must contain {{n}} where the number goes",
            t.id
        );
        ensure!(
            t.priority.unwrap_or(DEFAULT_PRIORITY) >= 1,
            "plan template {}: priority must be 1 or more",
            t.id
        );
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = ImportReport::default();
    let mut new_ids: HashSet<&str> = HashSet::new();
    for t in &plan.task {
        if store::exists(&tx, &t.id)? {
            report.kept.push(t.id.clone());
        } else {
            new_ids.insert(&t.id);
        }
    }
    for t in plan.task.iter().filter(|t| new_ids.contains(t.id.as_str())) {
        let add = AddTask {
            id: t.id.clone(),
            agent: t.agent.clone(),
            priority: t.priority,
            after: t.after.clone(),
            description: t.description.clone(),
            estimated_tokens: t.estimated_tokens,
            total: t.total,
            kind: t.kind.unwrap_or_default(),
            params: t
                .params
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .with_context(|| format!("plan task {}: params", t.id))?,
        };
        add_raw(&tx, &add, &new_ids, check).with_context(|| format!("plan task {}", t.id))?;
        report.added.push(t.id.clone());
    }
    for t in plan.task.iter().filter(|t| new_ids.contains(t.id.as_str())) {
        for d in &t.after {
            store::add_dependency(&tx, &t.id, d)?;
        }
    }
    for t in &plan.template {
        let added = store::insert_template(
            &tx,
            &TemplateRow {
                id: 0,
                agent: t.agent.clone(),
                pattern: t.id.clone(),
                description: t.description.clone(),
                priority: t.priority.unwrap_or(DEFAULT_PRIORITY),
                estimated_tokens: t.estimated_tokens,
                total: t.total,
                next_n: t.start.unwrap_or(1),
                kind: t.kind.unwrap_or_default(),
                every: t.every.clone(),
                last_task: None,
                last_added_at: None,
            },
        )?;
        let name = format!("{}/{}", t.agent, t.id);
        if added {
            report.templates_added.push(name);
        } else {
            report.templates_kept.push(name);
        }
    }
    for t in &plan.task {
        if let Some(e) = &t.every {
            let row = get(&tx, &t.id)?;
            let name = format!("{}/{}", row.agent, recurring_pattern(&row.id));
            if recur_raw(&tx, &row, e)? {
                report.templates_added.push(name);
            } else {
                report.templates_kept.push(name);
            }
        }
    }
    tx.commit()?;
    Ok(report)
}

/// The template pattern of a recurring task's fresh copies: `<id>_{n}`.
pub fn recurring_pattern(id: &str) -> String {
    format!("{id}_{{n}}")
}

fn check_recurring(id: &str, kind: TaskKind, every: &str) -> Result<()> {
    crate::clock::Every::parse(every)?;
    ensure!(
        matches!(kind, TaskKind::Agent | TaskKind::Duty),
        "only agent and duty tasks recur (a built-in kind's params name one piece of work)"
    );
    check_task_id(&template_id(&recurring_pattern(id), 2))
}

/// Makes a stored task recurring: a template `<id>_{n}` whose next copy comes once the
/// period passed and the task is complete. Returns false when it already recurs.
pub fn recur(conn: &mut Connection, id: &str, every: &str) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let t = get(&tx, id)?;
    check_recurring(id, t.kind, every)?;
    let added = recur_raw(&tx, &t, every)?;
    tx.commit()?;
    Ok(added)
}

fn recur_raw(conn: &Connection, t: &TaskRow, every: &str) -> Result<bool> {
    let pattern = recurring_pattern(&t.id);
    let added = store::insert_template(
        conn,
        &TemplateRow {
            id: 0,
            agent: t.agent.clone(),
            pattern: pattern.clone(),
            description: t.description.clone(),
            priority: t.priority,
            estimated_tokens: t.estimated_tokens,
            total: t.total,
            next_n: 2,
            kind: t.kind,
            every: Some(every.trim().to_string()),
            last_task: Some(t.id.clone()),
            last_added_at: Some(t.created_at.clone()),
        },
    )?;
    if added
        && let Some(tpl) = store::templates(conn)?
            .into_iter()
            .find(|x| x.agent == t.agent && x.pattern == pattern)
    {
        store::set_template_of(conn, &t.id, tpl.id)?;
    }
    Ok(added)
}

/// Refuses a plan whose dependencies go round in a circle.
fn check_plan_acyclic(plan: &Plan) -> Result<()> {
    let deps: HashMap<&str, &[String]> = plan
        .task
        .iter()
        .map(|t| (t.id.as_str(), t.after.as_slice()))
        .collect();
    // 0 = unseen, 1 = on the current path, 2 = done
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        id: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        mark: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Result<()> {
        match mark.get(id).copied().unwrap_or(0) {
            2 => return Ok(()),
            1 => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(id);
                bail!(
                    "the plan's dependencies form a cycle: {}",
                    cycle.join(" → ")
                );
            }
            _ => {}
        }
        mark.insert(id, 1);
        path.push(id);
        for d in deps.get(id).copied().unwrap_or(&[]) {
            if deps.contains_key(d.as_str()) {
                visit(d, deps, mark, path)?;
            }
        }
        path.pop();
        mark.insert(id, 2);
        Ok(())
    }
    for t in &plan.task {
        visit(&t.id, &deps, &mut mark, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests here add agent tasks only, whose params nobody checks.
    fn no_check(_: &str, _: TaskKind, _: Option<&serde_json::Value>) -> Result<()> {
        Ok(())
    }

    fn task(conn: &mut Connection, id: &str, priority: i64, after: &[&str]) {
        add(
            conn,
            &AddTask {
                id: id.into(),
                agent: "a".into(),
                priority: Some(priority),
                after: after.iter().map(|s| s.to_string()).collect(),
                ..AddTask::default()
            },
            no_check,
        )
        .unwrap();
    }

    #[test]
    fn readiness_follows_dependencies_and_failures() {
        let mut conn = crate::store::open_in_memory().unwrap();
        task(&mut conn, "base", 2, &[]);
        task(&mut conn, "mid", 1, &["base"]);
        task(&mut conn, "top", 1, &["mid"]);
        let state = |conn: &Connection, id: &str| view(conn, id).unwrap().state;
        assert_eq!(state(&conn, "base"), State::Ready);
        assert_eq!(state(&conn, "mid"), State::Waiting);
        assert_eq!(next(&conn, "a").unwrap().unwrap().task.id, "base");
        fail(&conn, "base", "broken input").unwrap();
        assert_eq!(state(&conn, "mid"), State::Blocked);
        let top = view(&conn, "top").unwrap();
        assert_eq!(top.state, State::Blocked);
        assert_eq!(top.blocked_by.as_deref(), Some("base"));
        assert!(top.why.unwrap().contains("broken input"));
        assert!(next(&conn, "a").unwrap().is_none());
        retry(&conn, "base").unwrap();
        assert_eq!(state(&conn, "mid"), State::Waiting);
    }

    #[test]
    fn plan_cycles_and_duplicates_are_refused() {
        let mut conn = crate::store::open_in_memory().unwrap();
        let cyclic = "[[task]]\nid = \"x\"\nagent = \"a\"\nafter = [\"y\"]\n\
                      [[task]]\nid = \"y\"\nagent = \"a\"\nafter = [\"x\"]\n";
        let err = import(&mut conn, cyclic, no_check).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        let twice = "[[task]]\nid = \"x\"\nagent = \"a\"\n[[task]]\nid = \"x\"\nagent = \"a\"\n";
        assert!(import(&mut conn, twice, no_check).is_err());
        assert!(views(&conn).unwrap().is_empty(), "nothing half-imported");
    }

    #[test]
    fn plan_templates_are_stored_once() {
        let mut conn = crate::store::open_in_memory().unwrap();
        let plan = "[[template]]\nagent = \"droid\"\nid = \"batch_{n}\"\nstart = 8\n";
        let r = import(&mut conn, plan, no_check).unwrap();
        assert_eq!(r.templates_added, ["droid/batch_{n}"]);
        let r = import(&mut conn, plan, no_check).unwrap();
        assert_eq!(r.templates_kept, ["droid/batch_{n}"]);
        let t = store::templates(&conn).unwrap();
        assert_eq!((t.len(), t[0].next_n), (1, 8));
        assert!(
            import(
                &mut conn,
                "[[template]]\nagent = \"droid\"\nid = \"batch\"\n",
                no_check
            )
            .is_err()
        );
    }

    #[test]
    fn progress_parsing() {
        assert_eq!(parse_progress("10/40").unwrap(), (10, Some(40)));
        assert_eq!(parse_progress("7").unwrap(), (7, None));
        for bad in ["41/40", "1/0", "x/4", "", "-1/4"] {
            assert!(parse_progress(bad).is_err(), "{bad}");
        }
    }
}
