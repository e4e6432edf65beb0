//! The daily report (the seeds' "Team Status Report" and `performance_metrics/`): what
//! one UTC day produced and how the machine ran, measured from the database.
//!
//! [`daily`] computes the figures of a day (or of today so far); [`write`] writes them as
//! `reports/team_status_<date>.md` for people and `performance_metrics/<date>.json` for
//! machines. `perpetual report daily` calls both; `perpetual status` shows today's
//! figures; the loop calls [`on_round`] at every round, which records its heartbeat (the
//! uptime) and, once a day has ended, writes that day's report by itself (the next wrap
//! commits it).
//!
//! Every figure is measured, none estimated:
//!
//! - pairs: first stored during the day (`pairs.created_at`), by agent, category,
//!   indicator; per hour of the window;
//! - files: finished by the ledger during the day, by status; the error rate is the
//!   rejected share of them;
//! - tasks: completed during the day, their grades, the average time from a session first
//!   taking one to its completion (and from its creation);
//! - sessions: started and wrapped during the day, wraps by level, SIGTERMs and SIGKILLs
//!   the loop sent, circuit-breaker trips (pauses whose reason is the breaker's);
//! - tokens: of the sessions wrapped during the day (and, today, of those still active),
//!   and per new pair;
//! - API calls: each agent's checkpoints during the day against its daily quota;
//! - idle: per agent, the share of the window not covered by any of its sessions;
//! - loop uptime: the share of the window covered by a `perpetual run` process, from its
//!   start to its latest round (a loop that dies loses at most its last round);
//! - hours without human intervention: the longest stretch of the window with no command
//!   run by a person (`crate::work::history`), and the stretch since the last one.

use crate::clock;
use crate::config::Config;
use crate::human::thousands;
use crate::root::Root;
use crate::store::daily as store;
use crate::store::history::{self as store_history, CommandRow};
use anyhow::{Context, Result};
use chrono::{DateTime, Days, NaiveDate, Utc};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Indicators listed by name in the Markdown report (the JSON has them all).
const TOP_INDICATORS: usize = 20;

/// The whole report of one day.
#[derive(Debug, Clone, Serialize)]
pub struct Daily {
    /// The UTC day, `2026-03-01`.
    pub date: String,
    /// The window measured: the day's start ...
    pub from: String,
    /// ... and its end, or now for today.
    pub to: String,
    /// The day is over (false: today so far).
    pub complete: bool,
    /// When the figures were taken.
    pub generated_at: String,
    /// Pairs added.
    pub pairs: Pairs,
    /// Files the ledger finished.
    pub files: Files,
    /// Tasks.
    pub tasks: Tasks,
    /// Sessions and how they ended.
    pub sessions: Sessions,
    /// Tokens used.
    pub tokens: Tokens,
    /// Each agent's day.
    pub agents: Vec<AgentDay>,
    /// The loop's uptime.
    pub loop_uptime: Uptime,
    /// Human interventions.
    pub autonomy: Autonomy,
}

/// Pairs first stored during the day.
#[derive(Debug, Clone, Serialize)]
pub struct Pairs {
    /// How many.
    pub added: u64,
    /// `added` per hour of the window.
    pub per_hour: f64,
    /// By agent.
    pub by_agent: BTreeMap<String, u64>,
    /// By category (`(none)` without one).
    pub by_category: BTreeMap<String, u64>,
    /// By indicator (`(none)` without one), every one.
    pub by_indicator: BTreeMap<String, u64>,
    /// Distinct pairs in the database at the time of the report.
    pub total: u64,
    /// The goal.
    pub goal: u64,
}

/// Files the ledger finished during the day.
#[derive(Debug, Clone, Serialize)]
pub struct Files {
    /// Integrated (their pairs stored).
    pub integrated: u64,
    /// Rejected (kept in rejected/ with a reason).
    pub rejected: u64,
    /// Duplicates of a file read before.
    pub duplicate: u64,
    /// Invalid pairs inside the integrated files.
    pub pairs_invalid: u64,
    /// rejected / all finished, in percent (None when none finished).
    pub error_rate: Option<f64>,
}

