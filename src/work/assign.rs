//! The task assigner (the seeds' "task assigner" and the faucet's rules 1 and 4): keeps
//! every agent's queue flowing. `perpetual assign` runs it once; `perpetual run` runs it
//! at every round. Each thing it does is one row of `assign_log` (`perpetual status`
//! shows the latest) and one log line.
//!
//! 1. **Drops waiting** in `inbox/<agent>/` get an `ingest` task for that agent (one open
//!    ingest task per agent at a time), which the loop runs itself.
//! 2. **Failed tasks** are queued again, one priority higher (down to 1), while they have
//!    failed at most `assign.retry_limit` times; past that they stay failed and are
//!    flagged "needs review".
//! 3. **Templates**: an agent whose plan defines `[[template]]`s keeps at least
//!    `assign.min_ready` ready tasks: new ones are made from its templates in turn
//!    (`{gap_indicators}` takes the largest coverage gaps: `crate::work::gaps`).
//!    Standing duties never count toward those ready tasks.
//! 4. **Recurring work**: a template (or task) with `every` gets a fresh task once its
//!    period has passed (`clock::Every`) and the previous one is complete: one per
//!    period, however long the loop was away.
//! 5. **Estimates from history**: a pending task without a token estimate gets one: the
//!    median tokens per unit of the completed tasks made from its template (else of its
//!    agent's completed tasks of its kind) times its total (1 unit without one). The
//!    source is kept with the estimate (`task show`).

use crate::clock;
use crate::config::Config;
use crate::engine::ingest;
use crate::root::Root;
use crate::store::agents::{self as store_agents, AssignEntry};
use crate::store::tasks::{self as store_tasks, TaskKind, TaskStatus};
use crate::work::tasks::{self, AddTask, State};
use anyhow::Result;
use rusqlite::Connection;
use std::collections::BTreeMap;

/// Runs the assigner once; returns what it did, in order.
pub fn assign(conn: &mut Connection, root: &Root, config: &Config) -> Result<Vec<AssignEntry>> {
    let mut done = Vec::new();
    let agents = root.agents(config)?;
    ingest_tasks(conn, root, &agents, &mut done)?;
    retries(conn, config, &mut done)?;
    templates(conn, config, &mut done)?;
    recurring(conn, &mut done)?;
    estimates(conn, &mut done)?;
    Ok(done)
}

fn log(
    conn: &Connection,
    done: &mut Vec<AssignEntry>,
    action: &str,
    agent: &str,
    task: &str,
    detail: String,
) -> Result<()> {
    let e = AssignEntry {
        at: clock::now_rfc3339(),
        action: action.to_string(),
        agent: Some(agent.to_string()),
        task_id: Some(task.to_string()),
        detail,
    };
    tracing::info!(action, agent, task, "assign: {}", e.detail);
    store_agents::log_assign(conn, &e)?;
    if store_tasks::exists(conn, task)? {
        crate::work::history::task_event(
            conn,
            task,
            &crate::work::history::Actor::assigner(),
            action,
            e.detail.clone(),
        )?;
    }
    done.push(e);
    Ok(())
}

/// Files waiting in an agent's inbox get an ingest task, unless one is open already.
fn ingest_tasks(
    conn: &mut Connection,
    root: &Root,
    agents: &[String],
    done: &mut Vec<AssignEntry>,
) -> Result<()> {
    let mut waiting: BTreeMap<String, usize> = BTreeMap::new();
    for job in ingest::discover_inbox(&root.inbox(), agents)? {
        *waiting.entry(job.agent).or_default() += 1;
    }
    if waiting.is_empty() {
        return Ok(());
    }
    let open: Vec<String> = store_tasks::open(conn)?
        .into_iter()
        .filter(|t| {
            t.kind == TaskKind::Ingest
                && matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress)
        })
        .map(|t| t.agent)
        .collect();
    for (agent, files) in waiting {
        if open.contains(&agent) {
            continue;
        }
        let base = format!("ingest_{agent}_{}", clock::now().format("%Y%m%d_%H%M%S"));
        let mut id = base.clone();
        let mut n = 1;
        while store_tasks::exists(conn, &id)? {
            n += 1;
            id = format!("{base}_{n}");
        }
        tasks::add(
            conn,
            &AddTask {
                id: id.clone(),
                agent: agent.clone(),
                priority: Some(1),
                description: Some(format!(
                    "Integrate the {files} file(s) waiting in inbox/{agent}/"
                )),
                total: Some(files as u64),
                kind: TaskKind::Ingest,
                ..AddTask::default()
            },
            crate::work::kinds::check,
        )?;
        log(
            conn,
            done,
            "ingest",
            &agent,
            &id,
            format!("{files} file(s) waiting in inbox/{agent}/: added {id}"),
        )?;
    }
    Ok(())
}

