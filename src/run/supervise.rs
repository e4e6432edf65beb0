//! One session's command, from start to end: `perpetual run` hands a [`Launch`] to
//! [`start`] (or, for a session a dead loop left running, an [`Adoption`] to [`adopt`]),
//! which follows it on a thread of its own until every process of the session is gone.
//!
//! - **Start**: the command (the agent's `command`, placeholders replaced: see [`Vars`])
//!   runs in the root, in a process group of its own, with the prompt on stdin (also in
//!   `.perpetual/prompts/<session>.md`), its output appended to
//!   `.perpetual/logs/<session>.log`, the running binary's folder first on its `PATH`
//!   (so `perpetual` is the loop's own), and `PERPETUAL_ROOT`, `PERPETUAL_SESSION`,
//!   `PERPETUAL_TASK`, `PERPETUAL_AGENT`, `PERPETUAL_BIN` (this program),
//!   `PERPETUAL_WRAP_FILE`, `PERPETUAL_PROMPT_FILE` and `PERPETUAL_TRANSCRIPT` (when the
//!   agent's `transcript` is set) in its environment. Its pid, process group and start
//!   time go to `loop_runs` at once, so a loop started later can tell it from a reused pid.
//! - **Follow**: every `run.poll_ms`, the transcript's context in use becomes the
//!   session's tokens (`crate::run::transcript::Follow`, which reads only the session's
//!   own transcript), the session's level is computed (`session::level`), and the
//!   session's processes are looked up in `/proc` (`crate::run::procs::Group`: the process
//!   group, its descendants, and what the loop adopted as a subreaper).
//! - **Ask for the wrap** at the wrap threshold, when the loop stops, or when the agent
//!   wrapped but keeps running: `.perpetual/wrap_<session>` is written (its text says
//!   why; the Claude Code hooks tell Claude the same); `run.grace_secs` later every
//!   process of the session gets SIGTERM, and `run.term_secs` after that SIGKILL.
//! - **Remains**: when the command's main process exits, what is left of the session's
//!   processes (children in its group, descendants that `setsid`-ed away) gets SIGTERM
//!   at once and SIGKILL `run.term_secs` later. The session ends, and its slot frees,
//!   only when none is left.
//! - **End**: the request is removed, the session wrapped if the command did not wrap it
//!   (`session::wrap`: progress, handoff, backup, commit), or, when the command could
//!   not even start, archived with the reason and nothing else; the run is recorded in
//!   `loop_runs` (exit status or signal, how the loop stopped it, the remains it ended,
//!   whether the task advanced, the error: the exit status and the log's last line).

use crate::clock;
use crate::config::Config;
use crate::root::Root;
use crate::run::notify;
use crate::run::procs::{self, Group, Proc};
use crate::run::prompt;
use crate::store::agents::{self as store_agents, RunEnd, RunRow};
use crate::work::session::{self, StepStatus, WrapInput};
use anyhow::{Context, Result};
use rusqlite::Connection;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A session a loop that died left behind: its run as recorded.
pub struct Adoption {
    /// The root.
    pub root: Root,
    /// The configuration.
    pub config: Config,
    /// The run, with the process it recorded.
    pub run: RunRow,
}

/// What the loop hears when a session has ended.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    /// Why the command could not be started at all.
    pub not_started: Option<String>,
    /// What went wrong (the exit status and the log's last line), if anything.
    pub error: Option<String>,
    /// The task's progress advanced (or it completed).
    pub progressed: bool,
}

/// Called on the supervisor's thread once the session has ended and is recorded.
pub type OnEnd = Box<dyn FnOnce(Ended) + Send>;

/// The `PATH` of an agent's command: the running binary first, so the `perpetual` the
/// prompt names is the loop's own: `.perpetual/bin/perpetual`, a link to it (whatever
/// the binary is called), then its folder, then the loop's own `PATH`.
pub fn command_path(root: &Root) -> String {
    let mut dirs: Vec<String> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let bin = root.state_dir().join("bin");
        let link = bin.join("perpetual");
        let linked = std::fs::read_link(&link).is_ok_and(|t| t == exe) || {
            let _ = std::fs::create_dir_all(&bin);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&exe, &link).is_ok()
        };
        if linked {
            dirs.push(bin.display().to_string());
        }
        if let Some(dir) = exe.parent() {
            dirs.push(dir.display().to_string());
        }
    }
    let inherited = std::env::var("PATH").unwrap_or_default();
    if !inherited.is_empty() {
        dirs.push(inherited);
    }
    dirs.join(":")
}