/// Tasks during the day.
#[derive(Debug, Clone, Serialize)]
pub struct Tasks {
    /// Added.
    pub added: u64,
    /// Completed.
    pub completed: u64,
    /// Left failed (their last failure during the day).
    pub failed: u64,
    /// Completed tasks per letter (A..F).
    pub grades: BTreeMap<String, u64>,
    /// Mean seconds from a session first taking a task to its completion (tasks completed
    /// without a session are left out).
    pub avg_completion_seconds: Option<f64>,
    /// Mean seconds from a task's creation to its completion.
    pub avg_lead_seconds: Option<f64>,
    /// The tasks completed, with their grades.
    pub list: Vec<CompletedTask>,
}

/// A task completed during the day.
#[derive(Debug, Clone, Serialize)]
pub struct CompletedTask {
    /// Task id.
    pub id: String,
    /// Its agent.
    pub agent: String,
    /// Grade letter.
    pub grade: Option<String>,
    /// When.
    pub finished_at: String,
}

/// Sessions during the day.
#[derive(Debug, Clone, Serialize)]
pub struct Sessions {
    /// Started.
    pub started: u64,
    /// Wrapped.
    pub wrapped: u64,
    /// Wraps by the level they wrapped at.
    pub wraps_by_level: BTreeMap<String, u64>,
    /// Agent commands the loop stopped with SIGTERM.
    pub sigterms: u64,
    /// ... and with SIGKILL.
    pub sigkills: u64,
    /// Runs of the loop that ended with an error.
    pub run_errors: u64,
    /// Circuit-breaker trips (an agent paused by the breaker).
    pub breaker_trips: u64,
    /// Pauses by hand (`agent pause`).
    pub manual_pauses: u64,
}

/// Tokens used during the day.
#[derive(Debug, Clone, Serialize)]
pub struct Tokens {
    /// Tokens of the sessions wrapped during the day, and today of those still active.
    pub used: u64,
    /// `used` / pairs added (None without new pairs).
    pub per_new_pair: Option<f64>,
}

/// One agent's day.
#[derive(Debug, Clone, Serialize)]
pub struct AgentDay {
    /// The agent.
    pub agent: String,
    /// Sessions started during the day.
    pub sessions_started: u64,
    /// Seconds of the window covered by at least one of its sessions.
    pub busy_seconds: i64,
    /// The rest of the window, in percent.
    pub idle_percent: f64,
    /// Pairs it added.
    pub pairs_added: u64,
    /// Tasks it completed.
    pub tasks_completed: u64,
    /// Tokens its sessions used (as `Tokens::used`).
    pub tokens: u64,
    /// API calls its checkpoints recorded.
    pub api_calls: u64,
    /// Its daily quota (None: no limit).
    pub api_quota: Option<u64>,
    /// `api_calls` / quota, in percent.
    pub api_percent: Option<f64>,
}

/// The loop's uptime.
#[derive(Debug, Clone, Serialize)]
pub struct Uptime {
    /// Seconds of the window covered by a `perpetual run` process.
    pub seconds: i64,
    /// Of the window, in percent.
    pub percent: f64,
    /// Loop processes seen during the window.
    pub runs: u64,
}

/// Human intervention.
#[derive(Debug, Clone, Serialize)]
pub struct Autonomy {
    /// The longest stretch of the window without a command run by a person, in hours.
    pub hours_without_intervention: f64,
    /// Hours from the last command run by a person (at any earlier time) to the end of
    /// the window; None when no person ever ran one.
    pub hours_since_last_intervention: Option<f64>,
    /// Commands people ran during the day.
    pub interventions: u64,
    /// Commands agents (and automation) ran during the day.
    pub machine_commands: u64,
    /// The commands people ran, oldest first.
    pub manual: Vec<CommandRow>,
}

