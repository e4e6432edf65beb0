//! `perpetual task ...`: the task stack.

use super::Exit;
use super::output::{cell, print_json, thousands};
use crate::human::progress_text;
use crate::root::Root;
use crate::store::tasks::TaskKind;
use crate::work::history::Actor;
use crate::work::tasks::{self, AddTask, State, TaskView};
use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// The task subcommands.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Add a task to an agent's queue.
    Add {
        /// Task id (letters, digits, `_`, `-`, `.`), e.g. integrate_sessions_101_140. A
        /// backfill's id follows from its range (backfill_sessions_101_187) and may be left out.
        id: Option<String>,
        /// The agent whose queue it joins.
        #[arg(long)]
        agent: String,
        /// 1 runs first; ties go to the older task.
        #[arg(long, default_value_t = tasks::DEFAULT_PRIORITY)]
        priority: i64,
        /// Tasks that must complete first (repeat, or list several).
        #[arg(long, num_args = 1.., value_name = "ID")]
        after: Vec<String>,
        /// What the task is.
        #[arg(long)]
        description: Option<String>,
        /// Tokens it is expected to take (grading compares).
        #[arg(long, value_name = "N")]
        estimated_tokens: Option<u64>,
        /// Units of work in all (progress is DONE/TOTAL).
        #[arg(long, value_name = "N")]
        total: Option<u64>,
        /// Who runs it: the agent's command (`agent`), or `perpetual run` itself:
        /// `ingest` (the agent's inbox), `backfill` (an archive folder, --dir), or the
        /// workbench: `quality`, `near_dups`, `coverage`, `import_db`, `export_rag`,
        /// `export_embeddings`, `import_embeddings`, `split`, `charts` (--params).
        #[arg(long, value_enum, default_value_t = TaskKind::Agent)]
        kind: TaskKind,
        /// backfill: the archive folder (read in place).
        #[arg(long, value_name = "DIR", required_if_eq("kind", "backfill"))]
        dir: Option<PathBuf>,
        /// backfill: only these sessions, e.g. 101-187.
        #[arg(long, value_name = "FIRST-LAST")]
        sessions: Option<crate::work::backfill::SessionRange>,
        /// backfill: token budget of each of its sessions (default: the agent's tokens_per_session).
        #[arg(long, value_name = "N")]
        budget: Option<u64>,
        /// The workbench kinds: the params as JSON, e.g. '{"plan": "examples/indicators.toml"}'
        /// or '{"ratios": "80,10,10", "seed": 7}' (relative paths are made absolute).
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        /// Recurring: once it is complete and this period has passed ("24h", "90m", "7d")
        /// or this daily UTC time has come ("06:00"), the assigner adds a fresh copy
        /// (<id>_2, <id>_3, ...).
        #[arg(long, value_name = "PERIOD")]
        every: Option<String>,
    },
    /// The queue: pending, in-progress and failed tasks in the order they run.
    List {
        /// Only this agent's tasks.
        #[arg(long)]
        agent: Option<String>,
        /// Include completed tasks (the archive).
        #[arg(long)]
        all: bool,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one task: state, dependencies, progress, sessions, grade.
    Show {
        /// Task id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The agent's next ready task (exit status 4 when none is ready).
    Next {
        /// The agent.
        #[arg(long, env = "PERPETUAL_AGENT")]
        agent: String,
        /// Print the task as JSON (`null` when none).
        #[arg(long)]
        json: bool,
    },
    /// Record progress: DONE/TOTAL (or DONE, keeping the total).
    Progress {
        /// Task id.
        id: String,
        /// e.g. 10/40.
        progress: super::ProgressArg,
    },
    /// Mark a task completed: grade it and write task_reports/<task>.md.
    Done {
        /// Task id.
        id: String,
        /// Print the grade as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a task failed; tasks that depend on it become blocked.
    Fail {
        /// Task id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Queue a failed task again, ahead of its old place (front of its priority).
    Retry {
        /// Task id.
        id: String,
    },
    /// Remove a task (refused while another task depends on it).
    Remove {
        /// Task id.
        id: String,
    },
    /// Counts by state, completion rate, tokens estimated against used, grades.
    Stats {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Add every task of a plan file ([[task]] tables) in one transaction.
    Import {
        /// The plan, e.g. examples/plan.toml.
        plan: PathBuf,
        /// Print what was added and kept as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The templates the assigner makes tasks from: queue top-ups and recurring work
    /// (every, the last task made, when the next is due).
    Templates {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Change a task in place: priority, description, estimate, total, dependencies,
    /// agent. All or nothing: a dependency cycle, or moving a task a session works on, is
    /// refused and changes nothing. Every change goes into the task's history (`task show`).
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args([
        "priority", "description", "estimated_tokens", "total", "after", "no_after", "agent"
    ])))]
    Edit {
        /// Task id.
        id: String,
        /// New priority; 1 runs first.
        #[arg(long, value_name = "N")]
        priority: Option<i64>,
        /// New description ("" clears it).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// New token estimate (0 clears it).
        #[arg(long, value_name = "N")]
        estimated_tokens: Option<u64>,
        /// New total of units (not below the units done).
        #[arg(long, value_name = "N")]
        total: Option<u64>,
        /// Add dependencies: tasks that must complete first (repeat, or list several).
        #[arg(long, num_args = 1.., value_name = "ID")]
        after: Vec<String>,
        /// Remove dependencies.
        #[arg(long, num_args = 1.., value_name = "ID")]
        no_after: Vec<String>,
        /// Move the task to this agent's queue (refused while a session works on it).
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// Print the changes and the task as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A task's review flag: show it, or clear it once a person has looked (--clear); the
    /// flag's reason and the note stay in the task's history.
    Review {
        /// Task id.
        id: String,
        /// Clear the flag.
        #[arg(long)]
        clear: bool,
        /// What the person found or decided (kept in the history; with --clear).
        #[arg(long, value_name = "TEXT", requires = "clear")]
        note: Option<String>,
    },
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, mut conn) = super::open(root)?;
    match args.command {
        TaskCommand::Add {
            id,
            agent,
            priority,
            after,
            description,
            estimated_tokens,
            total,
            kind,
            dir,
            sessions,
            budget,
            params: json_params,
            every,
        } => {
            if let Some(e) = &every {
                crate::clock::Every::parse(e)?;
            }
            anyhow::ensure!(
                json_params.is_none() || crate::work::workbench::is_workbench(kind),
                "--params describes a workbench task (--kind quality, near_dups, coverage, import_db, export_rag, export_embeddings, import_embeddings, split or charts)"
            );
            let json_params = json_params
                .map(|text| -> Result<serde_json::Value> {
                    let mut v: serde_json::Value =
                        serde_json::from_str(&text).context("--params is not JSON")?;
                    crate::work::workbench::absolute_paths(&mut v)?;
                    Ok(v)
                })
                .transpose()?;
            let params = match kind {
                TaskKind::Backfill => {
                    let dir = dir.ok_or_else(|| {
                        super::UsageError("a backfill task needs --dir".to_string())
                    })?;
                    anyhow::ensure!(dir.is_dir(), "{} is not a folder", dir.display());
                    Some(crate::work::backfill::Params {
                        dir: dir.canonicalize()?,
                        sessions,
                        budget,
                    })
                }
                _ => {
                    if dir.is_some() || sessions.is_some() || budget.is_some() {
                        return Err(super::UsageError(
                            "--dir, --sessions and --budget describe a backfill task (--kind backfill)"
                                .to_string(),
                        )
                        .into());
                    }
                    None
                }
            };
            let id = match (id, &params) {
                (Some(id), _) => id,
                (None, Some(p)) => crate::work::backfill::task_id(p.sessions, &p.dir),
                (None, None) => {
                    return Err(super::UsageError(
                        "the task needs an id: `perpetual task add ID --agent A` (only a backfill's id follows from its range)"
                            .to_string(),
                    )
                    .into());
                }
            };
            tasks::add(
                &mut conn,
                &AddTask {
                    id: id.clone(),
                    agent,
                    priority: Some(priority),
                    after,
                    description,
                    estimated_tokens,
                    total,
                    kind,
                    params: params.map(|p| p.to_json()).or(json_params),
                },
                crate::work::kinds::check,
            )?;
            if let Some(e) = &every {
                tasks::recur(&mut conn, &id, e)?;
            }
            let v = tasks::view(&conn, &id)?;
            crate::work::history::task_event(
                &conn,
                &id,
                &Actor::from_env(),
                "add",
                format!(
                    "added to {}'s queue at priority {}",
                    v.task.agent, v.task.priority
                ),
            )?;
            println!(
                "added {} to {}'s queue (priority {}): {}{}",
                id,
                v.task.agent,
                v.task.priority,
                state_text(&v),
                every
                    .map(|e| format!("; recurs ({e}) once complete"))
                    .unwrap_or_default()
            );
        }
        TaskCommand::List { agent, all, json } => {
            let views = tasks::list(&conn, agent.as_deref(), all)?;
            if json {
                print_json(&views)?;
            } else {
                print_list(&views);
            }
        }
        TaskCommand::Show { id, json } => {
            let v = tasks::view(&conn, &id)?;
            let sessions = crate::store::sessions::of_task(&conn, &id)?;
            let dependents = crate::store::tasks::dependents(&conn, &id)?;
            let last_checkpoint = crate::store::sessions::last_checkpoint_of_task(&conn, &id)?;
            let report = root.reports_dir().join(format!("{id}.md"));
            let history = crate::store::history::task_events(&conn, &id)?;
            let shown = Shown {
                task: &v,
                dependents: &dependents,
                session_list: &sessions,
                last_checkpoint: last_checkpoint.as_ref(),
                report: report.is_file().then_some(&report),
                history: &history,
            };
            if json {
                print_json(&shown)?;
            } else {
                print_show(&shown);
            }
        }
        TaskCommand::Next { agent, json } => {
            let next = tasks::next(&conn, &agent)?;
            if json {
                print_json(&next)?;
            }
            match next {
                Some(v) => {
                    if !json {
                        println!(
                            "{} (priority {}){}",
                            v.task.id,
                            v.task.priority,
                            v.task
                                .description
                                .as_deref()
                                .map(|d| format!(": {d}"))
                                .unwrap_or_default()
                        );
                    }
                }
                None => {
                    if !json {
                        print_nothing_ready(&conn, &agent)?;
                    }
                    return Ok(Exit::Nothing);
                }
            }
        }
        TaskCommand::Progress { id, progress } => {
            let t = tasks::set_progress(&conn, &id, progress.done, progress.total)?;
            println!("{id}: {}", progress_text(t.done, t.total));
        }
        TaskCommand::Done { id, json } => {
            let c = tasks::complete(&mut conn, root, &config, &id)?;
            if json {
                print_json(&c)?;
            } else {
                println!(
                    "completed {id}: grade {} ({:.2}); report {}",
                    c.grade.letter,
                    c.grade.score,
                    c.report.display()
                );
                let unblocked: Vec<String> = tasks::open_views(&conn)?
                    .into_iter()
                    .filter(|v| v.state == State::Ready && v.task.depends_on.contains(&id))
                    .map(|v| v.task.id)
                    .collect();
                if !unblocked.is_empty() {
                    println!("now ready: {}", unblocked.join(", "));
                }
            }
        }
        TaskCommand::Fail { id, reason } => {
            tasks::fail(&conn, &id, &reason)?;
            println!("{id} failed: {}", reason.trim());
            let blocked: Vec<String> = tasks::open_views(&conn)?
                .into_iter()
                .filter(|v| v.state == State::Blocked && v.blocked_by.as_deref() == Some(&id))
                .map(|v| v.task.id)
                .collect();
            if !blocked.is_empty() {
                println!("now blocked: {}", blocked.join(", "));
            }
        }
        TaskCommand::Retry { id } => {
            tasks::retry(&conn, &id)?;
            let v = tasks::view(&conn, &id)?;
            println!(
                "{id} queued again at the front of priority {}: {}",
                v.task.priority,
                state_text(&v)
            );
        }
        TaskCommand::Remove { id } => {
            tasks::remove(&mut conn, &id)?;
            println!("removed {id}");
        }
        TaskCommand::Stats { json } => {
            let s = tasks::stats(&conn)?;
            if json {
                print_json(&s)?;
            } else {
                print_stats(&s);
            }
        }
        TaskCommand::Import { plan, json } => {
            let text = std::fs::read_to_string(&plan)
                .with_context(|| format!("cannot read {}", plan.display()))?;
            let report = tasks::import(&mut conn, &text, crate::work::kinds::check)
                .with_context(|| format!("cannot import {}", plan.display()))?;
            let actor = Actor::from_env();
            for id in &report.added {
                crate::work::history::task_event(
                    &conn,
                    id,
                    &actor,
                    "add",
                    format!("imported from {}", plan.display()),
                )?;
            }
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "imported {} task{} from {}{}",
                    report.added.len(),
                    if report.added.len() == 1 { "" } else { "s" },
                    plan.display(),
                    if report.kept.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} already stored, kept)", report.kept.len())
                    }
                );
            }
        }
        TaskCommand::Edit {
            id,
            priority,
            description,
            estimated_tokens,
            total,
            after,
            no_after,
            agent,
            json,
        } => {
            let changes = tasks::edit(
                &mut conn,
                &id,
                &tasks::Edit {
                    priority,
                    description,
                    estimated_tokens,
                    total,
                    after,
                    no_after,
                    agent,
                },
                &Actor::from_env(),
            )?;
            let v = tasks::view(&conn, &id)?;
            if json {
                #[derive(Serialize)]
                struct Edited<'a> {
                    changes: &'a [tasks::Change],
                    task: &'a TaskView,
                }
                print_json(&Edited {
                    changes: &changes,
                    task: &v,
                })?;
            } else if changes.is_empty() {
                println!("{id} unchanged: it already had those values");
            } else {
                println!("edited {id}:");
                for c in &changes {
                    println!("  {}", c.text());
                }
                println!("{id} is {} in {}'s queue", state_text(&v), v.task.agent);
            }
        }
        TaskCommand::Templates { json } => {
            let list = tasks::templates(&conn)?;
            if json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("no templates (`[[template]]` in a plan, or `task add --every`)");
            } else {
                for t in &list {
                    println!(
                        "{}  {}  {} ({}, priority {}){}",
                        cell(&t.template.agent, 12),
                        cell(&t.template.pattern, 40),
                        t.schedule,
                        t.template.kind.as_str(),
                        t.template.priority,
                        match (&t.template.last_task, &t.next_due) {
                            (Some(l), Some(n)) => format!("; last {l}, next due {n}"),
                            (Some(l), None) => format!("; last {l}"),
                            (None, _) => String::new(),
                        }
                    );
                }
            }
        }
        TaskCommand::Review { id, clear, note } => {
            if clear {
                let was = tasks::clear_review(&mut conn, &id, note.as_deref(), &Actor::from_env())?;
                println!("review flag cleared on {id} (it said: {was})");
                let t = tasks::get(&conn, &id)?;
                if let Some(p) = crate::store::agents::pause_of(&conn, &t.agent)? {
                    println!(
                        "{} is still paused ({}): `perpetual agent resume {}` lets it run again",
                        t.agent, p.reason, t.agent
                    );
                }
            } else {
                let t = tasks::get(&conn, &id)?;
                match &t.needs_review {
                    Some(r) => println!(
                        "{id} needs review: {r}\n(`perpetual task review {id} --clear --note TEXT` clears it)"
                    ),
                    None => println!("{id} is not flagged for review"),
                }
            }
        }
    }
    Ok(Exit::Ok)
}

