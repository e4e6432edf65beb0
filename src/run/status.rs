//! The faucet view (`perpetual status`): every agent's session, task, budget, queue depth,
//! idle time and pause state, and the pipeline's pairs against the goal, pairs per hour,
//! files waiting and bottlenecks (the seeds' "monitor the perpetual faucet": queue depth
//! healthy at `assign.min_ready` or more, idle time, bottlenecks, integration velocity).

use crate::budget::{self, Kind, Level, Usage};
use crate::clock;
use crate::config::Config;
use crate::root::Root;
use crate::store::agents::{self as store_agents, AssignEntry, Pause};
use crate::store::sessions as store_sessions;
use crate::store::tasks::TaskKind;
use crate::work::session;
use crate::work::tasks::{self, State, TaskView};
use anyhow::Result;
use chrono::Duration;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The whole view.
#[derive(Debug, Clone, Serialize)]
pub struct Faucet {
    /// When it was taken.
    pub at: String,
    /// The perpetual loop on this root: whether it runs, and its live sessions.
    #[serde(rename = "loop")]
    pub loop_: LoopView,
    /// One entry per agent (configured or with an inbox folder), sorted.
    pub agents: Vec<AgentStatus>,
    /// The pipeline as a whole.
    pub pipeline: Pipeline,
    /// The assigner's latest actions, newest first.
    pub assigner: Vec<AssignEntry>,
    /// Today's figures so far (the daily report's, `crate::run::report`).
    pub today: crate::run::report::Daily,
}

/// `perpetual run` as the process table and its heartbeat show it.
#[derive(Debug, Clone, Serialize)]
pub struct LoopView {
    /// A loop runs now: its recorded process (pid and start time) is alive.
    pub running: bool,
    /// Its process id (the running loop's, else the last one's).
    pub pid: Option<i32>,
    /// When it started.
    pub since: Option<String>,
    /// Its last heartbeat (every round and every wake).
    pub heartbeat_at: Option<String>,
    /// When it stopped cleanly (None while it runs or when it was killed).
    pub stopped_at: Option<String>,
    /// Rounds run, and how many of them started nothing.
    pub rounds: u64,
    /// Rounds that started nothing.
    pub idle_rounds: u64,
    /// CPU time of its last idle round, microseconds.
    pub idle_round_us: Option<u64>,
    /// Free space on the root's filesystem, MiB.
    pub free_disk_mb: Option<u64>,
    /// Why sessions are refused for disk space (free space under `run.min_free_disk_mb`).
    pub disk_low: Option<String>,
    /// Sessions whose command a loop started and that have not ended, one per line.
    pub sessions: Vec<LiveSession>,
}

/// A session a loop started that has not ended.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSession {
    /// The agent.
    pub agent: String,
    /// The session.
    pub session: String,
    /// Its task.
    pub task: Option<String>,
    /// Its command's process id.
    pub pid: Option<u32>,
    /// That process is alive (checked with its start time).
    pub alive: bool,
    /// When it started.
    pub started_at: String,
    /// A later loop took it over from one that died.
    pub adopted: bool,
    /// Its budget now (tokens, API calls today, wall time).
    pub budget: Vec<Usage>,
    /// The worst level.
    pub level: Level,
}