/// Checks that an agent's program can be started from `root` with [`command_path`]:
/// a path must name an executable file; a bare name must be one on the `PATH`.
pub fn check_program(root: &Root, program: &str) -> Result<(), String> {
    let program = program.replace("{root}", &root.dir().display().to_string());
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = root.dir().join(&program);
        return if !path.exists() {
            Err(format!("`{program}` was not found"))
        } else if executable(&path) {
            Ok(())
        } else {
            Err(format!("`{program}` is not an executable file"))
        };
    }
    let path = command_path(root);
    if path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| executable(&Path::new(d).join(&program)))
    {
        Ok(())
    } else {
        Err(format!("`{program}` was not found on the PATH ({path})"))
    }
}

/// Starts the command and a thread that follows it; `on_end` runs on that thread once
/// the session has ended and is recorded. Sending on the returned channel asks the
/// session to wrap (the loop is stopping).
pub fn start(launch: Launch, on_end: OnEnd) -> Result<Sender<()>> {
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
        ("PATH".to_string(), command_path(&root)),
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
        transcript,
        wrap: wrap_rx,
    };
    let how = How::Spawn { argv, env, prompt };
    std::thread::Builder::new()
        .name(format!("session {s}"))
        .spawn(move || {
            let ended = sup.run(how);
            on_end(ended)
        })
        .context("cannot start a supervisor thread")?;
    Ok(wrap_tx)
}

