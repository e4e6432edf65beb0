//! The ingestion pipeline: discover → read → hash → decode → parse → key → write → move.
//!
//! Reading, hashing, decoding, parsing and keying run in parallel on rayon's pool
//! ([`prepare`]); their results flow through a bounded channel to one [`Writer`] on the
//! calling thread, which owns the SQLite connection. The bound keeps memory
//! independent of how many files there are: at most a few prepared files wait.
//!
//! Exactly-once: a file's ledger row commits in the same transaction as its last pairs,
//! and a file moves to `processed/` or `rejected/` only after that commit. After a
//! crash, the ledger tells what each file in the inbox is: unknown (integrate it),
//! partial (resume after its last checkpoint), or finished (complete the move).

use crate::engine::decode;
use crate::engine::layout;
use crate::pair::Pair;
use crate::root::{PROCESSED, REJECTED};
use crate::store::{self, ledger, ledger::FileStatus, ledger::InvalidEntry};
use anyhow::{Context, Result};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// File extensions the engine reads.
pub const EXTENSIONS: [&str; 3] = ["json", "jsonl", "ndjson"];

/// Where a file sits, which decides whether it is moved afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In `inbox/<agent>/`: moved to `processed/` or `rejected/` once the ledger says so.
    Inbox,
    /// Named on the command line (an archive): read in place, never moved or changed.
    InPlace,
}

/// One file to ingest.
#[derive(Debug, Clone)]
pub struct Job {
    /// Whose drop it is.
    pub agent: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Whether it moves afterwards.
    pub placement: Placement,
}

impl Job {
    /// The file's name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Whether a name in an inbox is a drop to read. Dotfiles and the temporary names of
/// writers still at work (`*.tmp`, `*.part`, `*.partial`, `*~`) are not.
pub fn is_drop_name(name: &str) -> bool {
    !(name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".partial"]
            .iter()
            .any(|suffix| name.to_ascii_lowercase().ends_with(suffix)))
}

/// Whether the name has one of the accepted extensions.
pub fn has_accepted_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Every drop waiting in `inbox/<agent>/` for the given agents, oldest name first.
pub fn discover_inbox(inbox: &Path, agents: &[String]) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for agent in agents {
        let dir = inbox.join(agent);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            // processed/ and rejected/ are folders, so this also keeps them out.
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            if name.to_str().is_some_and(is_drop_name) {
                found.push(entry.path());
            }
        }
        found.sort();
        jobs.extend(found.into_iter().map(|path| Job {
            agent: agent.clone(),
            path,
            placement: Placement::Inbox,
        }));
    }
    Ok(jobs)
}

