//! Budgeted sessions: start, checkpoint, wrap, resume (the seeds' session orchestrator,
//! state manager and commit manager, with all state in the database).
//!
//! A session is one agent working on one task under a budget. The library functions
//! below are what the command line calls, and what a loop or a backfill running as a
//! task should call too:
//!
//! - [`start`]: resumes the agent's task in progress (one no active session works on),
//!   else takes the next ready task; refuses when the agent's API calls for today or
//!   its slots are at or past the wrap threshold. Returns a [`Brief`] (task, progress,
//!   last checkpoint, the previous handoff's next action, the budget).
//! - [`checkpoint`]: records progress, tokens so far, API calls since the last
//!   checkpoint and a note; returns the budget level (`level.must_wrap()` says wrap now).
//! - [`level`]: the level of a session right now, without recording anything.
//! - [`wrap`]: saves progress and archives the session, completes and grades the task
//!   when its progress is full (or flags it "needs review" when the level is past the
//!   hard stop and it is unfinished), backs the database up, writes the handoff and
//!   commits the outputs when the root is in a git repository. A step that cannot run
//!   is reported in [`WrapReport::steps`] and does not stop the others.
//! - [`current`]: which session a command means: an explicit id, else the agent's
//!   only active session, else `PERPETUAL_SESSION`, else the only active session.
//!
//! Time comes from [`crate::clock::now`], so `PERPETUAL_NOW` drives it in tests.

use crate::budget::{self, Budget, Kind, Level, Thresholds, Usage};
use crate::clock;
use crate::config::Config;
use crate::human::progress_text;
use crate::root::Root;
use crate::store::agents as store_runs;
use crate::store::sessions::{self as store, CheckpointRow, NewCheckpoint, SessionRow};
use crate::store::tasks::{self as store_tasks, TaskRow, TaskStatus};
use crate::work::handoff::{self, Handoff};
use crate::work::tasks::{self, Completion, State, TaskView};
use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Days, Utc};
use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The environment variable naming the current session (set by whatever starts an
/// agent's command inside a session).
pub const SESSION_ENV: &str = "PERPETUAL_SESSION";

/// No session is active (or none for the agent asked about).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoActiveSession(pub String);

/// What [`start`] needs.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The agent.
    pub agent: String,
    /// A particular task (ready, or in progress without an active session).
    pub task: Option<String>,
    /// Overrides the agent's `tokens_per_session`.
    pub token_budget: Option<u64>,
    /// The loop starts this session to run the agent's command: its run (in
    /// `loop_runs`, without a process yet) is recorded in the session's own transaction,
    /// so that a loop killed before the command starts leaves a run the next loop
    /// adopts (and wraps), never an active session nothing follows. A person's
    /// `session start` records none: no loop adopts what a person runs.
    pub loop_run: bool,
}

/// What [`start`] did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StartOutcome {
    /// A session started.
    Started(Box<Brief>),
    /// No task is ready for the agent; the pending ones say why.
    NothingReady {
        /// The agent.
        agent: String,
        /// The agent's tasks that are waiting, blocked or taken by an active session.
        pending: Vec<TaskView>,
    },
    /// The agent's budget refuses another session now.
    OverBudget {
        /// The agent.
        agent: String,
        /// The budget at or past the wrap threshold.
        usage: Usage,
        /// When it frees up, if known (API calls: the next 00:00 UTC).
        resets_at: Option<String>,
    },
}

/// The session brief: what a starting agent needs to know.
#[derive(Debug, Clone, Serialize)]
pub struct Brief {
    /// The new session.
    pub session: SessionRow,
    /// Its task.
    pub task: TaskView,
    /// The task was already in progress (a resume).
    pub resumed: bool,
    /// The task's latest checkpoint, over all sessions.
    pub last_checkpoint: Option<CheckpointRow>,
    /// The task's last wrapped session: its handoff and next action.
    pub previous: Option<SessionRow>,
    /// Budget usage now (tokens, API calls today, minutes).
    pub usage: Vec<Usage>,
    /// The agent's slots, when it has a slot budget.
    pub slots: Option<Usage>,
    /// The worst level over `usage`.
    pub level: Level,
    /// The thresholds in force.
    pub thresholds: Thresholds,
    /// The loop's run of the session, when [`StartOptions::loop_run`] asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
}