/// Follows a session a dead loop left: its recorded process while it lives (asking it to
/// wrap at the threshold or when this loop stops), then what remains of its processes,
/// then the wrap, exactly as if this loop had started it.
pub fn adopt(adoption: Adoption, on_end: OnEnd) -> Result<Sender<()>> {
    let Adoption { root, config, run } = adoption;
    let s = run
        .session_id
        .clone()
        .context("an adopted run has a session")?;
    let (wrap_tx, wrap_rx) = mpsc::channel();
    let sup = Supervisor {
        root,
        config,
        run_id: run.id,
        agent: run.agent.clone(),
        session: s.clone(),
        transcript: run.transcript.as_deref().map(PathBuf::from),
        wrap: wrap_rx,
    };
    let how = How::Adopt {
        pid: run.pid.map(|p| p as i32),
        start: run.proc_start,
        transcript_file: run.transcript.as_deref().map(PathBuf::from),
    };
    std::thread::Builder::new()
        .name(format!("session {s} (adopted)"))
        .spawn(move || {
            let ended = sup.run(how);
            on_end(ended)
        })
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

/// How the supervisor comes by its session's command.
enum How {
    /// Start it.
    Spawn {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        prompt: String,
    },
    /// Follow what a dead loop started.
    Adopt {
        pid: Option<i32>,
        start: Option<u64>,
        transcript_file: Option<PathBuf>,
    },
}

/// The session's command as the supervisor follows it.
struct Tracked {
    /// The main process, when this loop started it.
    child: Option<Child>,
    pid: i32,
    start: u64,
    group: Group,
    /// Its exit status, once reaped (never known for an adopted one).
    status: Option<ExitStatus>,
    gone: bool,
}

impl Tracked {
    /// Whether the main process has ended (reaping it when it is this loop's child).
    fn check_leader(&mut self) -> Result<bool> {
        if !self.gone {
            match self.child.as_mut() {
                Some(c) => {
                    if let Some(st) = c.try_wait()? {
                        self.status = Some(st);
                        self.gone = true;
                        procs::leader_reaped(self.pid);
                    }
                }
                None => self.gone = !procs::alive(self.pid, self.start),
            }
        }
        Ok(self.gone)
    }
}

/// Runs one session's command and follows its budget and processes until they end.
struct Supervisor {
    root: Root,
    config: Config,
    run_id: i64,
    agent: String,
    session: String,
    transcript: Option<PathBuf>,
    wrap: Receiver<()>,
}

impl Supervisor {
    fn run(self, how: How) -> Ended {
        match self.supervise(how) {
            Ok(ended) => ended,
            Err(e) => {
                tracing::error!(
                    agent = self.agent.as_str(),
                    "supervising {} failed: {e:#}",
                    self.session
                );
                Ended {
                    error: Some(format!("its supervisor failed: {e:#}")),
                    ..Ended::default()
                }
            }
        }
    }

    fn supervise(&self, how: How) -> Result<Ended> {
        let mut conn = crate::store::open(&self.root.db_path())?;
        let s = self.session.as_str();
        let (mut tracked, mut reader) = match how {
            How::Spawn { argv, env, prompt } => match self.spawn(&conn, &argv, &env, prompt)? {
                Ok(t) => {
                    let reader = self
                        .transcript
                        .as_deref()
                        .map(crate::run::transcript::Follow::new);
                    if let (Some(t), false) = (&self.transcript, self.transcript_is_folder()) {
                        store_agents::set_run_transcript(
                            &conn,
                            self.run_id,
                            &t.display().to_string(),
                        )?;
                    }
                    (t, reader)
                }
                Err(why) => return self.conclude_not_started(&mut conn, why),
            },
            How::Adopt {
                pid,
                start,
                transcript_file,
            } => {
                let table = procs::table();
                let (pid, start) = (pid.unwrap_or(0), start.unwrap_or(0));
                let root = self.root.dir().display().to_string();
                let group = Group::adopted(s, &root, pid, start, &table);
                let gone = pid <= 0 || !procs::alive(pid, start);
                // No pid: the loop died between the session's start (which records the
                // run) and its command's.
                let what = if pid <= 0 {
                    "never started".to_string()
                } else if gone {
                    format!("(pid {pid}) is gone")
                } else {
                    format!("(pid {pid}) is still running, followed to its end")
                };
                tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "adopting {s} of {}: the loop that started it stopped; its command {what}",
                    self.agent,
                );
                store_agents::set_run_adopted(&conn, self.run_id, &clock::now_rfc3339())?;
                let reader = self
                    .transcript
                    .as_deref()
                    .map(|t| crate::run::transcript::Follow::resume(t, transcript_file.as_deref()));
                (
                    Tracked {
                        child: None,
                        pid,
                        start,
                        group,
                        status: None,
                        gone,
                    },
                    reader,
                )
            }
        };
        let end = self.follow(&conn, &mut tracked, &mut reader)?;
        self.conclude(&mut conn, end)
    }

    fn transcript_is_folder(&self) -> bool {
        self.transcript.as_deref().is_some_and(Path::is_dir)
    }

    /// Starts the command; `Ok(Err(why))` when it cannot be started at all.
    fn spawn(
        &self,
        conn: &Connection,
        argv: &[String],
        env: &[(String, String)],
        prompt: String,
    ) -> Result<std::result::Result<Tracked, String>> {
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
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.root.dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
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
        let mut child = match procs::spawn_leader(&mut cmd) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("cannot start `{}`: {e}", argv[0]))),
        };
        let pid = child.id() as i32;
        let start = procs::start_of(pid).unwrap_or(0);
        store_agents::set_run_process(conn, self.run_id, pid as u32, pid, start)?;
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::spawn(move || {
                // A command that exits without reading its stdin closes the pipe: EPIPE
                // here, never a SIGPIPE (the loop ignores it), and not an error.
                let _ = stdin.write_all(prompt.as_bytes());
            });
        }
        Ok(Ok(Tracked {
            child: Some(child),
            pid,
            start,
            group: Group::new(s, &self.root.dir().display().to_string(), pid, start),
            status: None,
            gone: false,
        }))
    }

    /// Follows the session until every one of its processes is gone.
    fn follow(
        &self,
        conn: &Connection,
        t: &mut Tracked,
        reader: &mut Option<crate::run::transcript::Follow>,
    ) -> Result<RunEnd> {
        let s = self.session.as_str();
        let poll = Duration::from_millis(self.config.run.poll_ms);
        let grace = Duration::from_secs(self.config.run.grace_secs);
        let term = Duration::from_secs(self.config.run.term_secs);
        let me = std::process::id() as i32;
        let my_group = unsafe { libc::getpgrp() };
        let mut end = RunEnd::default();
        let mut last_tokens = None;
        let mut transcript_recorded = false;
        // A request a dead loop made still stands (its file is there): it is counted as
        // made once this loop looks, so the grace starts again then.
        let pending_request = t.child.is_none() && self.root.wrap_flag(s).exists();
        let mut asked: Option<Instant> = None;
        let mut termed: Option<Instant> = None;
        let mut killed = false;
        let mut remains_seen = false;
        let mut stop_requested = false;
        loop {
            match self.wrap.recv_timeout(poll) {
                Ok(()) => stop_requested = true,
                Err(RecvTimeoutError::Timeout) => {}
                // The loop is gone: wrap up, at the same pace (recv_timeout no longer waits).
                Err(RecvTimeoutError::Disconnected) => {
                    stop_requested = true;
                    std::thread::sleep(poll);
                }
            }
            let leader_gone = t.check_leader()?;
            // One reading of /proc per poll, shared by the supervisors.
            let table = procs::table_cached(poll / 2);
            procs::reap_strays(&table);
            let live = t.group.scan(&table, me, my_group);
            if leader_gone && live.is_empty() {
                break;
            }
            if !leader_gone {
                self.read_transcript(conn, reader, &mut last_tokens);
                if !transcript_recorded && let Some(file) = reader.as_ref().and_then(|r| r.file()) {
                    transcript_recorded = true;
                    let _ = store_agents::set_run_transcript(
                        conn,
                        self.run_id,
                        &file.display().to_string(),
                    );
                }
                if asked.is_none() {
                    // A database hiccup (busy past the timeout) must not abandon a running
                    // command: it is logged and the budget looked at again next time.
                    match self.wrap_due(conn, stop_requested, pending_request) {
                        Ok(due) => asked = due,
                        Err(e) => tracing::warn!(
                            session = s,
                            "cannot look at the budget of {s}: {e:#}; trying again"
                        ),
                    }
                }
            } else if !remains_seen {
                remains_seen = true;
                end.remains = Some(live.len() as u64);
                tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s}: its command exited and left {} process(es) behind ({}): SIGTERM, then SIGKILL {} s later",
                    live.len(),
                    pids(&live),
                    term.as_secs()
                );
                t.group.signal(&live, libc::SIGTERM);
                termed.get_or_insert_with(Instant::now);
            }
            if let (Some(a), None) = (asked, termed)
                && a.elapsed() >= grace
            {
                tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s} did not end {} s after the wrap request: SIGTERM to {}",
                    grace.as_secs(),
                    pids(&live)
                );
                t.group.signal(&live, libc::SIGTERM);
                end.stopped_with = Some("SIGTERM");
                termed = Some(Instant::now());
            }
            if let Some(at) = termed
                && at.elapsed() >= term
            {
                if !killed {
                    killed = true;
                    tracing::warn!(
                        agent = self.agent.as_str(),
                        session = s,
                        "{s} still running {} s after SIGTERM: SIGKILL to {}",
                        term.as_secs(),
                        pids(&live)
                    );
                    if !leader_gone {
                        end.stopped_with = Some("SIGKILL");
                    }
                    notify::send(
                        &self.config,
                        notify::Event::new(
                            "session_killed",
                            &self.root,
                            format!(
                                "{s} was still running {} s after SIGTERM; SIGKILL to {}",
                                term.as_secs(),
                                pids(&live)
                            ),
                        )
                        .agent(&self.agent)
                        .session(s),
                    );
                }
                // Again at every look: what forked just before the first one dies too.
                t.group.signal(&live, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(self.root.wrap_flag(s));
        self.read_transcript(conn, reader, &mut last_tokens);
        if let Some(status) = t.status {
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
        }
        Ok(end)
    }

    /// Asks for a wrap when it is due (the budget's wrap threshold, the loop stopping, or
    /// the agent already wrapped but still running); returns when it was asked.
    fn wrap_due(
        &self,
        conn: &Connection,
        stop_requested: bool,
        pending_request: bool,
    ) -> Result<Option<Instant>> {
        let s = self.session.as_str();
        let row = session::get(conn, s)?;
        let (usage, level) = session::level(conn, &self.config, &row)?;
        if row.is_active() && !level.must_wrap() && !stop_requested && !pending_request {
            return Ok(None);
        }
        if row.is_active() && pending_request && !stop_requested {
            // The dead loop's request stands as it was written.
            return Ok(Some(Instant::now()));
        }
        // Wrapped by the agent, which still runs: its grace starts once its wrap has
        // finished (a signal mid-wrap would leave it half done), or at the latest a
        // grace period after the wrap began.
        if !row.is_active()
            && row.wrap_steps.is_none()
            && row
                .wrapped_at
                .as_deref()
                .and_then(|w| clock::parse(w).ok())
                .is_some_and(|w| {
                    clock::now() - w < chrono::Duration::seconds(self.config.run.grace_secs as i64)
                })
        {
            return Ok(None);
        }
        if row.is_active() {
            let (why, text) = if stop_requested {
                (
                    "the loop is stopping".to_string(),
                    prompt::wrap_request_because(s, "the loop is stopping"),
                )
            } else {
                (
                    format!("level {}", level.as_str()),
                    prompt::wrap_request(s, &usage),
                )
            };
            crate::root::write_document(&self.root.wrap_flag(s), &format!("{text}\n"))?;
            store_agents::set_wrap_requested(conn, self.run_id, &clock::now_rfc3339())?;
            tracing::info!(
                agent = self.agent.as_str(),
                session = s,
                "asked {s} to wrap ({why}): {} s before SIGTERM",
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

    /// The command could not be started: the session is archived with the reason and
    /// nothing else (no backup, no handoff, no commit: there is nothing to hand off).
    fn conclude_not_started(&self, conn: &mut Connection, why: String) -> Result<Ended> {
        let s = self.session.as_str();
        tracing::warn!(agent = self.agent.as_str(), session = s, "{why}");
        if let Err(e) = session::abandon(conn, s, &why) {
            tracing::warn!("cannot archive {s}: {e:#}");
        }
        let end = RunEnd {
            error: Some(why.clone()),
            ..RunEnd::default()
        };
        store_agents::finish_run(conn, self.run_id, &clock::now_rfc3339(), &end)?;
        Ok(Ended {
            not_started: Some(why.clone()),
            error: Some(why),
            progressed: false,
        })
    }

    /// Wraps the session when the command did not, records how the run ended, and tells
    /// the operator about failed wrap steps and new review flags.
    fn conclude(&self, conn: &mut Connection, mut end: RunEnd) -> Result<Ended> {
        let s = self.session.as_str();
        let row = session::get(conn, s)?;
        let review_before = match &row.task_id {
            Some(t) => crate::store::tasks::get(conn, t)?.and_then(|t| t.needs_review),
            None => None,
        };
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
        } else if row.wrap_steps.is_none() {
            // The agent's own wrap was cut short after the archive: finish it.
            match session::finish_wrap(conn, &self.root, &self.config, s) {
                Ok(_) => tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s} ended ({}) in the middle of its own wrap; its handoff and commit are done now",
                    how_it_ended(&end)
                ),
                Err(e) => tracing::warn!(
                    agent = self.agent.as_str(),
                    session = s,
                    "{s} ended in the middle of its own wrap; cannot finish it: {e:#}"
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
        let row = session::get(conn, s)?;
        for step in row
            .wrap_steps
            .as_ref()
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter(|st| st["status"] == serde_json::json!(StepStatus::Failed))
        {
            notify::send(
                &self.config,
                notify::Event::new(
                    "wrap_step_failed",
                    &self.root,
                    format!(
                        "the {} step of {s}'s wrap failed: {}",
                        step["step"].as_str().unwrap_or("?"),
                        step["detail"].as_str().unwrap_or("")
                    ),
                )
                .agent(&self.agent)
                .task(row.task_id.as_deref())
                .session(s),
            );
        }
        if let Some(t) = &row.task_id
            && let Some(task) = crate::store::tasks::get(conn, t)?
            && let Some(r) = &task.needs_review
            && review_before.as_ref() != Some(r)
        {
            notify::send(
                &self.config,
                notify::Event::new("task_needs_review", &self.root, r.clone())
                    .agent(&self.agent)
                    .task(Some(t))
                    .session(s),
            );
        }
        end.progressed = session::progressed(conn, &row)?;
        store_agents::finish_run(conn, self.run_id, &clock::now_rfc3339(), &end)?;
        Ok(Ended {
            not_started: None,
            error: end.error.clone(),
            progressed: end.progressed,
        })
    }
}

fn pids(live: &[Proc]) -> String {
    let list: Vec<String> = live.iter().map(|p| format!("pid {}", p.pid)).collect();
    if list.is_empty() {
        "no process".to_string()
    } else {
        list.join(", ")
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

    #[test]
    fn the_command_path_starts_with_a_link_to_this_program_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let path = command_path(&root);
        let first = path.split(':').next().unwrap();
        let link = Path::new(first).join("perpetual");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::env::current_exe().unwrap(),
            "{path}"
        );
        let exe = std::env::current_exe().unwrap();
        assert!(path.contains(&exe.parent().unwrap().display().to_string()));
    }
}