/// Failed tasks go back in the queue one priority higher, up to the retry limit.
fn retries(conn: &mut Connection, config: &Config, done: &mut Vec<AssignEntry>) -> Result<()> {
    let limit = config.assign.retry_limit;
    for t in store_tasks::open(conn)?
        .into_iter()
        .filter(|t| t.status == TaskStatus::Failed)
    {
        let reason = t.fail_reason.as_deref().unwrap_or("no reason");
        if t.failures <= limit {
            let priority = (t.priority - 1).max(1);
            tasks::retry(conn, &t.id)?;
            store_tasks::set_priority(conn, &t.id, priority)?;
            log(
                conn,
                done,
                "retry",
                &t.agent,
                &t.id,
                format!(
                    "{} failed ({reason}); queued again at priority {priority} (was {}), retry {} of {limit}",
                    t.id, t.priority, t.failures
                ),
            )?;
        } else if t.needs_review.is_none() {
            let why = format!(
                "failed {} times, past the retry limit of {limit} (last: {reason})",
                t.failures
            );
            store_tasks::flag_review(conn, &t.id, &why)?;
            log(
                conn,
                done,
                "retry_limit",
                &t.agent,
                &t.id,
                format!("{} left failed and flagged for review: {why}", t.id),
            )?;
        }
    }
    Ok(())
}

/// Agents with templates keep `min_ready` ready tasks.
fn templates(conn: &mut Connection, config: &Config, done: &mut Vec<AssignEntry>) -> Result<()> {
    let mut by_agent: BTreeMap<String, Vec<store_tasks::TemplateRow>> = BTreeMap::new();
    for t in store_tasks::templates(conn)?
        .into_iter()
        .filter(|t| t.every.is_none())
    {
        by_agent.entry(t.agent.clone()).or_default().push(t);
    }
    let want = config.assign.min_ready;
    for (agent, mut list) in by_agent {
        let mut ready = tasks::open_views(conn)?
            .iter()
            .filter(|v| {
                v.task.agent == agent && v.state == State::Ready && v.task.kind != TaskKind::Duty
            })
            .count() as u64;
        let mut turn = 0;
        // Templates that could not make a task in a row ({gap_indicators} with no gap
        // free): once it is all of them, the agent waits for the next round.
        let mut idle = 0;
        while ready < want && idle < list.len() {
            let len = list.len();
            let tpl = &mut list[turn % len];
            turn += 1;
            let mut n = tpl.next_n;
            while store_tasks::exists(conn, &tasks::template_id(&tpl.pattern, n))? {
                n += 1;
            }
            let Some(made) = crate::work::gaps::fill(
                conn,
                tasks::template_id(&tpl.pattern, n),
                tpl.description
                    .as_ref()
                    .map(|d| d.replace("{n}", &n.to_string())),
            )?
            else {
                tracing::debug!(
                    agent = agent.as_str(),
                    "template {} needs a coverage gap no task has claimed (perpetual coverage --plan ...)",
                    tpl.pattern
                );
                idle += 1;
                continue;
            };
            idle = 0;
            let id = made.id;
            tasks::add(
                conn,
                &AddTask {
                    id: id.clone(),
                    agent: agent.clone(),
                    priority: Some(tpl.priority),
                    description: made.description,
                    estimated_tokens: tpl.estimated_tokens,
                    total: tpl.total,
                    params: made.params,
                    kind: tpl.kind,
                    ..AddTask::default()
                },
                crate::work::kinds::check,
            )?;
            store_tasks::set_template_of(conn, &id, tpl.id)?;
            tpl.next_n = n + 1;
            store_tasks::set_template_next(conn, tpl.id, tpl.next_n)?;
            ready += 1;
            log(
                conn,
                done,
                "template",
                &agent,
                &id,
                format!(
                    "{agent} had {} ready task(s), fewer than {want}: added {id} from template {}",
                    ready - 1,
                    tpl.pattern
                ),
            )?;
        }
    }
    Ok(())
}

/// Recurring templates add a fresh task once the period since the last one has passed
/// and the last one is complete (or was removed). A template never used adds its first
/// task at once.
fn recurring(conn: &mut Connection, done: &mut Vec<AssignEntry>) -> Result<()> {
    let now = clock::now();
    for tpl in store_tasks::templates(conn)? {
        let Some(text) = &tpl.every else { continue };
        let every = match clock::Every::parse(text) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("template {}: {e:#}; it does not recur", tpl.pattern);
                continue;
            }
        };
        if let Some(last) = tpl
            .last_added_at
            .as_deref()
            .and_then(|t| clock::parse(t).ok())
            && !every.due(last, now)
        {
            continue;
        }
        let previous = match &tpl.last_task {
            Some(t) => store_tasks::get(conn, t)?,
            None => None,
        };
        if previous
            .as_ref()
            .is_some_and(|p| p.status != TaskStatus::Completed)
        {
            continue;
        }
        let mut n = tpl.next_n;
        while store_tasks::exists(conn, &tasks::template_id(&tpl.pattern, n))? {
            n += 1;
        }
        let id = tasks::template_id(&tpl.pattern, n);
        tasks::add(
            conn,
            &AddTask {
                id: id.clone(),
                agent: tpl.agent.clone(),
                priority: Some(tpl.priority),
                description: tpl
                    .description
                    .as_ref()
                    .map(|d| d.replace("{n}", &n.to_string())),
                estimated_tokens: tpl.estimated_tokens,
                total: tpl.total,
                kind: tpl.kind,
                ..AddTask::default()
            },
            crate::work::kinds::check,
        )?;
        store_tasks::set_template_of(conn, &id, tpl.id)?;
        store_tasks::set_template_added(conn, tpl.id, n + 1, &id, &clock::format(now))?;
        let why = match (&previous, &tpl.last_added_at) {
            (Some(p), Some(at)) => format!("{} complete, its period began {at}", p.id),
            (None, Some(at)) => format!("its period began {at}"),
            _ => "the first".to_string(),
        };
        log(
            conn,
            done,
            "recur",
            &tpl.agent,
            &id,
            format!(
                "added {id} from recurring template {} ({}: {why})",
                tpl.pattern, every
            ),
        )?;
    }
    Ok(())
}

