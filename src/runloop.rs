//! The perpetual loop (`perpetual run`): agents that restart themselves.
//!
//! One round: run the assigner (`crate::assign`), then for each agent (not paused) take
//! its next task: the task in progress that no active session holds, else the first
//! ready one, exactly as `session start` would.
//!
//! - **Built-in kinds** run in-process, one per agent per round: `ingest` integrates the
//!   agent's inbox (`ingest::discover_inbox` + the shared write loop, interrupted by a
//!   stop signal at a checkpoint) and completes the task; `backfill` calls
//!   [`crate::backfill::run_task`] with the task's [`crate::tasks::BackfillParams`],
//!   which runs in a budgeted session of its own and wraps or completes it.
//! - **The agent's own tasks** run when the agent has a `command`: the loop starts a
//!   session (`session::start`, with its budget gates), writes the prompt
//!   (`crate::prompt`) to `.perpetual/prompts/<session>.md` and to the command's stdin,
//!   and starts the command in the root with `PERPETUAL_ROOT`, `PERPETUAL_SESSION`,
//!   `PERPETUAL_TASK`, `PERPETUAL_AGENT` (and `PERPETUAL_BIN`, `PERPETUAL_WRAP_FILE`,
//!   `PERPETUAL_PROMPT_FILE`, `PERPETUAL_TRANSCRIPT`) in its environment, its output in
//!   `.perpetual/logs/<session>.log`. A supervisor thread follows the session's budget
//!   every `run.poll_ms`: it reads the transcript (when the agent's `transcript` is set)
//!   and records the context in use as the session's tokens, and computes the level from
//!   the session's tokens, API calls and minutes. At the wrap threshold (or when the loop
//!   is stopping) it **asks for a wrap**: it writes `.perpetual/wrap_<session>` (the
//!   Claude Code hooks tell Claude the same), waits `run.grace_secs`, sends SIGTERM to
//!   the command's process group, and SIGKILL `run.term_secs` later. When the command
//!   exits, the session is wrapped if it did not wrap itself, and the next round starts
//!   the next session. An agent runs at most `slots` sessions at once (one without a
//!   slot budget).
//!
//! **The circuit breaker**: after `run.breaker_sessions` sessions of an agent in a row
//! without progress (the task's progress did not advance) or ending with the same error,
//! the agent is paused and its task flagged "needs review" until `perpetual agent
//! resume`.
//!
//! **Waiting** never spins: with nothing to start, the loop blocks on one channel fed by
//! the inbox's filesystem events (a drop wakes it after `watch.settle_ms` of quiet), the
//! supervisors (a session ended), the signal thread, and a `run.idle_secs` timeout.
//! SIGINT/SIGTERM stop starting sessions, ask the running ones to wrap, and return once
//! they ended (a second signal exits at once).

use crate::assign;
use crate::clock;
use crate::config::Config;
use crate::ingest::{self, Hints, WriterOptions};
use crate::prompt;
use crate::root::Root;
use crate::session::{self, StartOptions, StartOutcome, WrapInput};
use crate::store::agents::{self as store_agents, RunEnd};
use crate::store::sessions::SessionRow;
use crate::store::tasks::{self as store_tasks, TaskKind, TaskRow, TaskStatus};
use crate::tasks::{self, State};
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What `perpetual run` was asked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only this agent.
    pub agent: Option<String>,
    /// Start at most this many sessions (agent commands and backfills), then wait for
    /// the running ones and return.
    pub max_sessions: Option<u64>,
    /// One round, then wait for what it started and return.
    pub once: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Sessions started (agent commands and backfills).
    pub sessions_started: u64,
    /// Built-in tasks run (ingest and backfill).
    pub builtin_runs: u64,
    /// Agents the circuit breaker paused.
    pub paused: Vec<String>,
}

/// What wakes the loop.
enum Event {
    /// A supervised session ended (its run id and agent).
    Done(i64, String),
    /// Something changed in the inbox.
    Inbox,
    /// SIGINT or SIGTERM.
    Stop,
}

/// Stops a running loop from another thread (the signal handler).
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    tx: Sender<Event>,
}

impl Stopper {
    /// Asks the loop to stop: no new session; running ones are asked to wrap.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Event::Stop);
    }
}

/// A running session's supervisor, as the loop sees it.
struct Child {
    agent: String,
    session: String,
    wrap: Sender<()>,
}