/// Starts a session for `opts.agent`.
pub fn start(conn: &mut Connection, config: &Config, opts: &StartOptions) -> Result<StartOutcome> {
    crate::root::check_agent_name(&opts.agent)?;
    let agent = opts.agent.as_str();
    let now = clock::now();
    let now_s = clock::format(now);
    let mut budget = config.budget_of(agent);
    if let Some(t) = opts.token_budget {
        budget.tokens_per_session = t;
    }
    let th = &config.thresholds_of(agent);

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let active = store::active(&tx, Some(agent))?;
    if let Some(u) = Usage::new(Kind::Slots, active.len() as u64, budget.slots, th)
        && u.level.must_wrap()
    {
        return Ok(StartOutcome::OverBudget {
            agent: agent.to_string(),
            usage: u,
            resets_at: None,
        });
    }
    let calls = api_calls_today(&tx, agent, now)?;
    if let Some(u) = Usage::new(Kind::ApiCalls, calls, budget.api_calls_per_day, th)
        && u.level.must_wrap()
    {
        return Ok(StartOutcome::OverBudget {
            agent: agent.to_string(),
            usage: u,
            resets_at: Some(clock::format(next_midnight(now))),
        });
    }

    let busy: HashSet<String> = store::active(&tx, None)?
        .into_iter()
        .filter_map(|s| s.task_id)
        .collect();
    let views = tasks::open_views(&tx)?;
    let chosen = match &opts.task {
        Some(id) => {
            let Some(v) = views.iter().find(|v| &v.task.id == id) else {
                // Not open: completed, or not there at all.
                tasks::get(&tx, id)?;
                bail!("task {id} is completed");
            };
            ensure!(
                v.task.agent == agent,
                "task {id} is in {}'s queue, not {agent}'s",
                v.task.agent
            );
            ensure!(
                !busy.contains(id),
                "an active session already works on task {id}"
            );
            match v.state {
                State::Ready | State::InProgress => Some(v.clone()),
                _ => bail!(
                    "task {id} is {}{}",
                    v.state.as_str(),
                    v.why
                        .as_deref()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                ),
            }
        }
        None => views
            .iter()
            .find(|v| {
                v.task.agent == agent && v.state == State::InProgress && !busy.contains(&v.task.id)
            })
            .or_else(|| {
                views
                    .iter()
                    .find(|v| v.task.agent == agent && v.state == State::Ready)
            })
            .cloned(),
    };
    let Some(chosen) = chosen else {
        return Ok(StartOutcome::NothingReady {
            agent: agent.to_string(),
            pending: views
                .into_iter()
                .filter(|v| {
                    v.task.agent == agent
                        && matches!(v.state, State::Waiting | State::Blocked | State::InProgress)
                })
                .collect(),
        });
    };
    let resumed = chosen.state == State::InProgress;
    store_tasks::mark_started(&tx, &chosen.task.id, &now_s)?;
    let base = format!("session_{}", now.format("%Y%m%d_%H%M%S"));
    let id = store::insert(
        &tx,
        &base,
        agent,
        &chosen.task.id,
        &budget,
        chosen.task.done,
        &now_s,
    )?;
    let run_id = if opts.loop_run {
        Some(store_runs::insert_run(
            &tx,
            agent,
            &chosen.task.id,
            chosen.task.kind.as_str(),
            Some(&id),
            &now_s,
        )?)
    } else {
        None
    };
    tx.commit()?;

    let session = get(conn, &id)?;
    let usage = usages(&session, api_calls_today(conn, agent, now)?, now, th);
    Ok(StartOutcome::Started(Box::new(Brief {
        task: tasks::view(conn, &chosen.task.id)?,
        resumed,
        last_checkpoint: store::last_checkpoint_of_task(conn, &chosen.task.id)?,
        previous: store::last_wrapped_of_task(conn, &chosen.task.id)?,
        level: budget::worst(&usage),
        usage,
        slots: slots_usage(conn, agent, &budget, th)?,
        thresholds: *th,
        session,
        run_id,
    })))
}

/// One session; an error naming the id when there is none.
pub fn get(conn: &Connection, id: &str) -> Result<SessionRow> {
    store::get(conn, id)?
        .with_context(|| format!("no session {id:?} (`perpetual session list` lists them)"))
}

/// The session a command means: `session` when given; else `agent`'s only active
/// session; else `PERPETUAL_SESSION`; else the only active session. Several
/// candidates are an error that names them.
pub fn current(
    conn: &Connection,
    session: Option<&str>,
    agent: Option<&str>,
) -> Result<SessionRow> {
    if let Some(id) = session {
        return get(conn, id);
    }
    if agent.is_none()
        && let Ok(id) = std::env::var(SESSION_ENV)
        && !id.trim().is_empty()
    {
        return get(conn, id.trim());
    }
    let active = store::active(conn, agent)?;
    match active.len() {
        0 => Err(NoActiveSession(match agent {
            Some(a) => {
                format!("agent {a} has no active session (`perpetual session start --agent {a}`)")
            }
            None => {
                "no active session (`perpetual session start --agent AGENT` starts one)".to_string()
            }
        })
        .into()),
        1 => Ok(active.into_iter().next().expect("one")),
        _ => bail!(
            "several active sessions: {}; say which with --session ID{}",
            active
                .iter()
                .map(|s| format!("{} ({})", s.id, s.agent))
                .collect::<Vec<_>>()
                .join(", "),
            if agent.is_none() { " or --agent A" } else { "" }
        ),
    }
}

/// What [`checkpoint`] records; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct CheckpointInput {
    /// Progress of the task: done, and the total when it changes.
    pub progress: Option<(u64, Option<u64>)>,
    /// Tokens the session has used so far (the agent's context meter).
    pub tokens: Option<u64>,
    /// API calls made since the previous checkpoint (counted toward today).
    pub api_calls: u64,
    /// Free text.
    pub note: Option<String>,
}