/// One agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// The agent.
    pub agent: String,
    /// Whether `perpetual run` can start its sessions (it has a `command`).
    pub command: bool,
    /// Paused by the circuit breaker (or by hand), and why.
    pub paused: Option<Pause>,
    /// Its active sessions, oldest first.
    pub sessions: Vec<ActiveSession>,
    /// The task it works on (its first active session's), else the one it takes next.
    pub task: Option<TaskLine>,
    /// Budget usage: its first active session's (tokens, API calls today, minutes), else
    /// today's API calls; then its slots.
    pub budget: Vec<Usage>,
    /// The worst level of `budget`.
    pub level: Level,
    /// The kind that sets it (`budget::binding`).
    pub binding: Option<Usage>,
    /// When a new session would be refused now (API calls today or slots at the wrap
    /// threshold), which budget and when it frees up.
    pub over_budget: Option<OverBudget>,
    /// Ready tasks in its queue (standing duties not counted).
    pub queue_depth: u64,
    /// `queue_depth` ≥ `assign.min_ready`, or an agent on standing duty with nothing
    /// else to do (its duties never make it "run dry").
    pub queue_healthy: bool,
    /// Standing duties ready now.
    pub duties_ready: u64,
    /// Its recurring duties, when it has some: when the next one comes due.
    pub next_duty_due: Option<String>,
    /// Pending tasks waiting for a dependency.
    pub waiting: u64,
    /// Pending tasks blocked by a failed dependency.
    pub blocked: u64,
    /// Seconds since its last activity while no session is active (0 while one is).
    pub idle_seconds: Option<i64>,
    /// Its last session start, checkpoint or wrap, or the end of its last loop run.
    pub last_activity: Option<String>,
    /// Its tasks flagged "needs review", with why.
    pub needs_review: Vec<Review>,
}

/// An active session.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveSession {
    /// Session id.
    pub id: String,
    /// Its task.
    pub task: Option<String>,
    /// Start.
    pub started_at: String,
    /// Tokens as last reported.
    pub tokens_used: u64,
}

/// A task in one line.
#[derive(Debug, Clone, Serialize)]
pub struct TaskLine {
    /// Task id.
    pub id: String,
    /// Who runs it.
    pub kind: TaskKind,
    /// Where it stands.
    pub state: State,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: Option<u64>,
    /// done / total in percent.
    pub percent: Option<f64>,
}

/// A budget that refuses new sessions now.
#[derive(Debug, Clone, Serialize)]
pub struct OverBudget {
    /// The budget.
    pub usage: Usage,
    /// When it frees up (API calls: the next 00:00 UTC).
    pub resets_at: Option<String>,
}

/// A task flagged for review.
#[derive(Debug, Clone, Serialize)]
pub struct Review {
    /// Task id.
    pub task: String,
    /// Why.
    pub reason: String,
}

/// The pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// Distinct pairs stored.
    pub pairs: u64,
    /// The goal.
    pub goal: u64,
    /// pairs / goal in percent.
    pub goal_percent: f64,
    /// Pairs first stored during the last 24 hours.
    pub pairs_last_24h: u64,
    /// `pairs_last_24h` / 24.
    pub pairs_per_hour: f64,
    /// Files waiting in the inboxes.
    pub files_waiting: u64,
    /// The same, by agent (agents with files only).
    pub files_waiting_by_agent: BTreeMap<String, u64>,
    /// Tasks held up by another agent's task.
    pub bottlenecks: Vec<Bottleneck>,
}

/// A task of one agent that waits for (or is blocked by) a task of another.
#[derive(Debug, Clone, Serialize)]
pub struct Bottleneck {
    /// The task held up.
    pub task: String,
    /// Its agent.
    pub agent: String,
    /// The other agent's task it needs.
    pub needs: String,
    /// That task's agent.
    pub needs_agent: String,
    /// That task's state.
    pub needs_state: State,
}

