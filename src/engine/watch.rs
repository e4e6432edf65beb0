//! The live watcher (`perpetual watch`): follows `inbox/<agent>/` through filesystem
//! events (or polling), decides when each drop is complete, and hands complete files to
//! the ingestion engine ([`ingest::integrate_streaming`]) in batches, which the files
//! that become complete while a batch runs join (`Watch::arrived`).
//!
//! When is a file complete? Renamed into place (the writers' convention) or closed after
//! writing (Linux reports it): at once. Written in place without such an event: once its
//! size and modification time have stayed still for `settle` ([`Tracker`]). Two checks
//! guard the read itself: a file whose size or modification time changed while it was
//! being read is read again later, and a file that fails to parse is rejected only once
//! it has been still for `settle`, so a slow writer is never rejected as truncated.
//!
//! Nothing relies on events alone: the watches are set before the catch-up scan (so a
//! file created in between is seen by one or the other), an agent folder is listed right
//! after its watch is added, an event-queue overflow triggers a full rescan, and a
//! reconcile scan runs every `reconcile` as the backstop.

use crate::config::Config;
use crate::engine::ingest::{self, FileEvent, Hints, IngestReport, Job, Outcome, Prepared};
use crate::root::{self, Root};
use anyhow::{Context, Result};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use rusqlite::Connection;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

/// How the watcher behaves; see `[watch]` in `perpetual.toml`.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// How long a file written in place must stay still before it is read, and before a
    /// parse failure rejects it.
    pub settle: Duration,
    /// Time between full scans (the backstop for lost events).
    pub reconcile: Duration,
    /// `Some(interval)`: poll instead of using filesystem events.
    pub poll: Option<Duration>,
    /// Files over this size are rejected unread.
    pub max_file_bytes: u64,
    /// The writer's tunables.
    pub writer: ingest::WriterOptions,
}

impl WatchOptions {
    /// The options a configuration asks for; `force_poll` is `watch --poll`.
    pub fn from_config(config: &Config, force_poll: bool) -> WatchOptions {
        let w = &config.watch;
        WatchOptions {
            settle: Duration::from_millis(w.settle_ms),
            reconcile: Duration::from_secs(w.reconcile_secs),
            poll: (w.poll || force_poll).then(|| Duration::from_millis(w.poll_interval_ms)),
            max_file_bytes: config.ingest.max_file_bytes,
            writer: ingest::WriterOptions {
                checkpoint_every: config.ingest.checkpoint_every,
            },
        }
    }
}

/// What wakes the watcher's loop.
enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// Stops a running [`Watch`] from another thread (a signal handler): the current
/// transaction finishes, then [`Watch::run`] returns.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    tx: Sender<Msg>,
}

impl Stopper {
    /// Asks the watcher to stop; returns at once.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // Wakes the loop even when no filesystem event is coming.
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Stops `stopper` on SIGINT or SIGTERM. A second signal exits the process at once
/// (status 1), which loses nothing either: a restart resumes after the last commit.
pub fn stop_on_signals(stopper: Stopper) -> Result<()> {
    on_signals(move || stopper.stop())
}

/// Calls `first` on the first SIGINT or SIGTERM (from a thread of its own); a second
/// signal exits the process at once with status 1. `watch` and `run` stop this way.
pub fn on_signals(first: impl Fn() + Send + 'static) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("cannot catch signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "stopping: finishing the current transaction (signal again to exit at once)"
                    );
                    first();
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// A running watcher on one root. It owns the database connection's writes: the caller
/// holds the root's writer lock.
pub struct Watch<'c> {
    conn: &'c Connection,
    root: Root,
    config: Config,
    inbox: PathBuf,
    opts: WatchOptions,
    mode: String,
    watcher: Box<dyn notify::Watcher>,
    rx: Receiver<Msg>,
    stopper: Stopper,
    /// Agents whose inbox folder has a watch.
    followed: HashSet<String>,
    tracker: Tracker,
    hints: Hints,
    /// The key tail and the moves not made yet, kept from one batch's writer to the
    /// next (`ingest::Writer::finish_carrying`).
    carry: ingest::Carry,
    rescan: bool,
    backoff: Duration,
    totals: IngestReport,
}