/// Files named on the command line, read in place. Folders are walked recursively
/// (hidden entries skipped, only accepted extensions); a file named explicitly is read
/// whatever its extension. The agent is `agent`, else the file's parent folder name.
pub fn discover_paths(paths: &[PathBuf], agent: Option<&str>) -> Result<Vec<Job>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        if meta.is_dir() {
            walk(&path, &mut files)?;
        } else {
            files.push(path);
        }
    }
    let mut seen = HashSet::new();
    files.retain(|p| seen.insert(p.clone()));
    files
        .into_iter()
        .map(|path| {
            let agent = match agent {
                Some(a) => a.to_string(),
                None => path
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "unknown".to_string()),
            };
            Ok(Job {
                agent,
                path,
                placement: Placement::InPlace,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_drop_name(name) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() && has_accepted_extension(&entry.path()) {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// What the parallel stage made of a file.
#[derive(Debug)]
pub struct Prepared {
    /// The file.
    pub job: Job,
    /// Size in bytes.
    pub size: u64,
    /// Modification time just before the bytes were read: with `size`, what the caller
    /// compares to tell whether the file changed since (`watch` does, for writers
    /// still at work).
    pub modified: Option<SystemTime>,
    /// blake3 of the bytes (`None` only when the file could not be read).
    pub hash: Option<[u8; 32]>,
    /// The result.
    pub outcome: Outcome,
    /// When preparation began, for the per-file log line.
    pub started: Instant,
}

/// The result of preparing a file.
#[derive(Debug)]
pub enum Outcome {
    /// Decoded and parsed; at least one valid pair.
    Parsed(ParsedFile),
    /// The ledger already finished with these bytes, so they were not parsed.
    Known,
    /// Cannot be integrated, with the reason.
    Rejected {
        /// Human-readable reason naming the problem and where.
        reason: String,
        /// Decoder label, if decoding happened.
        encoding: Option<String>,
    },
    /// The file vanished or could not be read; it is left where it is.
    Unreadable(String),
}

/// A parsed file, ready to write.
#[derive(Debug)]
pub struct ParsedFile {
    /// Decoder label (`UTF-8`, `windows-1252`, ...).
    pub encoding: String,
    /// Undecodable bytes were replaced.
    pub replaced: bool,
    /// Recognised layout.
    pub layout: layout::Layout,
    /// Session number from the content.
    pub session: Option<i64>,
    /// Valid pairs, in file order.
    pub pairs: Vec<Pair>,
    /// Invalid pairs.
    pub invalid: Vec<InvalidEntry>,
}

/// What the ledger had finished with when a run began, so workers can skip parsing
/// bytes whose fate is already known. Only an optimisation: the writer decides.
#[derive(Debug, Default)]
pub struct Hints {
    finished: HashSet<[u8; 32]>,
}

impl Hints {
    /// Loads the hashes of every finished file.
    pub fn load(conn: &Connection) -> Result<Hints> {
        Ok(Hints {
            finished: ledger::finished_hashes(conn)?
                .into_iter()
                .map(|(h, _)| h)
                .collect(),
        })
    }
}

/// The parallel stage for one file: read, hash, decode, parse, key. Never fails: every
/// problem becomes an [`Outcome`].
pub fn prepare(job: Job, hints: &Hints, max_file_bytes: u64) -> Prepared {
    let started = Instant::now();
    let unreadable = |job: Job, size: u64, e: std::io::Error| Prepared {
        outcome: Outcome::Unreadable(format!("cannot read {}: {e}", job.path.display())),
        job,
        size,
        modified: None,
        hash: None,
        started,
    };
    let (size, modified) = match std::fs::metadata(&job.path) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(e) => return unreadable(job, 0, e),
    };
    if size > max_file_bytes {
        // Hashed anyway (streaming, bounded memory) so the ledger recognises it again.
        let hash = std::fs::File::open(&job.path).and_then(|f| {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(f)?;
            Ok(*hasher.finalize().as_bytes())
        });
        let hash = match hash {
            Ok(h) => h,
            Err(e) => return unreadable(job, size, e),
        };
        return Prepared {
            outcome: Outcome::Rejected {
                reason: format!(
                    "file is {size} bytes, over the limit of {max_file_bytes} bytes (ingest.max_file_bytes)"
                ),
                encoding: None,
            },
            job,
            size,
            modified,
            hash: Some(hash),
            started,
        };
    }
    let bytes = match std::fs::read(&job.path) {
        Ok(b) => b,
        Err(e) => return unreadable(job, size, e),
    };
    let size = bytes.len() as u64;
    let hash = *blake3::hash(&bytes).as_bytes();
    let outcome = if hints.finished.contains(&hash) {
        Outcome::Known
    } else {
        parse_bytes(&bytes)
    };
    Prepared {
        job,
        size,
        modified,
        hash: Some(hash),
        outcome,
        started,
    }
}

/// Decodes and parses the bytes of one file.
pub fn parse_bytes(bytes: &[u8]) -> Outcome {
    if bytes.is_empty() {
        return Outcome::Rejected {
            reason: "empty file (0 bytes)".to_string(),
            encoding: None,
        };
    }
    let decoded = decode::decode(bytes);
    let encoding = decoded.label();
    if let Some(at) = decoded.text.find('\0') {
        let (line, column) = line_column(&decoded.text, at);
        return Outcome::Rejected {
            reason: format!(
                "contains NUL bytes (first at line {line}, column {column}); not a text file"
            ),
            encoding: Some(encoding),
        };
    }
    let parsed = match layout::parse(&decoded.text) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Rejected {
                reason: e.to_string(),
                encoding: Some(encoding),
            };
        }
    };
    let mut scratch = String::new();
    let pairs = parsed
        .pairs
        .into_iter()
        .map(|raw| raw.into_pair(&mut scratch))
        .collect();
    Outcome::Parsed(ParsedFile {
        encoding,
        replaced: decoded.replaced,
        layout: parsed.layout,
        session: parsed.session,
        pairs,
        invalid: parsed
            .invalid
            .into_iter()
            .map(|i| InvalidEntry {
                index: i.index,
                reason: i.reason,
            })
            .collect(),
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Totals of one run, printed by `ingest` and returned as JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// Files whose pairs are now all in.
    pub files_integrated: u64,
    /// Files rejected (kept with their reason).
    pub files_rejected: u64,
    /// Files whose bytes had been integrated before (nothing added).
    pub files_duplicate: u64,
    /// Files the ledger had already finished at the same path (moves completed, re-reads skipped).
    pub files_skipped: u64,
    /// Files that vanished or could not be read; left in place.
    pub files_unreadable: u64,
    /// Pairs read (valid and invalid).
    pub pairs_seen: u64,
    /// Pairs stored for the first time.
    pub pairs_new: u64,
    /// Valid pairs already stored.
    pub pairs_duplicate: u64,
    /// Pairs that failed validation.
    pub pairs_invalid: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Pairs seen per second.
    pub pairs_per_second: f64,
    /// Each rejected file and why.
    pub rejected: Vec<RejectedFile>,
    /// Peak resident memory of the process (KiB, Linux), filled in by the command.
    pub peak_rss_kb: Option<u64>,
}

/// A rejected file in a report.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedFile {
    /// Where it was read from.
    pub path: String,
    /// Where it is kept now (inbox drops only).
    pub kept_at: Option<String>,
    /// Why.
    pub reason: String,
}

/// One finished file, reported after its transaction commits.
#[derive(Debug, Clone, Serialize)]
pub struct FileEvent {
    /// Whose drop.
    pub agent: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// File name.
    pub name: String,
    /// What became of it; `None` when it was skipped or unreadable.
    pub status: Option<FileStatus>,
    /// Pairs stored for the first time.
    pub new: u64,
    /// Valid pairs already stored.
    pub duplicate: u64,
    /// Invalid pairs.
    pub invalid: u64,
    /// Estimated tokens this run charged for the file's pairs (only under a [`Meter`]).
    pub tokens: u64,
    /// From the start of reading to the commit that made it queryable.
    pub millis: f64,
    /// Rejection reason or note.
    pub note: Option<String>,
    /// Session number from the content.
    pub session: Option<i64>,
}

/// A budget the writer spends as it writes: each valid pair written costs its
/// estimated tokens ([`Pair::estimated_tokens`]). The pair that makes `used` reach
/// `limit` closes the current batch: it is committed at once, as a checkpoint, and the
/// writer stops there, so the budget is overshot by at most one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Meter {
    /// Where to stop.
    pub limit: u64,
    /// Spent so far.
    pub used: u64,
}

impl Meter {
    /// Whether the limit is reached.
    pub fn exhausted(&self) -> bool {
        self.used >= self.limit
    }
}

/// Tunables of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Pairs per transaction.
    pub checkpoint_every: usize,
}

