//! The perpetual loop (`perpetual run`): agents that restart themselves, unattended.
//!
//! One round: run the assigner (`crate::work::assign`), then for each agent (not paused)
//! take its next task: the task in progress that no live session holds, else the first
//! ready one, exactly as `session start` would.
//!
//! - **Built-in kinds** run in-process, one per agent per round: `ingest` integrates the
//!   agent's inbox (`ingest::discover_inbox` + the shared write loop, interrupted by a
//!   stop signal at a checkpoint) and completes the task; `backfill` calls
//!   [`crate::work::backfill::run_task`] with the task's [`crate::work::backfill::Params`],
//!   which runs in a budgeted session of its own and wraps or completes it. The kinds are
//!   dispatched by one `match` in [`Loop::serve`], one call per kind.
//! - **The agent's own tasks** run when the agent has a `command` that can be started:
//!   the loop starts a session (`session::start`, with its budget gates), renders the
//!   prompt (`crate::run::prompt`), and hands both to `crate::run::supervise`, which
//!   starts the command, follows its budget and its processes, asks for the wrap, and
//!   wraps the session when the command did not.
//! - **Slots are processes.** An agent runs at most `slots` sessions at once (one without
//!   a slot budget), and a session holds its slot until every process of it has exited
//!   (its supervisor reports the end), not when its row says `wrapped`. A task whose
//!   session still has a process is not handed out again, and no session starts on a
//!   task at full progress.
//! - **A loop that restarts adopts what the last one left**: every run without an end is
//!   followed by a supervisor again (`supervise::adopt`): its recorded process (pid and
//!   start time) while it lives, then its remains, then its wrap.
//!
//! **The circuit breaker**: after `run.breaker_sessions` sessions of an agent in a row
//! without progress or ending with the same error, the agent is paused, its task flagged
//! "needs review", and the operator notified. After `run.breaker_cooldown_secs` it gets
//! one trial session (half-open): success closes the breaker, failure pauses it again
//! with the cooldown doubled. A session that ended with an error also delays the agent's
//! next one (`run.backoff_secs`, doubled per failure in a row, at most
//! `run.backoff_max_secs`). An agent whose command cannot be started is paused at once.
//!
//! **Steady cost, bounded disk.** A round reads the open tasks, never the history; old
//! prompts and logs in `.perpetual/` are pruned, completed ingest tasks leave the lists
//! after `run.ingest_retention_secs`, and below `run.min_free_disk_mb` no session starts.
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
use crate::run::procs;
use crate::run::prompt;
use crate::run::supervise::{self, Ended};
use crate::store::agents::{self as store_agents, RunEnd};
use crate::store::tasks::{self as store_tasks, TaskKind, TaskRow, TaskStatus};
use crate::work::assign;
use crate::work::session::{self, StartOptions, StartOutcome, WrapInput};
use crate::work::tasks::{self, State};
use anyhow::Result;
use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How often the loop prunes old ingest tasks and checks for a quiet pipeline.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

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
    /// Sessions a dead loop left that this one followed to their end.
    pub adopted: u64,
    /// Agents paused while it ran (each once).
    pub paused: BTreeSet<String>,
}

/// What wakes the loop.
enum Event {
    /// A supervised session ended (its run id, agent, and how).
    Done(i64, String, Ended),
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

/// A running session's supervisor, as the loop sees it: the session holds a slot of
/// its agent, and its task, until the supervisor reports the end.
struct Child {
    agent: String,
    session: String,
    task: Option<String>,
    wrap: Sender<()>,
    /// The breaker's half-open trial.
    trial: bool,
    /// Asked to wrap because the loop stops (asked once).
    asked: bool,
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
    watcher: Option<::notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// The last reason each agent could not start, so it is logged once, not each round.
    refusals: HashMap<String, String>,
    idle_logged: bool,
    last_housekeeping: Option<Instant>,
    quiet_notified: bool,
    disk_low: Option<String>,
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
            last_housekeeping: None,
            quiet_notified: false,
            disk_low: None,
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
    /// sessions it started or adopted. An error stops the loop the same way: the running
    /// sessions are asked to wrap and waited for, never left behind.
    pub fn run(mut self) -> Result<RunReport> {
        if let Err(e) = procs::set_child_subreaper() {
            tracing::warn!(
                "cannot become a child subreaper ({e}); processes that leave their session may outlive it"
            );
        }
        let me = std::process::id() as i32;
        store_agents::loop_started(self.conn, me, procs::start_of(me), &clock::now_rfc3339())?;
        self.recover()?;
        self.prune_files();
        self.start_watcher();
        let rounds = self.rounds();
        if rounds.is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
        let finished = self.finish_children();
        self.prune_files();
        crate::run::notify::wait_all(Duration::from_secs(self.config.notify.timeout_secs));
        store_agents::loop_stopped(self.conn, &clock::now_rfc3339())?;
        rounds?;
        finished?;
        Ok(self.report)
    }

