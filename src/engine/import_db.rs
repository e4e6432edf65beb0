//! Existing SQLite databases as drops (`perpetual import-db`, and a database dropped into
//! `inbox/<agent>/`): every table with question and answer columns is read in rowid order
//! and its rows become pairs with the same keys, the same dedup (`store::pairs::PairSink`)
//! and the same ledger as file drops.
//!
//! - **Columns.** Detected by name (case-insensitive) unless `--map` says otherwise:
//!   question `question`/`q`/`prompt`, answer `answer`/`a`/`response`, indicator
//!   `indicator`/`indicator_name`/`indicator_id`, category `category`/`indicator_category`.
//!   Every other column goes to the pair's `extra` (a blob as hex). A row whose question
//!   or answer is missing, not text, or empty is invalid: counted and explained in the
//!   ledger by its rowid.
//! - **Ledger.** One row per source database and table (`name` is `<file>#<table>`,
//!   `layout` is `sqlite`). Its identity is blake3 of the database's bytes, the table and
//!   the column mapping, so the same database imported again adds nothing, and a grown
//!   copy is imported again with its old rows counted as duplicates.
//! - **Resumable.** A transaction every `checkpoint_every` rows writes the pairs and the
//!   ledger's `resume_at` (here: the last source rowid read) and counts together, so after
//!   a `kill -9` the next run resumes after that rowid, and the counts stay exact.
//! - **Drops.** A file in `inbox/<agent>/` that begins with the SQLite header (whatever its
//!   name) is opened immutable (no locks, nothing written beside it), imported the same
//!   way, then moved to `processed/` once every table is in (after the WAL is on disk);
//!   one that cannot be read, or has no table to import, goes to `rejected/` with its
//!   reason.

use crate::engine::ingest::{
    Job, Placement, ensure_folder, reason_path, rename_noreplace, sync_wal,
};
use crate::engine::layout::RawPair;
use crate::engine::names;
use crate::root::{PROCESSED, REJECTED};
use crate::store::ledger::{self, FileStatus, InvalidEntry};
use crate::store::pairs::{PairSink, Statements};
use crate::store::source_db::{self, SourceTable};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use rusqlite::Connection;
use rusqlite::types::Value;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

const QUESTION: [&str; 3] = ["question", "q", "prompt"];
const ANSWER: [&str; 3] = ["answer", "a", "response"];
const INDICATOR: [&str; 3] = ["indicator", "indicator_name", "indicator_id"];
const CATEGORY: [&str; 2] = ["category", "indicator_category"];

/// Columns named on the command line (`--map question=COL,answer=COL,...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ColumnMap {
    /// The question's column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// The answer's column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The indicator's column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indicator: Option<String>,
    /// The category's column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl std::str::FromStr for ColumnMap {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ColumnMap> {
        let mut map = ColumnMap::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((field, column)) = part.split_once('=') else {
                bail!("--map expects field=COLUMN pairs separated by commas, got {part:?}");
            };
            let column = Some(column.trim().to_string());
            match field.trim() {
                "question" => map.question = column,
                "answer" => map.answer = column,
                "indicator" => map.indicator = column,
                "category" => map.category = column,
                other => bail!(
                    "--map: unknown field {other:?} (fields: question, answer, indicator, category)"
                ),
            }
        }
        Ok(map)
    }
}

/// The columns a table's pairs are read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// The question's column.
    pub question: String,
    /// The answer's column.
    pub answer: String,
    /// The indicator's column, if any.
    pub indicator: Option<String>,
    /// The category's column, if any.
    pub category: Option<String>,
    /// Every other column (they go to `extra`).
    pub extra: Vec<String>,
}