struct PendingMove {
    from: PathBuf,
    to: PathBuf,
    reason: Option<String>,
}

struct PendingEvent {
    event: FileEvent,
    started: Instant,
}

/// The single writer: owns the transaction, the ledger decisions and the moves.
pub struct Writer<'c> {
    conn: &'c Connection,
    opts: WriterOptions,
    in_txn: bool,
    now: String,
    pending_pairs: usize,
    moves: Vec<PendingMove>,
    claimed: HashSet<PathBuf>,
    events: Vec<PendingEvent>,
    report: IngestReport,
    run_started: Instant,
    last_move: Instant,
    meter: Option<Meter>,
    stopped: bool,
    interrupt: Option<Arc<AtomicBool>>,
    sink: store::pairs::PairSink,
}

/// How long finished files may wait in the inbox for their move during a burst: moving
/// needs the WAL on disk (one fsync), which is too slow to pay at every checkpoint.
pub const MOVE_INTERVAL: Duration = Duration::from_millis(250);

/// Flushes the WAL to disk, making every committed transaction durable.
pub fn sync_wal(conn: &Connection) -> Result<()> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(()); // in memory
    };
    let wal = format!("{db}-wal");
    match std::fs::File::open(&wal) {
        Ok(f) => f.sync_data().with_context(|| format!("cannot sync {wal}")),
        // No WAL: everything is checkpointed into the database file already.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot open {wal}")),
    }
}