/// What [`checkpoint`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    /// The session.
    pub session_id: String,
    /// 1 for the session's first checkpoint.
    pub number: usize,
    /// The checkpoint as stored.
    pub checkpoint: CheckpointRow,
    /// The task after it.
    pub task: Option<TaskRow>,
    /// Budget usage after it.
    pub usage: Vec<Usage>,
    /// The worst level.
    pub level: Level,
    /// What to do.
    pub action: &'static str,
    /// True at or past the wrap threshold: wrap now.
    pub wrap_now: bool,
    /// The kind that sets the level (`budget::binding`).
    pub binding: Option<Usage>,
}

/// Records a checkpoint of an active session.
pub fn checkpoint(
    conn: &mut Connection,
    config: &Config,
    session_id: &str,
    input: &CheckpointInput,
) -> Result<CheckpointReport> {
    let now = clock::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let s = get(&tx, session_id)?;
    ensure!(
        s.is_active(),
        "session {} was wrapped at {}; start a new one",
        s.id,
        s.wrapped_at.as_deref().unwrap_or("?")
    );
    if let Some(t) = input.tokens {
        store::set_tokens(&tx, &s.id, t)?;
    }
    if let Some((done, total)) = input.progress {
        let task = s
            .task_id
            .as_deref()
            .context("the session's task was removed; progress cannot be recorded")?;
        tasks::set_progress(&tx, task, done, total)?;
    }
    let s = get(&tx, session_id)?;
    let calls = api_calls_today(&tx, &s.agent, now)? + input.api_calls;
    let usage = usages(&s, calls, now, &config.thresholds_of(&s.agent));
    let level = budget::worst(&usage);
    let id = store::insert_checkpoint(
        &tx,
        &NewCheckpoint {
            session_id: &s.id,
            agent: &s.agent,
            task_id: s.task_id.as_deref(),
            at: &clock::format(now),
            progress: input.progress,
            tokens: input.tokens,
            api_calls: input.api_calls,
            note: input.note.as_deref(),
            level,
        },
    )?;
    let all = store::checkpoints_of(&tx, &s.id)?;
    let task = match &s.task_id {
        Some(t) => store_tasks::get(&tx, t)?,
        None => None,
    };
    tx.commit()?;
    let number = all
        .iter()
        .position(|c| c.id == id)
        .map_or(all.len(), |i| i + 1);
    let checkpoint = all
        .into_iter()
        .find(|c| c.id == id)
        .context("checkpoint vanished")?;
    let binding = budget::binding(&usage).copied();
    Ok(CheckpointReport {
        binding,
        session_id: s.id,
        number,
        checkpoint,
        task,
        usage,
        level,
        action: level.action(),
        wrap_now: level.must_wrap(),
    })
}

/// A session's budget usage now (or at its wrap) and the worst level.
pub fn level(
    conn: &Connection,
    config: &Config,
    session: &SessionRow,
) -> Result<(Vec<Usage>, Level)> {
    let at = match &session.wrapped_at {
        Some(w) => clock::parse(w)?,
        None => clock::now(),
    };
    let usage = usages(
        session,
        api_calls_today(conn, &session.agent, at)?,
        at,
        &config.thresholds_of(&session.agent),
    );
    let level = budget::worst(&usage);
    Ok((usage, level))
}