impl Mapping {
    /// Detects the columns of `table`, with `map`'s choices first. `None` when the table
    /// has no question or answer column (and `map` names none).
    pub fn detect(table: &SourceTable, map: &ColumnMap) -> Result<Option<Mapping>> {
        let find = |given: &Option<String>, names: &[&str]| -> Result<Option<String>> {
            match given {
                Some(c) => match table.columns.iter().find(|x| x.eq_ignore_ascii_case(c)) {
                    Some(x) => Ok(Some(x.clone())),
                    None => bail!(
                        "table {} has no column {c:?} (columns: {})",
                        table.name,
                        table.columns.join(", ")
                    ),
                },
                None => Ok(names.iter().find_map(|n| {
                    table
                        .columns
                        .iter()
                        .find(|x| x.eq_ignore_ascii_case(n))
                        .cloned()
                })),
            }
        };
        let (Some(question), Some(answer)) =
            (find(&map.question, &QUESTION)?, find(&map.answer, &ANSWER)?)
        else {
            return Ok(None);
        };
        let indicator = find(&map.indicator, &INDICATOR)?;
        let category = find(&map.category, &CATEGORY)?;
        let used = [
            Some(&question),
            Some(&answer),
            indicator.as_ref(),
            category.as_ref(),
        ];
        let extra = table
            .columns
            .iter()
            .filter(|c| !used.contains(&Some(c)))
            .cloned()
            .collect();
        Ok(Some(Mapping {
            question,
            answer,
            indicator,
            category,
            extra,
        }))
    }

    fn columns(&self) -> Vec<String> {
        let mut v = vec![self.question.clone(), self.answer.clone()];
        v.extend(self.indicator.clone());
        v.extend(self.category.clone());
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// What an import is asked.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Only this table (default: every table with question and answer columns).
    pub table: Option<String>,
    /// Columns chosen by hand.
    pub map: ColumnMap,
    /// Whose pairs they are.
    pub agent: String,
    /// Rows per transaction (`ingest.checkpoint_every`).
    pub checkpoint_every: usize,
}

/// What became of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// The columns read.
    pub mapping: Mapping,
    /// Rows in the table.
    pub rows: u64,
    /// `integrated`, `already` (imported before: nothing to do), or `partial` (stopped
    /// at a checkpoint; the next run resumes).
    pub status: &'static str,
    /// The rowid this run resumed after (0 from the start).
    pub resumed_after: i64,
    /// Pairs stored for the first time (over every run of this table).
    pub pairs_new: u64,
    /// Valid rows whose pair was already stored.
    pub pairs_duplicate: u64,
    /// Rows that are not a valid pair.
    pub pairs_invalid: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// The database.
    pub database: String,
    /// Each table imported.
    pub tables: Vec<TableReport>,
    /// Rows read by this run.
    pub pairs_seen: u64,
    /// Pairs stored for the first time by this run.
    pub pairs_new: u64,
    /// Valid rows whose pair was already stored (this run).
    pub pairs_duplicate: u64,
    /// Invalid rows (this run).
    pub pairs_invalid: u64,
    /// Wall time.
    pub seconds: f64,
    /// Rows read per second.
    pub pairs_per_second: f64,
    /// Where a dropped database was moved (`processed/`, or `rejected/` when rejected).
    pub moved_to: Option<String>,
    /// Why a dropped database was rejected (kept in `rejected/` with this reason).
    pub rejected: Option<String>,
    /// Whether it stopped at a checkpoint (a signal); the next run resumes.
    pub interrupted: bool,
    /// Peak resident memory of the process (KiB, Linux), filled in by the command.
    pub peak_rss_kb: Option<u64>,
}

/// Splits inbox jobs into SQLite databases (by their header, whatever their name) and
/// the rest, each in the order given.
///
/// Every file is opened and its first 16 bytes read before any is prepared: serially,
/// that was 4.3 ms of a watcher's burst of 1,000 files before the batch began. From
/// [`SPLIT_IN_PARALLEL_FROM`] files the headers are read on the prepare pool (idle
/// before a batch) and this thread.
pub fn split_databases(jobs: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    // Looked at as every drop is (engine::intake): never through a link, never blocking.
    fn mark(jobs: &[Job], databases: &mut [bool]) {
        for (job, db) in jobs.iter().zip(databases) {
            *db = job.skip.is_none() && crate::engine::intake::is_database(&job.path);
        }
    }
    let mut flags = vec![false; jobs.len()];
    if jobs.len() >= SPLIT_IN_PARALLEL_FROM {
        let pool = crate::engine::ingest::prepare_pool();
        let chunk = jobs.len().div_ceil(pool.current_num_threads() + 1);
        pool.in_place_scope(|scope| {
            let mut parts = jobs.chunks(chunk).zip(flags.chunks_mut(chunk));
            let here = parts.next();
            for (part, out) in parts {
                scope.spawn(move |_| mark(part, out));
            }
            if let Some((part, out)) = here {
                mark(part, out);
            }
        });
    } else {
        mark(&jobs, &mut flags);
    }
    let (databases, files): (Vec<_>, Vec<_>) = jobs.into_iter().zip(flags).partition(|(_, db)| *db);
    (
        databases.into_iter().map(|(j, _)| j).collect(),
        files.into_iter().map(|(j, _)| j).collect(),
    )
}