/// What `task show` prints.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    task: &'a TaskView,
    dependents: &'a [String],
    /// The sessions themselves; the flattened task already has `sessions`, their count.
    session_list: &'a [crate::store::sessions::SessionRow],
    last_checkpoint: Option<&'a crate::store::sessions::CheckpointRow>,
    report: Option<&'a PathBuf>,
    history: &'a [crate::store::history::TaskEvent],
}

fn state_text(v: &TaskView) -> String {
    match &v.why {
        Some(why) => format!("{} ({why})", v.state.as_str()),
        None => v.state.as_str().to_string(),
    }
}

fn print_list(views: &[TaskView]) {
    if views.is_empty() {
        println!("no tasks (`perpetual task add` or `perpetual task import PLAN.toml`)");
        return;
    }
    println!(
        "{}  {}  {:>4}  {}  {}  {:>19}  grade  note",
        cell("agent", 12),
        cell("task", 34),
        "prio",
        cell("state", 11),
        cell("progress", 15),
        "tokens used / est"
    );
    for v in views {
        let t = &v.task;
        let mut notes = Vec::new();
        if t.kind.is_builtin() {
            notes.push(format!("{} (run by `perpetual run`)", t.kind.as_str()));
        }
        if t.kind == TaskKind::Duty {
            notes.push("standing duty (one session)".to_string());
        }
        if let Some(why) = &v.why {
            notes.push(why.clone());
        }
        if let Some(r) = &t.needs_review {
            notes.push(format!("needs review: {r}"));
        }
        if v.state == State::Failed {
            notes.push(format!(
                "failed: {}",
                t.fail_reason.as_deref().unwrap_or("no reason")
            ));
        }
        println!(
            "{}  {}  {:>4}  {}  {}  {:>19}  {}  {}",
            cell(&t.agent, 12),
            cell(&t.id, 34),
            t.priority,
            cell(v.state.as_str(), 11),
            cell(&progress_text(t.done, t.total), 15),
            format!(
                "{} / {}",
                thousands(t.tokens_used),
                t.estimated_tokens.map_or("-".to_string(), thousands)
            ),
            cell(t.grade.as_ref().map_or("-", |g| g.letter.as_str()), 5),
            notes.join("; ")
        );
    }
}