/// The session kinds of usage: tokens, API calls today, seconds since the start.
/// Slots are the agent's, not one session's: see [`start`] and [`Status::slots`].
pub fn usages(
    s: &SessionRow,
    api_calls_today: u64,
    now: DateTime<Utc>,
    th: &Thresholds,
) -> Vec<Usage> {
    // Seconds, not whole minutes: a one-minute budget must pass 85% at 51 s, not jump
    // from 0% to 100%.
    let seconds = clock::parse(&s.started_at)
        .map(|t| (now - t).num_seconds().max(0) as u64)
        .unwrap_or(0);
    [
        Usage::new(Kind::Tokens, s.tokens_used, s.budget.tokens_per_session, th),
        Usage::new(
            Kind::ApiCalls,
            api_calls_today,
            s.budget.api_calls_per_day,
            th,
        ),
        Usage::new(
            Kind::WallTime,
            seconds,
            s.budget.wall_minutes_per_session.saturating_mul(60),
            th,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// API calls the agent recorded during the UTC day containing `now`.
pub fn api_calls_today(conn: &Connection, agent: &str, now: DateTime<Utc>) -> Result<u64> {
    let start = day_start(now);
    store::api_calls_between(
        conn,
        agent,
        &clock::format(start),
        &clock::format(next_midnight(now)),
    )
}

fn day_start(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// When the daily API-call count containing `t` resets: the next 00:00 UTC.
pub fn next_midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    day_start(t)
        .checked_add_days(Days::new(1))
        .expect("a next day")
}

/// The agent's slots: its active sessions against its slot budget (None without one).
pub fn slots_usage(
    conn: &Connection,
    agent: &str,
    budget: &Budget,
    th: &Thresholds,
) -> Result<Option<Usage>> {
    let active = store::active(conn, Some(agent))?.len() as u64;
    Ok(Usage::new(Kind::Slots, active, budget.slots, th))
}

/// What `session status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The session.
    pub session: SessionRow,
    /// Its task.
    pub task: Option<TaskView>,
    /// Its checkpoints.
    pub checkpoints: Vec<CheckpointRow>,
    /// Budget usage now (or at the wrap).
    pub usage: Vec<Usage>,
    /// The agent's slots now, when it has a slot budget.
    pub slots: Option<Usage>,
    /// The worst level.
    pub level: Level,
    /// What to do.
    pub action: &'static str,
    /// Seconds since the start (until the wrap, once wrapped).
    pub elapsed_seconds: i64,
    /// The kind that sets the level (`budget::binding`).
    pub binding: Option<Usage>,
}

/// The state of one session.
pub fn status(conn: &Connection, config: &Config, id: &str) -> Result<Status> {
    let session = get(conn, id)?;
    let (usage, level) = level(conn, config, &session)?;
    let end = match &session.wrapped_at {
        Some(w) => clock::parse(w)?,
        None => clock::now(),
    };
    let task = match &session.task_id {
        Some(t) => Some(tasks::view(conn, t)?),
        None => None,
    };
    Ok(Status {
        elapsed_seconds: (end - clock::parse(&session.started_at)?).num_seconds(),
        binding: budget::binding(&usage).copied(),
        checkpoints: store::checkpoints_of(conn, &session.id)?,
        slots: slots_usage(
            conn,
            &session.agent,
            &config.budget_of(&session.agent),
            &config.thresholds_of(&session.agent),
        )?,
        action: level.action(),
        level,
        usage,
        task,
        session,
    })
}

/// What [`wrap`] takes; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct WrapInput {
    /// The session's final token count.
    pub tokens: Option<u64>,
    /// The task's final progress.
    pub progress: Option<(u64, Option<u64>)>,
    /// What the next session should do (default: derived from the task's state).
    pub next: Option<String>,
}

/// How a wrap step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran.
    Done,
    /// It did not apply (no git repository, nothing to commit, ...).
    Skipped,
    /// It failed; the other steps still ran.
    Failed,
}

/// One wrap step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `progress`, `archive`, `grade`, `backup`, `handoff` or `commit`.
    pub step: &'static str,
    /// How it went.
    pub status: StepStatus,
    /// What it did, or why not.
    pub detail: String,
}

/// What [`wrap`] did.
#[derive(Debug, Clone, Serialize)]
pub struct WrapReport {
    /// The session, archived.
    pub session: SessionRow,
    /// Its task after the wrap.
    pub task: Option<TaskRow>,
    /// Budget usage at the wrap.
    pub usage: Vec<Usage>,
    /// The worst level at the wrap.
    pub level: Level,
    /// Seconds from start to wrap.
    pub duration_seconds: i64,
    /// The session's checkpoints.
    pub checkpoints: usize,
    /// Pairs first stored during the session.
    pub pairs_integrated: u64,
    /// The task's grade and report, when the wrap completed it.
    pub completed: Option<Completion>,
    /// Why the task needs review, when the wrap flagged it.
    pub needs_review: Option<String>,
    /// What the next session should do.
    pub next_action: String,
    /// Each step, in the order run.
    pub steps: Vec<Step>,
    /// The handoff document.
    pub handoff: Option<PathBuf>,
    /// The database backup.
    pub backup: Option<PathBuf>,
    /// The git commit.
    pub commit: Option<String>,
    /// The commit message (also when no commit was made).
    pub commit_message: String,
}

