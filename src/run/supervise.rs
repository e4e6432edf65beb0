//! One session of an agent's command, from start to end: `perpetual run` hands a
//! [`Launch`] to [`start`], which starts the command and follows it on a thread of its
//! own.
//!
//! - **Start**: the command (the agent's `command`, placeholders replaced: see [`Vars`])
//!   runs in the root, in a process group of its own, with the prompt on stdin (also in
//!   `.perpetual/prompts/<session>.md`), its output appended to
//!   `.perpetual/logs/<session>.log`, and `PERPETUAL_ROOT`, `PERPETUAL_SESSION`,
//!   `PERPETUAL_TASK`, `PERPETUAL_AGENT`, `PERPETUAL_BIN` (this program),
//!   `PERPETUAL_WRAP_FILE`, `PERPETUAL_PROMPT_FILE` and `PERPETUAL_TRANSCRIPT` (when the
//!   agent's `transcript` is set) in its environment.
//! - **Follow**: every `run.poll_ms`, the transcript's context in use becomes the
//!   session's tokens (`crate::run::transcript::Follow`), and the session's level is computed
//!   from its tokens, API calls today and minutes (`session::level`).
//! - **Ask for the wrap** at the wrap threshold, when the loop stops, or when the agent
//!   wrapped but keeps running: `.perpetual/wrap_<session>` is written (its text says
//!   why; the Claude Code hooks tell Claude the same); `run.grace_secs` later the process
//!   group gets SIGTERM, and `run.term_secs` after that SIGKILL.
//! - **End**: the request is removed, the session wrapped if the command did not wrap it
//!   (`session::wrap`: progress, handoff, backup, commit), and the run recorded in
//!   `loop_runs` (exit status or signal, how the loop stopped it, whether the task
//!   advanced, the error: the exit status and the log's last line).

use crate::clock;
use crate::config::Config;
use crate::root::Root;
use crate::run::prompt;
use crate::store::agents::{self as store_agents, RunEnd};
use crate::work::session::{self, WrapInput};
use anyhow::{Context, Result};
use rusqlite::Connection;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What starting one session's command needs.
pub struct Launch {
    /// The root.
    pub root: Root,
    /// The configuration (budgets, thresholds, `[run]`, the agent's command).
    pub config: Config,
    /// Its `loop_runs` row.
    pub run_id: i64,
    /// The agent.
    pub agent: String,
    /// The session, started.
    pub session: String,
    /// Its task.
    pub task: String,
    /// The agent's command, placeholders not yet replaced.
    pub command: Vec<String>,
    /// The prompt (`crate::run::prompt::render`).
    pub prompt: String,
}

/// Starts the command and a thread that follows it; `on_end` runs on that thread once
/// the session has ended and is recorded. Sending on the returned channel asks the
/// session to wrap (the loop is stopping).
pub fn start(launch: Launch, on_end: Box<dyn FnOnce() + Send>) -> Result<Sender<()>> {
    let Launch {
        root,
        config,
        run_id,
        agent,
        session: s,
        task,
        command,
        prompt,
    } = launch;
    let prompt_file = root.prompt_path(&s);
    crate::root::write_document(&prompt_file, &prompt)?;
    let vars = Vars::new(&root, &s, &task, &agent, &prompt_file);
    let transcript = config
        .agents
        .get(&agent)
        .and_then(|a| a.transcript.as_deref())
        .map(|t| crate::run::hooks::expand_home(&vars.expand(t)));
    let vars = Vars {
        transcript: transcript.clone(),
        ..vars
    };
    let argv: Vec<String> = command.iter().map(|a| vars.expand(a)).collect();
    anyhow::ensure!(!argv.is_empty(), "agents.{agent}.command is empty");
    let mut env = vec![
        (
            "PERPETUAL_ROOT".to_string(),
            root.dir().display().to_string(),
        ),
        (session::SESSION_ENV.to_string(), s.clone()),
        ("PERPETUAL_TASK".to_string(), task),
        ("PERPETUAL_AGENT".to_string(), agent.clone()),
        (
            "PERPETUAL_WRAP_FILE".to_string(),
            root.wrap_flag(&s).display().to_string(),
        ),
        (
            "PERPETUAL_PROMPT_FILE".to_string(),
            prompt_file.display().to_string(),
        ),
    ];
    if let Ok(exe) = std::env::current_exe() {
        env.push(("PERPETUAL_BIN".to_string(), exe.display().to_string()));
    }
    if let Some(t) = &transcript {
        env.push(("PERPETUAL_TRANSCRIPT".to_string(), t.display().to_string()));
    }
    let (wrap_tx, wrap_rx) = mpsc::channel();
    let sup = Supervisor {
        root,
        config,
        run_id,
        agent,
        session: s.clone(),
        argv,
        env,
        prompt,
        transcript,
        wrap: wrap_rx,
        on_end,
    };
    std::thread::Builder::new()
        .name(format!("session {s}"))
        .spawn(move || sup.run())
        .context("cannot start a supervisor thread")?;
    Ok(wrap_tx)
}

