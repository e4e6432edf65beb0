//! The ingestion pipeline: discover → open → read → hash → decode → parse → key → write → move.
//!
//! Opening and reading run in [`intake`] (never following a link, never blocking,
//! never reading more than the limit); reading, hashing, decoding, parsing and keying
//! run in parallel on rayon's pool ([`prepare`]), and on the writer's thread when it
//! would otherwise wait; their results flow through a bounded channel to one
//! [`Writer`] on the calling thread, which owns the SQLite connection.
//! The bound keeps memory independent of how many files there are: at most
//! [`QUEUE_FILES`] prepared files and [`QUEUE_BYTES`] of them wait.
//!
//! Exactly-once: a file's ledger row commits in the same transaction as its last pairs,
//! and a file moves to `processed/` or `rejected/` only after that commit. After a
//! crash, the ledger tells what each file in the inbox is: unknown (integrate it),
//! partial (resume after its last checkpoint), or finished (complete the move).
//!
//! Every entry of an inbox is accounted for: what is not a drop (a link, a FIFO, a
//! folder, a file with another extension, a file in `inbox/` itself) gets a ledger row
//! `skipped` with its reason, once, and is left where it is.

use crate::engine::decode;
use crate::engine::intake::{self, Opened};
use crate::engine::layout;
use crate::engine::names;
use crate::pair::Pair;
use crate::root::{PROCESSED, REJECTED};
use crate::store::{self, ledger, ledger::FileStatus, ledger::InvalidEntry};
use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// File extensions the engine reads (matched in any case).
pub const EXTENSIONS: [&str; 3] = names::EXTENSIONS;

/// The agent the ledger names for entries of `inbox/` itself (not in an agent folder).
pub const INBOX_AGENT: &str = "(inbox)";

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
    /// Decided from its name or place alone: not a drop, never read (the reason).
    pub skip: Option<String>,
}

impl Job {
    /// A drop in an inbox.
    pub fn inbox(agent: &str, path: PathBuf) -> Job {
        Job {
            agent: agent.to_string(),
            path,
            placement: Placement::Inbox,
            skip: None,
        }
    }

    /// The file's name, rendered losslessly ([`names::render`]).
    pub fn name(&self) -> String {
        self.path.file_name().map(names::render).unwrap_or_default()
    }

    /// Its path as the ledger's `source_path` holds it ([`names::render_path`]).
    pub fn source(&self) -> String {
        names::render_path(&self.path)
    }
}

/// Whether a name in an inbox is a drop to read. Dotfiles and the temporary names of
/// writers still at work (`*.tmp`, `*.part`, `*.partial`, `*~`) are not.
pub fn is_drop_name(name: &str) -> bool {
    !names::is_ignored(OsStr::new(name))
}

/// Whether the name has one of the accepted extensions.
pub fn has_accepted_extension(path: &Path) -> bool {
    names::has_accepted_extension(path)
}

/// What the engine makes of `path`, an entry of `inbox/` or of `inbox/<agent>/`:
/// `None` when it is none of its business (writers' temporary names and dotfiles, the
/// `processed/` and `rejected/` folders, agent folders themselves, anything deeper);
/// otherwise a job, with [`Job::skip`] set when its name or place already says it is
/// not a drop. Whether a drop is a regular file is decided when it is opened.
pub fn inbox_entry(inbox: &Path, path: &Path) -> Option<Job> {
    let name = path.file_name()?;
    if names::is_ignored(name) {
        return None;
    }
    let parent = path.parent()?;
    if parent == inbox {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let reason = if meta.is_dir() {
            if name
                .to_str()
                .is_some_and(|n| crate::root::check_agent_name(n).is_ok())
            {
                return None;
            }
            "a folder whose name is not an agent name (letters, digits, `_`, `-`, `.`): never read"
                .to_string()
        } else if meta.is_file() {
            "a file in inbox/ itself: drops belong in inbox/<agent>/; never read".to_string()
        } else {
            intake::describe(&meta, path)?
        };
        return Some(Job {
            agent: INBOX_AGENT.to_string(),
            path: path.to_path_buf(),
            placement: Placement::Inbox,
            skip: Some(reason),
        });
    }
    if parent.parent() != Some(inbox) {
        return None;
    }
    let agent = parent.file_name()?.to_str()?;
    crate::root::check_agent_name(agent).ok()?;
    if name == PROCESSED || name == REJECTED {
        // A folder in its place, or something in the way that the mover sets aside.
        return None;
    }
    let mut job = Job::inbox(agent, path.to_path_buf());
    // A database is a drop whatever its name (engine::import_db). The name first: a
    // drop's name needs no `stat` (the watcher looks at every entry twice, 1,000 in a
    // burst).
    if !has_accepted_extension(path)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
        && !intake::is_database(path)
    {
        job.skip = Some(names::not_a_drop_reason(path));
    }
    Some(job)
}

/// Every entry of the inbox the engine accounts for: the entries of `inbox/` itself
/// that are not agent folders, and every entry of `inbox/<agent>/` for the given
/// agents (see [`inbox_entry`]), sorted by path within each folder. An agent folder
/// that is a symbolic link is never listed (it is an entry of `inbox/`).
pub fn survey_inbox(inbox: &Path, agents: &[String]) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let list = |dir: &Path, jobs: &mut Vec<Job>| -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list {}", names::render_path(dir)));
            }
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry =
                entry.with_context(|| format!("cannot list {}", names::render_path(dir)))?;
            if let Some(job) = inbox_entry(inbox, &entry.path()) {
                found.push(job);
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        jobs.extend(found);
        Ok(())
    };
    list(inbox, &mut jobs)?;
    for agent in agents {
        let dir = inbox.join(agent);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            list(&dir, &mut jobs)?;
        }
    }
    Ok(jobs)
}

/// Every drop waiting in `inbox/<agent>/` for the given agents, oldest name first:
/// regular files with an accepted extension that this process may read (what the
/// assigner and `status` count as waiting: an unreadable file would otherwise ask for
/// an ingest task at every round). [`survey_inbox`] has everything else too.
pub fn discover_inbox(inbox: &Path, agents: &[String]) -> Result<Vec<Job>> {
    Ok(survey_inbox(inbox, agents)?
        .into_iter()
        .filter(|j| {
            j.skip.is_none()
                && std::fs::symlink_metadata(&j.path).is_ok_and(|m| m.is_file())
                && readable(&j.path)
        })
        .collect())
}

/// Whether this process may open `path` for reading (`access(R_OK)`).
fn readable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        // SAFETY: a valid NUL-terminated path; access only reads it.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::R_OK) } == 0)
}

/// Files named on the command line, read in place. Folders are walked recursively
/// (hidden entries skipped, links never followed, only accepted extensions: other
/// files are counted in one log line and left alone). A file named explicitly with
/// another extension, a link or a special file gets a `skipped` ledger row instead of
/// being read. A folder named explicitly may be a link to a folder. The agent is
/// `agent`, else the file's parent folder name.
pub fn discover_paths(paths: &[PathBuf], agent: Option<&str>) -> Result<Vec<Job>> {
    let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut others = 0usize;
    for path in paths {
        let shown = names::render_path(path);
        let meta =
            std::fs::symlink_metadata(path).with_context(|| format!("cannot read {shown}"))?;
        let followed_dir =
            meta.file_type().is_symlink() && std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        if meta.is_dir() || followed_dir {
            let dir = path
                .canonicalize()
                .with_context(|| format!("cannot resolve {shown}"))?;
            walk(&dir, &mut files, &mut others)?;
            continue;
        }
        // Resolve the folder, never the file itself: a link stays a link.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("{shown} names no file"))?;
        let path = parent
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", names::render_path(&parent)))?
            .join(name);
        let skip =
            if meta.is_file() && !has_accepted_extension(&path) && !intake::is_database(&path) {
                Some(names::not_a_drop_reason(&path))
            } else {
                None
            };
        files.push((path, skip));
    }
    if others > 0 {
        tracing::info!(
            "{others} file(s) in the folders given are not drops (not .json, .jsonl or .ndjson): left alone"
        );
    }
    let mut seen = HashSet::new();
    files.retain(|(p, _)| seen.insert(p.clone()));
    files
        .into_iter()
        .map(|(path, skip)| {
            let agent = match agent {
                Some(a) => a.to_string(),
                None => path
                    .parent()
                    .and_then(|p| p.file_name())
                    .map(names::render)
                    .unwrap_or_else(|| "unknown".to_string()),
            };
            Ok(Job {
                agent,
                path,
                placement: Placement::InPlace,
                skip,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<String>)>, others: &mut usize) -> Result<()> {
    let shown = || names::render_path(dir);
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", shown()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", shown()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if names::is_ignored(&entry.file_name()) {
            continue;
        }
        // file_type() does not follow links.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out, others)?;
        } else if kind.is_file() {
            if has_accepted_extension(&entry.path()) {
                out.push((entry.path(), None));
            } else {
                *others += 1;
            }
        } else {
            // A link, a FIFO, a device: opening decides and the ledger says why.
            out.push((entry.path(), None));
        }
    }
    Ok(())
}

/// Leaves out of `jobs` the drops that are still being written: a file whose
/// modification time is within `settle` of now is looked at again once `settle` has
/// passed (one wait for them all); if its size or modification time moved meanwhile,
/// it is left for the next run. Returns (jobs to integrate, files left waiting).
/// What the watcher does with events, `ingest` does with this one look.
pub fn wait_for_stillness(jobs: Vec<Job>, settle: Duration) -> (Vec<Job>, Vec<Job>) {
    let fresh: Vec<(usize, Stat)> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.skip.is_none())
        .filter_map(|(i, j)| stat(&j.path).map(|s| (i, s)))
        .filter(|(_, s)| !still_for(s.1, settle))
        .collect();
    if fresh.is_empty() {
        return (jobs, Vec::new());
    }
    std::thread::sleep(settle);
    let moving: HashSet<usize> = fresh
        .into_iter()
        .filter(|(i, s)| stat(&jobs[*i].path).is_some_and(|now| now != *s))
        .map(|(i, _)| i)
        .collect();
    let (mut ready, mut waiting) = (Vec::new(), Vec::new());
    for (i, job) in jobs.into_iter().enumerate() {
        if moving.contains(&i) {
            waiting.push(job);
        } else {
            ready.push(job);
        }
    }
    (ready, waiting)
}