/// Wraps an active session. The database step runs first and in one transaction
/// (token count, task progress, review flag, the session archived with its level and
/// next action), so the backup and the handoff show the wrapped state; then the grade
/// (when the progress is full), the backup, the handoff and the commit, each reported
/// and none stopping the others.
pub fn wrap(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    session_id: &str,
    input: &WrapInput,
) -> Result<WrapReport> {
    let now = clock::now();
    let now_s = clock::format(now);
    let mut steps = Steps::default();

    // 1. The database: progress saved, review flag, session archived.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let s = get(&tx, session_id)?;
    let th = &config.thresholds_of(&s.agent);
    ensure!(
        s.is_active(),
        "session {} was already wrapped at {}",
        s.id,
        s.wrapped_at.as_deref().unwrap_or("?")
    );
    if let Some(t) = input.tokens {
        store::set_tokens(&tx, &s.id, t)?;
    }
    let mut task = match &s.task_id {
        Some(t) => store_tasks::get(&tx, t)?,
        None => None,
    };
    let open = |t: &TaskRow| matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress);
    if let (Some((done, total)), Some(t)) = (input.progress, &task)
        && open(t)
    {
        task = Some(tasks::set_progress(&tx, &t.id, done, total)?);
    }
    let s = get(&tx, session_id)?;
    let usage = usages(&s, api_calls_today(&tx, &s.agent, now)?, now, th);
    let level = budget::worst(&usage);
    // A standing duty takes one session: its wrap completes it, whatever its progress.
    let finishing = task.as_ref().is_some_and(|t| {
        open(t)
            && (t.kind == store_tasks::TaskKind::Duty
                || t.total.is_some_and(|n| n > 0 && t.done >= n))
    });
    let needs_review = match &task {
        Some(t) if open(t) && !finishing && level >= Level::HardStop => {
            let reason = format!(
                "session {} wrapped at the {} level ({}) with the task at {}",
                s.id,
                level.as_str(),
                usage
                    .iter()
                    .filter(|u| u.level >= Level::HardStop)
                    .map(|u| format!("{} {:.1}%", u.kind.label(), u.percent))
                    .collect::<Vec<_>>()
                    .join(", "),
                progress_text(t.done, t.total)
            );
            store_tasks::flag_review(&tx, &t.id, &reason)?;
            Some(reason)
        }
        _ => None,
    };
    let last_note = store::checkpoints_of(&tx, &s.id)?
        .into_iter()
        .rev()
        .find_map(|c| c.note);
    let provisional = input.next.clone().unwrap_or_else(|| {
        default_next_action(task.as_ref(), last_note.as_deref(), &s.agent, None)
    });
    store::mark_wrapped(&tx, &s.id, level, &provisional, &now_s)?;
    // Full progress completes and grades the task in the same transaction: nobody (the
    // loop choosing a task, a `session start`) ever sees the session archived with its
    // task finished but not completed.
    let graded = match &task {
        Some(t) if finishing => Some(tasks::complete_in(&tx, config, &t.id)),
        _ => None,
    };
    tx.commit()?;
    if let Some(t) = &task {
        steps.done(
            "progress",
            format!("{} at {}", t.id, progress_text(t.done, t.total)),
        );
    }
    steps.done(
        "archive",
        format!("session {} wrapped at the {} level", s.id, level.as_str()),
    );

    // 2. The completion report, when the progress was full.
    let mut completed = None;
    let mut next_action = provisional;
    if let (Some(graded), Some(t)) = (graded, &task) {
        match graded {
            Ok(grade) => {
                let report = tasks::write_report(conn, root, config, &t.id);
                let head = format!(
                    "{} completed, grade {} ({:.2})",
                    t.id, grade.letter, grade.score
                );
                match &report {
                    Ok(p) => steps.done("grade", format!("{head}; report {}", relative(root, p))),
                    Err(e) => steps.push(
                        "grade",
                        StepStatus::Failed,
                        format!("{head}; the report cannot be written: {e:#}"),
                    ),
                }
                completed = Some(Completion {
                    task: t.id.clone(),
                    grade,
                    report: report
                        .unwrap_or_else(|_| root.reports_dir().join(format!("{}.md", t.id))),
                });
            }
            Err(e) => steps.push("grade", StepStatus::Failed, format!("{e:#}")),
        }
        if completed.is_some() && input.next.is_none() {
            let next = tasks::next(conn, &s.agent)?.map(|v| v.task.id);
            let refreshed = store_tasks::get(conn, &t.id)?;
            next_action = default_next_action(
                refreshed.as_ref(),
                last_note.as_deref(),
                &s.agent,
                next.as_deref(),
            );
            store::set_next_action(conn, &s.id, &next_action)?;
        }
    }
    file_steps(
        conn,
        root,
        config,
        &s.id,
        steps,
        FileStepsInput {
            now,
            usage,
            level,
            completed,
            needs_review,
            next_action,
        },
    )
}

/// What the file steps of a wrap need from its database step.
struct FileStepsInput {
    now: DateTime<Utc>,
    usage: Vec<Usage>,
    level: Level,
    completed: Option<Completion>,
    needs_review: Option<String>,
    next_action: String,
}

/// Completes the wrap of a session that was archived but whose file steps never ran
/// (its `session wrap` was killed midway): the backup, the handoff and the commit,
/// from what the database recorded. A wrap whose steps were recorded is left alone.
pub fn finish_wrap(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    session_id: &str,
) -> Result<Option<WrapReport>> {
    let s = get(conn, session_id)?;
    if s.is_active() || s.wrap_steps.is_some() {
        return Ok(None);
    }
    let (usage, level) = level(conn, config, &s)?;
    let task = match &s.task_id {
        Some(t) => store_tasks::get(conn, t)?,
        None => None,
    };
    let mut steps = Steps::default();
    steps.done(
        "archive",
        format!(
            "session {} was archived at {} by a wrap that did not finish; its outputs follow",
            s.id,
            s.wrapped_at.as_deref().unwrap_or("?")
        ),
    );
    // The wrap completed the task when the task finished as the session was archived.
    let completed = match &task {
        Some(t)
            if t.status == TaskStatus::Completed
                && t.finished_at.is_some()
                && t.finished_at >= Some(s.started_at.clone())
                && t.grade.is_some() =>
        {
            let report = tasks::write_report(conn, root, config, &t.id);
            let grade = t.grade.clone().expect("checked");
            steps
                .outcome("grade", report, |p| {
                    format!("{} report {}", t.id, relative(root, p))
                })
                .map(|report| Completion {
                    task: t.id.clone(),
                    grade,
                    report,
                })
        }
        _ => None,
    };
    let input = FileStepsInput {
        now: clock::now(),
        usage,
        level,
        completed,
        needs_review: task.as_ref().and_then(|t| t.needs_review.clone()),
        next_action: s.next_action.clone().unwrap_or_default(),
    };
    file_steps(conn, root, config, &s.id, steps, input).map(Some)
}