fn print_show(s: &Shown<'_>) {
    let v = s.task;
    let t = &v.task;
    println!("task         {}", t.id);
    println!("agent        {}", t.agent);
    println!("priority     {}", t.priority);
    if t.kind == TaskKind::Duty {
        println!("kind         duty (a standing duty: one session completes it)");
    }
    if t.kind.is_builtin() {
        println!(
            "kind         {} (run by `perpetual run`){}",
            t.kind.as_str(),
            t.params
                .as_ref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        );
    }
    if let Some(d) = &t.description {
        println!("description  {d}");
    }
    println!("state        {}", state_text(v));
    println!("progress     {}", progress_text(t.done, t.total));
    println!(
        "tokens       {} used over {} session{}, {} estimated{}",
        thousands(t.tokens_used),
        t.sessions,
        if t.sessions == 1 { "" } else { "s" },
        t.estimated_tokens.map_or("none".to_string(), thousands),
        t.estimate_source
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    if !t.depends_on.is_empty() {
        println!("after        {}", t.depends_on.join(", "));
    }
    if !s.dependents.is_empty() {
        println!("before       {}", s.dependents.join(", "));
    }
    if t.failures > 0 {
        println!(
            "failures     {} (last: {})",
            t.failures,
            t.fail_reason.as_deref().unwrap_or("no reason")
        );
    }
    if let Some(r) = &t.needs_review {
        println!("needs review {r}");
    }
    println!("created      {}", t.created_at);
    if let Some(x) = &t.started_at {
        println!("started      {x}");
    }
    if let Some(x) = &t.finished_at {
        println!("finished     {x}");
    }
    if let Some(g) = &t.grade {
        println!(
            "grade        {} ({:.2}) = 0.3 × success {:.2} + 0.2 × speed {:.2} + 0.3 × quality {:.2} + 0.2 × efficiency {:.2}",
            g.letter, g.score, g.success_rate, g.speed, g.quality, g.efficiency
        );
    }
    if let Some(r) = s.report {
        println!("report       {}", r.display());
    }
    if let Some(c) = s.last_checkpoint {
        println!("checkpoint   {}", c.summary());
    }
    for x in s.session_list {
        println!(
            "session      {} {} {}, {} tokens{}",
            x.id,
            x.status,
            x.started_at,
            thousands(x.tokens_used),
            x.level
                .map(|l| format!(", wrapped at {}", l.as_str()))
                .unwrap_or_default()
        );
    }
    for h in s.history {
        println!(
            "history      {}  {}  {}: {}",
            h.at, h.actor, h.action, h.detail
        );
    }
}

fn print_stats(s: &tasks::Stats) {
    let by = |k: &str| s.by_state.get(k).copied().unwrap_or(0);
    println!(
        "tasks       {}: {} ready, {} waiting, {} blocked, {} in progress, {} completed, {} failed",
        s.tasks,
        by("ready"),
        by("waiting"),
        by("blocked"),
        by("in_progress"),
        by("completed"),
        by("failed")
    );
    println!("completion  {:.1}%", s.completion_rate);
    println!(
        "tokens      {} used of {} estimated (completed tasks: {} used of {} estimated)",
        thousands(s.tokens_used),
        thousands(s.tokens_estimated),
        thousands(s.completed_tokens_used),
        thousands(s.completed_tokens_estimated)
    );
    let grades: Vec<String> = s.grades.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!(
        "grades      {}{}",
        grades.join(", "),
        s.mean_score
            .map(|m| format!(" (mean score {m:.2})"))
            .unwrap_or_default()
    );
    if s.needs_review > 0 {
        println!("review      {} task(s) need review", s.needs_review);
    }
}

/// Explains why an agent has nothing ready: what its pending tasks wait for.
pub(super) fn print_nothing_ready(conn: &rusqlite::Connection, agent: &str) -> Result<()> {
    let waiting: Vec<TaskView> = tasks::open_views(conn)?
        .into_iter()
        .filter(|v| v.task.agent == agent && matches!(v.state, State::Waiting | State::Blocked))
        .collect();
    println!("no ready task for {agent}");
    for v in waiting {
        println!("  {}: {}", v.task.id, state_text(&v));
    }
    Ok(())
}