/// What decides whether a file changed: size and modification time.
pub type Stat = (u64, Option<SystemTime>);

/// The size and modification time of a regular file, not following links; `None`
/// when it is gone or not a regular file.
pub fn stat(path: &Path) -> Option<Stat> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.len(), m.modified().ok()))
}

/// Whether a modification time is at least `settle` in the past.
pub fn still_for(modified: Option<SystemTime>, settle: Duration) -> bool {
    modified
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age >= settle)
}

/// What the parallel stage made of a file.
#[derive(Debug)]
pub struct Prepared {
    /// The file.
    pub job: Job,
    /// Size in bytes (from `fstat` of the descriptor read).
    pub size: u64,
    /// Modification time when the file was opened: with `size`, what the caller
    /// compares to tell whether the file changed since (`watch` and `ingest` do, for
    /// writers still at work).
    pub modified: Option<SystemTime>,
    /// blake3 of the bytes; `None` when they were not read (over the limit, skipped,
    /// unreadable).
    pub hash: Option<[u8; 32]>,
    /// Which file was opened (device, inode): its move checks the name still means it.
    pub identity: Option<intake::Identity>,
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
    /// The ledger already finished with these bytes, so they were not parsed (they are
    /// kept, in case the writer finds the hint stale).
    Known(Vec<u8>),
    /// Results of the batch embeddings API (`engine::embeddings::is_results`): not
    /// pairs; the writer imports their vectors, streaming the file again.
    Embeddings,
    /// Cannot be integrated, with the reason.
    Rejected {
        /// Human-readable reason naming the problem and where.
        reason: String,
        /// Decoder label, if decoding happened.
        encoding: Option<String>,
    },
    /// Not a drop, never read: not a regular file, not readable, or not a drop by its
    /// name or place. Left where it is; the ledger says why.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The file vanished or could not be read (an error that may pass); it is left
    /// where it is.
    Unreadable(String),
}