impl<'c> Watch<'c> {
    /// Prepares a watcher on `root` (nothing is watched or read until [`Watch::run`]).
    /// Falls back to polling, with a warning, when filesystem events are unavailable.
    pub fn new(
        root: &Root,
        config: &Config,
        conn: &'c Connection,
        opts: WatchOptions,
    ) -> Result<Watch<'c>> {
        let (tx, rx) = mpsc::channel();
        let stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            tx: tx.clone(),
        };
        let inbox = root.inbox();
        std::fs::create_dir_all(&inbox)
            .with_context(|| format!("cannot create {}", inbox.display()))?;
        let (mut watcher, mut mode) = start_watcher(tx.clone(), opts.poll)?;
        if let Err(e) = watcher.watch(&inbox, RecursiveMode::NonRecursive) {
            if opts.poll.is_some() {
                return Err(e).with_context(|| format!("cannot watch {}", inbox.display()));
            }
            // Typically the inotify watch limit (fs.inotify.max_user_watches).
            let interval = Duration::from_millis(config.watch.poll_interval_ms);
            tracing::warn!(
                "cannot watch {} with filesystem events ({e}); polling every {} ms instead",
                inbox.display(),
                interval.as_millis()
            );
            (watcher, mode) = start_watcher(tx, Some(interval))?;
            watcher
                .watch(&inbox, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", inbox.display()))?;
        }
        Ok(Watch {
            conn,
            root: root.clone(),
            config: config.clone(),
            hints: Hints::load(conn)?,
            carry: ingest::Carry::default(),
            inbox,
            tracker: Tracker::new(opts.settle),
            opts,
            mode,
            watcher,
            rx,
            stopper,
            followed: HashSet::new(),
            rescan: false,
            backoff: Duration::ZERO,
            totals: IngestReport::default(),
        })
    }

    /// A handle that stops [`Watch::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    fn stopping(&self) -> bool {
        self.stopper.flag.load(Ordering::SeqCst)
    }

    /// Integrates every file already waiting, then follows the inbox until stopped.
    /// Returns the totals of the whole run.
    pub fn run(mut self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<IngestReport> {
        let started = Instant::now();
        // Watches first, then the scan: a file created in between is seen by one or both.
        self.reconcile()?;
        let agents = self.followed.len();
        tracing::info!(
            inbox = %self.inbox.display(),
            mode = %self.mode,
            agents,
            waiting = self.tracker.len(),
            "watching {} ({}): {agents} agents, {} files waiting",
            self.inbox.display(),
            self.mode,
            self.tracker.len()
        );
        let mut next_reconcile = Instant::now() + self.opts.reconcile;
        while !self.stopping() {
            let ready = self.tracker.take_ready(Instant::now());
            if !ready.is_empty() {
                self.integrate(ready, on_file);
                continue;
            }
            // Events that came while a batch was written make the next batch of the same
            // burst; only when none are waiting is the watcher idle.
            let mut queued = false;
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
                queued = true;
            }
            if queued {
                continue;
            }
            self.move_finished(on_file);
            let deadline = self
                .tracker
                .next_deadline()
                .map_or(next_reconcile, |d| d.min(next_reconcile));
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(msg) => {
                    self.handle(msg);
                    // Everything already queued joins the same batch.
                    while let Ok(msg) = self.rx.try_recv() {
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Unreachable: the stopper keeps a sender alive.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.rescan_if_due(&mut next_reconcile);
        }
        self.move_finished(on_file);
        let t = &mut self.totals;
        t.seconds = started.elapsed().as_secs_f64();
        t.pairs_per_second = if t.seconds > 0.0 {
            t.pairs_seen as f64 / t.seconds
        } else {
            0.0
        };
        tracing::info!(
            files_integrated = t.files_integrated,
            files_rejected = t.files_rejected,
            files_duplicate = t.files_duplicate,
            pairs_new = t.pairs_new,
            "stopped after {:.1} s: {} files integrated, {} rejected, {} duplicate; {} new pairs",
            t.seconds,
            t.files_integrated,
            t.files_rejected,
            t.files_duplicate,
            t.pairs_new
        );
        Ok(self.totals)
    }

    /// Scans everything when events may have been lost, or when the reconcile scan is due.
    fn rescan_if_due(&mut self, next_reconcile: &mut Instant) {
        if !self.rescan && Instant::now() < *next_reconcile {
            return;
        }
        if self.rescan {
            tracing::info!("rescanning every inbox (events may have been lost)");
        }
        self.rescan = false;
        if let Err(e) = self.reconcile() {
            tracing::error!("cannot scan the inbox: {e:#}");
        }
        *next_reconcile = Instant::now() + self.opts.reconcile;
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Stop => {}
            Msg::Fs(Err(e)) => {
                tracing::warn!("filesystem watch error: {e}");
                self.rescan = true;
            }
            Msg::Fs(Ok(event)) => self.on_event(event),
        }
    }

    fn on_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            self.rescan = true;
        }
        let arrival = match event.kind {
            // Our own reads, and anything else that changes nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Arrival::Complete,
            EventKind::Access(_) | EventKind::Other | EventKind::Any => return,
            EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Both | RenameMode::Any,
            )) => Arrival::Complete,
            EventKind::Create(CreateKind::File | CreateKind::Any) => Arrival::Found,
            _ => Arrival::Changed,
        };
        for path in &event.paths {
            let Some(parent) = path.parent() else {
                continue;
            };
            if parent == self.inbox {
                self.on_inbox_entry(path);
            } else if parent.parent() == Some(self.inbox.as_path())
                && let Some(agent) = file_name(parent)
                && self.followed.contains(agent)
                && let Some(job) = ingest::inbox_entry(&self.inbox, path)
            {
                self.tracker
                    .arrive(path, &job.agent, arrival, Instant::now());
            }
        }
    }

    /// Something happened to `inbox/<name>`: an agent folder appeared or went away, or
    /// something that is not an agent folder appeared (reported, never followed).
    fn on_inbox_entry(&mut self, path: &Path) {
        if let Some(job) = ingest::inbox_entry(&self.inbox, path) {
            self.tracker
                .arrive(path, &job.agent, Arrival::Complete, Instant::now());
        }
        let Some(name) = file_name(path) else { return };
        if root::check_agent_name(name).is_err() {
            return;
        }
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            if !self.followed.contains(name) {
                let name = name.to_string();
                tracing::info!(agent = %name, "new agent folder");
                self.follow(&name);
                self.scan(std::slice::from_ref(&name));
            }
        } else {
            // Gone (or replaced by a file): its watch went with it.
            self.followed.remove(name);
        }
    }

    /// Adds a watch on `inbox/<agent>/` (not recursive: `processed/` and `rejected/`,
    /// where our own moves land, stay quiet).
    fn follow(&mut self, agent: &str) {
        let dir = self.inbox.join(agent);
        match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.followed.insert(agent.to_string());
            }
            Err(e) => {
                // Tried again at the next reconcile scan.
                tracing::warn!("cannot watch {}: {e}", dir.display());
            }
        }
    }

    /// Lists the folders of `agents` (and `inbox/` itself) and tracks every entry found:
    /// drops, and what the ledger must say is not one.
    fn scan(&mut self, agents: &[String]) {
        match ingest::survey_inbox(&self.inbox, agents) {
            Ok(jobs) => {
                let now = Instant::now();
                for job in jobs {
                    self.tracker
                        .arrive(&job.path, &job.agent, Arrival::Found, now);
                }
            }
            Err(e) => tracing::error!("cannot scan the inbox: {e:#}"),
        }
    }

    /// Follows every agent folder (new ones included) and lists them all.
    fn reconcile(&mut self) -> Result<()> {
        let agents: Vec<String> = self
            .root
            .agents(&self.config)?
            .into_iter()
            .filter(|a| std::fs::symlink_metadata(self.inbox.join(a)).is_ok_and(|m| m.is_dir()))
            .collect();
        self.followed.retain(|a| agents.contains(a));
        for agent in &agents {
            if !self.followed.contains(agent) {
                self.follow(agent);
            }
        }
        self.tracker.forget_missing();
        self.scan(&agents);
        Ok(())
    }

    /// Syncs the WAL and moves the files the last batches finished, if any: when idle,
    /// and before stopping.
    fn move_finished(&mut self, on_file: &mut dyn FnMut(&FileEvent)) {
        if self.carry.moves_pending() == 0 {
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        match ingest::Writer::resume(self.conn, self.opts.writer, carry)
            .finish_carrying(on_file, true)
        {
            Ok((_, carry)) => self.carry = carry,
            // The files stay in the inbox, integrated in the ledger: the next scan that
            // finds them completes their moves.
            Err(e) => tracing::error!("{e:#}"),
        }
    }

    /// Runs one batch of complete files through the engine; files that become ready
    /// while it runs join it ([`ingest::integrate_streaming`], [`Watch::arrived`]).
    fn integrate(&mut self, ready: Vec<Ready>, on_file: &mut dyn FnMut(&FileEvent)) {
        // A file whose move is still pending came up again (a late event, or another
        // file renamed over it): its move first, as if the last batch had just ended,
        // so that what is at the path now is looked at on its own.
        let mut moving = self.carry.moving_paths();
        if ready.iter().any(|r| moving.contains(&r.path)) {
            self.move_finished(on_file);
            moving = self.carry.moving_paths();
        }
        let batch = std::cell::RefCell::new(Batch {
            moving,
            ..Batch::default()
        });
        // What the entry is now (its name and place decide some skips).
        let jobs = batch.borrow_mut().admit_ready(&self.inbox, ready);
        tracing::debug!(files = jobs.len(), "batch");
        let settle = self.opts.settle;
        let mut admit = |p: &Prepared| {
            let quiet = batch.borrow().quiet.get(&p.job.path) == Some(&true);
            admit(p, quiet, settle)
        };
        // The key tail lives across batches: reloading it for every drop would cost
        // milliseconds per drop once it is large. A failed batch drops it (see below).
        let mut carry = std::mem::take(&mut self.carry);
        // SQLite databases (recognised by their header) are imported row by row, with the
        // same key tail, before the batch's files.
        let (databases, jobs) = crate::engine::import_db::split_databases(jobs);
        if !databases.is_empty() {
            match crate::engine::import_db::import_jobs(
                self.conn,
                &databases,
                self.opts.writer.checkpoint_every,
                carry.sink_mut(),
                Some(&self.stopper.flag),
            ) {
                Ok(reports) => {
                    for r in &reports {
                        crate::engine::import_db::add_to(&mut self.totals, r);
                    }
                }
                Err(e) => {
                    // As for a failed batch: the databases stay in the inbox, tried again
                    // after the backoff; the tail may hold keys never stored.
                    self.backoff =
                        (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    tracing::error!("{e:#}; tried again in {} s", self.backoff.as_secs());
                    let now = Instant::now();
                    for (path, agent) in batch.into_inner().agent_of {
                        self.tracker.hold(&path, &agent, now + self.backoff);
                    }
                    carry.drop_sink();
                    self.carry = carry;
                    return;
                }
            }
        }
        let conn = self.conn;
        let (writer_opts, max_file_bytes) = (self.opts.writer, self.opts.max_file_bytes);
        let mut writer = ingest::Writer::resume(conn, writer_opts, carry);
        writer.interrupt_on(self.stopper.flag.clone());
        let hints = std::mem::take(&mut self.hints);
        let result = ingest::integrate_streaming(
            &mut writer,
            jobs,
            &mut || self.arrived(&mut batch.borrow_mut()),
            &hints,
            max_file_bytes,
            &mut admit,
            on_file,
        )
        .and_then(|held| Ok((held, writer.finish_carrying(on_file, false)?)));
        self.hints = hints;
        let Batch {
            quiet, agent_of, ..
        } = batch.into_inner();
        let now = Instant::now();
        match result {
            Ok(((held, databases), (report, carry))) => {
                self.carry = carry;
                self.backoff = Duration::ZERO;
                add(&mut self.totals, report);
                for p in held {
                    self.tracker.hold(&p.job.path, &p.job.agent, now + settle);
                }
                // Databases that joined the batch are imported by the next, first.
                for job in databases {
                    self.tracker.put_back(&Ready {
                        quiet: quiet.get(&job.path) == Some(&true),
                        path: job.path,
                        agent: job.agent,
                    });
                }
            }
            Err(e) => {
                // A database error (disk full, a lock held too long...): the transaction
                // rolled back and the files are still in the inbox. Try them again later.
                // Files of earlier batches not moved yet went with the writer's state:
                // integrated in the ledger and still in the inbox, they are moved when the
                // reconcile scan (every reconcile_secs) finds them.
                self.backoff =
                    (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                tracing::error!(
                    "{e:#}; {} files stay in the inbox and are tried again in {} s",
                    agent_of.len(),
                    self.backoff.as_secs()
                );
                for (path, agent) in agent_of {
                    self.tracker.hold(&path, &agent, now + self.backoff);
                }
            }
        }
    }

    /// The files that became ready since the batch began, for the batch to take in:
    /// the events queued meanwhile are handled, and what the tracker has ready joins,
    /// but for what the next batch must see first: a file already in this batch or
    /// committed and not moved yet (a late event, or another file renamed over it)
    /// waits, ready, for the next batch. (So does a database, which a batch imports
    /// before its files: the prepare threads find it, [`ingest::integrate_streaming`].)
    fn arrived(&mut self, batch: &mut Batch) -> Vec<Job> {
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
        if self.stopping() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut ready = self.tracker.take_ready(now);
        ready.retain(|r| {
            let next_batch = batch.moving.contains(&r.path) || batch.agent_of.contains_key(&r.path);
            if next_batch {
                self.tracker.put_back(r);
            }
            !next_batch
        });
        let jobs = batch.admit_ready(&self.inbox, ready);
        if !jobs.is_empty() {
            tracing::debug!(files = jobs.len(), "joining the batch");
        }
        jobs
    }
}

/// The files of one batch of the watcher, as they join it.
#[derive(Default)]
struct Batch {
    /// Whether each was seen still for the whole settle period.
    quiet: HashMap<PathBuf, bool>,
    /// Whose each is: the files to look at again if the batch fails.
    agent_of: HashMap<PathBuf, String>,
    /// Files of earlier batches committed and not moved yet.
    moving: HashSet<PathBuf>,
}

impl Batch {
    /// The jobs for `ready` files, recorded as the batch's.
    fn admit_ready(&mut self, inbox: &Path, ready: Vec<Ready>) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(ready.len());
        for r in ready {
            self.quiet.insert(r.path.clone(), r.quiet);
            if let Some(job) = ingest::inbox_entry(inbox, &r.path) {
                self.agent_of.insert(job.path.clone(), job.agent.clone());
                jobs.push(job);
            }
        }
        jobs
    }
}

/// Whether a prepared file may be written now. Not when it changed since it was read
/// (a writer is still at work: read it again later), nor when it fails to parse and has
/// not been still for `settle` (it may be a slow writer's unfinished file).
fn admit(p: &Prepared, quiet: bool, settle: Duration) -> bool {
    if matches!(p.outcome, Outcome::Unreadable(_) | Outcome::Skipped { .. }) {
        // The writer logs it (a skip only once); the next reconcile scan tries again.
        return true;
    }
    if ingest::stat(&p.job.path) != Some((p.size, p.modified)) {
        tracing::debug!(file = %p.job.path.display(), "changed while being read; reading it again later");
        return false;
    }
    let unsure = match &p.outcome {
        Outcome::Rejected { .. } => true,
        // A JSON Lines file whose last line is cut off may be a writer still at work.
        Outcome::Parsed(f) => f.salvage.lines_unparsed > 0,
        _ => false,
    };
    if unsure && !quiet && !still_for(p.modified, settle) {
        tracing::debug!(file = %p.job.path.display(), "does not parse yet; waiting for the writer to finish");
        return false;
    }
    true
}

fn add(total: &mut IngestReport, r: IngestReport) {
    total.files_integrated += r.files_integrated;
    total.files_rejected += r.files_rejected;
    total.files_duplicate += r.files_duplicate;
    total.files_already_done += r.files_already_done;
    total.files_skipped += r.files_skipped;
    total.files_waiting += r.files_waiting;
    total.files_unreadable += r.files_unreadable;
    total.pairs_seen += r.pairs_seen;
    total.pairs_new += r.pairs_new;
    total.pairs_duplicate += r.pairs_duplicate;
    total.pairs_invalid += r.pairs_invalid;
    // The rejected list is not kept: over days it would only grow. `files --rejected` has it.
}

fn start_watcher(
    tx: Sender<Msg>,
    poll: Option<Duration>,
) -> Result<(Box<dyn notify::Watcher>, String)> {
    let handler = move |event: notify::Result<notify::Event>| {
        let _ = tx.send(Msg::Fs(event));
    };
    Ok(match poll {
        Some(interval) => (
            Box::new(
                notify::PollWatcher::new(
                    handler,
                    notify::Config::default().with_poll_interval(interval),
                )
                .context("cannot start polling")?,
            ),
            format!("polling every {} ms", interval.as_millis()),
        ),
        None => (
            Box::new(
                notify::RecommendedWatcher::new(handler, notify::Config::default())
                    .context("cannot start the filesystem watcher")?,
            ),
            "filesystem events".to_string(),
        ),
    })
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// What decides whether a file changed: size and modification time.
type Stat = (u64, Option<SystemTime>);

/// The size and modification time of an entry, not following links: a link, a FIFO
/// or a folder is tracked like a file, and the engine reports it when it is opened.
/// `None` when it is gone.
fn stat(path: &Path) -> Option<Stat> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

use ingest::still_for;

/// How a file came to the watcher's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Renamed into place, or closed after writing: complete now.
    Complete,
    /// Its content changed (a writer at work).
    Changed,
    /// Created, or found by a scan: complete if it has been still for the settle period
    /// already (modification time), otherwise watched until it is.
    Found,
}

/// A file handed to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The file.
    pub path: PathBuf,
    /// Whose.
    pub agent: String,
    /// Seen still for the whole settle period: a parse failure is final.
    pub quiet: bool,
}