/// A wrap's steps after its database step: the backup, the handoff and the commit, each
/// reported and none stopping the others; then what they produced is recorded.
fn file_steps(
    conn: &mut Connection,
    root: &Root,
    config: &Config,
    session_id: &str,
    mut steps: Steps,
    input: FileStepsInput,
) -> Result<WrapReport> {
    let FileStepsInput {
        now,
        usage,
        level,
        completed,
        needs_review,
        next_action,
    } = input;
    let th = &config.thresholds;
    let s = get(conn, session_id)?;
    let task = match &s.task_id {
        Some(t) => store_tasks::get(conn, t)?,
        None => None,
    };
    let session = s.clone();

    // 3. Backup: at most every wrap.backup_min_interval_secs, and always when the task
    // completed (a full copy at every wrap filled disks).
    let stamp = format!("{}_{}", now.format("%Y%m%d_%H%M%S"), s.id);
    let keep = config.wrap.backups_kept;
    let backup = match recent_backup_age(root, config.wrap.backup_min_interval_secs) {
        Some(age) if completed.is_none() => {
            steps.skipped(
                "backup",
                format!(
                    "the last backup is {age} s old (wrap.backup_min_interval_secs = {}); \
                     the next comes with a completed task or after the interval",
                    config.wrap.backup_min_interval_secs
                ),
            );
            None
        }
        _ => steps.outcome(
            "backup",
            crate::store::backup::backup_into(conn, &root.backups_dir(), &stamp, keep),
            |p| format!("{} (keeping the last {keep})", relative(root, p)),
        ),
    };

    // 4. Handoff.
    let checkpoints = store::checkpoints_of(conn, &s.id)?;
    let pairs_integrated = crate::store::ledger::pairs_of_session(conn, &s.id)?;
    let duration_seconds = (now - clock::parse(&s.started_at)?).num_seconds();
    let totals = crate::store::stats::stats(conn, config.goal, 0)?;
    let backup_rel = backup.as_ref().map(|p| relative(root, p));
    let text = handoff::render(&Handoff {
        session: &session,
        task: task.as_ref(),
        checkpoints: &checkpoints,
        usage: &usage,
        level,
        thresholds: th,
        duration_seconds,
        pairs_integrated,
        totals: &totals,
        backup: backup_rel.as_deref(),
        grade: completed.as_ref().map(|c| &c.grade),
        needs_review: needs_review.as_deref(),
        next_action: &next_action,
    });
    let handoff_path = root.handoffs_dir().join(format!("handoff_{}.md", s.id));
    let handoff = steps.outcome(
        "handoff",
        crate::root::write_document(&handoff_path, &text).map(|()| handoff_path),
        |p| relative(root, p),
    );

    // 5. Commit.
    let message = commit_message(&CommitFacts {
        session: &session,
        task: task.as_ref(),
        grade: completed.as_ref().map(|c| c.grade.letter.as_str()),
        usage: &usage,
        duration_seconds,
        checkpoints: checkpoints.len(),
    });
    let commit = if !config.wrap.git_commit {
        steps.skipped("commit", "wrap.git_commit = false in perpetual.toml".into());
        None
    } else if crate::work::vcs::repository(root.dir()).is_none() {
        steps.skipped(
            "commit",
            format!("{} is not inside a git repository", root.dir().display()),
        );
        None
    } else {
        let mut paths = vec![
            PathBuf::from("task_reports"),
            PathBuf::from("outbox").join(&s.agent),
            // The daily reports the loop wrote since the last wrap.
            PathBuf::from("reports"),
            PathBuf::from("performance_metrics"),
        ];
        if let Some(h) = &handoff {
            paths.insert(0, PathBuf::from(relative(root, h)));
        }
        // Outputs of earlier wraps whose commit failed are retried with this one.
        let pending = store::commit_pending(conn)?;
        for p in pending.iter().filter(|p| p.id != s.id) {
            if let Some(h) = &p.handoff_path {
                paths.push(PathBuf::from(h));
            }
            paths.push(PathBuf::from("outbox").join(&p.agent));
        }
        paths.sort();
        paths.dedup();
        let retried: Vec<&str> = pending
            .iter()
            .filter(|p| p.id != s.id)
            .map(|p| p.id.as_str())
            .collect();
        let sweep = [
            PathBuf::from("session_handoffs"),
            PathBuf::from("task_reports"),
            PathBuf::from("outbox"),
        ];
        match crate::work::vcs::commit(root.dir(), &paths, &sweep, &message) {
            Ok(None) => {
                store::clear_commit_pending(conn, &retried, None)?;
                steps.skipped("commit", "nothing changed in the outputs".into());
                None
            }
            Ok(Some(id)) => {
                store::clear_commit_pending(conn, &retried, Some(&id))?;
                let also = if retried.is_empty() {
                    String::new()
                } else {
                    format!(" (with the outputs of {})", retried.join(", "))
                };
                steps.done("commit", format!("{id}{also}"));
                Some(id)
            }
            Err(e) => {
                store::set_commit_pending(conn, &s.id)?;
                steps.push(
                    "commit",
                    StepStatus::Failed,
                    format!("{e:#}; the next wrap commits these outputs"),
                );
                None
            }
        }
    };

    let handoff_rel = handoff.as_ref().map(|p| relative(root, p));
    store::record_wrap_outputs(
        conn,
        &s.id,
        handoff_rel.as_deref(),
        backup_rel.as_deref(),
        commit.as_deref(),
        &serde_json::to_value(&steps.0)?,
    )?;
    Ok(WrapReport {
        session: get(conn, &s.id)?,
        task,
        usage,
        level,
        duration_seconds,
        checkpoints: checkpoints.len(),
        pairs_integrated,
        completed,
        needs_review,
        next_action,
        steps: steps.0,
        handoff,
        backup,
        commit,
        commit_message: message,
    })
}