/// The loop on one root. The caller holds the root's writer lock.
pub struct Loop<'c> {
    conn: &'c mut Connection,
    root: Root,
    config: Config,
    opts: RunOptions,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    children: HashMap<i64, Child>,
    report: RunReport,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// The last reason each agent could not start, so it is logged once, not each round.
    refusals: HashMap<String, String>,
    idle_logged: bool,
}

impl<'c> Loop<'c> {
    /// A loop on `root` (nothing runs until [`Loop::run`]).
    pub fn new(
        conn: &'c mut Connection,
        root: &Root,
        config: &Config,
        opts: RunOptions,
    ) -> Loop<'c> {
        let (tx, rx) = mpsc::channel();
        Loop {
            conn,
            root: root.clone(),
            config: config.clone(),
            opts,
            tx,
            rx,
            stop: Arc::new(AtomicBool::new(false)),
            children: HashMap::new(),
            report: RunReport::default(),
            watcher: None,
            watched: HashSet::new(),
            refusals: HashMap::new(),
            idle_logged: false,
        }
    }

    /// A handle that stops [`Loop::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            flag: self.stop.clone(),
            tx: self.tx.clone(),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn max_reached(&self) -> bool {
        self.opts
            .max_sessions
            .is_some_and(|m| self.report.sessions_started >= m)
    }

    /// Runs until stopped (or `--once`, or `--max-sessions`), then waits for the
    /// sessions it started.
    pub fn run(mut self) -> Result<RunReport> {
        self.recover()?;
        self.start_watcher();
        loop {
            if self.stopping() {
                break;
            }
            let acted = match self.round() {
                Ok(acted) => acted,
                // --once reports it; the perpetual loop survives (a database busy past its
                // timeout, a full disk) and tries again after run.idle_secs.
                Err(e) if !self.opts.once => {
                    tracing::error!(
                        "round failed: {e:#}; trying again in {} s",
                        self.config.run.idle_secs
                    );
                    self.idle_logged = true;
                    false
                }
                Err(e) => return Err(e),
            };
            if self.opts.once || self.max_reached() {
                break;
            }
            if acted {
                self.idle_logged = false;
                self.drain_events()?;
                continue;
            }
            self.wait()?;
        }
        self.finish_children()?;
        Ok(self.report)
    }

    /// Runs left unfinished by a loop that died: their sessions are wrapped.
    fn recover(&mut self) -> Result<()> {
        for r in store_agents::unfinished_runs(self.conn)? {
            let mut end = RunEnd::default();
            if let Some(s) = &r.session_id
                && let Ok(row) = session::get(self.conn, s)
            {
                if row.is_active() {
                    tracing::warn!(
                        session = s.as_str(),
                        "the loop stopped before session {s} ended; wrapping it now"
                    );
                    if let Err(e) = session::wrap(
                        self.conn,
                        &self.root,
                        &self.config,
                        s,
                        &WrapInput::default(),
                    ) {
                        tracing::warn!("cannot wrap {s}: {e:#}");
                    }
                }
                end.progressed = progressed(self.conn, &row)?;
            }
            store_agents::finish_run(self.conn, r.id, &clock::now_rfc3339(), &end)?;
            if let Some(s) = &r.session_id {
                let _ = std::fs::remove_file(self.root.wrap_flag(s));
            }
        }
        Ok(())
    }

    /// Follows the inbox so a drop wakes the loop; without events the timer does.
    fn start_watcher(&mut self) {
        use notify::Watcher as _;
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            use notify::EventKind;
            use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
            // A file arriving; not the loop's own reads and moves to processed/.
            if let Ok(e) = e
                && matches!(
                    e.kind,
                    EventKind::Create(_)
                        | EventKind::Modify(ModifyKind::Data(_))
                        | EventKind::Modify(ModifyKind::Name(
                            RenameMode::To | RenameMode::Both | RenameMode::Any
                        ))
                        | EventKind::Access(AccessKind::Close(AccessMode::Write))
                )
            {
                let _ = tx.send(Event::Inbox);
            }
        });
        match watcher {
            Ok(mut w) => {
                let inbox = self.root.inbox();
                if std::fs::create_dir_all(&inbox).is_ok()
                    && w.watch(&inbox, notify::RecursiveMode::NonRecursive).is_ok()
                {
                    self.watched.insert(inbox);
                }
                self.watcher = Some(w);
            }
            Err(e) => tracing::warn!(
                "cannot follow the inbox ({e}); looking every {} s instead",
                self.config.run.idle_secs
            ),
        }
    }

    fn watch_agent_folders(&mut self, agents: &[String]) {
        use notify::Watcher as _;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for a in agents {
            let dir = self.root.inbox_of(a);
            if !self.watched.contains(&dir)
                && dir.is_dir()
                && w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
            {
                self.watched.insert(dir);
            }
        }
    }

    /// One round; true when it started or ran something.
    fn round(&mut self) -> Result<bool> {
        assign::assign(self.conn, &self.root, &self.config)?;
        let agents: Vec<String> = tasks::all_agents(self.conn, &self.root, &self.config)?
            .into_iter()
            .filter(|a| self.opts.agent.as_ref().is_none_or(|x| x == a))
            .collect();
        self.watch_agent_folders(&agents);
        let mut acted = false;
        for agent in agents {
            if self.stopping() || self.max_reached() {
                break;
            }
            acted |= self.serve(&agent)?;
        }
        Ok(acted)
    }

    /// Starts what the agent can start now: one built-in task, or sessions up to its slots.
    fn serve(&mut self, agent: &str) -> Result<bool> {
        let paused = store_agents::pause_of(self.conn, agent)?.is_some();
        let command = self
            .config
            .agents
            .get(agent)
            .and_then(|a| a.command.clone());
        let slots = self.config.budget_of(agent).slots;
        let cap = if slots > 0 { slots } else { 1 };
        let mut refused = false;
        let mut acted = false;
        loop {
            if self.stopping() || self.max_reached() {
                break;
            }
            // Its own tasks only while it has a command, is not paused, has a free slot and
            // its budget did not refuse; built-in tasks never wait behind them.
            let active = crate::store::sessions::active(self.conn, Some(agent))?.len() as u64;
            let own = command.is_some() && !paused && !refused && active < cap;
            let Some(task) = self.choose(agent, own, paused)? else {
                break;
            };
            match (task.kind, &command) {
                (TaskKind::Ingest, _) => {
                    self.run_ingest(&task)?;
                    return Ok(true);
                }
                (TaskKind::Backfill, _) => {
                    self.run_backfill(&task)?;
                    return Ok(true);
                }
                (TaskKind::Agent, Some(command)) => {
                    if self.start_session(agent, &task, command)? {
                        acted = true;
                    } else {
                        refused = true;
                    }
                }
                (TaskKind::Agent, None) => break,
            }
        }
        Ok(acted)
    }

    /// The agent's next task the loop may run: its task in progress that no active
    /// session holds, else its first ready task; agent tasks only when `own` (it has a
    /// command and is not paused), backfills only when not `paused`.
    fn choose(&self, agent: &str, own: bool, paused: bool) -> Result<Option<TaskRow>> {
        let busy: HashSet<String> = crate::store::sessions::active(self.conn, None)?
            .into_iter()
            .filter_map(|s| s.task_id)
            .collect();
        let runnable = |t: &TaskRow| match t.kind {
            TaskKind::Agent => own && !busy.contains(&t.id),
            // run_task continues a backfill's own active session itself.
            TaskKind::Backfill => !paused,
            TaskKind::Ingest => true,
        };
        let views = tasks::views(self.conn)?;
        let mine = || views.iter().filter(|v| v.task.agent == agent);
        Ok(mine()
            .find(|v| v.state == State::InProgress && runnable(&v.task))
            .or_else(|| mine().find(|v| v.state == State::Ready && runnable(&v.task)))
            .map(|v| v.task.clone()))
    }

    fn refused(&mut self, agent: &str, why: String) {
        if self.refusals.get(agent) != Some(&why) {
            tracing::info!(agent, "{why}");
            self.refusals.insert(agent.to_string(), why);
        }
    }

    /// Starts a session of the agent's command on `task`; false when the budget refused.
    fn start_session(&mut self, agent: &str, task: &TaskRow, command: &[String]) -> Result<bool> {
        let outcome = session::start(
            self.conn,
            &self.config,
            &StartOptions {
                agent: agent.to_string(),
                task: Some(task.id.clone()),
                token_budget: None,
            },
        )?;
        let brief = match outcome {
            StartOutcome::Started(b) => b,
            StartOutcome::OverBudget {
                usage, resets_at, ..
            } => {
                self.refused(
                    agent,
                    format!(
                        "{agent} is over budget ({} {} / {}, {:.1}%): no session started{}",
                        usage.kind.label(),
                        usage.used,
                        usage.limit,
                        usage.percent,
                        resets_at
                            .map(|r| format!("; it resets at {r}"))
                            .unwrap_or_default()
                    ),
                );
                return Ok(false);
            }
            StartOutcome::NothingReady { .. } => return Ok(false),
        };
        self.refusals.remove(agent);
        let s = brief.session.id.clone();
        let run_id = store_agents::insert_run(
            self.conn,
            agent,
            &task.id,
            TaskKind::Agent.as_str(),
            Some(&s),
            &clock::now_rfc3339(),
        )?;
        let text = prompt::render(&self.root, &self.config, &brief);
        let prompt_file = self.root.prompt_path(&s);
        crate::root::write_document(&prompt_file, &text)?;
        let vars = Vars::new(&self.root, &s, &task.id, agent, &prompt_file);
        let transcript = self
            .config
            .agents
            .get(agent)
            .and_then(|a| a.transcript.as_deref())
            .map(|t| crate::hooks::expand_home(&vars.expand(t)));
        let vars = Vars {
            transcript: transcript.clone(),
            ..vars
        };
        let argv: Vec<String> = command.iter().map(|a| vars.expand(a)).collect();
        let mut env = vec![
            (
                "PERPETUAL_ROOT".to_string(),
                self.root.dir().display().to_string(),
            ),
            (session::SESSION_ENV.to_string(), s.clone()),
            ("PERPETUAL_TASK".to_string(), task.id.clone()),
            ("PERPETUAL_AGENT".to_string(), agent.to_string()),
            (
                "PERPETUAL_WRAP_FILE".to_string(),
                self.root.wrap_flag(&s).display().to_string(),
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
            root: self.root.clone(),
            config: self.config.clone(),
            run_id,
            agent: agent.to_string(),
            session: s.clone(),
            argv,
            env,
            prompt: text,
            transcript,
            wrap: wrap_rx,
            done: self.tx.clone(),
        };
        std::thread::Builder::new()
            .name(format!("session {s}"))
            .spawn(move || sup.run())
            .context("cannot start a supervisor thread")?;
        tracing::info!(
            agent,
            session = s.as_str(),
            task = task.id.as_str(),
            "started {s} for {agent} on {} at {}",
            task.id,
            tasks::progress_text(brief.task.task.done, brief.task.task.total)
        );
        self.children.insert(
            run_id,
            Child {
                agent: agent.to_string(),
                session: s,
                wrap: wrap_tx,
            },
        );
        self.report.sessions_started += 1;
        Ok(true)
    }

    /// An `ingest` task: integrates the agent's inbox, then completes the task.
    fn run_ingest(&mut self, task: &TaskRow) -> Result<()> {
        let agent = task.agent.as_str();
        let now = clock::now_rfc3339();
        let run_id = store_agents::insert_run(self.conn, agent, &task.id, "ingest", None, &now)?;
        store_tasks::mark_started(self.conn, &task.id, &now)?;
        self.report.builtin_runs += 1;
        let outcome = (|| -> Result<(u64, bool)> {
            let jobs = ingest::discover_inbox(&self.root.inbox(), &[agent.to_string()])?;
            let hints = Hints::load(self.conn)?;
            let mut writer = ingest::Writer::new(
                self.conn,
                WriterOptions {
                    checkpoint_every: self.config.ingest.checkpoint_every,
                },
            );
            writer.interrupt_on(self.stop.clone());
            ingest::integrate(
                &mut writer,
                jobs,
                &hints,
                self.config.ingest.max_file_bytes,
                &mut |_| true,
                &mut |_| {},
            )?;
            let interrupted = writer.interrupted();
            let r = writer.finish(&mut |_| {})?;
            let files = r.files_integrated
                + r.files_rejected
                + r.files_duplicate
                + r.files_skipped
                + r.files_unreadable;
            Ok((files, interrupted))
        })();
        let mut end = RunEnd::default();
        match outcome {
            Ok((files, interrupted)) => {
                end.progressed = files > 0;
                if files > 0 {
                    tasks::set_progress(self.conn, &task.id, files, Some(files))?;
                }
                if interrupted {
                    tracing::info!(
                        agent,
                        task = task.id.as_str(),
                        "{} interrupted after {files} file(s); the next run resumes it",
                        task.id
                    );
                } else {
                    let c = tasks::complete(self.conn, &self.root, &self.config, &task.id)?;
                    tracing::info!(
                        agent,
                        task = task.id.as_str(),
                        "{} complete: {files} file(s) from inbox/{agent}/, grade {}",
                        task.id,
                        c.grade.letter
                    );
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(agent, task = task.id.as_str(), "{} failed: {why}", task.id);
                tasks::fail(self.conn, &task.id, &why)?;
                end.error = Some(why);
            }
        }
        store_agents::finish_run(self.conn, run_id, &clock::now_rfc3339(), &end)
    }

    /// A `backfill` task: `backfill::run_task` with its params, in a session of its own.
    fn run_backfill(&mut self, task: &TaskRow) -> Result<()> {
        let agent = task.agent.clone();
        let run_id = store_agents::insert_run(
            self.conn,
            &agent,
            &task.id,
            "backfill",
            None,
            &clock::now_rfc3339(),
        )?;
        self.report.builtin_runs += 1;
        let result = tasks::BackfillParams::of(task).and_then(|p| {
            crate::backfill::run_task(
                self.conn,
                &self.root,
                &self.config,
                &p.task_options(&agent),
                &mut |_, _| {},
            )
        });
        let mut end = RunEnd::default();
        match result {
            Ok(s) => {
                if let Some(id) = &s.session {
                    store_agents::set_run_session(self.conn, run_id, id)?;
                    self.report.sessions_started += 1;
                }
                end.progressed = s.completed || s.sessions_done > task.done;
                tracing::info!(
                    agent = agent.as_str(),
                    task = task.id.as_str(),
                    "{}: {}/{} sessions backfilled, {} new pairs{}",
                    task.id,
                    s.sessions_done,
                    s.sessions_total,
                    s.pairs_new,
                    if s.completed {
                        ", complete"
                    } else if s.wrapped {
                        ", wrapped at the budget; the next round continues"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(
                    agent = agent.as_str(),
                    task = task.id.as_str(),
                    "{} failed: {why}",
                    task.id
                );
                if let Ok(t) = tasks::get(self.conn, &task.id)
                    && matches!(t.status, TaskStatus::Pending | TaskStatus::InProgress)
                {
                    tasks::fail(self.conn, &task.id, &why)?;
                }
                end.error = Some(why);
            }
        }
        store_agents::finish_run(self.conn, run_id, &clock::now_rfc3339(), &end)?;
        self.breaker(&agent)
    }

    /// Pauses the agent when its last sessions made no progress or failed alike.
    fn breaker(&mut self, agent: &str) -> Result<()> {
        let n = self.config.run.breaker_sessions as usize;
        if store_agents::pause_of(self.conn, agent)?.is_some() {
            return Ok(());
        }
        let floor = store_agents::run_floor(self.conn, agent)?;
        let runs = store_agents::last_runs(self.conn, agent, floor, n)?;
        if runs.len() < n {
            return Ok(());
        }
        let same_error = runs[0].error.is_some() && runs.iter().all(|r| r.error == runs[0].error);
        let stalled = runs.iter().all(|r| r.progressed == Some(false));
        if !(same_error || stalled) {
            return Ok(());
        }
        let reason = if same_error {
            format!(
                "circuit breaker: {n} sessions in a row ended with the same error: {}",
                runs[0].error.as_deref().unwrap_or_default()
            )
        } else {
            format!("circuit breaker: {n} sessions in a row made no progress")
        };
        let task = runs[0].task_id.clone();
        store_agents::set_pause(
            self.conn,
            agent,
            &clock::now_rfc3339(),
            &reason,
            task.as_deref(),
        )?;
        if let Some(t) = &task
            && store_tasks::exists(self.conn, t)?
        {
            store_tasks::flag_review(self.conn, t, &reason)?;
        }
        tracing::warn!(
            agent,
            "{agent} paused ({reason}); task {} needs review; `perpetual agent resume {agent}` lets it run again",
            task.as_deref().unwrap_or("-")
        );
        self.report.paused.push(agent.to_string());
        Ok(())
    }

    fn on_event(&mut self, e: Event) -> Result<()> {
        match e {
            Event::Done(run_id, agent) => {
                if let Some(child) = self.children.remove(&run_id) {
                    self.settle_run(run_id, &child.session)?;
                }
                self.breaker(&agent)?;
            }
            Event::Stop => self.ask_children_to_wrap(),
            Event::Inbox => {}
        }
        Ok(())
    }

    /// The backstop for a supervisor that failed before it concluded: the session is
    /// wrapped and the run recorded as ended.
    fn settle_run(&mut self, run_id: i64, session_id: &str) -> Result<()> {
        let Some(row) = crate::store::sessions::get(self.conn, session_id)? else {
            return Ok(());
        };
        if row.is_active() {
            tracing::warn!(
                session = session_id,
                "{session_id} was left active by its supervisor; wrapping it"
            );
            if let Err(e) = session::wrap(
                self.conn,
                &self.root,
                &self.config,
                session_id,
                &WrapInput::default(),
            ) {
                tracing::warn!("cannot wrap {session_id}: {e:#}");
            }
        }
        if store_agents::unfinished_runs(self.conn)?
            .iter()
            .any(|r| r.id == run_id)
        {
            let end = RunEnd {
                progressed: progressed(self.conn, &session::get(self.conn, session_id)?)?,
                error: Some("its supervisor failed (see the log)".to_string()),
                ..RunEnd::default()
            };
            store_agents::finish_run(self.conn, run_id, &clock::now_rfc3339(), &end)?;
        }
        Ok(())
    }

    fn drain_events(&mut self) -> Result<()> {
        while let Ok(e) = self.rx.try_recv() {
            self.on_event(e)?;
        }
        Ok(())
    }

    /// Blocks until something may have changed: a drop (after it settles), a session
    /// ending, a signal, or `run.idle_secs`.
    fn wait(&mut self) -> Result<()> {
        if !self.idle_logged {
            tracing::info!(
                running = self.children.len(),
                "waiting: nothing to start now ({} session(s) running); a drop, a session ending or {} s wake the loop",
                self.children.len(),
                self.config.run.idle_secs
            );
            self.idle_logged = true;
        }
        match self
            .rx
            .recv_timeout(Duration::from_secs(self.config.run.idle_secs))
        {
            Ok(Event::Inbox) => {
                // Let the drop settle: wait until the inbox has been quiet for settle_ms.
                let settle = Duration::from_millis(self.config.watch.settle_ms);
                loop {
                    match self.rx.recv_timeout(settle) {
                        Ok(Event::Inbox) => continue,
                        Ok(other) => {
                            self.on_event(other)?;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            Ok(e) => self.on_event(e)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {}
        }
        Ok(())
    }

    fn ask_children_to_wrap(&self) {
        for c in self.children.values() {
            tracing::info!(
                agent = c.agent.as_str(),
                session = c.session.as_str(),
                "asking {} to wrap: the loop is stopping",
                c.session
            );
            let _ = c.wrap.send(());
        }
    }

    /// Waits for every running session to end (asking them to wrap when stopping).
    fn finish_children(&mut self) -> Result<()> {
        if self.stopping() {
            self.ask_children_to_wrap();
        }
        while !self.children.is_empty() {
            match self.rx.recv() {
                Ok(e) => self.on_event(e)?,
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// Unpauses an agent: the breaker counts only the runs after this point, and the review
/// flag it set on the task (the one that tripped it) is cleared.
pub fn resume(conn: &Connection, agent: &str) -> Result<()> {
    if let Some(p) = store_agents::pause_of(conn, agent)?
        && let Some(t) = &p.task
        && let Some(row) = store_tasks::get(conn, t)?
        && row.needs_review.as_deref() == Some(p.reason.as_str())
    {
        store_tasks::clear_review(conn, t)?;
    }
    store_agents::clear_pause(conn, agent, store_agents::max_run_id(conn)?)
}

/// Whether the session's task advanced: completed, or its progress is past where the
/// session found it.
fn progressed(conn: &Connection, s: &SessionRow) -> Result<bool> {
    let Some(id) = &s.task_id else {
        return Ok(false);
    };
    Ok(store_tasks::get(conn, id)?
        .is_some_and(|t| t.status == TaskStatus::Completed || t.done > s.done_at_start))
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
    done: Sender<Event>,
}

impl Supervisor {
    fn run(self) {
        let (run_id, agent) = (self.run_id, self.agent.clone());
        if let Err(e) = self.supervise() {
            tracing::error!(
                agent = agent.as_str(),
                "supervising run {run_id} failed: {e:#}"
            );
        }
        let _ = self.done.send(Event::Done(run_id, agent));
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
            .map(|t| crate::transcript::Follow::new(t, since));
        let mut last_tokens = None;
        let mut asked: Option<Instant> = None;
        let mut termed: Option<Instant> = None;
        let mut stop_requested = false;
        let status = loop {
            match self.wrap.recv_timeout(poll) {
                Ok(()) => stop_requested = true,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
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
        reader: &mut Option<crate::transcript::Follow>,
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
        end.progressed = progressed(conn, &session::get(conn, s)?)?;
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