impl<'c> Writer<'c> {
    /// A writer on `conn`, which must not be inside a transaction.
    pub fn new(conn: &'c Connection, opts: WriterOptions) -> Writer<'c> {
        Writer::with_sink(conn, opts, store::pairs::PairSink::new())
    }

    /// A writer that continues with the key tail another writer left
    /// ([`Writer::finish_keeping_sink`]), so it need not reload it from the database.
    pub fn with_sink(
        conn: &'c Connection,
        opts: WriterOptions,
        sink: store::pairs::PairSink,
    ) -> Writer<'c> {
        Writer {
            conn,
            opts,
            in_txn: false,
            now: String::new(),
            pending_pairs: 0,
            moves: Vec::new(),
            claimed: HashSet::new(),
            events: Vec::new(),
            report: IngestReport::default(),
            run_started: Instant::now(),
            last_move: Instant::now(),
            meter: None,
            stopped: false,
            interrupt: None,
            sink,
        }
    }

    /// Makes the writer stop early once `flag` is set (a signal): [`integrate`] writes no
    /// further file, and a file being written stops at its next checkpoint, left
    /// `partial` in the ledger and in the inbox so that the next run resumes it there.
    pub fn interrupt_on(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Whether the flag given to [`Writer::interrupt_on`] is set.
    pub fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Spends `meter` as pairs are written; see [`Meter`].
    pub fn set_meter(&mut self, meter: Meter) {
        self.meter = Some(meter);
    }

    /// The meter, if one is set.
    pub fn meter(&self) -> Option<Meter> {
        self.meter
    }

    fn meter_exhausted(&self) -> bool {
        self.meter.is_some_and(|m| m.exhausted())
    }

    /// Whether the meter ran out: the writer committed its last batch and writes no more.
    /// A file it was in the middle of stays `partial` and resumes at its checkpoint.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_txn = true;
            self.now = crate::clock::now_rfc3339();
        }
        Ok(())
    }

    /// Commits the open transaction (a checkpoint): its pairs become queryable and its
    /// files are reported through `on_file`. Files it finished are moved once the commits
    /// are durable, at most every [`MOVE_INTERVAL`] (see [`Writer::flush`]).
    pub fn commit(&mut self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<()> {
        self.commit_inner(on_file, false)
    }

    /// Commits, makes every commit durable, and moves every finished file. Call when idle
    /// and before exiting.
    pub fn flush(&mut self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<()> {
        self.commit_inner(on_file, true)
    }

    fn commit_inner(&mut self, on_file: &mut dyn FnMut(&FileEvent), force: bool) -> Result<()> {
        if self.in_txn && self.sink.merge_due() {
            // In the transaction of the batch that made it due.
            self.sink.merge(self.conn)?;
        }
        if self.in_txn {
            self.conn.execute_batch("COMMIT").context("commit failed")?;
            self.in_txn = false;
            self.pending_pairs = 0;
        }
        if self.meter.is_some_and(|m| m.exhausted()) {
            self.stopped = true;
        }
        for mut pending in self.events.drain(..) {
            pending.event.millis = pending.started.elapsed().as_secs_f64() * 1000.0;
            log_event(&pending.event);
            on_file(&pending.event);
        }
        if self.moves.is_empty() || !(force || self.last_move.elapsed() >= MOVE_INTERVAL) {
            return Ok(());
        }
        // Commits under synchronous = NORMAL survive a crash of the process but not a
        // power cut until the WAL reaches the disk. A file leaves the inbox only after
        // that, so a power cut can never leave a file in processed/ whose pairs are gone.
        sync_wal(self.conn)?;
        for m in self.moves.drain(..) {
            self.claimed.remove(&m.to);
            if let Err(e) = move_file(&m) {
                // The ledger is right; the next run finishes the move.
                tracing::error!(
                    "cannot move {} to {}: {e:#}",
                    m.from.display(),
                    m.to.display()
                );
            }
        }
        self.last_move = Instant::now();
        Ok(())
    }

    /// Writes one prepared file: its pairs, its ledger row, and its pending move.
    /// Commits on its own whenever `checkpoint_every` pairs have accumulated.
    pub fn write(&mut self, prepared: Prepared, on_file: &mut dyn FnMut(&FileEvent)) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        let Prepared {
            job,
            size,
            hash,
            outcome,
            started,
            ..
        } = prepared;
        let Some(hash) = hash else {
            if let Outcome::Unreadable(msg) = outcome {
                tracing::warn!("{msg}");
            }
            self.report.files_unreadable += 1;
            return Ok(());
        };
        self.begin()?;
        let source = job.path.to_string_lossy().into_owned();
        let rows = ledger::by_hash(self.conn, &hash)?;
        let name = job.name();

        // Same bytes, same path, already finished: a re-read (in place) or a move that a
        // crash interrupted (inbox). Either way nothing is added.
        if let Some(row) = rows
            .iter()
            .find(|r| r.status != FileStatus::Partial && r.source_path == source)
        {
            let unfinished_move = row
                .stored_path
                .as_deref()
                .is_some_and(|p| !Path::new(p).exists());
            if job.placement == Placement::InPlace || unfinished_move {
                if let Some(to) = row.stored_path.as_deref().filter(|_| unfinished_move) {
                    self.moves.push(PendingMove {
                        from: job.path.clone(),
                        to: PathBuf::from(to),
                        reason: row
                            .reason
                            .clone()
                            .filter(|_| row.status == FileStatus::Rejected),
                    });
                }
                self.report.files_skipped += 1;
                self.events.push(PendingEvent {
                    event: event(
                        &job,
                        None,
                        0,
                        0,
                        0,
                        Some("already in the ledger".into()),
                        row.session,
                    ),
                    started,
                });
                return Ok(());
            }
        }

        if let Some(first) = rows
            .iter()
            .find(|r| matches!(r.status, FileStatus::Integrated | FileStatus::Duplicate))
        {
            let original = first.duplicate_of.unwrap_or(first.id);
            let note = format!(
                "same bytes as {} (file #{original}); nothing to add",
                first.name
            );
            let stored = self.destination(&job, PROCESSED);
            ledger::insert(
                self.conn,
                &ledger::NewFile {
                    agent: &job.agent,
                    name: &name,
                    source_path: &source,
                    stored_path: stored.as_deref().and_then(|p| p.to_str()),
                    content_hash: Some(&hash),
                    size,
                    status: FileStatus::Duplicate,
                    encoding: first.encoding.as_deref(),
                    replaced: first.replaced,
                    layout: first.layout.as_deref(),
                    session: first.session,
                    pairs_seen: 0,
                    invalid: &[],
                    reason: Some(&note),
                    duplicate_of: Some(original),
                    now: &self.now,
                },
            )?;
            self.schedule_move(&job, stored, None);
            self.report.files_duplicate += 1;
            self.events.push(PendingEvent {
                event: event(
                    &job,
                    Some(FileStatus::Duplicate),
                    0,
                    0,
                    0,
                    Some(note),
                    first.session,
                ),
                started,
            });
            return Ok(());
        }

        let outcome = match outcome {
            // Known bytes whose only ledger rows are rejections (or stale hints): decide again.
            Outcome::Known => match rows.iter().find(|r| r.status == FileStatus::Rejected) {
                Some(r) => Outcome::Rejected {
                    reason: format!(
                        "same bytes as rejected file {} (file #{}): {}",
                        r.name,
                        r.id,
                        r.reason.as_deref().unwrap_or("no reason recorded")
                    ),
                    encoding: r.encoding.clone(),
                },
                None => match std::fs::read(&job.path) {
                    Ok(bytes) => parse_bytes(&bytes),
                    Err(e) => {
                        Outcome::Unreadable(format!("cannot read {}: {e}", job.path.display()))
                    }
                },
            },
            other => other,
        };

        match outcome {
            Outcome::Parsed(parsed) => {
                let partial = rows.iter().find(|r| r.status == FileStatus::Partial);
                self.write_pairs(
                    &job, &source, size, &hash, parsed, partial, started, on_file,
                )
            }
            Outcome::Rejected { reason, encoding } => {
                let stored = self.destination(&job, REJECTED);
                let id = ledger::insert(
                    self.conn,
                    &ledger::NewFile {
                        agent: &job.agent,
                        name: &name,
                        source_path: &source,
                        stored_path: stored.as_deref().and_then(|p| p.to_str()),
                        content_hash: Some(&hash),
                        size,
                        status: FileStatus::Rejected,
                        encoding: encoding.as_deref(),
                        replaced: false,
                        layout: None,
                        session: None,
                        pairs_seen: 0,
                        invalid: &[],
                        reason: Some(&reason),
                        duplicate_of: None,
                        now: &self.now,
                    },
                )?;
                let _ = id;
                self.report.files_rejected += 1;
                self.report.rejected.push(RejectedFile {
                    path: source.clone(),
                    kept_at: stored.as_ref().map(|p| p.to_string_lossy().into_owned()),
                    reason: reason.clone(),
                });
                self.schedule_move(&job, stored, Some(reason.clone()));
                self.events.push(PendingEvent {
                    event: event(
                        &job,
                        Some(FileStatus::Rejected),
                        0,
                        0,
                        0,
                        Some(reason),
                        None,
                    ),
                    started,
                });
                Ok(())
            }
            Outcome::Unreadable(msg) => {
                tracing::warn!("{msg}");
                self.report.files_unreadable += 1;
                Ok(())
            }
            Outcome::Known => unreachable!("resolved above"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_pairs(
        &mut self,
        job: &Job,
        source: &str,
        size: u64,
        hash: &[u8; 32],
        parsed: ParsedFile,
        partial: Option<&ledger::FileRow>,
        started: Instant,
        on_file: &mut dyn FnMut(&FileEvent),
    ) -> Result<()> {
        let name = job.name();
        let stored = self.destination(job, PROCESSED);
        let (id, mut next, mut new, mut dup) = match partial {
            Some(row) => (
                row.id,
                row.resume_at as usize,
                row.pairs_new as u64,
                row.pairs_duplicate as u64,
            ),
            None => {
                let id = ledger::insert(
                    self.conn,
                    &ledger::NewFile {
                        agent: &job.agent,
                        name: &name,
                        source_path: source,
                        stored_path: stored.as_deref().and_then(|p| p.to_str()),
                        content_hash: Some(hash),
                        size,
                        status: FileStatus::Partial,
                        encoding: Some(&parsed.encoding),
                        replaced: parsed.replaced,
                        layout: Some(parsed.layout.as_str()),
                        session: parsed.session,
                        pairs_seen: parsed.pairs.len() + parsed.invalid.len(),
                        invalid: &parsed.invalid,
                        reason: None,
                        duplicate_of: None,
                        now: &self.now,
                    },
                )?;
                self.report.pairs_invalid += parsed.invalid.len() as u64;
                self.report.pairs_seen += parsed.invalid.len() as u64;
                (id, 0, 0, 0)
            }
        };
        let (run_new_before, run_dup_before) = (new, dup);
        let metered_before = self.meter.map_or(0, |m| m.used);
        let conn = self.conn;
        let mut stmts = store::pairs::Statements::new(conn)?;
        while next < parsed.pairs.len() {
            let pair = &parsed.pairs[next];
            if self
                .sink
                .insert(conn, &mut stmts, pair, &job.agent, id, &self.now)?
            {
                new += 1;
            } else {
                dup += 1;
            }
            next += 1;
            self.pending_pairs += 1;
            if let Some(meter) = &mut self.meter {
                meter.used += pair.estimated_tokens();
            }
            if (self.pending_pairs >= self.opts.checkpoint_every || self.meter_exhausted())
                && next < parsed.pairs.len()
            {
                ledger::checkpoint(self.conn, id, next, new, dup)?;
                self.commit(on_file)?;
                if self.stopped || self.interrupted() {
                    // Stopping (out of budget, or a signal): the checkpoint just
                    // committed is where the next run resumes; the file stays partial.
                    let (run_new, run_dup) = (new - run_new_before, dup - run_dup_before);
                    self.report.pairs_new += run_new;
                    self.report.pairs_duplicate += run_dup;
                    self.report.pairs_seen += run_new + run_dup;
                    tracing::info!(
                        agent = %job.agent, file = %name,
                        "stopped at pair {next} of {}; the next run resumes there",
                        parsed.pairs.len()
                    );
                    return Ok(());
                }
                self.begin()?;
            }
        }
        ledger::finish(self.conn, id, next, new, dup, &self.now)?;
        let (run_new, run_dup) = (new - run_new_before, dup - run_dup_before);
        self.report.files_integrated += 1;
        self.report.pairs_new += run_new;
        self.report.pairs_duplicate += run_dup;
        self.report.pairs_seen += run_new + run_dup;
        self.schedule_move(job, stored, None);
        let mut finished = event(
            job,
            Some(FileStatus::Integrated),
            new,
            dup,
            parsed.invalid.len() as u64,
            (parsed.replaced).then(|| format!("decoded as {} with replacements", parsed.encoding)),
            parsed.session,
        );
        finished.tokens = self.meter.map_or(0, |m| m.used) - metered_before;
        self.events.push(PendingEvent {
            event: finished,
            started,
        });
        if self.pending_pairs >= self.opts.checkpoint_every || self.meter_exhausted() {
            self.commit(on_file)?;
        }
        Ok(())
    }

    /// Where an inbox file will be moved: `<folder>/<name>`, or `<stem>.<n>.<ext>` when
    /// that name is taken (two drops may share a name). `None` for files read in place.
    fn destination(&mut self, job: &Job, folder: &str) -> Option<PathBuf> {
        if job.placement != Placement::Inbox {
            return None;
        }
        let dir = job.path.parent()?.join(folder);
        let name = job.name();
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name.as_str(), ""),
        };
        let mut candidate = dir.join(&name);
        let mut n = 1;
        while candidate.exists()
            || self.claimed.contains(&candidate)
            || (folder == REJECTED && reason_path(&candidate).exists())
        {
            candidate = dir.join(format!("{stem}.{n}{ext}"));
            n += 1;
        }
        self.claimed.insert(candidate.clone());
        Some(candidate)
    }

    fn schedule_move(&mut self, job: &Job, to: Option<PathBuf>, reason: Option<String>) {
        if let Some(to) = to {
            self.moves.push(PendingMove {
                from: job.path.clone(),
                to,
                reason,
            });
        }
    }

    /// [`Writer::finish`], handing back the key tail for the next writer. Only a writer
    /// that finished gives it back: one that failed may hold keys its rolled-back
    /// transaction never stored.
    pub fn finish_keeping_sink(
        mut self,
        on_file: &mut dyn FnMut(&FileEvent),
    ) -> Result<(IngestReport, store::pairs::PairSink)> {
        let sink = std::mem::take(&mut self.sink);
        let report = self.finish(on_file)?;
        Ok((report, sink))
    }

    /// Commits what is pending and returns the run's totals.
    pub fn finish(mut self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<IngestReport> {
        self.flush(on_file)?;
        let mut report = std::mem::take(&mut self.report);
        report.seconds = self.run_started.elapsed().as_secs_f64();
        report.pairs_per_second = if report.seconds > 0.0 {
            report.pairs_seen as f64 / report.seconds
        } else {
            0.0
        };
        Ok(report)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.in_txn {
            // An error unwound past us: leave the database as of the last checkpoint.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn event(
    job: &Job,
    status: Option<FileStatus>,
    new: u64,
    duplicate: u64,
    invalid: u64,
    note: Option<String>,
    session: Option<i64>,
) -> FileEvent {
    FileEvent {
        agent: job.agent.clone(),
        path: job.path.clone(),
        name: job.name(),
        status,
        new,
        duplicate,
        invalid,
        tokens: 0,
        millis: 0.0,
        note,
        session,
    }
}

fn log_event(e: &FileEvent) {
    let status = e.status.map_or("skipped", |s| s.as_str());
    match e.status {
        Some(FileStatus::Rejected) => tracing::warn!(
            agent = %e.agent, file = %e.name, status, ms = format_args!("{:.1}", e.millis),
            "rejected: {}", e.note.as_deref().unwrap_or("")
        ),
        _ => tracing::info!(
            agent = %e.agent, file = %e.name, status, new = e.new, duplicate = e.duplicate,
            invalid = e.invalid, ms = format_args!("{:.1}", e.millis),
            "{}", e.note.as_deref().unwrap_or(status)
        ),
    }
}

/// `<file>.reason` beside a rejected file.
pub fn reason_path(rejected: &Path) -> PathBuf {
    let mut name = rejected.file_name().unwrap_or_default().to_os_string();
    name.push(".reason");
    rejected.with_file_name(name)
}

fn move_file(m: &PendingMove) -> Result<()> {
    if let Some(dir) = m.to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Some(reason) = &m.reason {
        // The reason goes first: a file in rejected/ never lacks its explanation.
        let text = format!(
            "file: {}\nrejected: {}\nreason: {reason}\n",
            m.from.display(),
            crate::clock::now_rfc3339()
        );
        std::fs::write(reason_path(&m.to), text)?;
    }
    // rename keeps the bytes exactly; both paths are in the same inbox folder.
    std::fs::rename(&m.from, &m.to)?;
    Ok(())
}

/// The thread pool of the parallel stage, shared by every run in the process: one
/// thread per core but one, because the writer, the bottleneck, needs a core of its
/// own (measured in BENCHMARKS.md).
pub fn prepare_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("prepare-{i}"))
            .build()
            .expect("cannot start the prepare threads")
    })
}