    /// One round, exactly as the running loop does it (assigner, built-in tasks,
    /// sessions), without waiting afterwards; true when it started or ran something.
    /// What `benches/idle_round.rs` measures.
    pub fn round_once(&mut self) -> Result<bool> {
        self.round()
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

    /// Runs left unfinished by a loop that died. A session's run is followed again by a
    /// supervisor (its live process to its end, then its remains, then its wrap); a
    /// built-in run's session, if any, is wrapped.
    fn recover(&mut self) -> Result<()> {
        for r in store_agents::unfinished_runs(self.conn)? {
            let session_row = match &r.session_id {
                Some(s) => crate::store::sessions::get(self.conn, s)?,
                None => None,
            };
            if !TaskKind::parse(&r.kind).is_builtin()
                && let Some(row) = &session_row
            {
                let run_id = r.id;
                let agent = r.agent.clone();
                let done = self.tx.clone();
                let ended_agent = agent.clone();
                let wrap = supervise::adopt(
                    supervise::Adoption {
                        root: self.root.clone(),
                        config: self.config.clone(),
                        run: r.clone(),
                    },
                    Box::new(move |ended| {
                        let _ = done.send(Event::Done(run_id, ended_agent, ended));
                    }),
                )?;
                self.children.insert(
                    run_id,
                    Child {
                        agent,
                        session: row.id.clone(),
                        task: row.task_id.clone(),
                        wrap,
                        trial: false,
                        asked: false,
                    },
                );
                self.report.adopted += 1;
                continue;
            }
            let mut end = RunEnd::default();
            if let Some(row) = &session_row {
                if row.is_active() {
                    tracing::warn!(
                        session = row.id.as_str(),
                        "the loop stopped before session {} ended; wrapping it now",
                        row.id
                    );
                    if let Err(e) = session::wrap(
                        self.conn,
                        &self.root,
                        &self.config,
                        &row.id,
                        &WrapInput::default(),
                    ) {
                        tracing::warn!("cannot wrap {}: {e:#}", row.id);
                    }
                }
                end.progressed = session::progressed(self.conn, row)?;
                let _ = std::fs::remove_file(self.root.wrap_flag(&row.id));
            }
            store_agents::finish_run(self.conn, r.id, &clock::now_rfc3339(), &end)?;
        }
        Ok(())
    }

    /// Follows the inbox so a drop wakes the loop; without events the timer does.
    fn start_watcher(&mut self) {
        use ::notify::Watcher as _;
        let tx = self.tx.clone();
        let watcher = ::notify::recommended_watcher(move |e: ::notify::Result<::notify::Event>| {
            use ::notify::EventKind;
            use ::notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
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
                    && w.watch(&inbox, ::notify::RecursiveMode::NonRecursive)
                        .is_ok()
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
        use ::notify::Watcher as _;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for a in agents {
            let dir = self.root.inbox_of(a);
            if !self.watched.contains(&dir)
                && dir.is_dir()
                && w.watch(&dir, ::notify::RecursiveMode::NonRecursive).is_ok()
            {
                self.watched.insert(dir);
            }
        }
    }

    /// One round; true when it started or ran something. Its cost follows the open
    /// tasks and the agents, not the history.
    fn round(&mut self) -> Result<bool> {
        let cpu = clock::thread_cpu();
        crate::run::report::on_round(self.conn, &self.root, &self.config);
        self.housekeeping()?;
        for e in assign::assign(self.conn, &self.root, &self.config)? {
            if e.action == "retry_limit" {
                crate::run::notify::send(
                    &self.config,
                    crate::run::notify::Event::new("task_needs_review", &self.root, e.detail)
                        .agent(e.agent.as_deref().unwrap_or("-"))
                        .task(e.task_id.as_deref()),
                );
            }
        }
        let mut agents = self.root.agents(&self.config)?;
        agents.extend(store_tasks::agents_with_open_tasks(self.conn)?);
        agents.sort();
        agents.dedup();
        agents.retain(|a| self.opts.agent.as_ref().is_none_or(|x| x == a));
        self.watch_agent_folders(&agents);
        self.complete_finished_tasks()?;
        let mut acted = false;
        for agent in agents {
            if self.stopping() || self.max_reached() {
                break;
            }
            acted |= self.serve(&agent)?;
        }
        let idle_cpu = (!acted).then(|| clock::thread_cpu().saturating_sub(cpu).as_micros() as u64);
        store_agents::count_round(self.conn, &clock::now_rfc3339(), idle_cpu)?;
        Ok(acted)
    }

    /// Pruning, the free-disk floor and the quiet-pipeline check.
    fn housekeeping(&mut self) -> Result<()> {
        self.check_disk()?;
        if self
            .last_housekeeping
            .is_some_and(|t| t.elapsed() < HOUSEKEEPING_EVERY)
        {
            return Ok(());
        }
        self.last_housekeeping = Some(Instant::now());
        let cutoff = clock::format(
            clock::now() - chrono::Duration::seconds(self.config.run.ingest_retention_secs as i64),
        );
        let pruned = store_tasks::prune_completed_ingest(self.conn, &cutoff)?;
        if pruned > 0 {
            tracing::info!(
                "pruned {pruned} completed ingest task(s) finished before {cutoff} (their files stay in `perpetual files`)"
            );
        }
        self.check_quiet()
    }

    /// Below `run.min_free_disk_mb` of free space no session starts; the operator hears
    /// of it once, and `status` shows it.
    fn check_disk(&mut self) -> Result<()> {
        let floor = self.config.run.min_free_disk_mb;
        let low = match free_disk_mb(self.root.dir()) {
            Some(free) if free < floor => Some(format!(
                "{free} MiB free on the root's filesystem, below run.min_free_disk_mb = {floor}: no session starts"
            )),
            _ => None,
        };
        if low != self.disk_low {
            match &low {
                Some(why) => {
                    tracing::warn!("disk low: {why}");
                    crate::run::notify::send(
                        &self.config,
                        crate::run::notify::Event::new("disk_low", &self.root, why.clone()),
                    );
                }
                None => tracing::info!("free disk space is back above run.min_free_disk_mb"),
            }
            store_agents::set_disk_low(self.conn, low.as_deref())?;
            self.disk_low = low;
        }
        Ok(())
    }

    /// No new pair for `notify.quiet_hours`: the operator hears of it once per quiet spell.
    fn check_quiet(&mut self) -> Result<()> {
        let hours = self.config.notify.quiet_hours;
        if hours == 0 {
            return Ok(());
        }
        let last: Option<String> = self
            .conn
            .query_row(
                "SELECT created_at FROM pairs WHERE id = (SELECT MAX(id) FROM pairs)",
                [],
                |r| r.get(0),
            )
            .ok();
        let since = match last.as_deref().map(clock::parse) {
            Some(Ok(t)) => t,
            _ => return Ok(()),
        };
        let quiet = clock::now() - since >= chrono::Duration::hours(hours as i64);
        if quiet && !self.quiet_notified {
            crate::run::notify::send(
                &self.config,
                crate::run::notify::Event::new(
                    "quiet",
                    &self.root,
                    format!(
                        "no new pair since {} (notify.quiet_hours = {hours})",
                        clock::format(since)
                    ),
                ),
            );
        }
        self.quiet_notified = quiet;
        Ok(())
    }

    /// Deletes old prompts and command logs in `.perpetual/` (the newest `run.logs_kept`
    /// of each are kept, none older than `run.logs_max_age_days`) and wrap requests of
    /// sessions no longer followed; never those of a session still running.
    fn prune_files(&mut self) {
        let live: HashSet<&str> = self.children.values().map(|c| c.session.as_str()).collect();
        let keep = self.config.run.logs_kept;
        let max_age = Duration::from_secs(self.config.run.logs_max_age_days * 86_400);
        let state = self.root.state_dir();
        for dir in [state.join("prompts"), state.join("logs")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
            files.sort_by_key(|f| std::cmp::Reverse(f.0));
            let mut removed = 0;
            for (i, (modified, path)) in files.iter().enumerate() {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let old = modified.elapsed().is_ok_and(|a| a > max_age);
                if (i >= keep || old) && !live.contains(stem) && std::fs::remove_file(path).is_ok()
                {
                    removed += 1;
                }
            }
            if removed > 0 {
                tracing::debug!("pruned {removed} file(s) from {}", dir.display());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&state) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(s) = name.strip_prefix("wrap_")
                    && !live.contains(s)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Sessions of the agent that hold a slot: followed by a supervisor (until its last
    /// process is gone) or active in the database (a `session start` by hand).
    fn live_sessions(&self, agent: &str) -> Result<usize> {
        let mut ids: HashSet<String> = self
            .children
            .values()
            .filter(|c| c.agent == agent)
            .map(|c| c.session.clone())
            .collect();
        for s in crate::store::sessions::active(self.conn, Some(agent))? {
            ids.insert(s.id);
        }
        Ok(ids.len())
    }

    /// Tasks no new session may take: an active session works on them, or a session's
    /// processes are still running.
    fn busy_tasks(&self) -> Result<HashSet<String>> {
        let mut busy: HashSet<String> = crate::store::sessions::active(self.conn, None)?
            .into_iter()
            .filter_map(|s| s.task_id)
            .collect();
        busy.extend(self.children.values().filter_map(|c| c.task.clone()));
        Ok(busy)
    }

    /// An agent task at full progress that no session holds is completed here (its wrap
    /// could not complete it), never handed to a new session.
    fn complete_finished_tasks(&mut self) -> Result<()> {
        let busy = self.busy_tasks()?;
        let full: Vec<String> = tasks::open_views(self.conn)?
            .into_iter()
            .filter(|v| {
                !v.task.kind.is_builtin()
                    && v.state == State::InProgress
                    && v.task.total.is_some_and(|n| v.task.done >= n)
                    && !busy.contains(&v.task.id)
            })
            .map(|v| v.task.id)
            .collect();
        for id in full {
            match tasks::complete(self.conn, &self.root, &self.config, &id) {
                Ok(c) => tracing::info!(
                    task = id.as_str(),
                    "{id} is at full progress with no session: completed, grade {}",
                    c.grade.letter
                ),
                Err(e) => tracing::warn!("{id} is at full progress but cannot complete: {e:#}"),
            }
        }
        Ok(())
    }

    /// Starts what the agent can start now: one built-in task, or sessions up to its slots.
    fn serve(&mut self, agent: &str) -> Result<bool> {
        let pause = store_agents::pause_of(self.conn, agent)?;
        let command = self
            .config
            .agents
            .get(agent)
            .and_then(|a| a.command.clone());
        let slots = self.config.budget_of(agent).slots;
        let cap = if slots > 0 { slots as usize } else { 1 };
        let paused = pause.is_some();
        // The breaker half-opens after its cooldown: one trial session, alone.
        let trial = pause.as_ref().is_some_and(|p| {
            p.by == "breaker"
                && p.trial_at
                    .as_deref()
                    .and_then(|t| clock::parse(t).ok())
                    .is_some_and(|t| t <= clock::now())
        }) && !self.children.values().any(|c| c.agent == agent);
        let mut own_allowed = command.is_some() && (!paused || trial) && self.disk_low.is_none();
        if own_allowed && let Some(wait) = self.backing_off(agent)? {
            self.refused(
                agent,
                format!(
                    "{agent} is backing off after failed sessions: its next session in {wait} s"
                ),
            );
            own_allowed = false;
        }
        let mut refused = false;
        let mut acted = false;
        loop {
            if self.stopping() || self.max_reached() {
                break;
            }
            // Its own tasks only while it has a command, may run, has a free slot and its
            // budget did not refuse; built-in tasks never wait behind them.
            let own = own_allowed && !refused && self.live_sessions(agent)? < cap;
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
                    if self.start_session(agent, &task, command, trial)? {
                        acted = true;
                        if trial {
                            break;
                        }
                    } else {
                        refused = true;
                    }
                }
                (TaskKind::Agent | TaskKind::Duty, None) => break,
            }
        }
        Ok(acted)
    }

    /// Seconds left of the agent's crash backoff, if it is backing off.
    fn backing_off(&self, agent: &str) -> Result<Option<i64>> {
        let (_, until) = store_agents::backoff_of(self.conn, agent)?;
        Ok(until
            .as_deref()
            .and_then(|u| clock::parse(u).ok())
            .map(|u| (u - clock::now()).num_seconds())
            .filter(|s| *s > 0))
    }

    /// The agent's next task the loop may run: its task in progress that no live
    /// session holds, else its first ready task; agent tasks only when `own` (it may
    /// start a session now), never one at full progress; backfills only when not
    /// `paused`.
    fn choose(&self, agent: &str, own: bool, paused: bool) -> Result<Option<TaskRow>> {
        let busy = self.busy_tasks()?;
        let runnable = |t: &TaskRow| match t.kind {
            TaskKind::Agent | TaskKind::Duty => {
                own && !busy.contains(&t.id) && t.total.is_none_or(|n| t.done < n)
            }
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
        let views = tasks::open_views(self.conn)?;
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

    /// Pauses an agent whose command cannot be started, at once: no session, backup or
    /// handoff is made for a program that is not there.
    fn pause_for_command(&mut self, agent: &str, why: &str) -> Result<()> {
        let reason = format!("agents.{agent}.command cannot start: {why}");
        store_agents::set_pause_by(
            self.conn,
            agent,
            &clock::now_rfc3339(),
            &reason,
            None,
            "command",
            None,
            None,
        )?;
        tracing::warn!(
            agent,
            "{agent} paused: {reason}; fix perpetual.toml, then `perpetual agent resume {agent}`"
        );
        self.report.paused.insert(agent.to_string());
        crate::run::notify::send(
            &self.config,
            crate::run::notify::Event::new("agent_paused", &self.root, reason).agent(agent),
        );
        Ok(())
    }

    /// Starts a session of the agent's command on `task`; false when it did not start
    /// (the budget refused, or the program cannot be started).
    fn start_session(
        &mut self,
        agent: &str,
        task: &TaskRow,
        command: &[String],
        trial: bool,
    ) -> Result<bool> {
        if let Err(why) = supervise::check_program(&self.root, &command[0]) {
            self.pause_for_command(agent, &why)?;
            return Ok(false);
        }
        let outcome = session::start(
            self.conn,
            &self.config,
            &StartOptions {
                agent: agent.to_string(),
                task: Some(task.id.clone()),
                token_budget: None,
                loop_run: true,
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
        failpoint("run:after_session_start");
        let s = brief.session.id.clone();
        // Recorded with the session (`loop_run`): a loop killed from here on leaves a
        // run without a process, which the next one adopts and wraps.
        let run_id = brief
            .run_id
            .ok_or_else(|| anyhow::anyhow!("a loop's session has its run"))?;
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
            Box::new(move |ended| {
                let _ = done.send(Event::Done(run_id, ended_agent, ended));
            }),
        )?;
        tracing::info!(
            agent,
            session = s.as_str(),
            task = task.id.as_str(),
            "started {s} for {agent} on {} at {}{}",
            task.id,
            crate::human::progress_text(brief.task.task.done, brief.task.task.total),
            if trial {
                " (the breaker's trial session)"
            } else {
                ""
            }
        );
        self.children.insert(
            run_id,
            Child {
                agent: agent.to_string(),
                session: s,
                task: Some(task.id.clone()),
                wrap,
                trial,
                asked: false,
            },
        );
        self.report.sessions_started += 1;
        Ok(true)
    }

    /// An `ingest` task: integrates the agent's inbox, then completes the task (graded,
    /// without a report: the ledger is its record, and one per round would flood
    /// `task_reports/`).
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
                    let tx = self
                        .conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let grade = tasks::complete_in(&tx, &self.config, &task.id)?;
                    tx.commit()?;
                    tracing::info!(
                        agent,
                        task = task.id.as_str(),
                        "{} complete: {files} file(s) from inbox/{agent}/, grade {}",
                        task.id,
                        grade.letter
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

    /// Pauses the agent when its last sessions made no progress or failed alike; the
    /// breaker's trial comes after `run.breaker_cooldown_secs`.
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
        self.trip(
            agent,
            &reason,
            task.as_deref(),
            self.config.run.breaker_cooldown_secs,
        )
    }

    /// Opens the breaker: the agent is paused, its task flagged, the operator notified,
    /// and one trial session is due `cooldown` seconds from now.
    fn trip(&mut self, agent: &str, reason: &str, task: Option<&str>, cooldown: u64) -> Result<()> {
        let now = clock::now();
        let trial_at = clock::format(now + chrono::Duration::seconds(cooldown as i64));
        store_agents::set_pause_by(
            self.conn,
            agent,
            &clock::format(now),
            reason,
            task,
            "breaker",
            Some(cooldown),
            Some(&trial_at),
        )?;
        if let Some(t) = task
            && store_tasks::exists(self.conn, t)?
        {
            store_tasks::flag_review(self.conn, t, reason)?;
            crate::run::notify::send(
                &self.config,
                crate::run::notify::Event::new("task_needs_review", &self.root, reason)
                    .agent(agent)
                    .task(Some(t)),
            );
        }
        tracing::warn!(
            agent,
            "{agent} paused ({reason}); task {} needs review; a trial session at {trial_at}, or `perpetual agent resume {agent}`",
            task.unwrap_or("-")
        );
        self.report.paused.insert(agent.to_string());
        crate::run::notify::send(
            &self.config,
            crate::run::notify::Event::new("agent_paused", &self.root, reason)
                .agent(agent)
                .task(task),
        );
        Ok(())
    }

    fn on_event(&mut self, e: Event) -> Result<()> {
        match e {
            Event::Done(run_id, agent, ended) => {
                let Some(child) = self.children.remove(&run_id) else {
                    return Ok(());
                };
                self.settle_run(run_id, &child.session)?;
                self.prune_files();
                if let Some(why) = &ended.not_started {
                    return self.pause_for_command(&agent, why);
                }
                self.backoff(&agent, &ended)?;
                if child.trial {
                    return self.end_trial(&agent, run_id, &child, &ended);
                }
                self.breaker(&agent)?;
            }
            Event::Stop => self.ask_children_to_wrap(),
            Event::Inbox => {}
        }
        Ok(())
    }

    /// A session that ended with an error delays the agent's next one, doubling with
    /// each failure in a row; one without an error clears it.
    fn backoff(&mut self, agent: &str, ended: &Ended) -> Result<()> {
        let (failures, _) = store_agents::backoff_of(self.conn, agent)?;
        if ended.error.is_none() {
            if failures > 0 {
                store_agents::set_backoff(self.conn, agent, 0, None)?;
            }
            return Ok(());
        }
        let failures = failures + 1;
        let base = self.config.run.backoff_secs;
        if base == 0 {
            return store_agents::set_backoff(self.conn, agent, failures, None);
        }
        let wait = base
            .saturating_mul(1u64 << (failures - 1).min(32))
            .min(self.config.run.backoff_max_secs.max(base));
        // Stored to the second: rounded up, so the wait is never shorter than said.
        // (`clock::now` is already whole, and rounding it up would change nothing: a
        // session that ended at .99 of a second was given a wait a second short.)
        let end = clock::now_exact() + chrono::Duration::seconds(wait as i64);
        let end = match chrono::Timelike::with_nanosecond(&end, 0) {
            Some(whole) if whole < end => whole + chrono::Duration::seconds(1),
            _ => end,
        };
        let until = clock::format(end);
        tracing::warn!(
            agent,
            "{agent}: {failures} failed session(s) in a row; backing off {wait} s (until {until})"
        );
        store_agents::set_backoff(self.conn, agent, failures, Some(&until))
    }

    /// The breaker's trial ended: progress without an error closes it; anything else
    /// opens it again with the cooldown doubled.
    fn end_trial(&mut self, agent: &str, run_id: i64, child: &Child, ended: &Ended) -> Result<()> {
        let Some(pause) = store_agents::pause_of(self.conn, agent)? else {
            return Ok(()); // resumed by hand meanwhile
        };
        if ended.error.is_none() && ended.progressed {
            tracing::info!(
                agent,
                "{agent}: the trial session {} made progress; the breaker closes",
                child.session
            );
            resume_after(self.conn, agent, run_id)?;
            return Ok(());
        }
        let cooldown = pause
            .cooldown_secs
            .unwrap_or(self.config.run.breaker_cooldown_secs)
            .saturating_mul(2);
        let reason = format!(
            "circuit breaker: the trial session {} failed ({}); cooldown {cooldown} s",
            child.session,
            ended.error.as_deref().unwrap_or("no progress")
        );
        self.trip(
            agent,
            &reason,
            pause.task.as_deref().or(child.task.as_deref()),
            cooldown,
        )
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
        let woke = self
            .rx
            .recv_timeout(Duration::from_secs(self.config.run.idle_secs));
        store_agents::heartbeat(self.conn, &clock::now_rfc3339())?;
        match woke {
            Ok(Event::Inbox) => {
                // Let the drop settle: wait until the inbox has been quiet for settle_ms
                // (at most idle_secs, so a writer that never pauses cannot hold the loop).
                let settle = Duration::from_millis(self.config.watch.settle_ms);
                let until = Instant::now() + Duration::from_secs(self.config.run.idle_secs);
                while Instant::now() < until {
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

    /// Asks each running session to wrap, once (its supervisor writes the request and
    /// logs it).
    fn ask_children_to_wrap(&mut self) {
        let mut asked = 0;
        for c in self.children.values_mut().filter(|c| !c.asked) {
            c.asked = true;
            let _ = c.wrap.send(());
            asked += 1;
        }
        if asked > 0 {
            tracing::info!("stopping: {asked} running session(s) asked to wrap");
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
    resume_after(conn, agent, store_agents::max_run_id(conn)?)
}

fn resume_after(conn: &Connection, agent: &str, floor: i64) -> Result<()> {
    if let Some(p) = store_agents::pause_of(conn, agent)?
        && let Some(t) = &p.task
        && let Some(row) = store_tasks::get(conn, t)?
        && row.needs_review.as_deref() == Some(p.reason.as_str())
    {
        store_tasks::clear_review(conn, t)?;
    }
    store_agents::clear_pause(conn, agent, floor)
}

/// Free space available to this user on the filesystem holding `dir`, in MiB.
pub fn free_disk_mb(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64 / (1024 * 1024))
}

/// A test hook, honoured by debug builds only (the ones `cargo test` runs): when
/// `PERPETUAL_FAILPOINT` names `point`, the loop SIGKILLs itself there, so that a test
/// can reproduce a crash in a window too narrow to hit with a signal from outside.
fn failpoint(point: &str) {
    if cfg!(debug_assertions) && std::env::var("PERPETUAL_FAILPOINT").is_ok_and(|v| v == point) {
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(std::process::id() as libc::pid_t, libc::SIGKILL);
        }
    }
}
