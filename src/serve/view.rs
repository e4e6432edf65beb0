//! What the pages show, read from the database and shaped for the
//! templates: numbers already written as people read them, levels as a class (colour)
//! and a word with a symbol (so they read without colour). The templates only lay it
//! out; askama escapes every string they print.

use crate::budget::{Level, Usage};
use crate::clock;
use crate::config::Config;
use crate::human::{progress_text, thousands};
use crate::root::Root;
use crate::run::status::{self, Faucet};
use crate::store::ledger::{self, FileRow, ListFilter};
use crate::store::sessions::{self as store_sessions, SessionRow};
use crate::work::session;
use crate::work::tasks::{self, State, TaskView};
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;
use std::collections::BTreeMap;

/// How many ledger rows the faucet lists under "The last files".
pub const LAST_FILES: usize = 12;
/// How many ready tasks an agent's card lists.
pub const NEXT_TASKS: usize = 3;

/// The CSS class of a level (the colour).
pub fn level_class(level: Level) -> &'static str {
    level.as_str()
}

/// A level in words with a symbol, for readers who cannot tell the colours apart.
pub fn level_text(level: Level) -> &'static str {
    match level {
        Level::Healthy => "✓ healthy",
        Level::Warning => "⚠ warning",
        Level::Wrap => "⚑ wrap now",
        Level::HardStop => "✖ hard stop",
        Level::Critical => "‼ critical",
    }
}

/// One bar: a budget against its limit, or a task's progress.
#[derive(Debug, Clone)]
pub struct Bar {
    /// What it measures (`tokens`, `API calls today`, `progress`).
    pub label: String,
    /// `150,000 / 200,000`.
    pub amount: String,
    /// `75.0%`.
    pub percent: String,
    /// 0..=100, for the `<progress>` element.
    pub value: f64,
    /// CSS class: a level, or `progress`.
    pub class: &'static str,
    /// The level in words, empty for progress.
    pub level: &'static str,
}

impl Bar {
    /// A budget bar.
    pub fn usage(u: &Usage) -> Bar {
        Bar {
            label: u.kind.label().to_string(),
            amount: format!("{} / {}", thousands(u.used), thousands(u.limit)),
            percent: format!("{:.1}%", u.percent),
            value: u.percent.clamp(0.0, 100.0),
            class: level_class(u.level),
            level: level_text(u.level),
        }
    }

    /// A progress bar (`done` of `total`), None without a total.
    pub fn progress(label: &str, done: u64, total: Option<u64>) -> Option<Bar> {
        let total = total.filter(|t| *t > 0)?;
        let percent = done as f64 * 100.0 / total as f64;
        Some(Bar {
            label: label.to_string(),
            amount: format!("{} / {}", thousands(done), thousands(total)),
            percent: format!("{percent:.1}%"),
            value: percent.clamp(0.0, 100.0),
            class: "progress",
            level: "",
        })
    }
}

/// The process that holds the root's writer lock: the loop (`run`) or the watcher.
#[derive(Debug, Clone)]
pub struct WriterProcess {
    /// Its process id.
    pub pid: u32,
    /// `run`, `watch`, `ingest`, `backfill`.
    pub command: String,
    /// When it took the lock.
    pub since: String,
}