/// Takes the view.
pub fn faucet(conn: &Connection, root: &Root, config: &Config) -> Result<Faucet> {
    let now = clock::now();
    let views = tasks::open_views(conn)?;
    let by_id: HashMap<&str, &TaskView> = views.iter().map(|v| (v.task.id.as_str(), v)).collect();
    let names = tasks::all_agents(conn, root, config)?;
    let waiting_files = crate::engine::ingest::discover_inbox(&root.inbox(), &names)?;
    let mut files_waiting_by_agent: BTreeMap<String, u64> = BTreeMap::new();
    for j in &waiting_files {
        *files_waiting_by_agent.entry(j.agent.clone()).or_default() += 1;
    }

    let templates = tasks::templates(conn)?;
    // Tasks active sessions work on (of any agent).
    let held: HashSet<String> = store_sessions::active(conn, None)?
        .into_iter()
        .filter_map(|s| s.task_id)
        .collect();
    let mut agents = Vec::new();
    for agent in &names {
        let th = &config.thresholds_of(agent);
        let budget_cfg = config.budget_of(agent);
        let active = store_sessions::active(conn, Some(agent))?;
        let calls = session::api_calls_today(conn, agent, now)?;
        let slots = Usage::new(Kind::Slots, active.len() as u64, budget_cfg.slots, th);
        let mut budget = match active.first() {
            Some(s) => session::level(conn, config, s)?.0,
            None => Usage::new(Kind::ApiCalls, calls, budget_cfg.api_calls_per_day, th)
                .into_iter()
                .collect(),
        };
        let over_budget = Usage::new(Kind::ApiCalls, calls, budget_cfg.api_calls_per_day, th)
            .filter(|u| u.level.must_wrap())
            .map(|usage| OverBudget {
                usage,
                resets_at: Some(clock::format(session::next_midnight(now))),
            })
            .or_else(|| {
                slots
                    .filter(|u| u.level.must_wrap())
                    .map(|usage| OverBudget {
                        usage,
                        resets_at: None,
                    })
            });
        budget.extend(slots);
        let mine: Vec<&TaskView> = views.iter().filter(|v| &v.task.agent == agent).collect();
        let count = |st: State| {
            mine.iter()
                .filter(|v| v.state == st && v.task.kind != TaskKind::Duty)
                .count() as u64
        };
        let queue_depth = count(State::Ready);
        let duties_ready = mine
            .iter()
            .filter(|v| v.state == State::Ready && v.task.kind == TaskKind::Duty)
            .count() as u64;
        let my_templates: Vec<&tasks::TemplateView> = templates
            .iter()
            .filter(|t| &t.template.agent == agent)
            .collect();
        let duty_templates: Vec<&&tasks::TemplateView> = my_templates
            .iter()
            .filter(|t| t.template.kind == TaskKind::Duty && t.template.every.is_some())
            .collect();
        let next_duty_due = duty_templates
            .iter()
            .filter_map(|t| t.next_due.clone())
            .min();
        let only_duties = !duty_templates.is_empty()
            && my_templates.len() == duty_templates.len()
            && mine.iter().all(|v| {
                v.task.kind == TaskKind::Duty || matches!(v.state, State::Completed | State::Failed)
            });
        let task = active
            .first()
            .and_then(|s| s.task_id.as_deref())
            .and_then(|t| by_id.get(t).copied())
            .or_else(|| {
                mine.iter()
                    .find(|v| v.state == State::InProgress && !held.contains(&v.task.id))
                    .or_else(|| mine.iter().find(|v| v.state == State::Ready))
                    .copied()
            })
            .map(|v| TaskLine {
                id: v.task.id.clone(),
                kind: v.task.kind,
                state: v.state,
                done: v.task.done,
                total: v.task.total,
                percent: v.percent,
            });
        let last_activity = store_agents::last_activity(conn, agent)?;
        let idle_seconds = if active.is_empty() {
            last_activity
                .as_deref()
                .and_then(|t| clock::parse(t).ok())
                .map(|t| (now - t).num_seconds().max(0))
        } else {
            Some(0)
        };
        agents.push(AgentStatus {
            agent: agent.clone(),
            command: config
                .agents
                .get(agent)
                .is_some_and(|a| a.command.is_some()),
            paused: store_agents::pause_of(conn, agent)?,
            sessions: active
                .iter()
                .map(|s| ActiveSession {
                    id: s.id.clone(),
                    task: s.task_id.clone(),
                    started_at: s.started_at.clone(),
                    tokens_used: s.tokens_used,
                })
                .collect(),
            task,
            level: budget::worst(&budget),
            binding: budget::binding(&budget).copied(),
            budget,
            over_budget,
            queue_depth,
            queue_healthy: queue_depth >= config.assign.min_ready || only_duties,
            duties_ready,
            next_duty_due,
            waiting: count(State::Waiting),
            blocked: count(State::Blocked),
            idle_seconds,
            last_activity,
            needs_review: mine
                .iter()
                .filter(|v| !matches!(v.state, State::Completed))
                .filter_map(|v| {
                    v.task.needs_review.as_ref().map(|r| Review {
                        task: v.task.id.clone(),
                        reason: r.clone(),
                    })
                })
                .collect(),
        });
    }

    let mut bottlenecks = Vec::new();
    for v in views
        .iter()
        .filter(|v| matches!(v.state, State::Waiting | State::Blocked))
    {
        for d in &v.waiting_on {
            if let Some(dep) = by_id.get(d.as_str())
                && dep.task.agent != v.task.agent
            {
                bottlenecks.push(Bottleneck {
                    task: v.task.id.clone(),
                    agent: v.task.agent.clone(),
                    needs: dep.task.id.clone(),
                    needs_agent: dep.task.agent.clone(),
                    needs_state: dep.state,
                });
            }
        }
    }

    // Only the count: `stats` would also group every pair by agent and category, which
    // this view does not show (and the web faucet asks for it many times a second).
    let pairs = crate::store::pairs::count(conn)?;
    let pairs_last_24h = crate::store::pairs::count_created_between(
        conn,
        &clock::format(now - Duration::hours(24)),
        &clock::format(now),
    )?;
    Ok(Faucet {
        at: clock::format(now),
        loop_: loop_view(conn, root, config)?,
        agents,
        pipeline: Pipeline {
            pairs,
            goal: config.goal,
            goal_percent: budget::percent(pairs, config.goal),
            pairs_last_24h,
            pairs_per_hour: pairs_last_24h as f64 / 24.0,
            files_waiting: waiting_files.len() as u64,
            files_waiting_by_agent,
            bottlenecks,
        },
        assigner: store_agents::assign_log(conn, 8)?,
        today: crate::run::report::daily(conn, root, config, now.date_naive())?,
    })
}