/// Runs the whole pipeline over `jobs`: parallel preparation, one writer, commits every
/// `checkpoint_every` pairs and whenever the queue runs dry.
pub fn run(
    conn: &Connection,
    jobs: Vec<Job>,
    max_file_bytes: u64,
    opts: WriterOptions,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<IngestReport> {
    run_metered(conn, jobs, max_file_bytes, opts, None, on_file).map(|(report, _)| report)
}

/// [`run`] under a budget: commits and stops as soon as `meter` runs out and
/// returns the meter as spent. Files not reached stay untouched for the next run.
pub fn run_metered(
    conn: &Connection,
    jobs: Vec<Job>,
    max_file_bytes: u64,
    opts: WriterOptions,
    meter: Option<Meter>,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<(IngestReport, Option<Meter>)> {
    let hints = Hints::load(conn)?;
    let mut writer = Writer::new(conn, opts);
    if let Some(meter) = meter {
        writer.set_meter(meter);
    }
    integrate(
        &mut writer,
        jobs,
        &hints,
        max_file_bytes,
        &mut |_| true,
        on_file,
    )?;
    let meter = writer.meter();
    writer.finish(on_file).map(|report| (report, meter))
}

/// The loop `ingest`, `watch` and `backfill` share: prepares `jobs` on the prepare pool
/// and writes them through `writer` as they come, committing whenever no prepared file
/// is waiting (so a burst is batched and a lone small drop is queryable at once) and
/// once at the end.
///
/// `admit` sees each prepared file just before it would be written; a file it refuses is
/// not written and comes back in the returned list (`watch` refuses files that changed
/// since they were read). Stops early, after committing, when the writer is interrupted
/// ([`Writer::interrupt_on`]) or its meter runs out ([`Writer::set_meter`]); files not
/// reached are left untouched.
pub fn integrate(
    writer: &mut Writer<'_>,
    jobs: Vec<Job>,
    hints: &Hints,
    max_file_bytes: u64,
    admit: &mut dyn FnMut(&Prepared) -> bool,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<Vec<Prepared>> {
    let abort = AtomicBool::new(false);
    let interrupt = writer.interrupt.clone();
    let pool = prepare_pool();
    let bound = pool.current_num_threads() * 2;
    let (tx, rx) = mpsc::sync_channel::<Prepared>(bound);
    let mut held = Vec::new();
    std::thread::scope(|scope| {
        let abort = &abort;
        let interrupt = interrupt.as_deref();
        scope.spawn(move || {
            pool.install(|| {
                // par_bridge hands files out in order (oldest name, lowest session
                // first), where splitting the list would start in its middle too.
                jobs.into_iter().par_bridge().for_each_with(tx, |tx, job| {
                    if abort.load(Ordering::Relaxed)
                        || interrupt.is_some_and(|f| f.load(Ordering::Relaxed))
                    {
                        return;
                    }
                    let _ = tx.send(prepare(job, hints, max_file_bytes));
                })
            });
        });
        let result = (|| {
            while !writer.interrupted() && !writer.stopped() {
                let next = match rx.try_recv() {
                    Ok(p) => p,
                    Err(mpsc::TryRecvError::Empty) => {
                        // Nothing ready: make what we have queryable instead of waiting
                        // for a full batch.
                        writer.commit(on_file)?;
                        match rx.recv() {
                            Ok(p) => p,
                            Err(_) => break,
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                };
                if admit(&next) {
                    writer.write(next, on_file)?;
                } else {
                    held.push(next);
                }
            }
            writer.commit(on_file)
        })();
        // Done, failed, interrupted or out of budget: workers still preparing see the
        // flag or the closed channel and leave the remaining files alone.
        abort.store(true, Ordering::Relaxed);
        drop(rx);
        result
    })?;
    Ok(held)
}