/// The placeholders of an agent's `command` and `transcript`.
struct Vars {
    session: String,
    task: String,
    agent: String,
    root: String,
    prompt_file: String,
    transcript: Option<PathBuf>,
    uuid: String,
    project: String,
}

impl Vars {
    fn new(root: &Root, session: &str, task: &str, agent: &str, prompt_file: &Path) -> Vars {
        let dir = root.dir().display().to_string();
        Vars {
            session: session.to_string(),
            task: task.to_string(),
            agent: agent.to_string(),
            project: claude_project_name(&dir),
            root: dir,
            prompt_file: prompt_file.display().to_string(),
            transcript: None,
            uuid: uuid_v4(),
        }
    }

    fn expand(&self, template: &str) -> String {
        template
            .replace("{session}", &self.session)
            .replace("{task}", &self.task)
            .replace("{agent}", &self.agent)
            .replace("{root}", &self.root)
            .replace("{prompt_file}", &self.prompt_file)
            .replace(
                "{transcript}",
                &self
                    .transcript
                    .as_ref()
                    .map(|t| t.display().to_string())
                    .unwrap_or_default(),
            )
            .replace("{uuid}", &self.uuid)
            .replace("{project}", &self.project)
    }
}

/// The folder name Claude Code gives a project under `~/.claude/projects/`: its path
/// with every character other than a letter, a digit or `-` turned into `-`
/// (`/work/my.app` → `-work-my-app`).
pub fn claude_project_name(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A random (version 4) UUID, for `{uuid}` (e.g. `claude --session-id {uuid}`).
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Runs one session's command and follows its budget until it ends.
struct Supervisor {
    root: Root,
    config: Config,
    run_id: i64,
    agent: String,
    session: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    prompt: String,
    transcript: Option<PathBuf>,
    wrap: Receiver<()>,
    on_end: Box<dyn FnOnce() + Send>,
}

impl Supervisor {
    fn run(self) {
        if let Err(e) = self.supervise() {
            tracing::error!(
                agent = self.agent.as_str(),
                "supervising {} failed: {e:#}",
                self.session
            );
        }
        (self.on_end)();
    }

    fn supervise(&self) -> Result<()> {
        let mut conn = crate::store::open(&self.root.db_path())?;
        let s = self.session.as_str();
        let log_path = self.root.command_log(s);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .current_dir(self.root.dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a terminal's Ctrl-C reaches the loop, which asks for a
            // wrap, and SIGTERM/SIGKILL reach everything the command started.
            cmd.process_group(0);
        }
        let mut end = RunEnd::default();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                end.error = Some(format!("cannot start `{}`: {e}", self.argv[0]));
                tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{}",
                    end.error.as_deref().unwrap_or_default()
                );
                return self.conclude(&mut conn, end);
            }
        };
        let pid = child.id();
        store_agents::set_run_pid(&conn, self.run_id, pid)?;
        if let Some(mut stdin) = child.stdin.take() {
            let prompt = self.prompt.clone();
            std::thread::spawn(move || {
                // A command that does not read its stdin closes the pipe: not an error.
                let _ = stdin.write_all(prompt.as_bytes());
            });
        }
        let poll = Duration::from_millis(self.config.run.poll_ms);
        let grace = Duration::from_secs(self.config.run.grace_secs);
        let term = Duration::from_secs(self.config.run.term_secs);
        // A folder's transcripts count from the command's start (a second's slack for
        // coarse modification times).
        let since = std::time::SystemTime::now() - Duration::from_secs(1);
        let mut reader = self
            .transcript
            .as_deref()
            .map(|t| crate::run::transcript::Follow::new(t, since));
        let mut last_tokens = None;
        let mut asked: Option<Instant> = None;
        let mut termed: Option<Instant> = None;
        let mut stop_requested = false;
        let status = loop {
            match self.wrap.recv_timeout(poll) {
                Ok(()) => stop_requested = true,
                Err(RecvTimeoutError::Timeout) => {}
                // The loop is gone: wrap up, at the same pace (recv_timeout no longer waits).
                Err(RecvTimeoutError::Disconnected) => {
                    stop_requested = true;
                    std::thread::sleep(poll);
                }
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            self.read_transcript(&conn, &mut reader, &mut last_tokens);
            if asked.is_none() {
                // A database hiccup (busy past the timeout) must not abandon a running
                // command: it is logged and the budget looked at again next time.
                match self.wrap_due(&conn, stop_requested) {
                    Ok(due) => asked = due,
                    Err(e) => tracing::warn!(
                        session = s,
                        "cannot look at the budget of {s}: {e:#}; trying again"
                    ),
                }
            }
            match (asked, termed) {
                (Some(t), None) if t.elapsed() >= grace => {
                    tracing::warn!(
                        agent = self.agent.as_str(),
                        session = s,
                        "{s} did not end {} s after the wrap request: SIGTERM",
                        grace.as_secs()
                    );
                    signal_group(pid, libc::SIGTERM);
                    end.stopped_with = Some("SIGTERM");
                    termed = Some(Instant::now());
                }
                (_, Some(t)) if t.elapsed() >= term && end.stopped_with != Some("SIGKILL") => {
                    tracing::warn!(
                        agent = self.agent.as_str(),
                        session = s,
                        "{s} still running {} s after SIGTERM: SIGKILL",
                        term.as_secs()
                    );
                    signal_group(pid, libc::SIGKILL);
                    end.stopped_with = Some("SIGKILL");
                }
                _ => {}
            }
        };
        let _ = std::fs::remove_file(self.root.wrap_flag(s));
        self.read_transcript(&conn, &mut reader, &mut last_tokens);
        end.exit_code = status.code();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            end.signal = status.signal();
        }
        if !status.success() && end.stopped_with.is_none() {
            let how = match (end.exit_code, end.signal) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "ended abnormally".to_string(),
            };
            end.error = Some(match last_line(&self.root.command_log(s)) {
                Some(line) => format!("{how}: {line}"),
                None => how,
            });
        }
        self.conclude(&mut conn, end)
    }

    /// Asks for a wrap when it is due (the budget's wrap threshold, the loop stopping, or
    /// the agent already wrapped but still running); returns when it was asked.
    fn wrap_due(&self, conn: &Connection, stop_requested: bool) -> Result<Option<Instant>> {
        let s = self.session.as_str();
        let row = session::get(conn, s)?;
        let (usage, level) = session::level(conn, &self.config, &row)?;
        if row.is_active() && !level.must_wrap() && !stop_requested {
            return Ok(None);
        }
        if row.is_active() {
            let why = prompt::wrap_request(s, &usage);
            crate::root::write_document(&self.root.wrap_flag(s), &format!("{why}\n"))?;
            store_agents::set_wrap_requested(conn, self.run_id, &clock::now_rfc3339())?;
            tracing::info!(
                agent = self.agent.as_str(),
                session = s,
                "asked {s} to wrap ({}): {} s before SIGTERM",
                if stop_requested {
                    "the loop is stopping".to_string()
                } else {
                    format!("level {}", level.as_str())
                },
                self.config.run.grace_secs
            );
        }
        Ok(Some(Instant::now()))
    }

    fn read_transcript(
        &self,
        conn: &Connection,
        reader: &mut Option<crate::run::transcript::Follow>,
        last: &mut Option<u64>,
    ) {
        let Some(r) = reader.as_mut() else {
            return;
        };
        match r.poll() {
            Ok(Some(u)) if *last != Some(u.context_tokens) => {
                *last = Some(u.context_tokens);
                if let Err(e) =
                    crate::store::sessions::set_tokens(conn, &self.session, u.context_tokens)
                {
                    tracing::warn!("cannot record the tokens of {}: {e:#}", self.session);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("cannot read the transcript of {}: {e:#}", self.session),
        }
    }

    /// Wraps the session when the command did not, and records how the run ended.
    fn conclude(&self, conn: &mut Connection, mut end: RunEnd) -> Result<()> {
        let s = self.session.as_str();
        let row = session::get(conn, s)?;
        if row.is_active() {
            match session::wrap(conn, &self.root, &self.config, s, &WrapInput::default()) {
                Ok(w) => tracing::info!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s} ended ({}); wrapped at the {} level; next: {}",
                    how_it_ended(&end),
                    w.level.as_str(),
                    w.next_action
                ),
                Err(e) => tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s} ended; cannot wrap it: {e:#}"
                ),
            }
        } else {
            tracing::info!(
                agent = self.agent.as_str(),
                session = s,
                "{s} ended ({}); it had wrapped itself",
                how_it_ended(&end)
            );
        }
        end.progressed = session::progressed(conn, &session::get(conn, s)?)?;
        store_agents::finish_run(conn, self.run_id, &clock::now_rfc3339(), &end)
    }
}

fn how_it_ended(end: &RunEnd) -> String {
    match (&end.error, end.stopped_with, end.exit_code) {
        (Some(e), _, _) => e.clone(),
        (None, Some(sig), _) => format!("stopped with {sig}"),
        (None, None, Some(c)) => format!("exit status {c}"),
        _ => "ended".to_string(),
    }
}

/// The last non-empty line of a log (read from its last 4 KiB).
fn last_line(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}

#[cfg(unix)]
fn signal_group(pid: u32, signal: i32) {
    // The command leads its own process group (pgid = pid).
    unsafe {
        libc::killpg(pid as libc::pid_t, signal);
    }
}

#[cfg(not(unix))]
fn signal_group(_pid: u32, _signal: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_names() {
        assert_eq!(claude_project_name("/work/my.app_x"), "-work-my-app-x");
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