/// Archives an active session whose command never ran (it could not be started):
/// wrapped with `reason` as its next action, and nothing else: no backup, no handoff, no
/// commit, since nothing happened to hand off.
pub fn abandon(conn: &mut Connection, session_id: &str, reason: &str) -> Result<()> {
    let now = clock::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let s = get(&tx, session_id)?;
    ensure!(s.is_active(), "session {} is already wrapped", s.id);
    let usage = usages(
        &s,
        api_calls_today(&tx, &s.agent, now)?,
        now,
        &Thresholds::default(),
    );
    store::mark_wrapped(
        &tx,
        &s.id,
        budget::worst(&usage),
        reason,
        &clock::format(now),
    )?;
    let steps = Steps(vec![Step {
        step: "archive",
        status: StepStatus::Done,
        detail: format!("session {} archived without running: {reason}", s.id),
    }]);
    store::record_wrap_outputs(
        &tx,
        &s.id,
        None,
        None,
        None,
        &serde_json::to_value(&steps.0)?,
    )?;
    tx.commit()?;
    Ok(())
}

/// Writes `session_handoffs/handoff_<session>_interim.md` for an active session: the
/// handoff as it would read if the session wrapped now, without wrapping it. The
/// Claude Code hooks write one before a compaction, so what the summary loses is on disk.
pub fn interim_handoff(
    conn: &Connection,
    root: &Root,
    config: &Config,
    session_id: &str,
) -> Result<PathBuf> {
    let now = clock::now();
    let s = get(conn, session_id)?;
    let task = match &s.task_id {
        Some(t) => store_tasks::get(conn, t)?,
        None => None,
    };
    let checkpoints = store::checkpoints_of(conn, &s.id)?;
    let (usage, level) = self::level(conn, config, &s)?;
    let last_note = checkpoints.iter().rev().find_map(|c| c.note.clone());
    let next_action = default_next_action(task.as_ref(), last_note.as_deref(), &s.agent, None);
    let totals = crate::store::stats::stats(conn, config.goal, 0)?;
    let text = handoff::render(&Handoff {
        session: &s,
        task: task.as_ref(),
        checkpoints: &checkpoints,
        usage: &usage,
        level,
        thresholds: &config.thresholds_of(&s.agent),
        duration_seconds: (now - clock::parse(&s.started_at)?).num_seconds(),
        pairs_integrated: crate::store::ledger::pairs_of_session(conn, &s.id)?,
        totals: &totals,
        backup: None,
        grade: None,
        needs_review: task.as_ref().and_then(|t| t.needs_review.as_deref()),
        next_action: &next_action,
    });
    let path = root
        .handoffs_dir()
        .join(format!("handoff_{}_interim.md", s.id));
    crate::root::write_document(&path, &text)?;
    Ok(path)
}

/// The age in seconds of the newest backup in `backups/` when it is younger than
/// `min_interval` seconds (None: a backup is due).
fn recent_backup_age(root: &Root, min_interval: u64) -> Option<u64> {
    if min_interval == 0 {
        return None;
    }
    let newest = crate::store::backup::list(&root.backups_dir())
        .ok()?
        .pop()?;
    let age = newest
        .metadata()
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?
        .as_secs();
    (age < min_interval).then_some(age)
}

/// The wrap's steps as they run.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    fn push(&mut self, step: &'static str, status: StepStatus, detail: String) {
        self.0.push(Step {
            step,
            status,
            detail,
        });
    }

    fn done(&mut self, step: &'static str, detail: String) {
        self.push(step, StepStatus::Done, detail);
    }

    fn skipped(&mut self, step: &'static str, detail: String) {
        self.push(step, StepStatus::Skipped, detail);
    }

    /// Records how a step went, keeping its value when it ran; a failure is recorded
    /// with its whole error chain and does not stop the wrap.
    fn outcome<T>(
        &mut self,
        step: &'static str,
        result: Result<T>,
        detail: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match result {
            Ok(v) => {
                self.done(step, detail(&v));
                Some(v)
            }
            Err(e) => {
                self.push(step, StepStatus::Failed, format!("{e:#}"));
                None
            }
        }
    }
}