/// From how many files [`split_databases`] reads their headers on several threads
/// (below, handing them out costs more than it saves).
pub const SPLIT_IN_PARALLEL_FROM: usize = 64;

/// Imports the database at `path`, read in place (`import-db PATH`). An unreadable
/// database or one without a table to import is an error.
pub fn import_path(
    conn: &Connection,
    path: &Path,
    opts: &ImportOptions,
    sink: &mut PairSink,
    interrupt: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport> {
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let job = Job {
        agent: opts.agent.clone(),
        path,
        placement: Placement::InPlace,
        skip: None,
    };
    import_job(conn, &job, opts, sink, interrupt, progress)
}

/// Imports the databases among a run's jobs (from [`split_databases`]): a drop in the
/// inbox moves to `processed/` once complete, or to `rejected/` with its reason; a file
/// named on the command line is read in place.
pub fn import_jobs(
    conn: &Connection,
    jobs: &[Job],
    checkpoint_every: usize,
    sink: &mut PairSink,
    interrupt: Option<&AtomicBool>,
) -> Result<Vec<ImportReport>> {
    let mut reports = Vec::new();
    for job in jobs {
        if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
            break;
        }
        let opts = ImportOptions {
            table: None,
            map: ColumnMap::default(),
            agent: job.agent.clone(),
            checkpoint_every,
        };
        let report = import_job(conn, job, &opts, sink, interrupt, &mut |_, _| {})?;
        log(job, &report);
        reports.push(report);
    }
    Ok(reports)
}

/// Adds an import's outcome to an ingest run's totals (a database counts as one file).
pub fn add_to(total: &mut crate::engine::ingest::IngestReport, r: &ImportReport) {
    match &r.rejected {
        Some(reason) => {
            total.files_rejected += 1;
            total.rejected.push(crate::engine::ingest::RejectedFile {
                path: r.database.clone(),
                kept_at: r.moved_to.clone(),
                reason: reason.clone(),
            });
        }
        // Every table imported before: the same bytes again, as a duplicate file.
        None if r.tables.iter().all(|t| t.status == "already") => total.files_duplicate += 1,
        None if !r.interrupted => total.files_integrated += 1,
        None => {}
    }
    total.pairs_seen += r.pairs_seen;
    total.pairs_new += r.pairs_new;
    total.pairs_duplicate += r.pairs_duplicate;
    total.pairs_invalid += r.pairs_invalid;
}

fn log(job: &Job, r: &ImportReport) {
    let name = job.name();
    if let Some(reason) = &r.rejected {
        tracing::warn!(agent = %job.agent, file = %name, status = "rejected", "rejected: {reason}");
    } else {
        tracing::info!(
            agent = %job.agent, file = %name, status = if r.interrupted { "partial" } else { "integrated" },
            new = r.pairs_new, duplicate = r.pairs_duplicate, invalid = r.pairs_invalid,
            "SQLite database: {} table(s)", r.tables.len()
        );
    }
}

/// The identity of (database bytes, table, mapping) in the ledger.
fn table_hash(db: &[u8; 32], table: &str, mapping: &Mapping) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"perpetual sqlite table\0");
    h.update(db);
    h.update(table.as_bytes());
    h.update(b"\0");
    h.update(
        serde_json::to_string(mapping)
            .expect("serialisable")
            .as_bytes(),
    );
    *h.finalize().as_bytes()
}

fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    use crate::engine::intake::{self, Opened};
    let shown = || names::render_path(path);
    let f = match intake::open(path) {
        Opened::File(f) => f,
        Opened::Refused(why) => anyhow::bail!("{}: {why}", shown()),
        Opened::Gone => anyhow::bail!("{} is gone", shown()),
        Opened::Failed(e) => return Err(e).with_context(|| format!("cannot read {}", shown())),
    };
    let mut h = blake3::Hasher::new();
    // Streamed: a database is hashed whole, in bounded memory.
    h.update_reader(&f.file)
        .with_context(|| format!("cannot read {}", shown()))?;
    Ok((*h.finalize().as_bytes(), f.size))
}

/// Where an inbox file goes: `<folder>/<name>`, or `<stem>.<n><ext>` when taken, within
/// the filesystem's name limit (as for files: `names::numbered`).
fn destination(path: &Path, folder: &str) -> Option<PathBuf> {
    let agent_dir = path.parent()?;
    let dir = agent_dir.join(folder);
    let name = path.file_name()?;
    let reserve = if folder == REJECTED {
        ".reason".len()
    } else {
        0
    };
    let max = names::name_max(agent_dir).saturating_sub(reserve).max(16);
    let taken = |p: &Path| p.symlink_metadata().is_ok();
    (0..)
        .map(|n| dir.join(names::numbered(name, n, max)))
        .find(|c| !(taken(c) || (folder == REJECTED && taken(&reason_path(c)))))
}