/// A parsed file, ready to write.
#[derive(Debug)]
pub struct ParsedFile {
    /// Decoder label (`UTF-8`, `windows-1252`, ...).
    pub encoding: String,
    /// Undecodable bytes (or lone surrogates) were replaced by U+FFFD.
    pub replaced: bool,
    /// What was repaired so that it could integrate.
    pub salvage: layout::Salvage,
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

/// The longest first line looked at to recognise an embeddings results file (one
/// vector of 3,072 numbers is ~40 KB).
const RESULTS_LINE_LIMIT: usize = 1 << 20;

/// Whether bytes read from the start of a file begin like embeddings results (only
/// the first [`RESULTS_LINE_LIMIT`] bytes are looked at, so a long single-line drop is
/// not parsed twice).
fn begins_like_results(head: &[u8]) -> bool {
    crate::engine::embeddings::is_results(&head[..head.len().min(RESULTS_LINE_LIMIT)])
}

/// The parallel stage for one file: open (never following, never blocking), read at
/// most `max_file_bytes + 1` bytes, hash, decode, parse, key. Never fails: every
/// problem becomes an [`Outcome`].
pub fn prepare(job: Job, hints: &Hints, max_file_bytes: u64) -> Prepared {
    let started = Instant::now();
    let done = |job: Job, size: u64, modified, hash, outcome| Prepared {
        job,
        size,
        modified,
        identity: None,
        hash,
        outcome,
        started,
    };
    if let Some(reason) = job.skip.clone() {
        return done(job, 0, None, None, Outcome::Skipped { reason });
    }
    let mut open = match intake::open(&job.path) {
        Opened::File(f) => f,
        Opened::Refused(reason) => return done(job, 0, None, None, Outcome::Skipped { reason }),
        Opened::Gone => {
            let msg = format!(
                "{} is gone (moved or deleted since it was listed)",
                names::render_path(&job.path)
            );
            return done(job, 0, None, None, Outcome::Unreadable(msg));
        }
        Opened::Failed(e) => {
            let msg = format!("cannot read {}: {e}", names::render_path(&job.path));
            return done(job, 0, None, None, Outcome::Unreadable(msg));
        }
    };
    let (size, modified) = (open.size, open.modified);
    let identity = Some(open.identity);
    let done = |job, size, modified, hash, outcome| Prepared {
        identity,
        ..done(job, size, modified, hash, outcome)
    };
    let over_limit = |size: u64| Outcome::Rejected {
        reason: intake::over_limit_reason(size, max_file_bytes),
        encoding: None,
    };
    if size > max_file_bytes {
        // Results of the embeddings API are recognised by their first line before the
        // size limit applies: they are large by nature (10,000 vectors of 768 numbers
        // is ~80 MB), and are streamed from this descriptor, never held whole.
        let head = crate::engine::embeddings::first_line(&open.file, RESULTS_LINE_LIMIT);
        if head.is_ok_and(|line| begins_like_results(&line)) {
            let hashed = (|| -> std::io::Result<[u8; 32]> {
                use std::io::Seek;
                open.file.rewind()?;
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(&open.file)?;
                Ok(*hasher.finalize().as_bytes())
            })();
            return match hashed {
                Ok(h) => done(job, size, modified, Some(h), Outcome::Embeddings),
                Err(e) => {
                    let msg = format!("cannot read {}: {e}", names::render_path(&job.path));
                    done(job, size, modified, None, Outcome::Unreadable(msg))
                }
            };
        }
        // Rejected unread: no byte is read, so there is no hash either.
        return done(job, size, modified, None, over_limit(size));
    }
    let bytes = match intake::read_bounded(&mut open.file, size, max_file_bytes) {
        Ok(Some(b)) => b,
        Ok(None) => {
            // It grew past the limit after fstat: a writer is at work, or an attacker.
            let outcome = Outcome::Rejected {
                reason: format!(
                    "file grew past the limit of {max_file_bytes} bytes (ingest.max_file_bytes) while it was read; rejected"
                ),
                encoding: None,
            };
            return done(job, size, modified, None, outcome);
        }
        Err(e) => {
            let msg = format!("cannot read {}: {e}", names::render_path(&job.path));
            return done(job, size, modified, None, Outcome::Unreadable(msg));
        }
    };
    let size = bytes.len() as u64;
    let hash = *blake3::hash(&bytes).as_bytes();
    // Embeddings results never become `Known`: the writer's ledger lookup by hash
    // finds a results file seen before, and its bytes are streamed again only if not.
    let outcome = if begins_like_results(&bytes) {
        Outcome::Embeddings
    } else if hints.finished.contains(&hash) {
        Outcome::Known(bytes)
    } else {
        parse_bytes(&bytes)
    };
    done(job, size, modified, Some(hash), outcome)
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
    let keys = crate::pair::pair_keys(
        parsed
            .pairs
            .iter()
            .map(|raw| (raw.question.as_str(), raw.answer.as_str())),
    );
    let pairs = parsed
        .pairs
        .into_iter()
        .zip(keys)
        .map(|(raw, key)| raw.with_key(key))
        .collect();
    Outcome::Parsed(ParsedFile {
        encoding,
        replaced: decoded.replaced || parsed.salvage.surrogates_replaced > 0,
        salvage: parsed.salvage,
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
    /// Files the ledger had already finished at the same path (moves completed, re-reads
    /// not repeated).
    pub files_already_done: u64,
    /// Entries not read (not regular files, not drops, unreadable): ledger status
    /// `skipped`, left where they are. Counted at every run; logged and recorded once.
    pub files_skipped: u64,
    /// Files still being written (changed within `watch.settle_ms`, or while being read),
    /// left for the next run.
    pub files_waiting: u64,
    /// Files that vanished or could not be read (an error that may pass); left in place.
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
    /// The ledger row that records the destination.
    id: Option<i64>,
    from: PathBuf,
    /// The file read from `from`: moved only if `from` still names it.
    identity: Option<intake::Identity>,
    to: PathBuf,
    reason: Option<String>,
}

/// What a finished writer hands to the next ([`Writer::finish_carrying`],
/// [`Writer::resume`]).
#[derive(Default)]
pub struct Carry {
    sink: store::pairs::PairSink,
    moves: Vec<PendingMove>,
    claimed: HashSet<PathBuf>,
    last_move: Option<Instant>,
}

impl Carry {
    /// The key tail, for an import between two writers.
    pub fn sink_mut(&mut self) -> &mut store::pairs::PairSink {
        &mut self.sink
    }

    /// Forgets the key tail (after a failed transaction, which may have left keys in it
    /// that were never stored); the next writer reloads it from the database.
    pub fn drop_sink(&mut self) {
        self.sink = store::pairs::PairSink::new();
    }

    /// The paths of the files committed and not moved yet.
    pub fn moving_paths(&self) -> HashSet<PathBuf> {
        self.moves.iter().map(|m| m.from.clone()).collect()
    }

    /// Files committed and not moved yet (they wait for the WAL's sync).
    pub fn moves_pending(&self) -> usize {
        self.moves.len()
    }
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
    /// The sink's statements, prepared at the first pair and kept for the writer's life.
    stmts: Option<store::pairs::Statements<'c>>,
    /// The identity of the file being written (for its move).
    identity: Option<intake::Identity>,
    /// Bytes of new pairs written since the background checkpoint was last asked for.
    unchecked_bytes: u64,
    /// Started at the first [`BACKGROUND_CHECKPOINT_BYTES`] (a small run never starts it).
    checkpointer: Option<Checkpointer>,
    /// Set by a merge's commit: the WAL's bound is [`MERGE_COMMIT_WAL_BOUND`] until the
    /// checkpoint thread has copied the WAL through more times than this.
    lifted_until: Option<u64>,
    /// Whether the first transaction has looked for a kept WAL's evicted pages
    /// ([`store::wal::zero_evicted_tail`]).
    wal_looked_at: bool,
}

/// How many pairs ahead the writer readies the key filter's check
/// ([`store::pairs::PairSink::prefetch`]): a pair's insert takes longer than a memory
/// load, so a few is enough.
const PREFETCH_AHEAD: usize = 4;

/// After this many bytes of new pairs are committed, the WAL is copied into the
/// database file on a thread of its own ([`Checkpointer`]) while the writer goes on.
/// Without it, a run's whole WAL (up to `wal_autocheckpoint`'s 64 MiB) was copied by
/// the writer after its last commit or by the close: a serial tail of 120 ms for 20,000
/// pairs (BENCHMARKS.md, "End to end"). Whatever the thread has not copied when the
/// writer finishes is copied after it, serially: at 8 MiB that lag was 15 ms of a
/// 20,000-pair run; at 1 MiB the thread copies nearly as fast as the writer commits
/// (the run 12% shorter by median, 200,000 pairs no slower; tenth sitting).
pub const BACKGROUND_CHECKPOINT_BYTES: u64 = 1024 * 1024;

/// The writer's `wal_autocheckpoint` from the commit of a merge of the key tail until
/// the [`Checkpointer`] has copied the WAL through, instead of `store::configure`'s 64
/// MiB (see `Writer::lift_wal_bound`; BENCHMARKS.md, ninth sitting). Raising it for the
/// whole run let the WAL grow past 64 MiB and cost the close 35 ms at 200,000 pairs.
pub const MERGE_COMMIT_WAL_BOUND: i64 = 256 << 20;

/// A thread with its own connection that runs `PRAGMA wal_checkpoint(PASSIVE)` when the
/// writer asks ([`Checkpointer::nudge`]). A passive checkpoint never blocks the writer
/// and never waits for it: it copies the frames committed when it starts, and the
/// writer's next commits go on appending meanwhile. Nothing about durability changes:
/// a checkpoint syncs the WAL before and the database file after (`synchronous =
/// NORMAL`), and what it has not copied stays in the WAL as before. The writer's own
/// `wal_autocheckpoint` still bounds the WAL when this thread falls behind.
struct Checkpointer {
    nudge: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set when the writer is done: a checkpoint asked for and not started yet is
    /// left to the close, which copies what remains at once.
    closing: Arc<AtomicBool>,
    /// Checkpoints that copied every frame of the WAL.
    complete: Arc<AtomicU64>,
}

impl Checkpointer {
    fn start(db: &str) -> Result<Checkpointer> {
        let conn = Connection::open(db).with_context(|| format!("cannot open {db}"))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        let (nudge, asked) = mpsc::sync_channel::<()>(1);
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let complete = Arc::new(AtomicU64::new(0));
        let completed = complete.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() && !stop.load(Ordering::Acquire) {
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match done {
                        Ok((frames, copied)) => {
                            tracing::debug!(frames, copied, "background checkpoint");
                            if frames == copied {
                                completed.fetch_add(1, Ordering::Release);
                            }
                            // A checkpoint that cannot copy every frame (the writer
                            // appended meanwhile) leaves the pages it copied dirty in
                            // the kernel's cache: nothing syncs the database file
                            // until a checkpoint completes, in practice the close,
                            // which then waited for a whole run's pages to reach the
                            // disk (35 ms of a 20,000-pair run). Syncing them here,
                            // beside the writer, leaves the close only the last
                            // copy's pages to wait for. An extra sync changes nothing
                            // about what is durable when.
                            if copied > 0
                                && let Err(e) = store::sync_database_file(&conn)
                            {
                                tracing::debug!("background sync of the database file: {e}");
                            }
                        }
                        // Busy (the writer's own checkpoint runs) or failing: the
                        // writer's checkpoints and the close still copy the WAL.
                        Err(e) => tracing::debug!("background checkpoint: {e}"),
                    }
                }
            })
            .context("cannot start the checkpoint thread")?;
        Ok(Checkpointer {
            nudge: Some(nudge),
            thread: Some(thread),
            closing,
            complete,
        })
    }

    /// Asks for a checkpoint; one already asked for and not started yet covers it.
    fn nudge(&self) {
        if let Some(n) = &self.nudge {
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // The thread finishes the checkpoint it is in, if any, and closes its connection;
        // one asked for and not started yet is not started. It is left to whoever
        // checkpoints next: for `ingest` the close, at once, where that checkpoint would
        // have been waited for here and the close would then have synced both files
        // again; for the watcher, the next batch's checkpoint thread or its close.
        self.closing.store(true, Ordering::Release);
        drop(self.nudge.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long finished files may wait in the inbox for their move during a burst: moving
/// needs the WAL on disk (one fsync), which is too slow to pay at every checkpoint.
pub const MOVE_INTERVAL: Duration = Duration::from_millis(250);

pub use crate::store::sync_wal;

impl<'c> Writer<'c> {
    /// A writer on `conn`, which must not be inside a transaction.
    pub fn new(conn: &'c Connection, opts: WriterOptions) -> Writer<'c> {
        Writer::resume(conn, opts, Carry::default())
    }

    /// A writer that continues where another left off ([`Writer::finish_carrying`]):
    /// its key tail, and the moves it had not made yet.
    pub fn resume(conn: &'c Connection, opts: WriterOptions, carry: Carry) -> Writer<'c> {
        Writer {
            conn,
            opts,
            in_txn: false,
            now: String::new(),
            pending_pairs: 0,
            moves: carry.moves,
            claimed: carry.claimed,
            events: Vec::new(),
            report: IngestReport::default(),
            run_started: Instant::now(),
            last_move: carry.last_move.unwrap_or_else(Instant::now),
            meter: None,
            stopped: false,
            interrupt: None,
            sink: carry.sink,
            stmts: None,
            identity: None,
            unchecked_bytes: 0,
            checkpointer: None,
            lifted_until: None,
            wal_looked_at: false,
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
            if !self.wal_looked_at {
                // With the write lock held: no frame is appended meanwhile.
                self.wal_looked_at = true;
                match store::wal::zero_evicted_tail(self.conn) {
                    Ok(0) => {}
                    Ok(bytes) => tracing::debug!(bytes, "kept WAL: evicted pages zeroed"),
                    Err(e) => tracing::debug!("kept WAL: {e:#}"),
                }
            }
        }
        Ok(())
    }

    /// Commits the open transaction (a checkpoint): its pairs become queryable and its
    /// files are reported through `on_file`. Files it finished are moved once the commits
    /// are durable, at most every [`MOVE_INTERVAL`] and at the end (see [`Writer::finish`]).
    pub fn commit(&mut self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<()> {
        self.commit_inner(on_file, false)
    }

    fn commit_inner(&mut self, on_file: &mut dyn FnMut(&FileEvent), force: bool) -> Result<()> {
        if self.in_txn {
            // The tail's chunk, and the merge in the transaction of the batch that made
            // it due.
            let merged = self.sink.before_commit(self.conn)?;
            if merged {
                self.lift_wal_bound();
            }
            self.conn.execute_batch("COMMIT").context("commit failed")?;
            self.in_txn = false;
            self.pending_pairs = 0;
            // A merge's index pages are copied at once, whatever the pairs' bytes.
            if merged || self.unchecked_bytes >= BACKGROUND_CHECKPOINT_BYTES {
                self.unchecked_bytes = 0;
                self.checkpoint_in_background();
            }
            if !merged {
                self.restore_wal_bound_once_copied();
            }
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
        for m in std::mem::take(&mut self.moves) {
            self.claimed.remove(&m.to);
            if let Err(e) = move_file(&m) {
                // The ledger never records a path that does not exist: the file stays
                // where it is and the ledger says so (the next scan tries a fresh
                // destination), or, when something else took its name after it was read,
                // the bytes read are gone from the inbox and nothing is kept.
                let replaced = e.downcast_ref::<Replaced>().is_some();
                if replaced {
                    tracing::warn!(
                        "{}: {e}; not moved (what is there now is looked at on its own)",
                        names::render_path(&m.from)
                    );
                } else {
                    tracing::error!(
                        "cannot move {} to {}: {e:#}; it stays in the inbox",
                        names::render_path(&m.from),
                        names::render_path(&m.to)
                    );
                }
                if let Some(id) = m.id {
                    let here = (!replaced).then(|| names::render_path(&m.from));
                    if let Err(e) = ledger::set_stored_path(self.conn, id, here.as_deref()) {
                        tracing::error!("{}: {e:#}", db_context(self.conn));
                    }
                }
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
            identity,
            ..
        } = prepared;
        self.identity = identity;
        let outcome = match outcome {
            Outcome::Unreadable(msg) => {
                tracing::warn!("{msg}; left where it is");
                self.report.files_unreadable += 1;
                return Ok(());
            }
            Outcome::Skipped { reason } => {
                self.begin()?;
                return self.skip(&job, reason, started);
            }
            other => other,
        };
        self.begin()?;
        let Some(hash) = hash else {
            // Over the limit: rejected unread, so no hash knows it again.
            let Outcome::Rejected { reason, .. } = outcome else {
                unreachable!("only rejections come without a hash")
            };
            let rows = ledger::unhashed_rejections(self.conn, &job.source(), size)?;
            if let Some(row) = rows.first()
                && self.finished_here(&job, row, started)?
            {
                return Ok(());
            }
            return self.reject(&job, size, None, reason, None, started);
        };
        let source = job.source();
        let rows = ledger::by_hash(self.conn, &hash)?;
        let name = job.name();

        // Same bytes, same path, already finished: a re-read (in place) or a move that a
        // crash or an error interrupted (inbox). Either way nothing is added.
        if let Some(row) = rows
            .iter()
            .find(|r| r.status != FileStatus::Partial && r.source_path == source)
            && self.finished_here(&job, row, started)?
        {
            return Ok(());
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
            let stored_text = stored.as_deref().map(names::render_path);
            let id = ledger::insert(
                self.conn,
                &ledger::NewFile {
                    agent: &job.agent,
                    name: &name,
                    source_path: &source,
                    stored_path: stored_text.as_deref(),
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
                    salvage: None,
                    now: &self.now,
                },
            )?;
            ledger::set_seconds(self.conn, id, started.elapsed().as_secs_f64())?;
            self.schedule_move(&job, id, stored, None);
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
            Outcome::Known(bytes) => match rows.iter().find(|r| r.status == FileStatus::Rejected) {
                Some(r) => Outcome::Rejected {
                    reason: format!(
                        "same bytes as rejected file {} (file #{}): {}",
                        r.name,
                        r.id,
                        r.reason.as_deref().unwrap_or("no reason recorded")
                    ),
                    encoding: r.encoding.clone(),
                },
                None => parse_bytes(&bytes),
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
                self.reject(&job, size, Some(&hash), reason, encoding, started)
            }
            Outcome::Embeddings => self.write_embeddings(&job, size, &hash, started),
            Outcome::Known(_) | Outcome::Skipped { .. } | Outcome::Unreadable(_) => {
                unreachable!("resolved above")
            }
        }
    }

    /// An embeddings results file: its vectors stored (`engine::embeddings::import_raw`)
    /// in the transaction that records it in the ledger, so it is imported exactly once;
    /// then it moves to `processed/` like any drop. It is opened again as every drop is
    /// (`engine::intake`), and only if the name still means the file prepared.
    fn write_embeddings(
        &mut self,
        job: &Job,
        size: u64,
        hash: &[u8; 32],
        started: Instant,
    ) -> Result<()> {
        let source = job.source();
        let file = match intake::open(&job.path) {
            Opened::File(f) if Some(f.identity) == self.identity => f.file,
            _ => {
                tracing::warn!(
                    "{} changed or vanished since it was read; left where it is",
                    names::render_path(&job.path)
                );
                self.report.files_unreadable += 1;
                return Ok(());
            }
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let report = crate::engine::embeddings::import_raw(self.conn, &mut reader, None, &source)
            .with_context(|| format!("cannot import {}", names::render_path(&job.path)))?;
        let note = report.summary();
        let stored = self.destination(job, PROCESSED);
        let stored_text = stored.as_deref().map(names::render_path);
        let id = ledger::insert(
            self.conn,
            &ledger::NewFile {
                agent: &job.agent,
                name: &job.name(),
                source_path: &source,
                stored_path: stored_text.as_deref(),
                content_hash: Some(hash),
                size,
                status: FileStatus::Integrated,
                encoding: Some("UTF-8"),
                replaced: false,
                layout: Some(crate::engine::embeddings::LAYOUT),
                session: None,
                pairs_seen: 0,
                invalid: &[],
                reason: Some(&note),
                duplicate_of: None,
                salvage: None,
                now: &self.now,
            },
        )?;
        self.report.files_integrated += 1;
        self.schedule_move(job, id, stored, None);
        self.events.push(PendingEvent {
            event: event(job, Some(FileStatus::Integrated), 0, 0, 0, Some(note), None),
            started,
        });
        Ok(())
    }

    /// Records an entry that is not read (see [`Outcome::Skipped`]), once: an entry the
    /// ledger already skipped for the same reason is counted but neither recorded nor
    /// logged again, so a reconcile scan every 30 s says nothing new.
    fn skip(&mut self, job: &Job, reason: String, started: Instant) -> Result<()> {
        let source = job.source();
        self.report.files_skipped += 1;
        if ledger::skipped_before(self.conn, &source, &reason)? {
            tracing::debug!(file = %source, "skipped before: {reason}");
            return Ok(());
        }
        let size = std::fs::symlink_metadata(&job.path).map_or(0, |m| m.len());
        ledger::insert(
            self.conn,
            &ledger::NewFile {
                agent: &job.agent,
                name: &job.name(),
                source_path: &source,
                stored_path: None,
                content_hash: None,
                size,
                status: FileStatus::Skipped,
                encoding: None,
                replaced: false,
                layout: None,
                session: None,
                pairs_seen: 0,
                invalid: &[],
                reason: Some(&reason),
                duplicate_of: None,
                salvage: None,
                now: &self.now,
            },
        )?;
        self.events.push(PendingEvent {
            event: event(job, Some(FileStatus::Skipped), 0, 0, 0, Some(reason), None),
            started,
        });
        Ok(())
    }

    /// Records a rejection and schedules the move to `rejected/` (inbox files).
    fn reject(
        &mut self,
        job: &Job,
        size: u64,
        hash: Option<&[u8; 32]>,
        reason: String,
        encoding: Option<String>,
        started: Instant,
    ) -> Result<()> {
        let source = job.source();
        let stored = self.destination(job, REJECTED);
        let stored_text = stored.as_deref().map(names::render_path);
        let id = ledger::insert(
            self.conn,
            &ledger::NewFile {
                agent: &job.agent,
                name: &job.name(),
                source_path: &source,
                stored_path: stored_text.as_deref(),
                content_hash: hash,
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
                salvage: None,
                now: &self.now,
            },
        )?;
        ledger::set_seconds(self.conn, id, started.elapsed().as_secs_f64())?;
        self.report.files_rejected += 1;
        self.report.rejected.push(RejectedFile {
            path: source,
            kept_at: stored_text,
            reason: reason.clone(),
        });
        self.schedule_move(job, id, stored, Some(reason.clone()));
        self.events.push(PendingEvent {
            event: event(job, Some(FileStatus::Rejected), 0, 0, 0, Some(reason), None),
            started,
        });
        Ok(())
    }

    /// A finished ledger row for the same bytes at the same path: a re-read of a file
    /// read in place (nothing to do), or an inbox file whose move a crash interrupted
    /// (to the recorded path) or that could not be moved (the row records where it is:
    /// to a fresh destination, recorded). Returns whether it took care of the file.
    fn finished_here(
        &mut self,
        job: &Job,
        row: &ledger::FileRow,
        started: Instant,
    ) -> Result<bool> {
        let recorded = row.stored_path.as_deref().map(names::parse_path);
        let stuck = recorded.as_deref() == Some(job.path.as_path());
        let unfinished = stuck
            || recorded
                .as_deref()
                .is_some_and(|p| p.symlink_metadata().is_err());
        if job.placement == Placement::InPlace || unfinished {
            if job.placement == Placement::Inbox {
                let (folder, reason) = match row.status {
                    FileStatus::Rejected => (REJECTED, row.reason.clone()),
                    _ => (PROCESSED, None),
                };
                let to = if stuck {
                    let fresh = self.destination(job, folder);
                    let text = fresh.as_deref().map(names::render_path);
                    ledger::set_stored_path(self.conn, row.id, text.as_deref())?;
                    fresh
                } else {
                    recorded
                };
                self.schedule_move(job, row.id, to, reason);
            }
            self.report.files_already_done += 1;
            self.events.push(PendingEvent {
                event: event(
                    job,
                    None,
                    0,
                    0,
                    0,
                    Some("already in the ledger".into()),
                    row.session,
                ),
                started,
            });
            return Ok(true);
        }
        Ok(false)
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
        let stored_text = stored.as_deref().map(names::render_path);
        let salvage = parsed.salvage.to_json();
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
                        stored_path: stored_text.as_deref(),
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
                        salvage: salvage.as_deref(),
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
        // Taken for the loop, which calls `self`'s methods; put back after it (a file
        // that stops early leaves the next one to prepare them again).
        let mut stmts = match self.stmts.take() {
            Some(s) => s,
            None => store::pairs::Statements::new(conn)?,
        };
        while next < parsed.pairs.len() {
            let pair = &parsed.pairs[next];
            if let Some(ahead) = parsed.pairs.get(next + PREFETCH_AHEAD) {
                self.sink.prefetch(&ahead.key);
            }
            if self
                .sink
                .insert(conn, &mut stmts, pair, &job.agent, id, &self.now)?
            {
                new += 1;
                self.unchecked_bytes += (pair.question.len()
                    + pair.answer.len()
                    + pair.extra.as_ref().map_or(0, String::len))
                    as u64;
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
        self.stmts = Some(stmts);
        ledger::finish(self.conn, id, next, new, dup, &self.now)?;
        ledger::set_seconds(self.conn, id, started.elapsed().as_secs_f64())?;
        if partial.is_some() {
            // Resumed: the destination chosen now is where it goes.
            ledger::set_stored_path(self.conn, id, stored_text.as_deref())?;
        }
        let (run_new, run_dup) = (new - run_new_before, dup - run_dup_before);
        self.report.files_integrated += 1;
        self.report.pairs_new += run_new;
        self.report.pairs_duplicate += run_dup;
        self.report.pairs_seen += run_new + run_dup;
        self.schedule_move(job, id, stored, None);
        let mut notes = Vec::new();
        if parsed.replaced {
            notes.push(format!("decoded as {} with replacements", parsed.encoding));
        }
        if let Some(s) = parsed.salvage.describe() {
            notes.push(format!("salvaged: {s}"));
        }
        let mut finished = event(
            job,
            Some(FileStatus::Integrated),
            new,
            dup,
            parsed.invalid.len() as u64,
            (!notes.is_empty()).then(|| notes.join("; ")),
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

    /// Where an inbox file will be moved: `<folder>/<name>`, or `<stem>.<n><ext>` when
    /// that name is taken (two drops may share a name), shortened to fit the
    /// filesystem's limit with room for `.reason` in `rejected/` ([`names::numbered`]).
    /// `None` for files read in place.
    fn destination(&mut self, job: &Job, folder: &str) -> Option<PathBuf> {
        if job.placement != Placement::Inbox {
            return None;
        }
        let agent_dir = job.path.parent()?;
        let dir = agent_dir.join(folder);
        let name = job.path.file_name()?;
        let reserve = if folder == REJECTED {
            REASON_SUFFIX.len()
        } else {
            0
        };
        let max = names::name_max(agent_dir).saturating_sub(reserve).max(16);
        let taken = |p: &Path| p.symlink_metadata().is_ok();
        let mut n = 0;
        loop {
            let candidate = dir.join(names::numbered(name, n, max));
            if !(taken(&candidate)
                || self.claimed.contains(&candidate)
                || (folder == REJECTED && taken(&reason_path(&candidate))))
            {
                self.claimed.insert(candidate.clone());
                return Some(candidate);
            }
            n += 1;
        }
    }

    fn schedule_move(&mut self, job: &Job, id: i64, to: Option<PathBuf>, reason: Option<String>) {
        if let Some(to) = to {
            self.moves.push(PendingMove {
                id: Some(id),
                from: job.path.clone(),
                identity: self.identity,
                to,
                reason,
            });
        }
    }

    /// Commits what is pending and returns the run's totals with what the next writer
    /// continues from ([`Writer::resume`]): the key tail, and the moves of finished files
    /// not made yet. Those wait, as within one run, until the WAL is synced: at most
    /// [`MOVE_INTERVAL`] after the last moves, or now with `all_moves` (call it so when
    /// no other writer follows soon). The watcher carries them from one batch to the
    /// next of a burst, so a burst syncs and moves as often as one `ingest` run does,
    /// not once per batch. Only a writer that finished gives its state back: one that
    /// failed may hold keys its rolled-back transaction never stored.
    pub fn finish_carrying(
        mut self,
        on_file: &mut dyn FnMut(&FileEvent),
        all_moves: bool,
    ) -> Result<(IngestReport, Carry)> {
        self.commit_inner(on_file, all_moves)
            .with_context(|| db_context(self.conn))?;
        let mut report = std::mem::take(&mut self.report);
        report.seconds = self.run_started.elapsed().as_secs_f64();
        report.pairs_per_second = if report.seconds > 0.0 {
            report.pairs_seen as f64 / report.seconds
        } else {
            0.0
        };
        let carry = Carry {
            sink: std::mem::take(&mut self.sink),
            moves: std::mem::take(&mut self.moves),
            claimed: std::mem::take(&mut self.claimed),
            last_move: Some(self.last_move),
        };
        Ok((report, carry))
    }

    /// A merge commits the index's pages at once (80 MiB with a million keys merged):
    /// past the WAL's bound, the writer would stop at that commit or the next ones and
    /// copy them itself (100 ms) where the checkpoint thread, nudged right after,
    /// copies them beside it. So the bound is [`MERGE_COMMIT_WAL_BOUND`] from the
    /// merge's commit until the thread has copied the WAL through once.
    fn lift_wal_bound(&mut self) {
        let Some(c) = &self.checkpointer else {
            return;
        };
        if store::set_wal_autocheckpoint(self.conn, MERGE_COMMIT_WAL_BOUND).is_ok() {
            self.lifted_until = Some(c.complete.load(Ordering::Acquire));
        }
    }

    /// Puts the WAL's bound back once the thread has copied the WAL through since the
    /// merge (see [`Writer::lift_wal_bound`]).
    fn restore_wal_bound_once_copied(&mut self) {
        if let (Some(at), Some(c)) = (self.lifted_until, &self.checkpointer)
            && c.complete.load(Ordering::Acquire) > at
        {
            self.restore_wal_bound();
        }
    }

    fn restore_wal_bound(&mut self) {
        if self.lifted_until.take().is_some()
            && let Err(e) =
                store::set_wal_autocheckpoint(self.conn, store::WAL_AUTOCHECKPOINT_BYTES)
        {
            tracing::warn!("{}: {e:#}", db_context(self.conn));
        }
    }

    /// Starts the [`Checkpointer`] if need be (a database on disk only) and nudges it.
    fn checkpoint_in_background(&mut self) {
        if self.checkpointer.is_none() {
            let Some(db) = self.conn.path().filter(|p| !p.is_empty()) else {
                return; // in memory
            };
            match Checkpointer::start(db) {
                Ok(c) => self.checkpointer = Some(c),
                Err(e) => {
                    tracing::warn!("{e:#}: the writer checkpoints alone");
                    return;
                }
            }
        }
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
    }

    /// Commits what is pending, makes it durable, moves every finished file, and returns
    /// the run's totals.
    pub fn finish(self, on_file: &mut dyn FnMut(&FileEvent)) -> Result<IngestReport> {
        Ok(self.finish_carrying(on_file, true)?.0)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.in_txn {
            // An error unwound past us: leave the database as of the last checkpoint.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        // The connection outlives the writer (the watcher's next batch, the CLI).
        self.restore_wal_bound();
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
    let status = e.status.map_or("already done", |s| s.as_str());
    // A number in JSON logs, one decimal in text.
    let ms = (e.millis * 10.0).round() / 10.0;
    match e.status {
        Some(FileStatus::Rejected) => tracing::warn!(
            agent = %e.agent, file = %e.name, status, ms,
            "rejected: {}", e.note.as_deref().unwrap_or("")
        ),
        Some(FileStatus::Skipped) => tracing::warn!(
            agent = %e.agent, file = %e.name, status,
            "skipped: {}", e.note.as_deref().unwrap_or("")
        ),
        _ => tracing::info!(
            agent = %e.agent, file = %e.name, status, new = e.new, duplicate = e.duplicate,
            invalid = e.invalid, ms,
            "{}", e.note.as_deref().unwrap_or(status)
        ),
    }
}

/// What a rejected file's explanation adds to its name.
pub const REASON_SUFFIX: &str = ".reason";

/// `<file>.reason` beside a rejected file.
pub fn reason_path(rejected: &Path) -> PathBuf {
    let mut name = rejected.file_name().unwrap_or_default().to_os_string();
    name.push(REASON_SUFFIX);
    rejected.with_file_name(name)
}

/// "database /path/perpetual.db", for errors: a disk-full or I/O error names the file.
fn db_context(conn: &Connection) -> String {
    match conn.path().filter(|p| !p.is_empty()) {
        Some(p) => format!("database {p}"),
        None => "database (in memory)".to_string(),
    }
}

/// The file read is no longer at its name (a link or another file was renamed over it
/// after the read): it is not moved.
#[derive(Debug, thiserror::Error)]
#[error("replaced by another entry after it was read")]
struct Replaced;

fn move_file(m: &PendingMove) -> Result<()> {
    // The folder first: creating it between the check below and the rename left a
    // window in which a link renamed over the file was moved in its place (the link
    // test found it under load, on the first move, which creates processed/).
    let dir = m.to.parent().context("no destination folder")?;
    ensure_folder(dir)?;
    if let Some(read) = m.identity
        && intake::identity_at(&m.from) != Some(read)
    {
        return Err(Replaced.into());
    }
    if let Some(reason) = &m.reason {
        // The reason goes first: a file in rejected/ never lacks its explanation.
        let text = format!(
            "file: {}\nrejected: {}\nreason: {reason}\n",
            names::render_path(&m.from),
            crate::clock::now_rfc3339()
        );
        let at = reason_path(&m.to);
        std::fs::write(&at, text)
            .with_context(|| format!("cannot write {}", names::render_path(&at)))?;
    }
    // rename keeps the bytes exactly; both paths are in the same inbox folder. Never
    // over something that appeared at the destination since it was chosen.
    rename_noreplace(&m.from, &m.to)?;
    // The check above and the rename are two system calls: what was renamed is checked
    // too, and an entry swapped in between goes back where it was found.
    if let Some(read) = m.identity
        && intake::identity_at(&m.to) != Some(read)
    {
        rename_noreplace(&m.to, &m.from)?;
        if m.reason.is_some() {
            let _ = std::fs::remove_file(reason_path(&m.to));
        }
        return Err(Replaced.into());
    }
    Ok(())
}

/// `rename`, refusing to replace an existing entry (`renameat2(RENAME_NOREPLACE)`;
/// a plain rename after a check where the filesystem does not support it).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(f), Ok(t)) = (c(from), c(to)) else {
        anyhow::bail!("a path holds a NUL byte");
    };
    // SAFETY: two valid NUL-terminated paths, relative to the current directory only
    // if relative (ours are absolute).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => {
            anyhow::ensure!(
                to.symlink_metadata().is_err(),
                "{} appeared at the destination",
                names::render_path(to)
            );
            std::fs::rename(from, to)?;
            Ok(())
        }
        _ => Err(e.into()),
    }
}

/// Makes `dir` (an agent's `processed/` or `rejected/`) a real folder. Anything else in
/// its place (a file, a link, a FIFO) is renamed aside, `<folder>.in-the-way[.N]`, with
/// a log line: moves never go through a link, and nothing is deleted.
pub(crate) fn ensure_folder(dir: &Path) -> Result<()> {
    match dir.symlink_metadata() {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            let name = dir.file_name().map(names::render).unwrap_or_default();
            let mut n = 0;
            let aside = loop {
                let suffix = if n == 0 {
                    String::new()
                } else {
                    format!(".{n}")
                };
                let candidate = dir.with_file_name(format!("{name}.in-the-way{suffix}"));
                if candidate.symlink_metadata().is_err() {
                    break candidate;
                }
                n += 1;
            };
            rename_noreplace(dir, &aside)?;
            tracing::warn!(
                "{} was in the way of the {name}/ folder (not a folder): moved aside to {}",
                names::render_path(dir),
                names::render_path(&aside)
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot look at {}", names::render_path(dir)));
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", names::render_path(dir))),
    }
}

/// The environment variable that sets the number of prepare threads.
pub const PREPARE_THREADS_ENV: &str = "PERPETUAL_PREPARE_THREADS";

/// The thread pool of the parallel stage, shared by every run in the process: one
/// thread per core but one, because the writer and the checkpoint thread need the
/// rest. `PERPETUAL_PREPARE_THREADS` sets another count. Measured on two cores
/// (BENCHMARKS.md, "End to end", fourth sitting): a second prepare thread took 12% off
/// 200,000 pairs on a loaded machine and cost 6 to 7% on a quiet one. Files reach the
/// writer in order however many threads prepare them ([`integrate`]).
pub fn prepare_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = cores.saturating_sub(1).max(1);
        let threads = match std::env::var(PREPARE_THREADS_ENV) {
            Err(_) => default,
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    tracing::warn!(
                        "{PREPARE_THREADS_ENV}={v:?} is not a number of threads (1 or more): using {default}"
                    );
                    default
                }
            },
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("prepare-{i}"))
            .build()
            .expect("cannot start the prepare threads")
    })
}

/// How many prepared files may wait for the writer. Two per prepare thread was too few
/// on a loaded machine: the writer emptied the queue while a woken prepare thread still
/// waited for a core, committed early and slept, and the two stages took turns instead
/// of overlapping (BENCHMARKS.md, "The writer's side").
pub const QUEUE_FILES: usize = 64;

/// How many bytes of prepared files may wait for the writer (one file over it still
/// may, alone): with [`QUEUE_FILES`], what bounds the queue's memory however large the
/// files are.
pub const QUEUE_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes of prepared files waiting for the writer; a prepare thread waits for room.
/// Files reach the writer in the order they were listed (see [`integrate`]), so the
/// file the writer needs next always goes through, whatever the others hold: the
/// queue cannot fill with later files while the next one waits for room.
#[derive(Default)]
struct QueueBytes {
    state: std::sync::Mutex<QueueState>,
    room: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    bytes: u64,
    closed: bool,
    /// The place in the list of the file the writer needs next.
    next: usize,
}

impl QueueBytes {
    /// Waits until `n` more bytes fit (or the queue is empty, or closed, or file `seq`
    /// is the one the writer needs next), then takes them.
    fn acquire(&self, n: u64, seq: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.closed && s.bytes > 0 && s.bytes + n > QUEUE_BYTES && seq != s.next {
            s = self.room.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.bytes += n;
    }

    /// Counts `n` bytes already held (files prepared ahead), without waiting: the
    /// prepare threads then wait for the writer to take them.
    fn count(&self, n: u64) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes += n;
    }

    /// Gives back `n` bytes: the writer took a file off the queue, and needs file `next`
    /// now.
    fn release(&self, n: u64, next: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.bytes = s.bytes.saturating_sub(n);
        s.next = next;
        self.room.notify_all();
    }

    /// The writer stopped: nobody waits for room any more.
    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.room.notify_all();
    }
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

/// The files of a `perpetual ingest` run, settled ([`Settled::settle`]) and perhaps
/// some of them prepared ahead ([`Settled::prepare_ahead`]); [`run_settled`] writes
/// them.
#[derive(Debug, Default)]
pub struct Settled {
    /// Prepared ahead, the first files of the list, in order.
    ahead: Vec<Prepared>,
    /// The rest of the list.
    jobs: Vec<Job>,
    /// Still being written: left for the next run.
    waiting: Vec<Job>,
    /// Whether a file that changed while it was read is held for the next run.
    check_unchanged: bool,
}

impl Settled {
    /// For files that writers may still be at work on (what `perpetual ingest` runs
    /// over the inbox): with `settle`, a file that changed within `settle` is looked at
    /// again once it has passed and left for the next run if it moved meanwhile
    /// ([`wait_for_stillness`]), and a file that changed while it was read is not
    /// written either; both are counted in [`IngestReport::files_waiting`]. Without
    /// `settle` (`--now`), everything is read as it is.
    pub fn settle(jobs: Vec<Job>, settle: Option<Duration>) -> Settled {
        let (jobs, waiting) = match settle {
            Some(settle) => wait_for_stillness(jobs, settle),
            None => (jobs, Vec::new()),
        };
        Settled {
            ahead: Vec::new(),
            jobs,
            waiting,
            check_unchanged: settle.is_some(),
        }
    }

    /// Prepares the files from the front of the list, in order, while `busy()` holds
    /// (asked before each file) and what is prepared stays within the writer's queue
    /// ([`QUEUE_FILES`], [`QUEUE_BYTES`]): the work of a core that would otherwise
    /// wait while a fresh root's database is made (5 to 10 ms of pragmas and schema;
    /// BENCHMARKS.md, "End to end", thirteenth sitting). Their bytes count in the
    /// queue's once the run starts, until the writer takes them, so the prepare
    /// threads do not add a queue's worth on top. They are prepared without
    /// [`Hints`], so call this only for a database that has no finished file yet: a
    /// new one.
    pub fn prepare_ahead(&mut self, max_file_bytes: u64, busy: impl Fn() -> bool) {
        let hints = Hints::default();
        let mut bytes = 0;
        let mut rest = std::mem::take(&mut self.jobs).into_iter();
        while self.ahead.len() < QUEUE_FILES && bytes < QUEUE_BYTES && busy() {
            let Some(job) = rest.next() else { break };
            let prepared = prepare(job, &hints, max_file_bytes);
            bytes += prepared.size;
            self.ahead.push(prepared);
        }
        self.jobs = rest.collect();
    }
}

/// [`run`] for the files of a `perpetual ingest` ([`Settled`]): those prepared ahead
/// are written first, then the rest as they are prepared; files still being written
/// are left for the next run.
pub fn run_settled(
    conn: &Connection,
    files: Settled,
    max_file_bytes: u64,
    opts: WriterOptions,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<IngestReport> {
    let Settled {
        ahead,
        jobs,
        waiting,
        check_unchanged,
    } = files;
    let hints = Hints::load(conn)?;
    let mut writer = Writer::new(conn, opts);
    let (held, _) = integrate_inner(
        &mut writer,
        ahead,
        jobs,
        None,
        &hints,
        max_file_bytes,
        &mut |p| !check_unchanged || unchanged_since_read(p),
        on_file,
    )?;
    let mut report = writer.finish(on_file)?;
    for job in waiting.iter().chain(held.iter().map(|p| &p.job)) {
        tracing::info!(
            agent = %job.agent, file = %job.name(),
            "still being written: left for the next run"
        );
    }
    report.files_waiting = (waiting.len() + held.len()) as u64;
    Ok(report)
}

/// Whether a prepared file is as it was when it was opened (size and modification
/// time): if not, a writer is at work and what was read may be half of it.
pub fn unchanged_since_read(p: &Prepared) -> bool {
    match p.outcome {
        Outcome::Skipped { .. } | Outcome::Unreadable(_) => true,
        _ => stat(&p.job.path) == Some((p.size, p.modified)),
    }
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

/// Stops the prepare threads of an [`integrate`] call when dropped.
struct StopPreparing<'a> {
    abort: &'a AtomicBool,
    queued: &'a QueueBytes,
    listed: &'a Listed,
}

impl Drop for StopPreparing<'_> {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        self.queued.close();
        self.listed.close();
    }
}

/// The files of one [`integrate`] call, handed out in the order they were listed, each
/// once, to whichever thread asks first: the prepare threads, and the writer when it
/// would otherwise wait. A list that may still grow ([`integrate_streaming`]) is open:
/// a prepare thread that finds it empty waits for more files or for its closing.
struct Listed {
    state: std::sync::Mutex<ListState>,
    grown: std::sync::Condvar,
}

struct ListState {
    jobs: std::collections::VecDeque<Job>,
    /// The place in the list of `jobs`' first file.
    next: usize,
    closed: bool,
}

impl Listed {
    /// A list whose first job takes place `first` (the places before it are files
    /// prepared ahead).
    fn new(jobs: Vec<Job>, first: usize, open: bool) -> Self {
        Listed {
            state: std::sync::Mutex::new(ListState {
                jobs: jobs.into(),
                next: first,
                closed: !open,
            }),
            grown: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ListState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next file nobody has taken, with its place in the list; while the list is
    /// open and empty, waits for one. `None` once it is closed and empty.
    fn claim(&self) -> Option<(usize, Job)> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                s.next += 1;
                return Some((s.next - 1, job));
            }
            if s.closed {
                return None;
            }
            s = self.grown.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next file nobody has taken, without waiting.
    fn try_claim(&self) -> Option<(usize, Job)> {
        let mut s = self.lock();
        let job = s.jobs.pop_front()?;
        s.next += 1;
        Some((s.next - 1, job))
    }

    /// Adds files at the end of an open list; returns how many files the list has had.
    fn extend(&self, jobs: Vec<Job>) -> usize {
        let mut s = self.lock();
        debug_assert!(!s.closed, "files added to a closed list");
        s.jobs.extend(jobs);
        self.grown.notify_all();
        s.next + s.jobs.len()
    }

    /// How many files the list has had, and how many of them nobody has taken yet.
    fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.next + s.jobs.len(), s.jobs.len())
    }

    /// No more files: prepare threads waiting for one leave.
    fn close(&self) {
        self.lock().closed = true;
        self.grown.notify_all();
    }
}

/// The files `more` has for an [`integrate_streaming`] call, noting when it was asked;
/// none once the call has streamed for [`STREAM_FOR`] (`until`).
fn ask(more: &mut dyn FnMut() -> Vec<Job>, asked: &mut Instant, until: Instant) -> Vec<Job> {
    *asked = Instant::now();
    if *asked < until { more() } else { Vec::new() }
}

/// Closes a list when dropped by a thread that panics.
struct CloseIfPanicking<'a>(&'a Listed);

impl Drop for CloseIfPanicking<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

/// How long one [`integrate_streaming`] call takes in files that arrive while it runs:
/// after this its writer finishes what it has, so that the watcher's periodic work
/// (the reconcile scan, the moves of a failed batch) still comes round under a steady
/// stream of drops.
pub const STREAM_FOR: Duration = Duration::from_secs(2);

/// How often, at most, the writer asks an [`integrate_streaming`] call's source for
/// more files while the prepare threads still have some.
const ASK_EVERY: Duration = Duration::from_millis(1);

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
    integrate_inner(
        writer,
        Vec::new(),
        jobs,
        None,
        hints,
        max_file_bytes,
        admit,
        on_file,
    )
    .map(|(held, _)| held)
}

/// [`integrate`] for files that keep arriving (the watcher's bursts): besides `jobs`,
/// the files that `more` returns join the same run, after those listed before them,
/// for up to [`STREAM_FOR`]. The writer asks `more` whenever it has caught up with
/// the prepare threads and at most every millisecond while they run short; the run
/// ends once every file listed is written and `more` has none. So a burst whose
/// events come in over several milliseconds is one pipeline, not a batch of its first
/// files and then a batch of the rest, each starting its threads and draining them.
///
/// `jobs` hold no SQLite database ([`crate::engine::import_db::split_databases`]); the
/// files `more` adds are looked at by the prepare threads, and the databases among them
/// are returned, unread, beside the held files, for the caller to import.
pub fn integrate_streaming(
    writer: &mut Writer<'_>,
    jobs: Vec<Job>,
    more: &mut dyn FnMut() -> Vec<Job>,
    hints: &Hints,
    max_file_bytes: u64,
    admit: &mut dyn FnMut(&Prepared) -> bool,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<(Vec<Prepared>, Vec<Job>)> {
    integrate_inner(
        writer,
        Vec::new(),
        jobs,
        Some(more),
        hints,
        max_file_bytes,
        admit,
        on_file,
    )
}

/// What a prepare thread hands the writer for one file of the list. Nearly every one
/// is a prepared file, moved by value as before; a box would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Taken {
    Prepared(Prepared),
    /// A SQLite database among the files added while the run went on.
    Database(Job),
}

impl Taken {
    /// The bytes it holds in the queue.
    fn size(&self) -> u64 {
        match self {
            Taken::Prepared(p) => p.size,
            Taken::Database(_) => 0,
        }
    }
}

/// Prepares file `seq` of the list; a file added while the run went on (from `streamed`
/// on) is first looked at for a database header.
fn take(seq: usize, streamed: usize, job: Job, hints: &Hints, max_file_bytes: u64) -> Taken {
    if seq >= streamed && job.skip.is_none() && intake::is_database(&job.path) {
        Taken::Database(job)
    } else {
        Taken::Prepared(prepare(job, hints, max_file_bytes))
    }
}

#[allow(clippy::too_many_arguments)]
fn integrate_inner(
    writer: &mut Writer<'_>,
    ahead: Vec<Prepared>,
    jobs: Vec<Job>,
    mut more: Option<&mut dyn FnMut() -> Vec<Job>>,
    hints: &Hints,
    max_file_bytes: u64,
    admit: &mut dyn FnMut(&Prepared) -> bool,
    on_file: &mut dyn FnMut(&FileEvent),
) -> Result<(Vec<Prepared>, Vec<Job>)> {
    let abort = AtomicBool::new(false);
    let interrupt = writer.interrupt.clone();
    let pool = prepare_pool();
    let (tx, rx) = mpsc::sync_channel::<(usize, Taken)>(QUEUE_FILES);
    // The files prepared ahead are the first of the list: they wait for the writer in
    // `early`, their bytes counted in the queue's, and the listed files come after them.
    let first = ahead.len();
    let streamed = first + jobs.len();
    let listed = &Listed::new(jobs, first, more.is_some());
    let queued = &QueueBytes::default();
    let mut early: std::collections::BTreeMap<usize, (Taken, u64)> = ahead
        .into_iter()
        .enumerate()
        .map(|(seq, p)| {
            let size = p.size;
            queued.count(size);
            (seq, (Taken::Prepared(p), size))
        })
        .collect();
    let mut databases = Vec::new();
    let streaming_until = Instant::now() + STREAM_FOR;
    let mut asked = Instant::now();
    let mut held = Vec::new();
    std::thread::scope(|scope| {
        let abort = &abort;
        let interrupt = interrupt.as_deref();
        scope.spawn(move || {
            // Every prepare thread takes the next file in the list (oldest name, lowest
            // session first) until none is left; the channel closes when all are done.
            pool.broadcast(|_| {
                let tx = tx.clone();
                // A prepare thread that panics closes an open list as it unwinds, so
                // that the others leave too and the writer, waiting for the file this
                // one held, finds the channel closed (the panic then reaches the
                // caller, as it would with a closed list) instead of waiting for ever.
                let _unwinding = CloseIfPanicking(listed);
                while !abort.load(Ordering::Relaxed)
                    && !interrupt.is_some_and(|f| f.load(Ordering::Relaxed))
                {
                    let Some((seq, job)) = listed.claim() else {
                        break;
                    };
                    let taken = take(seq, streamed, job, hints, max_file_bytes);
                    queued.acquire(taken.size(), seq);
                    if tx.send((seq, taken)).is_err() {
                        break;
                    }
                }
            });
        });
        // However the writer leaves (done, an error, a panic in its own preparation),
        // the prepare threads stop taking files and none waits for room any more.
        let stop = StopPreparing {
            abort,
            queued,
            listed,
        };
        let result = (|| {
            // Several threads prepare, so files finish out of order; the writer takes
            // them in the order they were listed, so that of two files with the same
            // pairs (or bytes) the earlier one is the original whatever the number of
            // cores. Those that come early wait in `early` with the bytes they hold in
            // the queue (none for a file the writer prepared itself: it never entered
            // it), as the files prepared ahead do from the start.
            let mut want = 0usize;
            while !writer.interrupted() && !writer.stopped() {
                // Files that arrived meanwhile join the list before the prepare
                // threads run out of it.
                if let Some(more) = more.as_mut()
                    && asked.elapsed() >= ASK_EVERY
                    && listed.counts().1 < pool.current_num_threads() * 2
                {
                    let arrived = ask(more, &mut asked, streaming_until);
                    if !arrived.is_empty() {
                        listed.extend(arrived);
                    }
                }
                let (next, queued_bytes) = if let Some(p) = early.remove(&want) {
                    p
                } else {
                    let (seq, p) = match rx.try_recv() {
                        Ok(sp) => sp,
                        Err(mpsc::TryRecvError::Empty) => {
                            // Nothing ready: make what we have queryable instead of
                            // waiting for a full batch.
                            writer
                                .commit(on_file)
                                .with_context(|| db_context(writer.conn))?;
                            // Then, rather than sleep while the file it needs is being
                            // prepared, the writer prepares the next file nobody has
                            // taken yet (on two cores the prepare stage is the longer
                            // one, and the writer was idle a third of the time).
                            if early.len() < QUEUE_FILES
                                && let Some((seq, job)) = listed.try_claim()
                            {
                                let taken = take(seq, streamed, job, hints, max_file_bytes);
                                early.insert(seq, (taken, 0));
                                continue;
                            }
                            // Caught up with every file listed: whatever arrived
                            // meanwhile joins; with none, the list closes and the run
                            // ends once the files still being prepared are written.
                            if let Some(source) = more.as_mut() {
                                let arrived = ask(source, &mut asked, streaming_until);
                                if !arrived.is_empty() {
                                    listed.extend(arrived);
                                    continue;
                                }
                                if listed.counts().0 == want {
                                    more = None;
                                    listed.close();
                                }
                            }
                            match rx.recv() {
                                Ok(sp) => sp,
                                Err(_) => break,
                            }
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    };
                    let size = p.size();
                    if seq != want {
                        early.insert(seq, (p, size));
                        continue;
                    }
                    (p, size)
                };
                want += 1;
                queued.release(queued_bytes, want);
                let next = match next {
                    Taken::Prepared(p) => p,
                    Taken::Database(job) => {
                        databases.push(job);
                        continue;
                    }
                };
                if admit(&next) {
                    // A disk-full or I/O error names the database and the file.
                    let source = next.job.source();
                    writer.write(next, on_file).with_context(|| {
                        format!("{}: cannot record {source}", db_context(writer.conn))
                    })?;
                } else {
                    held.push(next);
                }
            }
            writer
                .commit(on_file)
                .with_context(|| db_context(writer.conn))
        })();
        // Done, failed, interrupted or out of budget: workers still preparing see the
        // flag or the closed channel and leave the remaining files alone.
        drop(stop);
        drop(rx);
        result
    })?;
    Ok((held, databases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn job(name: &str) -> Job {
        Job::inbox("droid", PathBuf::from(name))
    }

    #[test]
    fn an_open_list_holds_a_prepare_thread_until_it_grows_or_closes() {
        let listed = Listed::new(vec![job("a.json")], 0, true);
        assert_eq!(listed.counts(), (1, 1));
        let (seq, first) = listed.try_claim().unwrap();
        assert_eq!((seq, first.name()), (0, "a.json".to_string()));
        assert!(listed.try_claim().is_none(), "the writer never waits");
        let claimed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                while let Some((seq, job)) = listed.claim() {
                    claimed.lock().unwrap().push((seq, job.name()));
                }
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                claimed.lock().unwrap().is_empty(),
                "empty and open: it waits"
            );
            // Files added later come after those listed before, in their order.
            assert_eq!(listed.extend(vec![job("b.json"), job("c.json")]), 3);
            let deadline = Instant::now() + Duration::from_secs(10);
            while claimed.lock().unwrap().len() < 2 {
                assert!(Instant::now() < deadline, "the waiting thread took them");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(listed.counts(), (3, 0));
            // Closed: the thread leaves.
            listed.close();
        });
        assert_eq!(
            claimed.into_inner().unwrap(),
            [(1, "b.json".to_string()), (2, "c.json".to_string())]
        );
        // A prepare thread that panics closes an open list, so nobody waits on it.
        let listed = Listed::new(Vec::new(), 0, true);
        let panicked = std::thread::scope(|s| {
            s.spawn(|| {
                let _unwinding = CloseIfPanicking(&listed);
                panic!("a prepare thread panics");
            })
            .join()
        });
        assert!(panicked.is_err());
        assert!(listed.claim().is_none(), "closed: claim returns at once");
        // A list that may not grow is closed from the start: nobody waits on it.
        let closed = Listed::new(vec![job("d.json")], 0, false);
        assert_eq!(closed.claim().map(|(seq, _)| seq), Some(0));
        assert!(closed.claim().is_none());
    }

    #[test]
    fn files_prepared_ahead_are_bounded_and_written_first_in_list_order() {
        let dir = tempfile::tempdir().unwrap();
        // File i repeats the pair of file i - 1: whichever is written first keeps it.
        let pair = |i: usize| format!(r#"{{"question": "Q{i}?", "answer": "A{i}."}}"#);
        for i in 0..70 {
            let body = match i {
                0 => format!("[{}]", pair(0)),
                _ => format!("[{}, {}]", pair(i - 1), pair(i)),
            };
            std::fs::write(dir.path().join(format!("f{i:02}.json")), body).unwrap();
        }
        let jobs = || discover_paths(&[dir.path().to_path_buf()], Some("droid")).unwrap();
        // Busy for ever: the queue's bound stops it.
        let mut all = Settled::settle(jobs(), None);
        all.prepare_ahead(1 << 20, || true);
        assert_eq!(
            (all.ahead.len(), all.jobs.len()),
            (QUEUE_FILES, 70 - QUEUE_FILES)
        );
        let opts = WriterOptions {
            checkpoint_every: 500,
        };
        let dbs = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dbs.path().join("all.sqlite")).unwrap();
        let report = run_settled(&conn, all, 1 << 20, opts, &mut |_| {}).unwrap();
        assert_eq!((report.files_integrated, report.pairs_new), (70, 70));
        // Busy for two files.
        let asked = std::cell::Cell::new(0);
        let mut files = Settled::settle(jobs(), None);
        files.prepare_ahead(1 << 20, || {
            asked.set(asked.get() + 1);
            asked.get() <= 2
        });
        assert_eq!((files.ahead.len(), files.jobs.len()), (2, 68));
        let conn = crate::store::open(&dbs.path().join("db.sqlite")).unwrap();
        let report = run_settled(&conn, files, 1 << 20, opts, &mut |_| {}).unwrap();
        assert_eq!((report.files_integrated, report.pairs_new), (70, 70));
        assert_eq!(report.pairs_duplicate, 69);
        // Each pair is stored from the first file that has it, in the list's order.
        let stored: Vec<(String, String)> = conn
            .prepare(
                "SELECT p.question, f.name FROM pairs p JOIN files f ON f.id = p.file_id
                 ORDER BY p.id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected: Vec<(String, String)> = (0..70)
            .map(|i| (format!("Q{i}?"), format!("f{i:02}.json")))
            .collect();
        assert_eq!(stored, expected);
    }

    #[test]
    fn the_queue_holds_a_prepare_thread_until_the_writer_makes_room() {
        let q = QueueBytes::default();
        q.acquire(QUEUE_BYTES, 1); // one file at the limit fits alone
        let taken = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                q.acquire(1, 2);
                taken.store(1, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(taken.load(Ordering::SeqCst), 0, "no room: it waits");
            q.release(QUEUE_BYTES, 0);
        });
        assert_eq!(taken.load(Ordering::SeqCst), 1, "room made: it went on");
        q.release(1, 0);
        // The file the writer needs next never waits for room, whatever later files
        // hold: they wait for it.
        q.acquire(QUEUE_BYTES, 5);
        q.acquire(1, 0);
        q.release(QUEUE_BYTES + 1, 1);
        // A closed queue (the writer stopped) never holds anyone.
        q.acquire(QUEUE_BYTES, 7);
        q.close();
        q.acquire(QUEUE_BYTES, 8);
        q.acquire(QUEUE_BYTES, 9);
    }
}