/// What the next session should do when the wrap was not told.
fn default_next_action(
    task: Option<&TaskRow>,
    last_note: Option<&str>,
    agent: &str,
    next_task: Option<&str>,
) -> String {
    let take_next = match next_task {
        Some(n) => format!("start the next task ({n}): `perpetual session start --agent {agent}`"),
        None => format!("take the next task: `perpetual session start --agent {agent}`"),
    };
    match task {
        None => format!("The session's task was removed; {take_next}"),
        Some(t) => match t.status {
            TaskStatus::Completed => format!("Task {} is complete; {take_next}", t.id),
            TaskStatus::Failed => format!(
                "Task {} failed ({}): `perpetual task retry {}` queues it again, or {take_next}",
                t.id,
                t.fail_reason.as_deref().unwrap_or("no reason"),
                t.id
            ),
            TaskStatus::Pending | TaskStatus::InProgress => {
                let mut s = format!("Continue {} from {}", t.id, progress_text(t.done, t.total));
                if let Some(n) = last_note {
                    s.push_str(&format!(" (last checkpoint: {n})"));
                }
                s
            }
        },
    }
}

/// The facts the wrap commit message states.
#[derive(Debug, Clone)]
pub struct CommitFacts<'a> {
    /// The session (wrapped).
    pub session: &'a SessionRow,
    /// Its task.
    pub task: Option<&'a TaskRow>,
    /// The grade letter, when the wrap completed the task.
    pub grade: Option<&'a str>,
    /// Budget usage at the wrap.
    pub usage: &'a [Usage],
    /// Seconds from start to wrap.
    pub duration_seconds: i64,
    /// Checkpoints recorded.
    pub checkpoints: usize,
}

/// The seeds' wrap commit message:
///
/// ```text
/// Session Wrap: integrate_sessions_101_140
///
/// Token usage: 71.5% of budget
/// Duration: 6 minutes
///
/// Progress: 10/40
/// Checkpoints: 2
///
/// Session: session_20251106_001355
/// Started: 2025-11-06T00:13:55Z
/// ```
///
/// When the wrap completed the task the subject is `Task Complete: <task> (Grade A)`.
pub fn commit_message(f: &CommitFacts<'_>) -> String {
    let task = f.task.map_or("(no task)", |t| t.id.as_str());
    let subject = match f.grade {
        Some(g) => format!("Task Complete: {task} (Grade {g})"),
        None => format!("Session Wrap: {task}"),
    };
    let tokens = match f.usage.iter().find(|u| u.kind == Kind::Tokens) {
        Some(u) => format!("Token usage: {:.1}% of budget", u.percent),
        None => format!(
            "Token usage: {} tokens (no token budget)",
            crate::human::thousands(f.session.tokens_used)
        ),
    };
    let mut m = format!("{subject}\n\n{tokens}\n");
    for u in f.usage.iter().filter(|u| u.kind != Kind::Tokens) {
        m.push_str(&format!(
            "{}: {}/{} ({:.1}%)\n",
            match u.kind {
                Kind::ApiCalls => "API calls today",
                Kind::WallTime => "Wall time (seconds)",
                Kind::Slots => "Slots",
                Kind::Tokens => "Tokens",
            },
            u.used,
            u.limit,
            u.percent
        ));
    }
    m.push_str(&format!(
        "Duration: {}\n\n",
        clock::human_duration(f.duration_seconds)
    ));
    let progress = f.task.map_or("-".to_string(), |t| match t.total {
        Some(n) => format!("{}/{}", t.done, n),
        None => t.done.to_string(),
    });
    m.push_str(&format!(
        "Progress: {progress}\nCheckpoints: {}\n\n",
        f.checkpoints
    ));
    m.push_str(&format!(
        "Session: {}\nStarted: {}\n",
        f.session.id, f.session.started_at
    ));
    m
}

fn relative(root: &Root, p: &Path) -> String {
    p.strip_prefix(root.dir())
        .unwrap_or(p)
        .display()
        .to_string()
}

impl crate::store::sessions::CheckpointRow {
    /// One line for people (`session status`, `task show`, the agent's prompt):
    /// `2025-11-06T00:18:40Z in session_20251106_001355: 10/40 (25.0%), "note"`.
    pub fn summary(&self) -> String {
        format!(
            "{} in {}: {}{}",
            self.at,
            self.session_id,
            self.done
                .map_or("-".to_string(), |d| crate::human::progress_text(
                    d, self.total
                )),
            self.note
                .as_deref()
                .map(|n| format!(", {n:?}"))
                .unwrap_or_default()
        )
    }
}

/// Whether the session's task advanced: completed, or its progress is past where the
/// session found it (the circuit breaker's test of a session).
pub fn progressed(conn: &Connection, s: &SessionRow) -> Result<bool> {
    let Some(id) = &s.task_id else {
        return Ok(false);
    };
    Ok(crate::store::tasks::get(conn, id)?.is_some_and(|t| {
        t.status == crate::store::tasks::TaskStatus::Completed || t.done > s.done_at_start
    }))
}