/// The figures of the UTC day `date`: the whole day once it is over, up to now while it
/// is today. A day in the future is an error.
pub fn daily(conn: &Connection, root: &Root, config: &Config, date: NaiveDate) -> Result<Daily> {
    let now = clock::now();
    let start = date.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let end = start
        .checked_add_days(Days::new(1))
        .context("date out of range")?;
    anyhow::ensure!(
        start <= now,
        "{date} has not begun yet (it is {} now)",
        clock::format(now)
    );
    let to = end.min(now);
    // Queries take [from, to); today's also take what happened this very second.
    let (from_s, to_s) = (
        clock::format(start),
        clock::format(if end > now {
            now + chrono::Duration::seconds(1)
        } else {
            end
        }),
    );
    let window = (to - start).num_seconds().max(0);
    let hours = window as f64 / 3600.0;

    let by = store::pairs_added(conn, &from_s, &to_s)?;
    let added: u64 = by.by_agent.values().sum();
    let pairs = Pairs {
        added,
        per_hour: if hours > 0.0 {
            added as f64 / hours
        } else {
            0.0
        },
        by_agent: by.by_agent,
        by_category: by.by_category,
        by_indicator: by.by_indicator,
        total: crate::store::pairs::count(conn)?,
        goal: config.goal,
    };

    let (by_status, pairs_invalid) = store::files_finished(conn, &from_s, &to_s)?;
    let get = |k: &str| by_status.get(k).copied().unwrap_or(0);
    let (integrated, rejected, duplicate) = (get("integrated"), get("rejected"), get("duplicate"));
    let finished = integrated + rejected + duplicate;
    let files = Files {
        integrated,
        rejected,
        duplicate,
        pairs_invalid,
        error_rate: (finished > 0).then(|| rejected as f64 * 100.0 / finished as f64),
    };

    let completed = store::tasks_completed(conn, &from_s, &to_s)?;
    let (tasks_added, tasks_failed) = store::tasks_added_and_failed(conn, &from_s, &to_s)?;
    let mut grades: BTreeMap<String, u64> = ["A", "B", "C", "D", "F"]
        .iter()
        .map(|l| (l.to_string(), 0))
        .collect();
    let (mut work, mut lead) = (Vec::new(), Vec::new());
    for t in &completed {
        if let Some(g) = &t.grade {
            *grades.entry(g.clone()).or_default() += 1;
        }
        let fin = clock::parse(&t.finished_at)?;
        if let Some(s) = t.started_at.as_deref() {
            work.push((fin - clock::parse(s)?).num_seconds() as f64);
        }
        lead.push((fin - clock::parse(&t.created_at)?).num_seconds() as f64);
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let tasks = Tasks {
        added: tasks_added,
        completed: completed.len() as u64,
        failed: tasks_failed,
        grades,
        avg_completion_seconds: mean(&work),
        avg_lead_seconds: mean(&lead),
        list: completed
            .iter()
            .map(|t| CompletedTask {
                id: t.id.clone(),
                agent: t.agent.clone(),
                grade: t.grade.clone(),
                finished_at: t.finished_at.clone(),
            })
            .collect(),
    };

    let spans = store::sessions_overlapping(conn, &from_s, &to_s)?;
    let in_window = |t: &str| t >= from_s.as_str() && t < to_s.as_str();
    let mut wraps_by_level: BTreeMap<String, u64> = BTreeMap::new();
    let (mut started, mut wrapped, mut tokens_used) = (0, 0, 0);
    let mut agent_tokens: BTreeMap<&str, u64> = BTreeMap::new();
    let mut agent_started: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &spans {
        if in_window(&s.started_at) {
            started += 1;
            *agent_started.entry(&s.agent).or_default() += 1;
        }
        // A session's tokens count on the day it wrapped; today, an active one's so far.
        let counts = match &s.wrapped_at {
            Some(w) if in_window(w) => {
                wrapped += 1;
                *wraps_by_level
                    .entry(s.level.clone().unwrap_or_else(|| "unknown".into()))
                    .or_default() += 1;
                true
            }
            Some(_) => false,
            None => end > now,
        };
        if counts {
            tokens_used += s.tokens_used;
            *agent_tokens.entry(&s.agent).or_default() += s.tokens_used;
        }
    }
    let (sigterms, sigkills, run_errors) = store::runs_ended(conn, &from_s, &to_s)?;
    let pauses = store::pauses(conn, &from_s, &to_s)?;
    let breaker_trips = pauses
        .iter()
        .filter(|(_, r)| r.starts_with("circuit breaker"))
        .count() as u64;
    let sessions = Sessions {
        started,
        wrapped,
        wraps_by_level,
        sigterms,
        sigkills,
        run_errors,
        breaker_trips,
        manual_pauses: pauses.len() as u64 - breaker_trips,
    };
    let tokens = Tokens {
        used: tokens_used,
        per_new_pair: (added > 0).then(|| tokens_used as f64 / added as f64),
    };

    let mut agents = Vec::new();
    for agent in crate::work::tasks::all_agents(conn, root, config)? {
        let mine: Vec<(DateTime<Utc>, DateTime<Utc>)> = spans
            .iter()
            .filter(|s| s.agent == agent)
            .map(|s| {
                let a = clock::parse(&s.started_at)?;
                let b = match &s.wrapped_at {
                    Some(w) => clock::parse(w)?,
                    None => now,
                };
                Ok((a, b))
            })
            .collect::<Result<_>>()?;
        let busy = covered(&mine, start, to);
        let quota = config.budget_of(&agent).api_calls_per_day;
        let calls = crate::store::sessions::api_calls_between(conn, &agent, &from_s, &to_s)?;
        agents.push(AgentDay {
            sessions_started: agent_started.get(agent.as_str()).copied().unwrap_or(0),
            busy_seconds: busy,
            idle_percent: percent_of(window - busy, window),
            pairs_added: pairs.by_agent.get(&agent).copied().unwrap_or(0),
            tasks_completed: completed.iter().filter(|t| t.agent == agent).count() as u64,
            tokens: agent_tokens.get(agent.as_str()).copied().unwrap_or(0),
            api_calls: calls,
            api_quota: (quota > 0).then_some(quota),
            api_percent: (quota > 0).then(|| calls as f64 * 100.0 / quota as f64),
            agent,
        });
    }

    let loop_spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = store::loop_spans(conn, &from_s, &to_s)?
        .into_iter()
        .map(|(a, b)| Ok((clock::parse(&a)?, clock::parse(&b)?)))
        .collect::<Result<_>>()?;
    let up = covered(&loop_spans, start, to);
    let loop_uptime = Uptime {
        seconds: up,
        percent: percent_of(up, window),
        runs: loop_spans.len() as u64,
    };

    let manual = store_history::manual_commands_between(conn, &from_s, &to_s)?;
    let times: Vec<DateTime<Utc>> = manual
        .iter()
        .map(|c| clock::parse(&c.at))
        .collect::<Result<_>>()?;
    let last = store_history::last_manual_command_before(conn, &to_s)?;
    let (people, machine) = store_history::count_commands_between(conn, &from_s, &to_s)?;
    let autonomy = Autonomy {
        hours_without_intervention: longest_gap(&times, start, to) as f64 / 3600.0,
        hours_since_last_intervention: match &last {
            Some(c) => Some((to - clock::parse(&c.at)?).num_seconds() as f64 / 3600.0),
            None => None,
        },
        interventions: people,
        machine_commands: machine,
        manual,
    };

    Ok(Daily {
        date: date.format("%Y-%m-%d").to_string(),
        from: from_s,
        to: clock::format(to),
        complete: end <= now,
        generated_at: clock::format(now),
        pairs,
        files,
        tasks,
        sessions,
        tokens,
        agents,
        loop_uptime,
        autonomy,
    })
}

fn percent_of(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        part.max(0) as f64 * 100.0 / whole as f64
    }
}