/// The loop's row, checked against the process table, and its live sessions.
fn loop_view(conn: &Connection, root: &Root, config: &Config) -> Result<LoopView> {
    let state = store_agents::loop_state(conn)?;
    let running = state.as_ref().is_some_and(|l| {
        l.stopped_at.is_none()
            && l.proc_start
                .is_some_and(|start| crate::run::procs::alive(l.pid, start))
    });
    let free = crate::run::runloop::free_disk_mb(root.dir());
    let floor = config.run.min_free_disk_mb;
    let disk_low = free
        .filter(|f| *f < floor)
        .map(|f| format!("{f} MiB free, below run.min_free_disk_mb = {floor}: no session starts"));
    let mut sessions = Vec::new();
    for r in store_agents::unfinished_runs(conn)? {
        let Some(id) = &r.session_id else { continue };
        let Some(row) = store_sessions::get(conn, id)? else {
            continue;
        };
        let (budget, level) = session::level(conn, config, &row)?;
        sessions.push(LiveSession {
            agent: r.agent.clone(),
            session: id.clone(),
            task: r.task_id.clone(),
            pid: r.pid,
            alive: match (r.pid, r.proc_start) {
                (Some(p), Some(s)) => crate::run::procs::alive(p as i32, s),
                _ => false,
            },
            started_at: r.started_at.clone(),
            adopted: r.adopted_at.is_some(),
            budget,
            level,
        });
    }
    Ok(LoopView {
        running,
        pid: state.as_ref().map(|l| l.pid),
        since: state.as_ref().map(|l| l.started_at.clone()),
        heartbeat_at: state.as_ref().map(|l| l.heartbeat_at.clone()),
        stopped_at: state.as_ref().and_then(|l| l.stopped_at.clone()),
        rounds: state.as_ref().map_or(0, |l| l.rounds),
        idle_rounds: state.as_ref().map_or(0, |l| l.idle_rounds),
        idle_round_us: state.as_ref().and_then(|l| l.idle_round_us),
        free_disk_mb: free,
        disk_low,
        sessions,
    })
}
