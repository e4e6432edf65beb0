//! Which commands change what the machine works on, and their record: each one that
//! completes is written to the `commands` table with who ran it
//! (`crate::work::history::Actor`), so the daily report can tell a person's
//! interventions from what agents ran in their sessions.

use super::Command;
use super::agent::AgentCommand;
use super::session::SessionCommand;
use super::task::TaskCommand;
use crate::root::Root;
use crate::work::history::{self, Actor};

/// The command in words (`task edit build_x`) when it is one that steers the machine:
/// the task stack's changes, `agent pause|resume`, sessions by hand, `backfill`. Reads
/// (`list`, `show`, `status`, ...) and the loop itself are not recorded.
pub fn describe(command: &Command) -> Option<String> {
    Some(match command {
        Command::Task(a) => match &a.command {
            TaskCommand::Add { id, agent, .. } => {
                format!("task add {} --agent {agent}", id.as_deref().unwrap_or("-"))
            }
            TaskCommand::Edit { id, .. } => format!("task edit {id}"),
            TaskCommand::Review {
                id, clear: true, ..
            } => format!("task review {id} --clear"),
            TaskCommand::Progress { id, progress } => format!("task progress {id} {progress}"),
            TaskCommand::Done { id, .. } => format!("task done {id}"),
            TaskCommand::Fail { id, .. } => format!("task fail {id}"),
            TaskCommand::Retry { id } => format!("task retry {id}"),
            TaskCommand::Remove { id } => format!("task remove {id}"),
            TaskCommand::Import { plan, .. } => format!("task import {}", plan.display()),
            _ => return None,
        },
        Command::Agent(a) => match &a.command {
            AgentCommand::Resume { agent } => format!("agent resume {agent}"),
            AgentCommand::Pause { agent, .. } => format!("agent pause {agent}"),
        },
        Command::Session(a) => match &a.command {
            SessionCommand::Start { agent, .. } => format!("session start --agent {agent}"),
            SessionCommand::Checkpoint { .. } => "session checkpoint".to_string(),
            SessionCommand::Wrap { .. } => "session wrap".to_string(),
            _ => return None,
        },
        Command::Backfill(a) => format!("backfill {} --agent {}", a.dir.display(), a.agent),
        Command::ImportDb(a) => format!("import-db {} --agent {}", a.path.display(), a.agent),
        _ => return None,
    })
}

/// Records a command that ran, with who ran it. A failure to record is logged, never
/// turned into the command's failure: the command did its work.
pub fn record(root: &Root, command: &str) {
    let actor = Actor::from_env();
    let result = crate::store::open(&root.db_path())
        .and_then(|conn| history::record_command(&conn, &actor, command));
    if let Err(e) = result {
        tracing::warn!("cannot record `{command}` in the command log: {e:#}");
    }
}