/// What an estimate from history is based on.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Tokens for the task.
    pub tokens: u64,
    /// Median tokens per unit of the samples.
    pub per_unit: f64,
    /// Completed tasks it is the median of.
    pub samples: usize,
    /// `template droid_batch_{n}`, or `agent tasks of droid`.
    pub basis: String,
}

impl Estimate {
    /// How `task show` explains it.
    pub fn source(&self, units: u64) -> String {
        format!(
            "history: median {} tokens per unit over {} completed {} × {} unit{}",
            crate::human::thousands(self.per_unit.round() as u64),
            self.samples,
            self.basis,
            crate::human::thousands(units),
            if units == 1 { "" } else { "s" }
        )
    }
}

/// The median of tokens per unit over completed tasks that used tokens: those made from
/// `task`'s template when there are some, else its agent's tasks of its kind (the loop
/// passes the latest [`ESTIMATE_SAMPLE`] of each).
pub fn estimate(all: &[store_tasks::TaskRow], task: &store_tasks::TaskRow) -> Option<Estimate> {
    let done = |t: &&store_tasks::TaskRow| {
        t.status == TaskStatus::Completed && t.tokens_used > 0 && t.id != task.id
    };
    let per_unit =
        |t: &store_tasks::TaskRow| t.tokens_used as f64 / t.total.unwrap_or(1).max(1) as f64;
    let by_template: Vec<f64> = match task.template_id {
        Some(tpl) => all
            .iter()
            .filter(done)
            .filter(|t| t.template_id == Some(tpl))
            .map(per_unit)
            .collect(),
        None => Vec::new(),
    };
    let (samples, basis) = if by_template.is_empty() {
        let v: Vec<f64> = all
            .iter()
            .filter(done)
            .filter(|t| t.agent == task.agent && t.kind == task.kind)
            .map(per_unit)
            .collect();
        (v, format!("{} tasks of {}", task.kind.as_str(), task.agent))
    } else {
        (by_template, "tasks of its template".to_string())
    };
    let m = median(samples.clone())?;
    Some(Estimate {
        tokens: (m * task.total.unwrap_or(1).max(1) as f64).round() as u64,
        per_unit: m,
        samples: samples.len(),
        basis,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Completed tasks an estimate from history looks at: the latest of its template, and
/// the latest of its agent and kind. A bounded sample, so the assigner (run at every
/// round of the loop) costs the same with a long history as with a short one.
const ESTIMATE_SAMPLE: usize = 200;

/// Pending tasks without an estimate get one from history, with its source.
fn estimates(conn: &mut Connection, done: &mut Vec<AssignEntry>) -> Result<()> {
    let candidates: Vec<store_tasks::TaskRow> = store_tasks::open(conn)?
        .into_iter()
        .filter(|t| {
            t.status == TaskStatus::Pending
                && t.estimated_tokens.is_none()
                && t.kind != TaskKind::Ingest
        })
        .collect();
    for t in &candidates {
        let mut history = match t.template_id {
            Some(tpl) => store_tasks::completed_of_template(conn, tpl, ESTIMATE_SAMPLE)?,
            None => Vec::new(),
        };
        // The template's tasks are often the agent's too: each counts once.
        let seen: std::collections::HashSet<String> =
            history.iter().map(|h| h.id.clone()).collect();
        history.extend(
            store_tasks::completed_of(conn, &t.agent, t.kind, ESTIMATE_SAMPLE)?
                .into_iter()
                .filter(|h| !seen.contains(&h.id)),
        );
        let Some(e) = estimate(&history, t) else {
            continue;
        };
        let source = e.source(t.total.unwrap_or(1));
        store_tasks::set_estimate_from(conn, &t.id, e.tokens, &source)?;
        log(
            conn,
            done,
            "estimate",
            &t.agent,
            &t.id,
            format!(
                "{} estimated at {} tokens ({source})",
                t.id,
                crate::human::thousands(e.tokens)
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