#[derive(Debug)]
struct Candidate {
    agent: String,
    stat: Stat,
    ready: bool,
    quiet: bool,
    /// When a file that is not ready is looked at again.
    due: Instant,
}

/// The files seen but not yet handed to the engine, and when each is complete.
#[derive(Debug)]
pub struct Tracker {
    settle: Duration,
    candidates: HashMap<PathBuf, Candidate>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(settle: Duration) -> Tracker {
        Tracker {
            settle,
            candidates: HashMap::new(),
        }
    }

    /// How many files are tracked.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether no file is tracked.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Records an event (or a scan) about `path`.
    pub fn arrive(&mut self, path: &Path, agent: &str, arrival: Arrival, now: Instant) {
        let Some(current) = stat(path) else {
            // Moved away, deleted, or a folder: nothing to read.
            self.candidates.remove(path);
            return;
        };
        let settle = self.settle;
        match self.candidates.get_mut(path) {
            Some(c) => match arrival {
                Arrival::Complete => {
                    c.stat = current;
                    c.ready = true;
                }
                Arrival::Changed | Arrival::Found => {
                    if c.stat != current {
                        c.stat = current;
                        c.ready = false;
                        c.quiet = false;
                        c.due = now + settle;
                    }
                }
            },
            None => {
                let still = arrival == Arrival::Found && still_for(current.1, settle);
                self.candidates.insert(
                    path.to_path_buf(),
                    Candidate {
                        agent: agent.to_string(),
                        stat: current,
                        ready: arrival == Arrival::Complete || still,
                        quiet: still,
                        due: now + settle,
                    },
                );
            }
        }
    }

