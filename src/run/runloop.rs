//! The perpetual loop (`perpetual run`): agents that restart themselves.
//!
//! One round: run the assigner (`crate::work::assign`), then for each agent (not paused) take
//! its next task: the task in progress that no active session holds, else the first
//! ready one, exactly as `session start` would.
//!
//! - **Built-in kinds** run in-process, one per agent per round: `ingest` integrates the
//!   agent's inbox (`ingest::discover_inbox` + the shared write loop, interrupted by a
//!   stop signal at a checkpoint) and completes the task; `backfill` calls
//!   [`crate::work::backfill::run_task`] with the task's [`crate::work::backfill::Params`],
//!   which runs in a budgeted session of its own and wraps or completes it.
//! - **The agent's own tasks** run when the agent has a `command`: the loop starts a
//!   session (`session::start`, with its budget gates), renders the prompt
//!   (`crate::run::prompt`), and hands both to `crate::run::supervise`, which starts the command,
//!   follows the session's budget, asks for the wrap at the threshold (the file
//!   `.perpetual/wrap_<session>`, then SIGTERM after `run.grace_secs`, then SIGKILL) and
//!   wraps the session when the command did not. When it has ended, the next round starts
//!   the next session. An agent runs at most `slots` sessions at once (one without a slot
//!   budget).
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

use crate::clock;
use crate::config::Config;
use crate::engine::ingest::{self, Hints, WriterOptions};
use crate::root::Root;
use crate::run::prompt;
use crate::run::supervise;
use crate::store::agents::{self as store_agents, RunEnd};
use crate::store::tasks::{self as store_tasks, TaskKind, TaskRow, TaskStatus};
use crate::work::assign;
use crate::work::session::{self, StartOptions, StartOutcome, WrapInput};
use crate::work::tasks::{self, State};
use anyhow::Result;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

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
    /// sessions it started. An error stops the loop the same way: the running sessions
    /// are asked to wrap and waited for, never left behind.
    pub fn run(mut self) -> Result<RunReport> {
        self.recover()?;
        self.start_watcher();
        let rounds = self.rounds();
        if rounds.is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
        let finished = self.finish_children();
        rounds?;
        finished?;
        Ok(self.report)
    }

    fn rounds(&mut self) -> Result<()> {
        loop {
            if self.stopping() {
                return Ok(());
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
                return Ok(());
            }
            if acted {
                self.idle_logged = false;
                self.drain_events()?;
                continue;
            }
            self.wait()?;
        }
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
                end.progressed = session::progressed(self.conn, &row)?;
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
        crate::run::report::on_round(self.conn, &self.root, &self.config);
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
                (
                    TaskKind::Quality
                    | TaskKind::NearDups
                    | TaskKind::Coverage
                    | TaskKind::ImportDb
                    | TaskKind::ExportRag
                    | TaskKind::ExportEmbeddings
                    | TaskKind::ImportEmbeddings
                    | TaskKind::Split
                    | TaskKind::Charts,
                    _,
                ) => {
                    self.run_workbench(&task)?;
                    return Ok(true);
                }
                (TaskKind::Agent | TaskKind::Duty, Some(command)) => {
                    if self.start_session(agent, &task, command)? {
                        acted = true;
                    } else {
                        refused = true;
                    }
                }
                (TaskKind::Agent | TaskKind::Duty, None) => break,
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
            TaskKind::Agent | TaskKind::Duty => own && !busy.contains(&t.id),
            // run_task continues a backfill's own active session itself.
            TaskKind::Backfill => !paused,
            TaskKind::Ingest => true,
            // In a session of their own, like a backfill (run_task wraps one a dead loop left).
            TaskKind::Quality
            | TaskKind::NearDups
            | TaskKind::Coverage
            | TaskKind::ImportDb
            | TaskKind::ExportRag
            | TaskKind::ExportEmbeddings
            | TaskKind::ImportEmbeddings
            | TaskKind::Split
            | TaskKind::Charts => !paused,
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
            task.kind.as_str(),
            Some(&s),
            &clock::now_rfc3339(),
        )?;
        let done = self.tx.clone();
        let ended_agent = agent.to_string();
        let wrap = supervise::start(
            supervise::Launch {
                root: self.root.clone(),
                config: self.config.clone(),
                run_id,
                agent: agent.to_string(),
                session: s.clone(),
                task: task.id.clone(),
                command: command.to_vec(),
                prompt: prompt::render(&self.root, &self.config, &brief),
            },
            Box::new(move || {
                let _ = done.send(Event::Done(run_id, ended_agent));
            }),
        )?;
        tracing::info!(
            agent,
            session = s.as_str(),
            task = task.id.as_str(),
            "started {s} for {agent} on {} at {}",
            task.id,
            crate::human::progress_text(brief.task.task.done, brief.task.task.total)
        );
        self.children.insert(
            run_id,
            Child {
                agent: agent.to_string(),
                session: s,
                wrap,
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
            let (databases, jobs) = crate::engine::import_db::split_databases(jobs);
            let imported = crate::engine::import_db::import_jobs(
                self.conn,
                &databases,
                self.config.ingest.checkpoint_every,
                &mut crate::store::pairs::PairSink::new(),
                Some(&self.stop),
            )?
            .len() as u64;
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
            let files = imported
                + r.files_integrated
                + r.files_rejected
                + r.files_duplicate
                + r.files_already_done
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
        let result = crate::work::backfill::Params::of(task).and_then(|p| {
            crate::work::backfill::run_task(
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

    /// A workbench task (`quality`, `near_dups`, `coverage`, `import_db`):
    /// `workbench::run_task`, in a session of its own that completes it at the wrap.
    fn run_workbench(&mut self, task: &TaskRow) -> Result<()> {
        let agent = task.agent.clone();
        let kind = task.kind.as_str();
        let run_id = store_agents::insert_run(
            self.conn,
            &agent,
            &task.id,
            kind,
            None,
            &clock::now_rfc3339(),
        )?;
        self.report.builtin_runs += 1;
        let result = crate::work::workbench::run_task(
            self.conn,
            &self.root,
            &self.config,
            task,
            Some(&self.stop),
        );
        let mut end = RunEnd::default();
        match result {
            Ok(o) => {
                if let Some(id) = &o.session {
                    store_agents::set_run_session(self.conn, run_id, id)?;
                    self.report.sessions_started += 1;
                }
                end.progressed = o.completed;
                tracing::info!(
                    agent = agent.as_str(),
                    task = task.id.as_str(),
                    "{}: {}",
                    task.id,
                    o.detail
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
                progressed: session::progressed(self.conn, &session::get(self.conn, session_id)?)?,
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
                // Let the drop settle: wait until the inbox has been quiet for settle_ms
                // (at most idle_secs, so a writer that never pauses cannot hold the loop).
                let settle = Duration::from_millis(self.config.watch.settle_ms);
                let until =
                    std::time::Instant::now() + Duration::from_secs(self.config.run.idle_secs);
                while std::time::Instant::now() < until {
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
        let mut first_error = None;
        while !self.children.is_empty() {
            match self.rx.recv() {
                // Keep waiting for the others whatever one of them left behind.
                Ok(e) => {
                    if let Err(e) = self.on_event(e) {
                        tracing::error!("{e:#}");
                        first_error.get_or_insert(e);
                    }
                }
                Err(_) => break,
            }
        }
        first_error.map_or(Ok(()), Err)
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
