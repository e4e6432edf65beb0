//! `perpetual session ...`: budgeted sessions (start, checkpoint, status, list, wrap).

use super::Exit;
use super::output::{bar, cell, print_json, thousands};
use crate::budget::{Kind, Usage};
use crate::human::progress_text;
use crate::root::Root;
use crate::work::session::{
    self, Brief, CheckpointInput, NoActiveSession, StartOptions, StartOutcome, StepStatus,
    WrapInput,
};
use crate::work::tasks;
use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SessionCommand,
}

/// Which session a command means: --session, else --agent's only active session, else
/// PERPETUAL_SESSION, else the only active session.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// The session id.
    #[arg(long)]
    pub session: Option<String>,
    /// The agent whose (only) active session is meant.
    #[arg(long)]
    pub agent: Option<String>,
}

/// The session subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session: resume the agent's task in progress, else take its next ready
    /// task; print the brief. Exit 4: no ready task; exit 5: budget exhausted.
    Start {
        /// The agent.
        #[arg(long, env = "PERPETUAL_AGENT")]
        agent: String,
        /// A particular task instead of the next one.
        #[arg(long)]
        task: Option<String>,
        /// Token budget of this session (default: the agent's tokens_per_session).
        #[arg(long, value_name = "N")]
        budget: Option<u64>,
        /// Print the brief as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record progress, tokens and API calls; print the budget level.
    Checkpoint {
        #[command(flatten)]
        which: Which,
        /// Task progress, DONE/TOTAL (or DONE).
        #[arg(long)]
        progress: Option<super::ProgressArg>,
        /// Tokens the session has used so far.
        #[arg(long, value_name = "N")]
        tokens: Option<u64>,
        /// API calls made since the previous checkpoint (counted toward today, UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        api_calls: u64,
        /// What was done.
        #[arg(long)]
        note: Option<String>,
        /// Print the checkpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The current session: task, progress, checkpoints, budget (exit 4 when none is active).
    Status {
        #[command(flatten)]
        which: Which,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every session, newest first.
    List {
        /// Only this agent's sessions.
        #[arg(long)]
        agent: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Wrap the session: save progress, back up the database, write the handoff, commit
    /// the outputs, archive the session.
    Wrap {
        #[command(flatten)]
        which: Which,
        /// The session's final token count.
        #[arg(long, value_name = "N")]
        tokens: Option<u64>,
        /// The task's final progress, DONE/TOTAL; full progress completes the task.
        #[arg(long)]
        progress: Option<super::ProgressArg>,
        /// What the next session should do first.
        #[arg(long, value_name = "TEXT")]
        next: Option<String>,
        /// Print the wrap report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, mut conn) = super::open(root)?;
    match args.command {
        SessionCommand::Start {
            agent,
            task,
            budget,
            json,
        } => {
            let outcome = session::start(
                &mut conn,
                &config,
                &StartOptions {
                    agent: agent.clone(),
                    task,
                    token_budget: budget,
                    loop_run: false,
                },
            )?;
            if json {
                print_json(&outcome)?;
            }
            match outcome {
                StartOutcome::Started(brief) => {
                    if !json {
                        print_brief(&brief);
                    }
                    Ok(Exit::Ok)
                }
                StartOutcome::NothingReady { pending, .. } => {
                    if !json {
                        println!("no ready task for {agent}; no session started");
                        for v in pending {
                            let why = match v.state {
                                tasks::State::InProgress => {
                                    "in progress in another active session".to_string()
                                }
                                _ => v.why.unwrap_or_else(|| v.state.as_str().to_string()),
                            };
                            println!("  {}: {why}", v.task.id);
                        }
                    }
                    Ok(Exit::Nothing)
                }
                StartOutcome::OverBudget {
                    usage, resets_at, ..
                } => {
                    if !json {
                        println!(
                            "{agent}'s budget is at the {} level: {}; no session started{}",
                            usage.level.as_str(),
                            usage_text(&usage),
                            match (usage.kind, resets_at) {
                                (Kind::ApiCalls, Some(r)) => format!(" (resets at {r})"),
                                (Kind::Slots, _) =>
                                    " (wrap an active session to free a slot)".to_string(),
                                _ => String::new(),
                            }
                        );
                    }
                    Ok(Exit::OverBudget)
                }
            }
        }
        SessionCommand::Checkpoint {
            which,
            progress,
            tokens,
            api_calls,
            note,
            json,
        } => {
            let progress = progress.map(|p| (p.done, p.total));
            let s = session::current(&conn, which.session.as_deref(), which.agent.as_deref())?;
            let r = session::checkpoint(
                &mut conn,
                &config,
                &s.id,
                &CheckpointInput {
                    progress,
                    tokens,
                    api_calls,
                    note,
                },
            )?;
            if json {
                print_json(&r)?;
                return Ok(Exit::Ok);
            }
            println!(
                "checkpoint {} of {}{}{}",
                r.number,
                r.session_id,
                r.task
                    .as_ref()
                    .map(|t| format!(": {} at {}", t.id, progress_text(t.done, t.total)))
                    .unwrap_or_default(),
                r.checkpoint
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            print_usage(&r.usage);
            let level = level_text(r.level, r.binding.as_ref());
            if r.wrap_now {
                println!("WRAP NOW  level {level}: {}", r.action);
            } else {
                println!("level     {level}: {}", r.action);
            }
            Ok(Exit::Ok)
        }
        SessionCommand::Status { which, json } => {
            let s = match session::current(&conn, which.session.as_deref(), which.agent.as_deref())
            {
                Ok(s) => s,
                Err(e) => {
                    if let Some(none) = e.downcast_ref::<NoActiveSession>() {
                        if json {
                            print_json(&serde_json::Value::Null)?;
                        } else {
                            println!("{none}");
                        }
                        return Ok(Exit::Nothing);
                    }
                    return Err(e);
                }
            };
            let st = session::status(&conn, &config, &s.id)?;
            if json {
                print_json(&st)?;
                return Ok(Exit::Ok);
            }
            println!(
                "session   {} ({}), {} since {}, {}",
                st.session.id,
                st.session.agent,
                st.session.status,
                st.session.started_at,
                crate::clock::human_duration(st.elapsed_seconds)
            );
            if let Some(v) = &st.task {
                println!(
                    "task      {}: {}",
                    v.task.id,
                    progress_text(v.task.done, v.task.total)
                );
            }
            println!("checkpoints {}", st.checkpoints.len());
            for c in &st.checkpoints {
                println!(
                    "  {}  {}  {}  {}",
                    c.at,
                    c.done
                        .map_or("-".to_string(), |d| progress_text(d, c.total)),
                    c.tokens
                        .map_or("-".to_string(), |t| format!("{} tokens", thousands(t))),
                    c.note.as_deref().unwrap_or("")
                );
            }
            print_usage(&st.usage);
            if let Some(u) = &st.slots {
                println!("          {}", usage_text(u));
            }
            println!(
                "level     {}: {}",
                level_text(st.level, st.binding.as_ref()),
                st.action
            );
            Ok(Exit::Ok)
        }
        SessionCommand::List { agent, json } => {
            let rows = crate::store::sessions::list(&conn, agent.as_deref())?;
            if json {
                print_json(&rows)?;
                return Ok(Exit::Ok);
            }
            if rows.is_empty() {
                println!("no sessions (`perpetual session start --agent AGENT`)");
                return Ok(Exit::Ok);
            }
            println!(
                "{}  {}  {}  {}  {}  {:>9}  level",
                cell("session", 28),
                cell("agent", 12),
                cell("task", 30),
                cell("status", 7),
                cell("started", 20),
                "tokens"
            );
            for s in rows {
                println!(
                    "{}  {}  {}  {}  {}  {:>9}  {}",
                    cell(&s.id, 28),
                    cell(&s.agent, 12),
                    cell(s.task_id.as_deref().unwrap_or("-"), 30),
                    cell(&s.status, 7),
                    cell(&s.started_at, 20),
                    thousands(s.tokens_used),
                    s.level.map_or("-", |l| l.as_str())
                );
            }
            Ok(Exit::Ok)
        }
        SessionCommand::Wrap {
            which,
            tokens,
            progress,
            next,
            json,
        } => {
            let progress = progress.map(|p| (p.done, p.total));
            let s = session::current(&conn, which.session.as_deref(), which.agent.as_deref())?;
            // A wrap half done (archived, no handoff, no commit) is worse than one that
            // finishes a moment late: SIGTERM and SIGINT are ignored until it is complete;
            // the loop's SIGKILL, term_secs later, still ends it. The git it runs is kept
            // out of the session's signals instead (`work::vcs::git`): git's own handler
            // would override an inherited "ignore" and go on without its lock files.
            #[cfg(unix)]
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
            }
            let r = session::wrap(
                &mut conn,
                root,
                &config,
                &s.id,
                &WrapInput {
                    tokens,
                    progress,
                    next,
                },
            )?;
            let failed = r.steps.iter().any(|s| s.status == StepStatus::Failed);
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "wrapped {} ({}) after {} at the {} level",
                    r.session.id,
                    r.session.agent,
                    crate::clock::human_duration(r.duration_seconds),
                    r.level.as_str()
                );
                if let Some(t) = &r.task {
                    println!("task      {}: {}", t.id, progress_text(t.done, t.total));
                }
                print_usage(&r.usage);
                println!(
                    "pairs     {} integrated by the session",
                    thousands(r.pairs_integrated)
                );
                if let Some(reason) = &r.needs_review {
                    println!("REVIEW    the task is flagged for review: {reason}");
                }
                println!("steps");
                for s in &r.steps {
                    let status = match s.status {
                        StepStatus::Done => "done",
                        StepStatus::Skipped => "skipped",
                        StepStatus::Failed => "FAILED",
                    };
                    println!("  {}  {}  {}", cell(s.step, 8), cell(status, 7), s.detail);
                }
                println!("next      {}", r.next_action);
            }
            Ok(if failed { Exit::Partial } else { Exit::Ok })
        }
    }
}

fn print_brief(b: &Brief) {
    let s = &b.session;
    let t = &b.task.task;
    println!("session   {} ({}), started {}", s.id, s.agent, s.started_at);
    println!(
        "task      {} (priority {}){}",
        t.id,
        t.priority,
        if b.resumed { ", resumed" } else { ", new" }
    );
    if let Some(d) = &t.description {
        println!("          {d}");
    }
    println!("progress  {}", progress_text(t.done, t.total));
    if let Some(r) = &t.needs_review {
        println!("review    needs review: {r}");
    }
    if let Some(c) = &b.last_checkpoint {
        println!("last checkpoint  {}", c.summary());
    }
    if let Some(p) = &b.previous {
        if let Some(n) = &p.next_action {
            println!("next action  {n}");
        }
        if let Some(h) = &p.handoff_path {
            println!("handoff   {h}");
        }
    }
    print_usage(&b.usage);
    if let Some(u) = &b.slots {
        println!("          {}", usage_text(u));
    }
    let mut kinds: Vec<Kind> = b.usage.iter().map(|u| u.kind).collect();
    kinds.extend(b.slots.map(|u| u.kind));
    let at: Vec<String> = kinds
        .iter()
        .map(|k| {
            format!(
                "{} at {}%",
                k.label(),
                crate::budget::short_percent(b.thresholds.of(*k).wrap)
            )
        })
        .collect();
    println!(
        "wrap      {} (`perpetual session checkpoint` reports the level)",
        if at.is_empty() {
            format!(
                "at {}% of any budget",
                crate::budget::short_percent(b.thresholds.wrap)
            )
        } else {
            at.join(", ")
        }
    );
}

/// `wrap (slots 9/10, 90%: wrap)`: the level and, past healthy, the kind that set it.
fn level_text(level: crate::budget::Level, binding: Option<&Usage>) -> String {
    match binding {
        Some(u) if level > crate::budget::Level::Healthy => {
            format!("{} ({})", level.as_str(), u.headline())
        }
        _ => level.as_str().to_string(),
    }
}

fn print_usage(usage: &[Usage]) {
    for (i, u) in usage.iter().enumerate() {
        println!(
            "{}{} {}",
            if i == 0 { "budget    " } else { "          " },
            usage_text(u),
            bar(u.percent / 100.0, 20)
        );
    }
    if usage.is_empty() {
        println!("budget    no limits");
    }
}

fn usage_text(u: &Usage) -> String {
    format!("{} {}", u.kind.label(), u.amount())
}