fn import_job(
    conn: &Connection,
    job: &Job,
    opts: &ImportOptions,
    sink: &mut PairSink,
    interrupt: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport> {
    let started = Instant::now();
    let source = job.source();
    let name = job.name();
    let mut report = ImportReport {
        database: source.clone(),
        ..ImportReport::default()
    };
    let (db_hash, size) = hash_file(&job.path)?;
    let inbox = job.placement == Placement::Inbox;

    // What to read: the tables and their columns. For a drop, what cannot be read is a
    // rejection; named on the command line, it is an error.
    let plan = (|| -> Result<(Connection, Vec<(SourceTable, Mapping)>)> {
        let src = source_db::open(&job.path, inbox)?;
        let tables = source_db::tables(&src)?;
        let chosen = choose_tables(&tables, opts)?;
        Ok((src, chosen))
    })();
    let (src, tables) = match plan {
        Ok(p) => p,
        Err(e) if inbox => {
            let reason = format!("{e:#}");
            let kept = reject(conn, job, &db_hash, size, &reason)?;
            report.moved_to = Some(names::render_path(&kept));
            report.rejected = Some(reason);
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        Err(e) => return Err(e),
    };

    let stored = if inbox {
        destination(&job.path, PROCESSED)
    } else {
        None
    };
    let totals: Vec<u64> = tables
        .iter()
        .map(|(t, _)| source_db::count_rows(&src, &t.name))
        .collect::<Result<_>>()?;
    let all_rows: u64 = totals.iter().sum();
    let mut rows_done = 0u64;
    let mut stored_recorded: Option<String> = None;
    for ((table, mapping), rows) in tables.iter().zip(totals) {
        let hash = table_hash(&db_hash, &table.name, mapping);
        let known = ledger::by_hash(conn, &hash)?;
        if let Some(done) = known.iter().find(|r| r.status == FileStatus::Integrated) {
            // Imported before (here, or from a copy elsewhere).
            if stored_recorded.is_none() {
                stored_recorded = done
                    .stored_path
                    .clone()
                    .filter(|_| done.source_path == source);
            }
            report.tables.push(TableReport {
                table: table.name.clone(),
                mapping: mapping.clone(),
                rows,
                status: "already",
                resumed_after: done.resume_at,
                pairs_new: done.pairs_new as u64,
                pairs_duplicate: done.pairs_duplicate as u64,
                pairs_invalid: done.pairs_invalid as u64,
            });
            rows_done += rows;
            progress(rows_done, all_rows);
            continue;
        }
        let partial = known.iter().find(|r| r.status == FileStatus::Partial);
        if let Some(p) = partial
            && stored_recorded.is_none()
        {
            stored_recorded = p.stored_path.clone();
        }
        let stored_path = stored_recorded
            .clone()
            .or_else(|| stored.as_deref().map(names::render_path));
        let t = import_table(
            conn,
            inbox,
            job,
            &name,
            &source,
            stored_path.as_deref(),
            size,
            &hash,
            table,
            mapping,
            partial,
            opts.checkpoint_every,
            sink,
            interrupt,
            &mut report,
            &mut |n| {
                rows_done += n;
                progress(rows_done, all_rows);
            },
        )?;
        let stopped = t.status == "partial";
        report.tables.push(TableReport { rows, ..t });
        if stopped {
            report.interrupted = true;
            break;
        }
    }
    drop(src);
    report.seconds = started.elapsed().as_secs_f64();
    report.pairs_per_second = if report.seconds > 0.0 {
        report.pairs_seen as f64 / report.seconds
    } else {
        0.0
    };
    if inbox && !report.interrupted {
        let to = stored_recorded
            .map(|s| names::parse_path(&s))
            .or(stored)
            .context("no place to move the database to")?;
        // The commits are durable before the file leaves the inbox (as for files).
        sync_wal(conn)?;
        if let Some(dir) = to.parent() {
            ensure_folder(dir)?;
        }
        rename_noreplace(&job.path, &to).with_context(|| {
            format!(
                "cannot move {} to {}",
                names::render_path(&job.path),
                names::render_path(&to)
            )
        })?;
        report.moved_to = Some(names::render_path(&to));
    }
    Ok(report)
}

/// The tables to import and their columns.
fn choose_tables(
    tables: &[SourceTable],
    opts: &ImportOptions,
) -> Result<Vec<(SourceTable, Mapping)>> {
    let describe = || {
        if tables.is_empty() {
            "it has no tables".to_string()
        } else {
            format!(
                "tables: {}",
                tables
                    .iter()
                    .map(|t| format!("{}({})", t.name, t.columns.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    };
    let mut chosen = Vec::new();
    match &opts.table {
        Some(name) => {
            let Some(t) = tables.iter().find(|t| &t.name == name) else {
                bail!("no table {name:?} in the database ({})", describe());
            };
            match Mapping::detect(t, &opts.map)? {
                Some(m) => chosen.push((t.clone(), m)),
                None => bail!(
                    "table {name} has no question and answer columns (columns: {}); name them with --map question=COL,answer=COL",
                    t.columns.join(", ")
                ),
            }
        }
        None => {
            for t in tables {
                if let Some(m) = Mapping::detect(t, &opts.map)? {
                    chosen.push((t.clone(), m));
                }
            }
            if chosen.is_empty() {
                bail!(
                    "no table has question and answer columns ({}); name them with --table and --map",
                    describe()
                );
            }
        }
    }
    for (t, _) in &chosen {
        anyhow::ensure!(
            t.rowid,
            "table {} is WITHOUT ROWID, so it cannot be read in a resumable order",
            t.name
        );
    }
    Ok(chosen)
}

fn reject(
    conn: &Connection,
    job: &Job,
    hash: &[u8; 32],
    size: u64,
    reason: &str,
) -> Result<PathBuf> {
    let to = destination(&job.path, REJECTED).context("no place to reject the database to")?;
    let now = crate::clock::now_rfc3339();
    let source = job.source();
    let stored = names::render_path(&to);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let inserted = ledger::insert(
        conn,
        &ledger::NewFile {
            agent: &job.agent,
            name: &job.name(),
            source_path: &source,
            stored_path: Some(&stored),
            content_hash: Some(hash),
            size,
            status: FileStatus::Rejected,
            encoding: None,
            replaced: false,
            layout: Some("sqlite"),
            session: None,
            pairs_seen: 0,
            invalid: &[],
            reason: Some(reason),
            duplicate_of: None,
            salvage: None,
            now: &now,
        },
    );
    match inserted {
        Ok(_) => commit_durably(conn)?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    if let Some(dir) = to.parent() {
        ensure_folder(dir)?;
    }
    let text = format!(
        "file: {}\nrejected: {now}\nreason: {reason}\n",
        names::render_path(&job.path)
    );
    std::fs::write(reason_path(&to), text)?;
    rename_noreplace(&job.path, &to)?;
    Ok(to)
}

/// Commits, then syncs the WAL to disk: this commit and every earlier one are durable.
fn commit_durably(conn: &Connection) -> Result<()> {
    conn.execute_batch("COMMIT").context("commit failed")?;
    sync_wal(conn)
}

/// A row as a pair, or why it is not one.
fn row_to_pair(
    mapping: &Mapping,
    values: Vec<Value>,
    scratch: &mut String,
) -> std::result::Result<crate::pair::Pair, String> {
    let mut values = values.into_iter();
    let mut text = |what: &str| -> std::result::Result<String, String> {
        match values.next() {
            Some(Value::Text(s)) if !s.trim().is_empty() => Ok(s),
            Some(Value::Text(_)) => Err(format!("{what} is empty")),
            Some(Value::Null) | None => Err(format!("{what} is NULL")),
            Some(Value::Integer(_)) => Err(format!("{what} is an integer, expected text")),
            Some(Value::Real(_)) => Err(format!("{what} is a real number, expected text")),
            Some(Value::Blob(_)) => Err(format!("{what} is a blob, expected text")),
        }
    };
    let question = text("question");
    let answer = text("answer");
    let (question, answer) = match (question, answer) {
        (Ok(q), Ok(a)) => (q, a),
        (Err(q), Err(a)) => return Err(format!("{q} and {a}")),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let mut label = |present: bool| -> Option<String> {
        if !present {
            return None;
        }
        match values.next()? {
            Value::Null => None,
            Value::Text(s) => Some(s),
            Value::Integer(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            Value::Blob(b) => Some(crate::pair::hex(&b)),
        }
    };
    let indicator = label(mapping.indicator.is_some());
    let category = label(mapping.category.is_some());
    let mut extra = serde_json::Map::new();
    for (column, value) in mapping.extra.iter().zip(values) {
        let v = match value {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => i.into(),
            Value::Real(r) => serde_json::Number::from_f64(r)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.into(),
            Value::Blob(b) => crate::pair::hex(&b).into(),
        };
        extra.insert(column.clone(), v);
    }
    Ok(RawPair {
        question,
        answer,
        indicator,
        category,
        extra,
    }
    .into_pair(scratch))
}

#[allow(clippy::too_many_arguments)]
fn import_table(
    conn: &Connection,
    immutable: bool,
    job: &Job,
    name: &str,
    source: &str,
    stored_path: Option<&str>,
    size: u64,
    hash: &[u8; 32],
    table: &SourceTable,
    mapping: &Mapping,
    partial: Option<&ledger::FileRow>,
    checkpoint_every: usize,
    sink: &mut PairSink,
    interrupt: Option<&AtomicBool>,
    report: &mut ImportReport,
    advance: &mut dyn FnMut(u64),
) -> Result<TableReport> {
    let columns = mapping.columns();
    let ledger_name = format!("{name}#{}", table.name);
    let (mut id, mut after, mut seen, mut new, mut dup, mut invalid) = match partial {
        Some(row) => (
            Some(row.id),
            row.resume_at,
            row.pairs_seen as u64,
            row.pairs_new as u64,
            row.pairs_duplicate as u64,
            row.invalid.clone(),
        ),
        None => (None, 0, 0, 0, 0, Vec::new()),
    };
    let resumed_after = after;
    let start = after;
    if partial.is_some() {
        tracing::info!(
            file = %ledger_name,
            "resuming after rowid {after} ({seen} rows were in)"
        );
    }
    let mut write_chunks = |rx: &std::sync::mpsc::Receiver<Result<Chunk>>| -> Result<TableReport> {
        loop {
            if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return Ok(TableReport {
                    table: table.name.clone(),
                    mapping: mapping.clone(),
                    rows: 0,
                    status: "partial",
                    resumed_after,
                    pairs_new: new,
                    pairs_duplicate: dup,
                    pairs_invalid: invalid.len() as u64,
                });
            }
            let converted = match rx.recv() {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("the reader of table {} stopped", table.name),
            };
            let last = converted.last().map(|(rowid, _)| *rowid);
            let now = crate::clock::now_rfc3339();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let step = (|| -> Result<()> {
                let file_id = match id {
                    Some(i) => i,
                    None => {
                        let i = ledger::insert(
                            conn,
                            &ledger::NewFile {
                                agent: &job.agent,
                                name: &ledger_name,
                                source_path: source,
                                stored_path,
                                content_hash: Some(hash),
                                size,
                                status: FileStatus::Partial,
                                encoding: Some("SQLite"),
                                replaced: false,
                                layout: Some("sqlite"),
                                session: None,
                                pairs_seen: 0,
                                invalid: &[],
                                reason: None,
                                duplicate_of: None,
                                salvage: None,
                                now: &now,
                            },
                        )?;
                        id = Some(i);
                        i
                    }
                };
                let mut stmts = Statements::new(conn)?;
                let (mut run_new, mut run_dup, mut run_invalid) = (0, 0, 0);
                for (rowid, pair) in &converted {
                    match pair {
                        Ok(p) => {
                            if sink.insert(conn, &mut stmts, p, &job.agent, file_id, &now)? {
                                run_new += 1;
                            } else {
                                run_dup += 1;
                            }
                        }
                        Err(reason) => {
                            run_invalid += 1;
                            invalid.push(InvalidEntry {
                                index: *rowid as usize,
                                reason: format!("rowid {rowid}: {reason}"),
                            });
                        }
                    }
                }
                let n = converted.len() as u64;
                seen += n;
                new += run_new;
                dup += run_dup;
                if let Some(l) = last {
                    after = l;
                }
                sink.before_commit(conn)?;
                ledger::record_source_progress(conn, file_id, after, seen, new, dup, &invalid)?;
                if last.is_none() {
                    ledger::finish(conn, file_id, after as usize, new, dup, &now)?;
                }
                report.pairs_seen += n;
                report.pairs_new += run_new;
                report.pairs_duplicate += run_dup;
                report.pairs_invalid += run_invalid;
                Ok(())
            })();
            match step {
                Ok(()) => {
                    if last.is_none() {
                        commit_durably(conn)?;
                    } else {
                        conn.execute_batch("COMMIT").context("commit failed")?;
                    }
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    // The sink may hold keys the rolled-back transaction never stored.
                    *sink = PairSink::new();
                    return Err(e);
                }
            }
            advance(converted.len() as u64);
            if last.is_none() {
                break;
            }
        }
        Ok(TableReport {
            table: table.name.clone(),
            mapping: mapping.clone(),
            rows: 0,
            status: "integrated",
            resumed_after,
            pairs_new: new,
            pairs_duplicate: dup,
            pairs_invalid: invalid.len() as u64,
        })
    };
    let chunk_rows = checkpoint_every.max(1);
    // Reading and converting rows (a second connection to the source, on its own
    // thread) overlaps with writing them, as the prepare stage does for files; at most
    // two chunks wait in between.
    type Chunk = Vec<(i64, std::result::Result<crate::pair::Pair, String>)>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk>>(2);
    let quit = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (quit, columns) = (&quit, &columns);
        scope.spawn(move || {
            let read = || -> Result<()> {
                let src = source_db::open(&job.path, immutable)?;
                let mut after = start;
                while !quit.load(Ordering::Relaxed) {
                    let rows = source_db::rows_after(&src, &table.name, columns, after, chunk_rows)
                        .with_context(|| {
                            format!("cannot read table {} of {}", table.name, source)
                        })?;
                    let done = rows.is_empty();
                    if let Some((last, _)) = rows.last() {
                        after = *last;
                    }
                    let converted: Chunk = rows
                        .into_par_iter()
                        .map_init(String::new, |scratch, (rowid, values)| {
                            (rowid, row_to_pair(mapping, values, scratch))
                        })
                        .collect();
                    if tx.send(Ok(converted)).is_err() || done {
                        break;
                    }
                }
                Ok(())
            };
            if let Err(e) = read() {
                let _ = tx.send(Err(e));
            }
        });
        let written = write_chunks(&rx);
        // The reader may be waiting to hand over a chunk: let it go.
        quit.store(true, Ordering::Relaxed);
        drop(rx);
        written
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_databases_finds_them_by_header_and_keeps_both_lists_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Above and below the count from which the headers are read in parallel.
        for n in [10, SPLIT_IN_PARALLEL_FROM * 3 + 1] {
            let jobs: Vec<Job> = (0..n)
                .map(|i| {
                    let path = dir.path().join(format!("{n}_{i:04}.json"));
                    let bytes: &[u8] = if i % 7 == 3 {
                        b"SQLite format 3\0 and then some pages"
                    } else {
                        b"[]"
                    };
                    std::fs::write(&path, bytes).unwrap();
                    Job::inbox("droid", path)
                })
                .collect();
            let names = |jobs: &[Job]| -> Vec<String> { jobs.iter().map(|j| j.name()).collect() };
            let want_db: Vec<String> = (0..n)
                .filter(|i| i % 7 == 3)
                .map(|i| format!("{n}_{i:04}.json"))
                .collect();
            let want_files: Vec<String> = (0..n)
                .filter(|i| i % 7 != 3)
                .map(|i| format!("{n}_{i:04}.json"))
                .collect();
            let (databases, files) = split_databases(jobs);
            assert_eq!(names(&databases), want_db, "{n} files");
            assert_eq!(names(&files), want_files, "{n} files");
        }
    }

    #[test]
    fn columns_are_detected_and_mapped() {
        let t = SourceTable {
            name: "qa_pairs".into(),
            columns: [
                "id",
                "Indicator_Name",
                "indicator_category",
                "Question",
                "answer",
                "sources",
            ]
            .map(String::from)
            .to_vec(),
            rowid: true,
        };
        let m = Mapping::detect(&t, &ColumnMap::default()).unwrap().unwrap();
        assert_eq!(
            (m.question.as_str(), m.answer.as_str()),
            ("Question", "answer")
        );
        assert_eq!(m.indicator.as_deref(), Some("Indicator_Name"));
        assert_eq!(m.category.as_deref(), Some("indicator_category"));
        assert_eq!(m.extra, ["id", "sources"]);
        let map: ColumnMap = "question=sources, answer=answer".parse().unwrap();
        let m = Mapping::detect(&t, &map).unwrap().unwrap();
        assert_eq!(m.question, "sources");
        assert!(m.extra.contains(&"Question".to_string()));
        let bad: ColumnMap = "question=nope".parse().unwrap();
        assert!(Mapping::detect(&t, &bad).is_err());
        assert!("colour=x".parse::<ColumnMap>().is_err());
        let none = SourceTable {
            name: "meta".into(),
            columns: vec!["k".into(), "v".into()],
            rowid: true,
        };
        assert!(
            Mapping::detect(&none, &ColumnMap::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rows_become_pairs_or_reasons() {
        let m = Mapping {
            question: "q".into(),
            answer: "a".into(),
            indicator: Some("i".into()),
            category: None,
            extra: vec!["n".into(), "b".into()],
        };
        let mut s = String::new();
        let p = row_to_pair(
            &m,
            vec![
                Value::Text("What?".into()),
                Value::Text("That.".into()),
                Value::Integer(7),
                Value::Real(0.5),
                Value::Blob(vec![0xab]),
            ],
            &mut s,
        )
        .unwrap();
        assert_eq!(p.indicator.as_deref(), Some("7"));
        assert_eq!(p.extra.as_deref(), Some(r#"{"n":0.5,"b":"ab"}"#));
        assert_eq!(p.key, crate::pair::pair_key("What?", "That."));
        let e = row_to_pair(&m, vec![Value::Null, Value::Text(" ".into())], &mut s).unwrap_err();
        assert_eq!(e, "question is NULL and answer is empty");
    }
}
