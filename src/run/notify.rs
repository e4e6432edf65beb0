//! `[notify] command`: how an operator hears about trouble while the loop runs
//! unattended. On each event (an agent paused, a task flagged for review, a session
//! SIGKILLed, a wrap step failed, disk low, no new pairs for `notify.quiet_hours`) the
//! command runs with the event as one JSON object on its stdin. It runs on a thread of
//! its own, is killed after `notify.timeout_secs`, and whatever becomes of it is logged,
//! never fatal: a broken mailer must not stop the loop.

use crate::config::Config;
use crate::root::Root;
use serde::Serialize;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One event, as the command reads it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `agent_paused`, `task_needs_review`, `session_killed`, `wrap_step_failed`,
    /// `disk_low` or `quiet`.
    pub event: &'static str,
    /// When (UTC, RFC 3339).
    pub at: String,
    /// The root.
    pub root: String,
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task: Option<String>,
    /// The session concerned.
    pub session: Option<String>,
    /// What happened, in words.
    pub reason: String,
}

impl Event {
    /// An event of `kind` about `agent` (and its task and session when known).
    pub fn new(kind: &'static str, root: &Root, reason: impl Into<String>) -> Event {
        Event {
            event: kind,
            at: crate::clock::now_rfc3339(),
            root: root.dir().display().to_string(),
            agent: None,
            task: None,
            session: None,
            reason: reason.into(),
        }
    }

    /// The agent concerned.
    pub fn agent(mut self, agent: &str) -> Event {
        self.agent = Some(agent.to_string());
        self
    }

    /// The task concerned.
    pub fn task(mut self, task: Option<&str>) -> Event {
        self.task = task.map(str::to_string);
        self
    }

    /// The session concerned.
    pub fn session(mut self, session: &str) -> Event {
        self.session = Some(session.to_string());
        self
    }
}

/// Commands still running, so a loop that stops can wait for them.
static RUNNING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Logs the event and, when `[notify] command` is set, runs it with the event on stdin.
pub fn send(config: &Config, event: Event) {
    tracing::info!(
        event = event.event,
        agent = event.agent.as_deref().unwrap_or("-"),
        "notify {}: {}",
        event.event,
        event.reason
    );
    let Some(argv) = config.notify.command.clone() else {
        return;
    };
    let timeout = Duration::from_secs(config.notify.timeout_secs);
    let handle = std::thread::spawn(move || {
        if let Err(e) = run(&argv, &event, timeout) {
            tracing::warn!("the notify command {:?} failed: {e:#}", argv[0]);
        }
    });
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    running.retain(|h| !h.is_finished());
    running.push(handle);
}

/// Waits (at most `limit`) for the notify commands still running.
pub fn wait_all(limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|h| !h.is_finished());
        if running.is_empty() || Instant::now() >= until {
            return;
        }
        drop(running);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(argv: &[String], event: &Event, timeout: Duration) -> anyhow::Result<()> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("PERPETUAL_EVENT", event.event)
        .env(crate::run::procs::LOOP_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = serde_json::to_string(event)?;
        line.push('\n');
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(line.as_bytes());
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            anyhow::bail!("{status}: {}", err.trim());
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {} s; killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
