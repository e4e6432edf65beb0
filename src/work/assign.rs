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
//!    `assign.min_ready` ready tasks: new ones are made from its templates in turn.

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
    let open: Vec<String> = store_tasks::all(conn)?
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
    for t in store_tasks::all(conn)?
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
    for t in store_tasks::templates(conn)? {
        by_agent.entry(t.agent.clone()).or_default().push(t);
    }
    let want = config.assign.min_ready;
    for (agent, mut list) in by_agent {
        let mut ready = tasks::open_views(conn)?
            .iter()
            .filter(|v| v.task.agent == agent && v.state == State::Ready)
            .count() as u64;
        let mut turn = 0;
        while ready < want {
            let len = list.len();
            let tpl = &mut list[turn % len];
            turn += 1;
            let mut n = tpl.next_n;
            while store_tasks::exists(conn, &tasks::template_id(&tpl.pattern, n))? {
                n += 1;
            }
            let id = tasks::template_id(&tpl.pattern, n);
            tasks::add(
                conn,
                &AddTask {
                    id: id.clone(),
                    agent: agent.clone(),
                    priority: Some(tpl.priority),
                    description: tpl
                        .description
                        .as_ref()
                        .map(|d| d.replace("{n}", &n.to_string())),
                    estimated_tokens: tpl.estimated_tokens,
                    total: tpl.total,
                    ..AddTask::default()
                },
                crate::work::kinds::check,
            )?;
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
