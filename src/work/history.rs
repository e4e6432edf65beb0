//! Who did it: a person at a terminal, an agent working in a session, or the machine
//! itself (the assigner, the loop), and the record of what each did.
//!
//! A command knows who runs it from its environment:
//!
//! - `PERPETUAL_SESSION` set: an agent working in that session. `perpetual run` sets it
//!   for every command it starts, so everything an agent runs is the agent's.
//! - else `PERPETUAL_ACTOR` set: automation that is not a person (a cron job, CI), named
//!   by its value.
//! - else a person, named by `$USER` when it is set.
//!
//! Only a person's commands count as interventions; the daily report's "hours without
//! human intervention" is the longest stretch between two of them. What the loop does
//! in-process (assigner, breaker, recurring tasks, estimates) never goes through a
//! command and is recorded under its own name (`assigner`, `loop`).

use crate::clock;
use crate::store::history::{self as store, CommandRow, TaskEvent};
use anyhow::Result;
use rusqlite::Connection;

/// The environment variable naming automation that is not a person (`cron`, `ci`).
pub const ACTOR_ENV: &str = "PERPETUAL_ACTOR";

/// The session's variable (`work::session::SESSION_ENV`, spelled out here so that this
/// module stays below the task stack, which records its edits through it).
const SESSION_ENV: &str = "PERPETUAL_SESSION";

/// Who runs a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person at a terminal (their user name, when known).
    Person(Option<String>),
    /// An agent working in this session (`PERPETUAL_SESSION`).
    Session(String),
    /// Automation named by `PERPETUAL_ACTOR`, or the loop's own parts (`assigner`).
    Machine(String),
}

impl Actor {
    /// Who runs this process, from its environment (see the module documentation).
    pub fn from_env() -> Actor {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(s) = var(SESSION_ENV) {
            Actor::Session(s)
        } else if let Some(a) = var(ACTOR_ENV) {
            Actor::Machine(a)
        } else {
            Actor::Person(var("USER").or_else(|| var("LOGNAME")))
        }
    }

    /// The assigner, as its changes are recorded.
    pub fn assigner() -> Actor {
        Actor::Machine("assigner".to_string())
    }

    /// Whether a person runs it: what counts as an intervention.
    pub fn is_person(&self) -> bool {
        matches!(self, Actor::Person(_))
    }

    /// How histories show it: `person (alice)`, `session session_20260101_000000`,
    /// `assigner`.
    pub fn label(&self) -> String {
        match self {
            Actor::Person(Some(u)) => format!("person ({u})"),
            Actor::Person(None) => "person".to_string(),
            Actor::Session(s) => format!("session {s}"),
            Actor::Machine(m) => m.clone(),
        }
    }
}

/// Appends an entry to a task's history, stamped now.
pub fn task_event(
    conn: &Connection,
    task: &str,
    actor: &Actor,
    action: &str,
    detail: impl Into<String>,
) -> Result<()> {
    store::insert_task_event(
        conn,
        task,
        &TaskEvent {
            at: clock::now_rfc3339(),
            actor: actor.label(),
            action: action.to_string(),
            detail: detail.into(),
        },
    )
}

/// Records a state-changing command, and whether a person ran it.
pub fn record_command(conn: &Connection, actor: &Actor, command: &str) -> Result<()> {
    store::insert_command(
        conn,
        &CommandRow {
            at: clock::now_rfc3339(),
            actor: actor.label(),
            manual: actor.is_person(),
            command: command.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_who() {
        assert_eq!(Actor::Person(Some("ana".into())).label(), "person (ana)");
        assert_eq!(
            Actor::Session("session_1".into()).label(),
            "session session_1"
        );
        assert_eq!(Actor::assigner().label(), "assigner");
        assert!(Actor::Person(None).is_person());
        assert!(!Actor::Session("s".into()).is_person());
        assert!(!Actor::Machine("cron".into()).is_person());
    }
}