    /// Tracks a file again, to be looked at no earlier than `due` (a file that changed
    /// while being read, or a batch that failed).
    pub fn hold(&mut self, path: &Path, agent: &str, due: Instant) {
        self.track_as_it_is(path, agent, false, false, due);
    }

    /// Tracks again a file [`Tracker::take_ready`] returned and nobody took: ready as
    /// it was, quiet if it was.
    pub fn put_back(&mut self, ready: &Ready) {
        self.track_as_it_is(&ready.path, &ready.agent, true, ready.quiet, Instant::now());
    }

    /// Tracks `path` with its size and modification time now (forgets it if it is gone).
    fn track_as_it_is(&mut self, path: &Path, agent: &str, ready: bool, quiet: bool, due: Instant) {
        let Some(current) = stat(path) else {
            self.candidates.remove(path);
            return;
        };
        self.candidates.insert(
            path.to_path_buf(),
            Candidate {
                agent: agent.to_string(),
                stat: current,
                ready,
                quiet,
                due,
            },
        );
    }

    /// Removes and returns the files complete at `now`, by path. A file not yet ready
    /// whose time has come is ready if it is unchanged; otherwise it waits another
    /// settle period.
    pub fn take_ready(&mut self, now: Instant) -> Vec<Ready> {
        let settle = self.settle;
        let mut gone = Vec::new();
        for (path, c) in self.candidates.iter_mut() {
            if c.ready || c.due > now {
                continue;
            }
            match stat(path) {
                None => gone.push(path.clone()),
                Some(s) if s == c.stat => {
                    c.ready = true;
                    c.quiet = true;
                }
                Some(s) => {
                    c.stat = s;
                    c.due = now + settle;
                }
            }
        }
        for path in gone {
            self.candidates.remove(&path);
        }
        let paths: Vec<PathBuf> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.ready)
            .map(|(p, _)| p.clone())
            .collect();
        let mut ready: Vec<Ready> = paths
            .into_iter()
            .map(|path| {
                let c = self.candidates.remove(&path).expect("listed above");
                Ready {
                    quiet: c.quiet || still_for(c.stat.1, settle),
                    agent: c.agent,
                    path,
                }
            })
            .collect();
        ready.sort_by(|a, b| a.path.cmp(&b.path));
        ready
    }

    /// When the earliest file not yet ready is to be looked at again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.candidates
            .values()
            .filter(|c| !c.ready)
            .map(|c| c.due)
            .min()
    }

    /// Forgets files that are no longer there.
    pub fn forget_missing(&mut self) {
        self.candidates.retain(|path, _| stat(path).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Long, so that a busy machine never makes a fresh file look still; the tests pass
    // instants to the tracker instead of sleeping.
    const SETTLE: Duration = Duration::from_secs(30);

    fn file(dir: &Path, name: &str, bytes: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn names(ready: &[Ready]) -> Vec<String> {
        ready
            .iter()
            .map(|r| file_name(&r.path).unwrap().to_string())
            .collect()
    }

    #[test]
    fn renamed_into_place_or_closed_after_writing_is_ready_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tracker::new(SETTLE);
        let now = Instant::now();
        let a = file(dir.path(), "a.json", "[]");
        t.arrive(&a, "droid", Arrival::Complete, now);
        let ready = t.take_ready(now);
        assert_eq!(names(&ready), ["a.json"]);
        assert!(
            !ready[0].quiet,
            "just written: a parse failure is not final yet"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn written_in_place_waits_until_still_for_the_settle_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tracker::new(SETTLE);
        let t0 = Instant::now();
        let a = file(dir.path(), "a.json", "[");
        t.arrive(&a, "droid", Arrival::Found, t0);
        assert!(t.take_ready(t0).is_empty(), "fresh file, no close event");
        assert_eq!(t.next_deadline(), Some(t0 + SETTLE));
        // The writer adds a chunk: the clock starts again.
        std::fs::write(&a, "[{\"q\": 1").unwrap();
        t.arrive(&a, "droid", Arrival::Changed, t0 + SETTLE / 2);
        assert!(t.take_ready(t0 + SETTLE).is_empty());
        assert_eq!(t.next_deadline(), Some(t0 + SETTLE / 2 + SETTLE));
        let ready = t.take_ready(t0 + SETTLE * 2);
        assert_eq!(names(&ready), ["a.json"]);
        assert!(ready[0].quiet, "seen still for the whole period");
    }

    #[test]
    fn a_change_found_at_the_deadline_restarts_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tracker::new(SETTLE);
        let t0 = Instant::now();
        let a = file(dir.path(), "a.json", "[");
        t.arrive(&a, "droid", Arrival::Changed, t0);
        // Changed without an event reaching us (polling, or a lost event).
        std::fs::write(&a, "[1, 2").unwrap();
        assert!(t.take_ready(t0 + SETTLE).is_empty());
        assert_eq!(t.next_deadline(), Some(t0 + SETTLE * 2));
        assert_eq!(names(&t.take_ready(t0 + SETTLE * 2)), ["a.json"]);
    }

    #[test]
    fn an_old_file_found_by_a_scan_is_ready_and_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a.json", "[]");
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut t = Tracker::new(SETTLE);
        let now = Instant::now();
        t.arrive(&a, "droid", Arrival::Found, now);
        let ready = t.take_ready(now);
        assert_eq!(names(&ready), ["a.json"]);
        assert!(ready[0].quiet);
    }

    /// A root laid out in `dir` with its database, and the default configuration.
    fn root_in(dir: &Path) -> (Root, Config, Connection) {
        let root = Root::new(dir).unwrap();
        let config = Config::default();
        root.ensure_layout(&config).unwrap();
        let conn = crate::store::open(&root.db_path()).unwrap();
        (root, config, conn)
    }

    #[test]
    fn a_queue_overflow_rescans_and_finds_what_no_event_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (root, config, conn) = root_in(dir.path());
        let mut opts = WatchOptions::from_config(&config, false);
        opts.reconcile = Duration::from_secs(3600);
        let mut w = Watch::new(&root, &config, &conn, opts).unwrap();
        w.reconcile().unwrap();
        assert!(w.tracker.is_empty());
        // Its events are never handled here, as when the kernel's queue overflowed.
        std::fs::write(root.inbox_of("droid").join("lost.json"), "[]").unwrap();
        let mut next = Instant::now() + opts.reconcile;
        w.rescan_if_due(&mut next);
        assert!(w.tracker.is_empty(), "no scan without a reason");
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        w.handle(Msg::Fs(Ok(overflow)));
        w.rescan_if_due(&mut next);
        assert_eq!(w.tracker.len(), 1, "found by the rescan");
        // The reconcile scan is the same backstop on a timer.
        std::fs::write(root.inbox_of("zai").join("late.json"), "[]").unwrap();
        let mut due = Instant::now();
        w.rescan_if_due(&mut due);
        assert_eq!(w.tracker.len(), 2);
        assert!(
            due > Instant::now() + Duration::from_secs(3000),
            "next one an hour on"
        );
    }

    #[test]
    fn files_that_become_ready_during_a_batch_join_it_and_databases_wait_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (root, config, conn) = root_in(dir.path());
        let opts = WatchOptions::from_config(&config, false);
        let mut w = Watch::new(&root, &config, &conn, opts).unwrap();
        let inbox = root.inbox_of("droid");
        let pair = |q: &str| format!(r#"[{{"question": "{q}?", "answer": "Because {q}."}}]"#);
        let a = file(&inbox, "a.json", &pair("first"));
        // Written beside the inbox's names, renamed in while the batch of `a` runs.
        let staged = file(&inbox, ".b.json.tmp", &pair("second"));
        let b = inbox.join("b.json");
        let db = inbox.join("c.json");
        std::fs::write(&db, b"SQLite format 3\0 and then pages").unwrap();
        // The events the kernel would send, sent by hand when `a` is committed, so that
        // they come in while the batch runs (the agent folder is followed, but no watch
        // is set on it here).
        w.followed.insert("droid".to_string());
        let events = w.stopper();
        let mut seen = Vec::new();
        let mut on_file = |e: &FileEvent| {
            seen.push(e.name.clone());
            if e.name == "a.json" {
                std::fs::rename(&staged, &b).unwrap();
                for path in [&b, &db, &a] {
                    let renamed =
                        notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::To)))
                            .add_path(path.clone());
                    events.tx.send(Msg::Fs(Ok(renamed))).unwrap();
                }
            }
        };
        w.tracker
            .arrive(&a, "droid", Arrival::Complete, Instant::now());
        let ready = w.tracker.take_ready(Instant::now());
        assert_eq!(names(&ready), ["a.json"]);
        w.integrate(ready, &mut on_file);
        assert_eq!(seen, ["a.json", "b.json"], "b joined the batch of a");
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM pairs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 2);
        assert_eq!(w.totals.files_integrated, 2);
        // The database is imported before a batch's files, and a file already in the
        // batch is looked at again after its move: both wait, ready, for the next one.
        let next = w.tracker.take_ready(Instant::now());
        assert_eq!(names(&next), ["a.json", "c.json"]);
    }

    #[test]
    fn gone_files_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tracker::new(SETTLE);
        let now = Instant::now();
        let a = file(dir.path(), "a.json", "[");
        t.arrive(&a, "droid", Arrival::Changed, now);
        std::fs::remove_file(&a).unwrap();
        t.arrive(&a, "droid", Arrival::Changed, now);
        assert!(t.is_empty());
        t.arrive(
            &dir.path().join("never.json"),
            "droid",
            Arrival::Complete,
            now,
        );
        assert!(t.is_empty());
    }
}