/// Who writes to the root now, from the lock file `perpetual.lock` (the holder writes
/// its pid, command and start there), checked against the process table so a stale file
/// is not taken for a running loop.
pub fn writer_process(root: &Root) -> Option<WriterProcess> {
    let text = std::fs::read_to_string(root.lock_path()).ok()?;
    // pid 4242 (`perpetual run`, since 2026-01-01T00:00:00Z)
    let rest = text.trim().strip_prefix("pid ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    let command = rest
        .split('`')
        .nth(1)?
        .trim_start_matches("perpetual ")
        .to_string();
    let since = rest
        .split("since ")
        .nth(1)?
        .trim_end_matches(')')
        .to_string();
    process_alive(pid).then_some(WriterProcess {
        pid,
        command,
        since,
    })
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists under another user.
    let exists = unsafe { libc::kill(pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A recycled pid: on Linux, make sure it is still a perpetual process.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("perpetual"),
        Err(_) => true,
    }
}

/// Everything `/` shows, taken at one moment.
#[derive(Debug, Clone)]
pub struct FaucetPage {
    /// `perpetual status`'s view, as `/api/status` serves it.
    pub status: Faucet,
    /// When, for people: `2026-01-01 12:00:03 UTC`.
    pub at: String,
    /// The pipeline at a glance.
    pub overview: Overview,
    /// One card per agent.
    pub agents: Vec<AgentCard>,
    /// Tasks waiting for another agent's task (what `status` names).
    pub bottlenecks: Vec<BottleneckLine>,
    /// The newest ledger rows.
    pub files: Vec<FileLine>,
    /// The live growth chart (SVG markup made by `charts::growth_svg`).
    pub growth_svg: String,
    /// The workbench's charts, when it made some.
    pub charts: Vec<ChartLink>,
}

/// The overview panel.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Distinct pairs.
    pub pairs: String,
    /// Against the goal.
    pub goal_bar: Bar,
    /// Pairs first stored during the last hour.
    pub last_hour: String,
    /// Pairs per hour over the last 24 hours.
    pub per_hour_24h: String,
    /// Pairs first stored during the last 24 hours.
    pub last_24h: String,
    /// Files waiting in the inboxes, with the agents that have some.
    pub files_waiting: String,
    /// The loop or watcher that writes, if one runs.
    pub writer: Option<WriterLine>,
    /// The assigner's latest action, in words.
    pub assigner: Option<String>,
}

/// The writer process, in words.
#[derive(Debug, Clone)]
pub struct WriterLine {
    /// `loop running` or `watcher running`.
    pub what: String,
    /// `` `perpetual run`, pid 4242, since 2026-01-01 00:00:00, last round 2026-01-01
    /// 00:05:00 (less than a minute ago) ``: the loop's heartbeat, from `loop_heartbeats`.
    pub detail: String,
}

/// One agent's card.
#[derive(Debug, Clone)]
pub struct AgentCard {
    /// The agent.
    pub name: String,
    /// CSS class of its state: `working`, `idle`, `paused`, `review`.
    pub state_class: &'static str,
    /// Its state in words, with a symbol.
    pub state: String,
    /// Why it is paused, and since when.
    pub paused: Option<String>,
    /// Its tasks flagged for review: (task, reason).
    pub reviews: Vec<(String, String)>,
    /// Its live sessions.
    pub sessions: Vec<SessionCard>,
    /// Budget bars while no session runs (API calls today, slots).
    pub bars: Vec<Bar>,
    /// Why a new session would be refused now.
    pub refused: Option<String>,
    /// The task it works on or takes next.
    pub task: Option<String>,
    /// Ready tasks, `healthy` or `LOW`.
    pub queue: String,
    /// `healthy` or `low`.
    pub queue_class: &'static str,
    /// Waiting and blocked tasks.
    pub queue_rest: String,
    /// Its next ready tasks: (id, description).
    pub next_tasks: Vec<(String, String)>,
    /// `idle 5 minutes`, `working`, `never active`.
    pub idle: String,
    /// Files waiting in its inbox.
    pub waiting_files: u64,
}

/// A live session on a card (or the session page).
#[derive(Debug, Clone)]
pub struct SessionCard {
    /// Session id (links to `/sessions/<id>`).
    pub id: String,
    /// Its task.
    pub task: String,
    /// Since when.
    pub since: String,
    /// Its task's progress.
    pub progress: Option<Bar>,
    /// Its budget bars (tokens, API calls today, minutes).
    pub bars: Vec<Bar>,
}

/// A bottleneck in words.
#[derive(Debug, Clone)]
pub struct BottleneckLine {
    /// The task held up and its agent.
    pub task: String,
    /// Its agent.
    pub agent: String,
    /// What it needs.
    pub needs: String,
    /// Whose task that is.
    pub needs_agent: String,
    /// Where that stands.
    pub needs_state: &'static str,
}

/// One ledger row.
#[derive(Debug, Clone)]
pub struct FileLine {
    /// Ledger id.
    pub id: i64,
    /// When it reached its status (or began).
    pub at: String,
    /// Whose drop.
    pub agent: String,
    /// The file name, as dropped.
    pub name: String,
    /// CSS class: the status word.
    pub status_class: String,
    /// The status with a symbol.
    pub status: String,
    /// New pairs.
    pub new: String,
    /// Duplicate pairs.
    pub duplicate: String,
    /// Invalid pairs.
    pub invalid: String,
    /// Why rejected, what it duplicates, or a note.
    pub reason: String,
    /// Encoding and layout.
    pub format: String,
    /// Seconds it took.
    pub seconds: String,
    /// Each invalid pair: `#index: reason`.
    pub invalid_pairs: Vec<String>,
}

impl FileLine {
    /// Shapes a ledger row.
    pub fn new(r: &FileRow) -> FileLine {
        let status = r.status.as_str();
        FileLine {
            id: r.id,
            at: short_time(r.finished_at.as_deref().unwrap_or(&r.started_at)),
            agent: r.agent.clone(),
            name: r.name.clone(),
            status_class: status.to_string(),
            status: status_text(status),
            new: thousands(r.pairs_new.max(0) as u64),
            duplicate: thousands(r.pairs_duplicate.max(0) as u64),
            invalid: thousands(r.pairs_invalid.max(0) as u64),
            reason: r.reason.clone().unwrap_or_default(),
            format: [r.encoding.as_deref(), r.layout.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
            seconds: r.seconds.map(|s| format!("{s:.3} s")).unwrap_or_default(),
            invalid_pairs: r
                .invalid
                .iter()
                .map(|i| format!("#{}: {}", i.index, i.reason))
                .collect(),
        }
    }
}

/// A file status with a symbol.
pub fn status_text(status: &str) -> String {
    let symbol = match status {
        "integrated" => "✓",
        "duplicate" => "=",
        "rejected" => "✗",
        "partial" => "…",
        "skipped" => "–",
        _ => "·",
    };
    format!("{symbol} {status}")
}

/// A chart the workbench wrote (`outbox/<agent>/visualizations/<file>.svg`).
#[derive(Debug, Clone)]
pub struct ChartLink {
    /// `/charts/<agent>/<file>`.
    pub url: String,
    /// The file name without `.svg`, underscores as spaces.
    pub title: String,
    /// The agent whose outbox holds it.
    pub agent: String,
}

/// `2026-01-01T12:00:03Z` → `2026-01-01 12:00:03`.
pub fn short_time(t: &str) -> String {
    t.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Takes everything `/` shows.
pub fn faucet_page(conn: &Connection, root: &Root, config: &Config) -> Result<FaucetPage> {
    let now = clock::now();
    let status = status::faucet(conn, root, config)?;
    let p = &status.pipeline;
    let last_hour = crate::store::pairs::count_created_between(
        conn,
        &clock::format(now - Duration::hours(1)),
        &clock::format(now),
    )?;
    let writer = match writer_process(root) {
        Some(w) => {
            // The loop records a heartbeat at every round (run::report::on_round): a
            // loop whose last round is old is alive but stuck.
            let heartbeat = match w.command.as_str() {
                "run" => match crate::store::daily::last_round(conn, w.pid)? {
                    Some(t) => {
                        let ago = clock::parse(&t)
                            .map(|at| (now - at).num_seconds())
                            .unwrap_or(0);
                        format!(
                            ", last round {} ({} ago)",
                            short_time(&t),
                            clock::human_duration(ago)
                        )
                    }
                    None => ", no round recorded yet".to_string(),
                },
                _ => String::new(),
            };
            Some(WriterLine {
                what: match w.command.as_str() {
                    "run" => "▶ loop running".to_string(),
                    "watch" => "▶ watcher running (no loop)".to_string(),
                    other => format!("▶ {other} running (no loop)"),
                },
                detail: format!(
                    "`perpetual {}`, pid {}, since {}{heartbeat}",
                    w.command,
                    w.pid,
                    short_time(&w.since)
                ),
            })
        }
        None => None,
    };
    let waiting_by: Vec<String> = p
        .files_waiting_by_agent
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    let overview = Overview {
        pairs: thousands(p.pairs),
        goal_bar: Bar {
            label: "goal".to_string(),
            amount: format!("{} / {}", thousands(p.pairs), thousands(p.goal)),
            percent: format!("{:.1}%", p.goal_percent),
            value: p.goal_percent.clamp(0.0, 100.0),
            class: "progress",
            level: "",
        },
        last_hour: thousands(last_hour),
        per_hour_24h: format!("{:.1}", p.pairs_per_hour),
        last_24h: thousands(p.pairs_last_24h),
        files_waiting: if waiting_by.is_empty() {
            thousands(p.files_waiting)
        } else {
            format!("{} ({})", thousands(p.files_waiting), waiting_by.join(", "))
        },
        writer,
        assigner: status
            .assigner
            .first()
            .map(|e| format!("{} {}: {}", short_time(&e.at), e.action, e.detail)),
    };

    let views = tasks::views(conn)?;
    let mut next: BTreeMap<&str, Vec<&TaskView>> = BTreeMap::new();
    for v in views.iter().filter(|v| v.state == State::Ready) {
        let list = next.entry(v.task.agent.as_str()).or_default();
        if list.len() < NEXT_TASKS {
            list.push(v);
        }
    }
    let mut agents = Vec::new();
    for a in &status.agents {
        let active = store_sessions::active(conn, Some(&a.agent))?;
        let mut sessions = Vec::new();
        for s in &active {
            sessions.push(session_card(conn, config, s, &views)?);
        }
        let (state_class, state) = match (&a.paused, a.sessions.len()) {
            (Some(_), _) => ("paused", "‖ paused".to_string()),
            (None, 0) if !a.needs_review.is_empty() => ("review", "⚑ needs review".to_string()),
            (None, 0) => ("idle", "○ idle".to_string()),
            (None, 1) => ("working", "▶ working".to_string()),
            (None, n) => ("working", format!("▶ working ({n} sessions)")),
        };
        let idle = match (a.sessions.len(), a.idle_seconds) {
            (n, _) if n > 0 => "working now".to_string(),
            (_, Some(s)) => format!("idle {}", clock::human_duration(s)),
            (_, None) if a.command => "never active".to_string(),
            (_, None) => "never active (no command: its own tasks wait for a person)".to_string(),
        };
        agents.push(AgentCard {
            name: a.agent.clone(),
            state_class,
            state,
            paused: a
                .paused
                .as_ref()
                .map(|p| format!("{} (since {})", p.reason, short_time(&p.at))),
            reviews: a
                .needs_review
                .iter()
                .map(|r| (r.task.clone(), r.reason.clone()))
                .collect(),
            // With a session running, its own bars show its budget; the agent's line
            // then only needs the slots.
            bars: a
                .budget
                .iter()
                .filter(|u| active.is_empty() || u.kind == crate::budget::Kind::Slots)
                .map(Bar::usage)
                .collect(),
            refused: a.over_budget.as_ref().map(|o| {
                format!(
                    "new sessions refused: {} at {:.1}%{}",
                    o.usage.kind.label(),
                    o.usage.percent,
                    o.resets_at
                        .as_deref()
                        .map(|r| format!(" (resets {})", short_time(r)))
                        .unwrap_or_default()
                )
            }),
            task: a.task.as_ref().map(|t| {
                format!(
                    "{} ({}, {}): {}",
                    t.id,
                    t.kind.as_str(),
                    t.state.as_str(),
                    progress_text(t.done, t.total)
                )
            }),
            queue: format!(
                "{} ready {}",
                a.queue_depth,
                if a.queue_healthy {
                    "✓ healthy"
                } else {
                    "⚠ LOW"
                }
            ),
            queue_class: if a.queue_healthy { "healthy" } else { "low" },
            queue_rest: format!("{} waiting, {} blocked", a.waiting, a.blocked),
            next_tasks: next
                .get(a.agent.as_str())
                .map(|l| {
                    l.iter()
                        .map(|v| {
                            (
                                v.task.id.clone(),
                                v.task.description.clone().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            idle,
            waiting_files: p.files_waiting_by_agent.get(&a.agent).copied().unwrap_or(0),
            sessions,
        });
    }
    let bottlenecks = p
        .bottlenecks
        .iter()
        .map(|b| BottleneckLine {
            task: b.task.clone(),
            agent: b.agent.clone(),
            needs: b.needs.clone(),
            needs_agent: b.needs_agent.clone(),
            needs_state: b.needs_state.as_str(),
        })
        .collect();
    let files = ledger::page(conn, &ListFilter::default(), None, LAST_FILES)?
        .iter()
        .map(FileLine::new)
        .collect();
    let growth = growth(conn, now, p.pairs)?;
    Ok(FaucetPage {
        at: format!("{} UTC", short_time(&status.at)),
        overview,
        agents,
        bottlenecks,
        files,
        growth_svg: super::charts::growth_svg(&growth, now)?,
        charts: workbench_charts(root, config)?,
        status,
    })
}

/// A session as a card: its task, progress and budget bars.
pub fn session_card(
    conn: &Connection,
    config: &Config,
    s: &SessionRow,
    views: &[TaskView],
) -> Result<SessionCard> {
    let (usage, _) = session::level(conn, config, s)?;
    let task = s
        .task_id
        .as_deref()
        .and_then(|t| views.iter().find(|v| v.task.id == t));
    Ok(SessionCard {
        id: s.id.clone(),
        task: s.task_id.clone().unwrap_or_else(|| "-".to_string()),
        since: short_time(&s.started_at),
        progress: task.and_then(|v| Bar::progress("progress", v.task.done, v.task.total)),
        bars: usage.iter().map(Bar::usage).collect(),
    })
}

/// Distinct pairs over the last 24 hours (at least the last hour), one point per ten
/// minutes that saw new pairs, plus both ends.
pub fn growth(
    conn: &Connection,
    now: DateTime<Utc>,
    total: u64,
) -> Result<Vec<(DateTime<Utc>, u64)>> {
    let from = now - Duration::hours(24);
    let buckets = crate::store::pairs::created_since_by(conn, &clock::format(from), 15)?;
    let in_window: u64 = buckets.iter().map(|(_, n)| n).sum();
    let mut running = total.saturating_sub(in_window);
    let mut points = Vec::with_capacity(buckets.len() + 2);
    let first = buckets
        .first()
        .and_then(|(t, _)| clock::parse(&format!("{t}0:00Z")).ok());
    let start = match first {
        // A young root: start where its pairs start (one bucket earlier), at most an
        // hour before now so the line has room.
        Some(t) if running == 0 => (t - Duration::minutes(10))
            .max(from)
            .min(now - Duration::hours(1)),
        _ => from,
    };
    points.push((start, running));
    for (t, n) in &buckets {
        if let Ok(at) = clock::parse(&format!("{t}0:00Z")) {
            // Flat until the bucket, then its pairs over its ten minutes.
            points.push((at.max(start), running));
            running += n;
            points.push(((at + Duration::minutes(10)).min(now), running));
        }
    }
    points.push((now, total));
    Ok(points)
}

/// The workbench's SVG charts: `outbox/<agent>/visualizations/*.svg`, by agent and name.
pub fn workbench_charts(root: &Root, config: &Config) -> Result<Vec<ChartLink>> {
    let mut out = Vec::new();
    for agent in root.agents(config)? {
        let dir = root.outbox_of(&agent).join("visualizations");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| super::charts::is_chart_name(n))
            .collect();
        names.sort();
        for name in names {
            out.push(ChartLink {
                url: format!("/charts/{agent}/{name}"),
                title: name.trim_end_matches(".svg").replace('_', " "),
                agent: agent.clone(),
            });
        }
    }
    Ok(out)
}