/// Seconds of `[from, to)` covered by the union of the spans.
fn covered(
    spans: &[(DateTime<Utc>, DateTime<Utc>)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> i64 {
    let mut clipped: Vec<(DateTime<Utc>, DateTime<Utc>)> = spans
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    clipped.sort();
    let mut total = 0;
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (a, b) in clipped {
        current = match current {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += (cb - ca).num_seconds();
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((a, b)) = current {
        total += (b - a).num_seconds();
    }
    total
}

/// The longest stretch of `[from, to)` between the times (which are in the window,
/// sorted), in seconds.
fn longest_gap(times: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let mut edges = vec![from];
    edges.extend(times.iter().copied());
    edges.push(to);
    edges
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds())
        .max()
        .unwrap_or(0)
        .max(0)
}

/// Where the report of a day goes: `reports/team_status_<date>.md` and
/// `performance_metrics/<date>.json`.
pub fn paths(root: &Root, date: &str) -> (PathBuf, PathBuf) {
    (
        root.dir()
            .join("reports")
            .join(format!("team_status_{date}.md")),
        root.dir()
            .join("performance_metrics")
            .join(format!("{date}.json")),
    )
}

/// Writes both documents of the day (temporary file, then rename) and records it.
pub fn write(conn: &Connection, root: &Root, d: &Daily) -> Result<(PathBuf, PathBuf)> {
    let (md, json) = paths(root, &d.date);
    crate::root::write_document(&md, &render(d))?;
    crate::root::write_document(&json, &(serde_json::to_string_pretty(d)? + "\n"))?;
    store::report_written(conn, &d.date, &d.generated_at, d.complete)?;
    Ok((md, json))
}

/// `6 h 05 min`, `less than a minute`.
fn span(seconds: f64) -> String {
    clock::human_duration(seconds.round() as i64)
}

fn list(map: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = map.iter().filter(|(_, n)| **n > 0).collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if v.is_empty() {
        return "none".to_string();
    }
    v.iter()
        .map(|(k, n)| format!("{k} {}", thousands(**n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown report (the seeds' "Team Status Report").
pub fn render(d: &Daily) -> String {
    let mut m = format!("# Team Status Report - {}\n\n", d.date);
    m.push_str(&format!(
        "{} to {}{}; taken {} by perpetual from perpetual.db.\n\n",
        d.from,
        d.to,
        if d.complete {
            " (the whole day)"
        } else {
            " (the day so far)"
        },
        d.generated_at
    ));

    m.push_str("## Summary\n\n| metric | value |\n| --- | --- |\n");
    m.push_str(&format!(
        "| pairs added | {} ({:.1} per hour); the database holds {} of {} |\n",
        thousands(d.pairs.added),
        d.pairs.per_hour,
        thousands(d.pairs.total),
        thousands(d.pairs.goal)
    ));
    m.push_str(&format!(
        "| files | {} integrated, {} rejected, {} duplicate; {} invalid pairs; error rate {} |\n",
        d.files.integrated,
        d.files.rejected,
        d.files.duplicate,
        d.files.pairs_invalid,
        d.files
            .error_rate
            .map_or("-".to_string(), |r| format!("{r:.1}%"))
    ));
    m.push_str(&format!(
        "| tasks | {} completed ({}), {} added, {} failed; average completion time {} (from creation: {}) |\n",
        d.tasks.completed,
        list(&d.tasks.grades),
        d.tasks.added,
        d.tasks.failed,
        d.tasks.avg_completion_seconds.map_or("-".to_string(), span),
        d.tasks.avg_lead_seconds.map_or("-".to_string(), span)
    ));
    m.push_str(&format!(
        "| sessions | {} started, {} wrapped (by level: {}); {} SIGTERM, {} SIGKILL; {} run error(s); {} circuit-breaker trip(s), {} pause(s) by hand |\n",
        d.sessions.started,
        d.sessions.wrapped,
        list(&d.sessions.wraps_by_level),
        d.sessions.sigterms,
        d.sessions.sigkills,
        d.sessions.run_errors,
        d.sessions.breaker_trips,
        d.sessions.manual_pauses
    ));
    m.push_str(&format!(
        "| tokens | {}; {} per new pair |\n",
        thousands(d.tokens.used),
        d.tokens
            .per_new_pair
            .map_or("-".to_string(), |t| format!("{t:.1}"))
    ));
    m.push_str(&format!(
        "| loop uptime | {} ({:.1}%), {} run(s) of `perpetual run` |\n",
        span(d.loop_uptime.seconds as f64),
        d.loop_uptime.percent,
        d.loop_uptime.runs
    ));
    m.push_str(&format!(
        "| hours without human intervention | {:.1} (longest stretch); {} since the last manual command; {} manual command(s), {} by agents and automation |\n",
        d.autonomy.hours_without_intervention,
        d.autonomy
            .hours_since_last_intervention
            .map_or("none ever recorded".to_string(), |h| format!("{h:.1} h")),
        d.autonomy.interventions,
        d.autonomy.machine_commands
    ));

    m.push_str("\n## Agents\n");
    for a in &d.agents {
        m.push_str(&format!("\n### {}\n\n", a.agent));
        m.push_str(&format!(
            "- sessions: {} started; busy {}; idle {:.1}%\n",
            a.sessions_started,
            span(a.busy_seconds as f64),
            a.idle_percent
        ));
        m.push_str(&format!(
            "- pairs added: {}; tasks completed: {}; tokens: {}\n",
            thousands(a.pairs_added),
            a.tasks_completed,
            thousands(a.tokens)
        ));
        m.push_str(&match (a.api_quota, a.api_percent) {
            (Some(q), Some(p)) => format!(
                "- API calls: {} of {} ({p:.1}% of the daily quota)\n",
                thousands(a.api_calls),
                thousands(q)
            ),
            _ => format!("- API calls: {} (no daily quota)\n", thousands(a.api_calls)),
        });
    }

    if !d.tasks.list.is_empty() {
        m.push_str("\n## Tasks completed\n\n| task | agent | grade | completed |\n| --- | --- | --- | --- |\n");
        for t in &d.tasks.list {
            m.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                t.id,
                t.agent,
                t.grade.as_deref().unwrap_or("-"),
                t.finished_at
            ));
        }
    }

    m.push_str("\n## Pairs added\n\n");
    m.push_str(&format!("- by agent: {}\n", list(&d.pairs.by_agent)));
    m.push_str(&format!("- by category: {}\n", list(&d.pairs.by_category)));
    let mut ind: Vec<(&String, &u64)> = d.pairs.by_indicator.iter().collect();
    ind.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: BTreeMap<String, u64> = ind
        .iter()
        .take(TOP_INDICATORS)
        .map(|(k, v)| ((*k).clone(), **v))
        .collect();
    m.push_str(&format!(
        "- by indicator{}: {}\n",
        if ind.len() > TOP_INDICATORS {
            format!(
                " (top {TOP_INDICATORS} of {}; all in performance_metrics/{}.json)",
                ind.len(),
                d.date
            )
        } else {
            String::new()
        },
        list(&shown)
    ));

    m.push_str("\n## Human interventions\n\n");
    if d.autonomy.manual.is_empty() {
        m.push_str("None: no command was run by a person.\n");
    } else {
        m.push_str("| time | who | command |\n| --- | --- | --- |\n");
        for c in &d.autonomy.manual {
            m.push_str(&format!("| {} | {} | `{}` |\n", c.at, c.actor, c.command));
        }
    }
    m
}

/// When this `perpetual run` process started (its heartbeats' key).
static LOOP_STARTED: OnceLock<String> = OnceLock::new();

/// The earliest record of each root this process has looked at ([`store::first_record`]).
/// Records are only ever added, stamped with the time they are made, so once a root has
/// one its earliest never changes; the query behind it scans the sessions, files and
/// tasks, and ran every round of a root's first day (the soak's idle round grew from 11
/// to 35 ms over two hours: BENCHMARKS.md, "The loop's idle round").
static FIRST_RECORD: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// [`store::first_record`], asked of the database only until the root has a record.
fn first_record(conn: &Connection, root: &Root) -> Result<Option<String>> {
    let mut known = FIRST_RECORD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = known.iter().find(|(dir, _)| dir == root.dir()) {
        return Ok(Some(t.clone()));
    }
    let first = store::first_record(conn)?;
    if let Some(t) = &first {
        known.push((root.dir().to_path_buf(), t.clone()));
    }
    Ok(first)
}

/// The loop's one call per round: records its heartbeat (the uptime), and once a UTC day
/// has ended, writes that day's report unless it was written after the day ended and is
/// still on disk. A failure is logged and never stops the loop.
pub fn on_round(conn: &Connection, root: &Root, config: &Config) {
    if let Err(e) = round(conn, root, config) {
        tracing::warn!("daily report: {e:#}");
    }
}

fn round(conn: &Connection, root: &Root, config: &Config) -> Result<()> {
    let now = clock::now();
    let started = LOOP_STARTED.get_or_init(|| clock::format(now));
    store::heartbeat(conn, std::process::id(), started, &clock::format(now))?;
    let today = now.date_naive();
    let yesterday = today.pred_opt().context("no day before")?;
    let date = yesterday.format("%Y-%m-%d").to_string();
    let (md, json) = paths(root, &date);
    if md.is_file() && json.is_file() && store::report_complete(conn, &date)? {
        return Ok(());
    }
    // Only a root that existed before today has a yesterday to report on.
    let today_start = clock::format(today.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    if first_record(conn, root)?.is_some_and(|t| t < today_start) {
        let d = daily(conn, root, config, yesterday)?;
        let (md, _) = write(conn, root, &d)?;
        tracing::info!(
            "wrote the report of {date}: {} ({} pairs added, loop up {:.1}%, {:.1} h without human intervention)",
            md.strip_prefix(root.dir()).unwrap_or(&md).display(),
            d.pairs.added,
            d.loop_uptime.percent,
            d.autonomy.hours_without_intervention
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        clock::parse(s).unwrap()
    }

    #[test]
    fn covered_time_is_the_union_clipped_to_the_window() {
        let (from, to) = (t("2026-03-01T00:00:00Z"), t("2026-03-02T00:00:00Z"));
        let spans = [
            (t("2026-02-28T23:00:00Z"), t("2026-03-01T01:00:00Z")), // 1 h inside
            (t("2026-03-01T00:30:00Z"), t("2026-03-01T02:00:00Z")), // overlaps: +1 h
            (t("2026-03-01T10:00:00Z"), t("2026-03-01T10:30:00Z")), // +30 min
            (t("2026-03-01T23:30:00Z"), t("2026-03-02T05:00:00Z")), // +30 min inside
        ];
        assert_eq!(covered(&spans, from, to), 3 * 3600);
        assert_eq!(covered(&[], from, to), 0);
    }

    #[test]
    fn uptime_is_the_share_of_the_day_covered_by_loop_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let conn = crate::store::open_in_memory().unwrap();
        store::heartbeat(&conn, 7, "2026-03-01T00:00:00Z", "2026-03-01T06:00:00Z").unwrap();
        // A heartbeat never moves the latest round back.
        store::heartbeat(&conn, 7, "2026-03-01T00:00:00Z", "2026-03-01T05:00:00Z").unwrap();
        store::heartbeat(&conn, 8, "2026-03-01T12:00:00Z", "2026-03-02T01:00:00Z").unwrap();
        store::heartbeat(&conn, 9, "2026-02-27T12:00:00Z", "2026-02-28T01:00:00Z").unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let d = daily(&conn, &root, &Config::default(), date).unwrap();
        assert_eq!(d.loop_uptime.seconds, 18 * 3600);
        assert_eq!(d.loop_uptime.percent, 75.0);
        assert_eq!(d.loop_uptime.runs, 2);
        assert!(d.complete);
    }

    #[test]
    fn the_earliest_record_is_asked_of_each_root_until_it_has_one() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (root_a, root_b) = (Root::new(a.path()).unwrap(), Root::new(b.path()).unwrap());
        let (conn_a, conn_b) = (
            crate::store::open_in_memory().unwrap(),
            crate::store::open_in_memory().unwrap(),
        );
        // Nothing recorded yet: asked again next time.
        assert_eq!(first_record(&conn_a, &root_a).unwrap(), None);
        store::heartbeat(&conn_a, 7, "2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z").unwrap();
        assert_eq!(
            first_record(&conn_a, &root_a).unwrap().as_deref(),
            Some("2026-03-01T10:00:00Z")
        );
        // Known from then on, without the query (an earlier row cannot appear in a
        // real root; here it shows that the database is not asked again).
        store::heartbeat(&conn_a, 8, "2026-02-01T10:00:00Z", "2026-02-01T10:00:00Z").unwrap();
        assert_eq!(
            first_record(&conn_a, &root_a).unwrap().as_deref(),
            Some("2026-03-01T10:00:00Z")
        );
        // Another root has its own.
        store::heartbeat(&conn_b, 9, "2026-04-01T10:00:00Z", "2026-04-01T10:00:00Z").unwrap();
        assert_eq!(
            first_record(&conn_b, &root_b).unwrap().as_deref(),
            Some("2026-04-01T10:00:00Z")
        );
    }

    #[test]
    fn the_longest_gap_counts_the_window_edges() {
        let (from, to) = (t("2026-03-01T00:00:00Z"), t("2026-03-02T00:00:00Z"));
        assert_eq!(longest_gap(&[], from, to), 24 * 3600);
        let times = [t("2026-03-01T02:00:00Z"), t("2026-03-01T20:00:00Z")];
        assert_eq!(longest_gap(&times, from, to), 18 * 3600);
        let times = [t("2026-03-01T23:00:00Z")];
        assert_eq!(longest_gap(&times, from, to), 23 * 3600);
    }
}
