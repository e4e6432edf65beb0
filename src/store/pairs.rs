//! Writing pairs, and the key index that keeps them distinct.
//!
//! A pair's key is a random-looking blake3 digest. A unique B-tree index on it, updated
//! at every commit (a commit every 500 pairs), touches a different index page for
//! almost every pair: once the index outgrows 500 leaves, each commit writes ~2 MB of
//! index pages to the WAL, ~4 KB per pair, and the rate halved by a million pairs
//! (measured: BENCHMARKS.md). So distinctness is kept in two parts, like a
//! log-structured merge:
//!
//! - **the tail**: keys of pairs stored since the last merge, held in memory by the one
//!   writer ([`PairSink`]) and written to `tail_chunks` as one row per commit (the
//!   commit's pair ids and keys in one blob, [`ENTRY_BYTES`] per pair): one statement
//!   per commit where a row per pair cost a tenth of the writer's time (BENCHMARKS.md,
//!   seventh sitting). A writer that starts reloads the tail from `tail_chunks`, and
//!   then from `pairs` itself beyond the last chunk's id (the watermark), so a key
//!   stored without its chunk is still found; see [`load_tail`];
//! - **the runs**: every older key, in at most [`LEVELS_MAX`] sorted runs, each a
//!   table of its own (`pair_key_run_<n>`, [`run_table`]) listed in `pair_key_runs`.
//!   The tail is merged, in the transaction of a batch, once it holds a quarter of the
//!   merged keys (at least [`MERGE_MIN`], at most [`MERGE_MAX`]). A merge sorts it and
//!   writes it as a new run: rows of [`RUN_CHUNK_ENTRIES`] entries in key order (the
//!   tail's entry layout), each keyed by its first key, appended in order, so no page
//!   already written is touched. When the runs are already [`LEVELS_MAX`], the merge
//!   folds them and the tail into one new run instead: a merge of sorted lists in
//!   memory, written as rows, after which the old runs' tables are dropped (which
//!   frees their pages without writing them). A key is found in a run by the one row
//!   whose first key is the largest not above it, and a binary search in its entries.
//!
//!   Until the runs, the merged keys were a B-tree, `pair_keys(key PRIMARY KEY,
//!   pair_id) WITHOUT ROWID`, and a merge inserted the tail into it key by key: a
//!   SQLite insert per key (half a microsecond), and most of the index's leaves
//!   rewritten at every merge (80 MB of pages to write and then to checkpoint with a
//!   million keys). Now a merge writes one row per 16 keys, and only one merge in
//!   [`LEVELS_MAX`] + 1, the fold, rewrites the merged keys. A database from before the
//!   runs keeps its `pair_keys` as the oldest level until its first fold moves it into
//!   the new run and empties it.
//!
//! A pair is new when its key is in neither. The merged keys are read only when their
//! Bloom filter ([`KeyFilter`], stored by each merge) says the key may be there, which
//! for a fresh key is almost never; then each run (and `pair_keys` while it holds keys)
//! costs one B-tree seek. A fold refuses a key it meets twice, which would be a
//! duplicate slipped past: the database's own guard. The one rule for callers:
//! [`PairSink::before_commit`] just before every `COMMIT` of a transaction that inserted
//! pairs (it writes the chunk, and merges when due).

use crate::pair::{KeySet, Pair, PairKey};
use crate::store::key_filter::KeyFilter;
use anyhow::{Context, Result};
use rusqlite::{CachedStatement, Connection, ffi, params};
use std::ffi::{c_int, c_uint};

/// Appends one pair (no index on `key` is maintained here; see the module docs).
pub const INSERT_PAIR: &str = "INSERT INTO pairs
    (key, question, answer, indicator, category, agent, extra, file_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Appends one commit's tail entries (or, after a merge, the empty watermark row).
pub const INSERT_TAIL_CHUNK: &str = "INSERT INTO tail_chunks (last_id, entries) VALUES (?1, ?2)";

/// Whether a key is in `pair_keys`, the merged keys of a database from before the runs
/// (a run is looked up by [`run_lookup_sql`]).
pub const LOOKUP_KEY: &str = "SELECT 1 FROM pair_keys WHERE key = ?1";

/// The table that holds run `run` (`pair_key_runs` lists them).
pub fn run_table(run: i64) -> String {
    format!("pair_key_run_{run}")
}

/// The one row of run `run` that may hold key `?1`: the last whose first key is not
/// above it.
pub fn run_lookup_sql(run: i64) -> String {
    format!(
        "SELECT entries FROM {} WHERE first_key <= ?1 ORDER BY first_key DESC LIMIT 1",
        run_table(run)
    )
}

/// Every row of run `run`, in key order.
fn run_scan_sql(run: i64) -> String {
    format!("SELECT entries FROM {} ORDER BY first_key", run_table(run))
}

/// Entries per row of a run: 640 bytes, which stay in the row's B-tree page (SQLite
/// moves a row of an index B-tree past about 1,000 bytes to overflow pages), so a
/// lookup reads one leaf.
pub const RUN_CHUNK_ENTRIES: usize = 16;

/// Sorted runs the merged keys are kept in at most (counting a database's old
/// `pair_keys` while it holds keys): the merge that would make one more folds them all,
/// with the tail, into one. More would fold less often, at a seek more for each key the
/// filter lets through (a pair sent again costs one seek per run).
pub const LEVELS_MAX: usize = 4;

/// Bytes per tail entry in a `tail_chunks` blob: the pair id (8 bytes, little-endian),
/// then its key (32 bytes).
pub const ENTRY_BYTES: usize = 40;

/// The tail's length from which, when it must grow, it grows at once to the length it
/// is merged at; smaller runs keep a small set.
const GROW_TO_MERGE_FROM: usize = 1 << 15;

/// The smallest tail that is merged (~8 MB of keys in memory).
pub const MERGE_MIN: usize = 200_000;
/// The largest tail kept unmerged (~40 MB of keys in memory): bounds memory however
/// large the table grows.
pub const MERGE_MAX: usize = 1_000_000;

/// The statements [`PairSink::insert`] uses: prepare them once for a writer (a
/// writer keeps them for its life) or once per source.
pub struct Statements<'c> {
    lookup: CachedStatement<'c>,
    insert: InsertPair<'c>,
}

impl<'c> Statements<'c> {
    /// Prepares (or fetches from the cache) the lookup, and prepares the append.
    pub fn new(conn: &'c Connection) -> Result<Statements<'c>> {
        Ok(Statements {
            lookup: conn.prepare_cached(LOOKUP_KEY)?,
            insert: InsertPair::new(conn)?,
        })
    }
}

/// [`INSERT_PAIR`], with its texts bound in place.
///
/// rusqlite binds every text and blob as `SQLITE_TRANSIENT`: SQLite first copies each
/// value into memory of its own (a `malloc`, a copy and a `free`), and then copies it
/// again into the row it builds. A pair's question and answer are ~1.5 KB, and that
/// first copy was 7 ms of the writer's 93 ms at 20,000 pairs. Here they are bound as
/// `SQLITE_STATIC`, which SQLite reads where they are, during the step (BENCHMARKS.md,
/// "End to end", thirteenth sitting).
///
/// The statement is SQLite's own, outside rusqlite's cache, and is finalized when this
/// is dropped; it borrows the connection, so it cannot outlive it.
pub struct InsertPair<'c> {
    conn: &'c Connection,
    stmt: std::ptr::NonNull<ffi::sqlite3_stmt>,
}

impl<'c> InsertPair<'c> {
    /// Prepares [`INSERT_PAIR`] on `conn`.
    pub fn new(conn: &'c Connection) -> Result<InsertPair<'c>> {
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `conn.handle()` is the open connection, which `conn` borrows for as
        // long as this lives; the SQL is `INSERT_PAIR.len()` bytes of UTF-8; on
        // success `stmt` is a statement that `Drop` finalizes.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                conn.handle(),
                INSERT_PAIR.as_ptr().cast(),
                INSERT_PAIR.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT as c_uint,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        sqlite_result(conn, rc).context("cannot prepare the insert of pairs")?;
        let stmt = std::ptr::NonNull::new(stmt).context("SQLite prepared no statement")?;
        Ok(InsertPair { conn, stmt })
    }

    /// Appends `pair` (SQLite sets `conn.last_insert_rowid()`).
    pub fn run(
        &mut self,
        pair: &Pair,
        agent: &str,
        file_id: i64,
        now: &str,
    ) -> rusqlite::Result<()> {
        let stmt = self.stmt.as_ptr();
        let text = |i: c_int, t: Option<&str>| match t {
            // SAFETY: `stmt` is live (see `new`); `t` is borrowed for this whole call,
            // and the bindings are cleared below before it returns, so SQLite never
            // holds the pointer past the step that reads it (`SQLITE_STATIC`). An
            // empty text points at a real (static) byte, never at a dangling one.
            Some(t) => unsafe {
                ffi::sqlite3_bind_text64(
                    stmt,
                    i,
                    if t.is_empty() {
                        c"".as_ptr()
                    } else {
                        t.as_ptr().cast()
                    },
                    t.len() as u64,
                    ffi::SQLITE_STATIC(),
                    ffi::SQLITE_UTF8 as u8,
                )
            },
            // SAFETY: as above.
            None => unsafe { ffi::sqlite3_bind_null(stmt, i) },
        };
        // SAFETY: as for `text`; the key is borrowed for this call.
        let bound = [
            unsafe {
                ffi::sqlite3_bind_blob64(
                    stmt,
                    1,
                    pair.key.as_ptr().cast(),
                    pair.key.len() as u64,
                    ffi::SQLITE_STATIC(),
                )
            },
            text(2, Some(&pair.question)),
            text(3, Some(&pair.answer)),
            text(4, pair.indicator.as_deref()),
            text(5, pair.category.as_deref()),
            text(6, Some(agent)),
            text(7, pair.extra.as_deref()),
            // SAFETY: `stmt` is live.
            unsafe { ffi::sqlite3_bind_int64(stmt, 8, file_id) },
            text(9, Some(now)),
        ];
        // SAFETY: `stmt` is live. Reset and cleared whatever the step did, so the
        // statement holds no lock and no pointer into the pair once this returns.
        let stepped = match bound.into_iter().find(|&rc| rc != ffi::SQLITE_OK) {
            Some(rc) => rc,
            None => unsafe { ffi::sqlite3_step(stmt) },
        };
        let result = match stepped {
            ffi::SQLITE_DONE => Ok(()),
            rc => sqlite_result(self.conn, rc),
        };
        // SAFETY: `stmt` is live.
        unsafe {
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
        }
        result
    }
}

impl Drop for InsertPair<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared in `new` and is finalized only here.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// `rc` as rusqlite reports an error: the code and the connection's message.
fn sqlite_result(conn: &Connection, rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    // SAFETY: the connection is open; SQLite's messages are NUL-terminated strings,
    // the connection's valid until its next call, and copied at once. As rusqlite
    // does: the connection's message if its last error is `rc`, else `rc`'s own text.
    let message = unsafe {
        let db = conn.handle();
        std::ffi::CStr::from_ptr(if ffi::sqlite3_errcode(db) == rc {
            ffi::sqlite3_errmsg(db)
        } else {
            ffi::sqlite3_errstr(rc)
        })
    };
    // rusqlite turns on extended result codes: `rc` is the extended one.
    Err(rusqlite::Error::SqliteFailure(
        ffi::Error::new(rc),
        Some(message.to_string_lossy().into_owned()),
    ))
}

/// One entry of a tail chunk or a run's row ([`ENTRY_BYTES`] bytes): pair id and key.
fn entry(bytes: &[u8]) -> (i64, PairKey) {
    let (id, key) = bytes.split_at(8);
    (
        i64::from_le_bytes(id.try_into().expect("8 bytes")),
        key.try_into().expect("32 bytes"),
    )
}

/// The entries of a run's row, checked for their length.
fn run_entries(blob: &[u8], run: i64) -> Result<&[[u8; ENTRY_BYTES]]> {
    let (entries, rest) = blob.as_chunks::<ENTRY_BYTES>();
    anyhow::ensure!(
        !entries.is_empty() && rest.is_empty(),
        "a row of key run {run} is {} bytes, not a multiple of {ENTRY_BYTES}",
        blob.len()
    );
    Ok(entries)
}

/// The pair id of `key` in run `run`, through its one row that may hold it
/// ([`run_lookup_sql`]) and a binary search in the row's entries.
fn run_pair_id(conn: &Connection, run: i64, key: &PairKey) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(&run_lookup_sql(run))?;
    let mut rows = stmt.query([&key[..]])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let entries = run_entries(row.get_ref(0)?.as_blob()?, run)?;
    Ok(entries
        .binary_search_by(|e| e[8..].cmp(&key[..]))
        .ok()
        .map(|i| entry(&entries[i]).0))
}

/// Writes a run: its table, then its rows, entries pushed in key order
/// [`RUN_CHUNK_ENTRIES`] to a row, then its line in `pair_key_runs`.
struct RunWriter<'c> {
    conn: &'c Connection,
    insert: rusqlite::Statement<'c>,
    run: i64,
    row: Vec<u8>,
    first: PairKey,
    written: usize,
}

impl<'c> RunWriter<'c> {
    fn new(conn: &'c Connection, run: i64) -> Result<RunWriter<'c>> {
        let table = run_table(run);
        conn.execute_batch(&format!(
            "CREATE TABLE {table} (
                 first_key BLOB PRIMARY KEY,          -- the key of the row's first entry
                 entries   BLOB NOT NULL              -- per pair: its id (8 bytes, little-endian), then its key (32 bytes), in key order
             ) WITHOUT ROWID"
        ))?;
        Ok(RunWriter {
            conn,
            insert: conn.prepare(&format!(
                "INSERT INTO {table} (first_key, entries) VALUES (?1, ?2)"
            ))?,
            run,
            row: Vec::with_capacity(RUN_CHUNK_ENTRIES * ENTRY_BYTES),
            first: [0; 32],
            written: 0,
        })
    }

    fn push(&mut self, key: &PairKey, id: i64) -> Result<()> {
        if self.row.is_empty() {
            self.first = *key;
        }
        self.row.extend_from_slice(&id.to_le_bytes());
        self.row.extend_from_slice(key);
        self.written += 1;
        if self.row.len() == RUN_CHUNK_ENTRIES * ENTRY_BYTES {
            self.write_row()?;
        }
        Ok(())
    }

    fn write_row(&mut self) -> Result<()> {
        self.insert
            .execute(params![&self.first[..], &self.row[..]])?;
        self.row.clear();
        Ok(())
    }

    /// Writes the last row and lists the run; returns the number of entries written.
    fn finish(mut self) -> Result<usize> {
        if !self.row.is_empty() {
            self.write_row()?;
        }
        self.conn
            .prepare_cached("INSERT INTO pair_key_runs (run, keys) VALUES (?1, ?2)")?
            .execute(params![self.run, self.written as i64])?;
        Ok(self.written)
    }
}

/// Writes `entries` (sorted by key, distinct) as run `run`.
pub(crate) fn write_run(conn: &Connection, run: i64, entries: &[(PairKey, i64)]) -> Result<()> {
    let mut writer = RunWriter::new(conn, run)?;
    for (key, id) in entries {
        writer.push(key, *id)?;
    }
    writer.finish()?;
    Ok(())
}

/// Calls `each(pair id, key)` for every entry of the runs, run by run, each in key order.
pub fn for_each_run_entry(conn: &Connection, mut each: impl FnMut(i64, PairKey)) -> Result<()> {
    for run in runs(conn)? {
        for_each_entry_of_run(conn, run, &mut each)?;
    }
    Ok(())
}

/// Calls `each(pair id, key)` for every entry of run `run`, in key order.
fn for_each_entry_of_run(
    conn: &Connection,
    run: i64,
    each: &mut impl FnMut(i64, PairKey),
) -> Result<()> {
    let mut stmt = conn.prepare(&run_scan_sql(run))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        for e in run_entries(row.get_ref(0)?.as_blob()?, run)? {
            let (id, key) = entry(e);
            each(id, key);
        }
    }
    Ok(())
}

/// The unmerged tail as stored: every entry of `tail_chunks`, then every pair beyond
/// the watermark (the largest `last_id`) read from `pairs` itself. Those are pairs
/// whose transaction committed without its chunk, which [`PairSink::before_commit`]
/// rules out; reading them keeps distinctness whole even so. Calls `each(pair id, key)`
/// once per entry; returns the largest pair id the tail covers (merged or not: the
/// watermark when the tail is empty), and the entries that came from `pairs`.
pub fn load_tail(conn: &Connection, mut each: impl FnMut(i64, PairKey)) -> Result<(i64, Vec<u8>)> {
    let mut mark = 0i64;
    let mut stmt = conn.prepare("SELECT last_id, entries FROM tail_chunks")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        mark = mark.max(r.get(0)?);
        let blob = r.get_ref(1)?.as_blob()?;
        anyhow::ensure!(
            blob.len() % ENTRY_BYTES == 0,
            "a key tail chunk is {} bytes, not a multiple of {ENTRY_BYTES}",
            blob.len()
        );
        for e in blob.chunks_exact(ENTRY_BYTES) {
            let (id, key) = entry(e);
            each(id, key);
        }
    }
    let mut stray = Vec::new();
    let mut stmt = conn.prepare("SELECT id, key FROM pairs WHERE id > ?1 ORDER BY id")?;
    let mut rows = stmt.query([mark])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let key = PairKey::try_from(r.get_ref(1)?.as_blob()?)
            .with_context(|| format!("pair {id}: its key is not 32 bytes"))?;
        each(id, key);
        stray.extend_from_slice(&id.to_le_bytes());
        stray.extend_from_slice(&key);
        mark = id;
    }
    Ok((mark, stray))
}

/// The runs listed in `pair_key_runs`, oldest first (merges number them upwards, and a
/// fold replaces all of them by the next number).
pub fn runs(conn: &Connection) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached("SELECT run FROM pair_key_runs ORDER BY run")?;
    let runs = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(runs)
}

/// Whether `pair_keys` (the merged keys of a database from before the runs) holds any.
fn index_holds_keys(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM pair_keys)", [], |r| r.get(0))?)
}

/// The id of the pair with this key among the merged keys: in one of the runs, or in
/// `pair_keys`. Keys of pairs stored since the last merge are in the tail
/// ([`load_tail`]).
pub fn merged_pair_id(conn: &Connection, key: &PairKey) -> Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    for run in runs(conn)?.into_iter().rev() {
        if let Some(id) = run_pair_id(conn, run, key)? {
            return Ok(Some(id));
        }
    }
    Ok(conn
        .prepare_cached("SELECT pair_id FROM pair_keys WHERE key = ?1")?
        .query_row([&key[..]], |r| r.get(0))
        .optional()?)
}

/// The one writer's view of distinctness: the tail's keys in memory, how many keys are
/// merged and where (the runs, and `pair_keys` in a database from before them), the
/// filter over the merged keys, and the entries of the open transaction not yet
/// written to `tail_chunks`. Valid only while it matches the database: a writer whose
/// transaction rolled back must drop it (see `ingest::Writer::finish_carrying`).
#[derive(Debug, Default)]
pub struct PairSink {
    tail: Option<KeySet>,
    merged: usize,
    /// The runs in `pair_key_runs`, oldest first (loaded with the tail).
    runs: Vec<i64>,
    /// Whether `pair_keys` holds keys (a database from before the runs, until its
    /// first fold).
    index: bool,
    /// Every merged key (loaded with the tail; `None` while nothing is merged).
    filter: Option<KeyFilter>,
    /// Lookups of merged keys the filter let through; see [`PairSink::size_cache`].
    lookups: usize,
    /// Tail entries ([`ENTRY_BYTES`] each) stored since the last chunk was written.
    pending: Vec<u8>,
    /// The id of the last entry in `pending`.
    pending_last: i64,
}

impl PairSink {
    /// A sink that loads the tail on first use.
    pub fn new() -> PairSink {
        PairSink::default()
    }

    /// Keys stored and not merged yet (0 before the first use).
    pub fn tail_len(&self) -> usize {
        self.tail.as_ref().map_or(0, KeySet::len)
    }

    /// Whether the tail is large enough to merge: a quarter of the merged keys,
    /// clamped to [`MERGE_MIN`]..=[`MERGE_MAX`].
    pub fn merge_due(&self) -> bool {
        self.tail_len() >= self.merge_at()
    }

    /// The tail's length at which it is merged.
    fn merge_at(&self) -> usize {
        (self.merged / 4).clamp(MERGE_MIN, MERGE_MAX)
    }

    fn tail(&mut self, conn: &Connection) -> Result<&mut KeySet> {
        if self.tail.is_none() {
            let mut keys = KeySet::default();
            let (last, stray) = load_tail(conn, |_, key| {
                keys.insert(key);
            })?;
            if !stray.is_empty() {
                tracing::warn!(
                    "{} stored pairs had no entry in the key tail; taken from the pairs table",
                    stray.len() / ENTRY_BYTES
                );
                // Written with the next chunk.
                self.pending = stray;
                self.pending_last = last;
            }
            // Ids are dense (pairs are only appended), so the largest id less the tail
            // is the number of merged keys, without counting the index.
            let max: i64 =
                conn.query_row("SELECT COALESCE(MAX(id), 0) FROM pairs", [], |r| r.get(0))?;
            self.merged = (max.max(last) as usize).saturating_sub(keys.len());
            self.runs = runs(conn)?;
            self.index = index_holds_keys(conn)?;
            self.tail = Some(keys);
            self.size_cache(conn)?;
            if self.merged > 0 {
                self.filter = Some(match KeyFilter::load(conn, self.merged)? {
                    Some(filter) => filter,
                    None => {
                        let filter = KeyFilter::rebuild(conn, self.merged)?;
                        tracing::info!("key filter built from the {} merged keys", filter.len());
                        filter.store(conn, self.merged)?;
                        filter
                    }
                });
            }
        }
        Ok(self.tail.as_mut().expect("just loaded"))
    }

    /// Readies the check of a key that [`PairSink::insert`] will see a few pairs later
    /// (see [`KeyFilter::prefetch`]).
    pub fn prefetch(&self, key: &PairKey) {
        if let Some(filter) = &self.filter {
            filter.prefetch(key);
        }
    }

    /// Stores `pair` unless its key is stored; returns true when it was new. Call
    /// inside an open transaction (one transaction per pair would be ~100x slower), and
    /// [`PairSink::before_commit`] before committing it.
    pub fn insert(
        &mut self,
        conn: &Connection,
        stmts: &mut Statements<'_>,
        pair: &Pair,
        agent: &str,
        file_id: i64,
        now: &str,
    ) -> Result<bool> {
        if self.tail(conn)?.contains(&pair.key) {
            return Ok(false);
        }
        // The merged keys are read only when their filter says the key may be there: for
        // a fresh key, almost never (and never while nothing is merged).
        if self
            .filter
            .as_ref()
            .is_some_and(|f| f.may_contain(&pair.key))
        {
            self.lookups += 1;
            if self.lookups == LOOKUPS_FOR_CACHE {
                self.size_cache(conn)?;
            }
            // The newest run first: a pair sent again was more likely stored lately.
            for &run in self.runs.iter().rev() {
                if run_pair_id(conn, run, &pair.key)?.is_some() {
                    return Ok(false);
                }
            }
            if self.index && stmts.lookup.exists([&pair.key[..]])? {
                return Ok(false);
            }
        }
        stmts.insert.run(pair, agent, file_id, now)?;
        let id = conn.last_insert_rowid();
        self.pending.extend_from_slice(&id.to_le_bytes());
        self.pending.extend_from_slice(&pair.key);
        self.pending_last = id;
        let merge_at = self.merge_at();
        let tail = self.tail(conn)?;
        if tail.len() == tail.capacity() && tail.len() >= GROW_TO_MERGE_FROM {
            // From here on, room for the whole tail at once: each doubling moved every
            // key again into fresh pages (1.5% of the writer's time at 250,000 keys).
            tail.reserve(merge_at.saturating_sub(tail.len()));
        }
        tail.insert(pair.key);
        Ok(true)
    }

    /// Call inside the open transaction, just before its `COMMIT`: writes the tail
    /// entries of the pairs it stored as one `tail_chunks` row, and merges the tail
    /// when it is due.
    pub fn before_commit(&mut self, conn: &Connection) -> Result<bool> {
        if self.merge_due() {
            self.merge(conn).context("merging the key tail failed")?;
            Ok(true)
        } else {
            self.write_chunk(conn)?;
            Ok(false)
        }
    }

    fn write_chunk(&mut self, conn: &Connection) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        conn.prepare_cached(INSERT_TAIL_CHUNK)?
            .execute(params![self.pending_last, &self.pending[..]])
            .context("writing the key tail")?;
        self.pending.clear();
        Ok(())
    }

    /// Moves the tail into a new run in key order (or, when the merged keys are in
    /// [`LEVELS_MAX`] runs already, folds them and the tail into one new run), and
    /// leaves the watermark (the last merged id) as the only `tail_chunks` row. Call
    /// inside an open transaction (the writer merges in the transaction of the batch
    /// that made it due).
    pub fn merge(&mut self, conn: &Connection) -> Result<()> {
        let started = std::time::Instant::now();
        // A sink that has not read its tail yet reads it (and the runs) first: pairs
        // stored without their chunk become pending, and the chunk below writes them.
        self.tail(conn)?;
        self.write_chunk(conn)?;
        let mut entries = Vec::with_capacity(self.tail_len());
        let (last, _) = load_tail(conn, |id, key| entries.push((key, id)))?;
        entries.sort_unstable();
        let run = self.runs.last().map_or(1, |last| last + 1);
        if self.runs.len() + usize::from(self.index) < LEVELS_MAX {
            write_run(conn, run, &entries).context("writing the key tail as a run")?;
            self.runs.push(run);
            tracing::debug!(
                "key tail merged: {} keys as run {run} ({:.1} ms)",
                entries.len(),
                started.elapsed().as_secs_f64() * 1000.0
            );
        } else {
            let keys = fold(conn, &self.runs, self.index, &entries, run)
                .context("folding the key runs into one")?;
            tracing::debug!(
                "key tail merged: {} keys folded with {} runs{} into run {run}, {keys} keys ({:.1} ms)",
                entries.len(),
                self.runs.len(),
                if self.index { " and the old index" } else { "" },
                started.elapsed().as_secs_f64() * 1000.0
            );
            self.runs = vec![run];
            self.index = false;
        }
        conn.prepare_cached("DELETE FROM tail_chunks")?
            .execute([])?;
        conn.prepare_cached(INSERT_TAIL_CHUNK)?
            .execute(params![last, &[] as &[u8]])?;
        self.merged += entries.len();
        let filter = match self.filter.take() {
            Some(mut filter) if filter.len() + entries.len() <= filter.capacity() => {
                for (key, _) in &entries {
                    filter.insert(key);
                }
                filter
            }
            // Past its capacity (or the first merge): a larger one, from the merged keys
            // as they now are.
            _ => KeyFilter::rebuild(conn, self.merged)?,
        };
        filter.store(conn, self.merged)?;
        self.filter = Some(filter);
        if let Some(tail) = &mut self.tail {
            tail.clear();
        }
        self.size_cache(conn)
    }

    /// Sizes the connection's page cache. A writer whose keys are fresh reads the merged
    /// keys only for the filter's rare false positives, and works with
    /// [`CACHE_MIN_KIB`], which stays in the processor's caches: a quarter less of the
    /// writer's CPU than 64 MiB of fresh pages (BENCHMARKS.md, "The writer's side").
    /// Once [`LOOKUPS_FOR_CACHE`] keys went to the merged keys (pairs stored before,
    /// sent again), the cache grows to hold them: [`CACHE_BYTES_PER_KEY`] per merged key, at
    /// most [`CACHE_MAX_KIB`] (the 64 MiB that `store::configure` gives every connection).
    fn size_cache(&self, conn: &Connection) -> Result<()> {
        let kib = if self.lookups >= LOOKUPS_FOR_CACHE {
            (self.merged as u64 * CACHE_BYTES_PER_KEY / 1024).clamp(CACHE_MIN_KIB, CACHE_MAX_KIB)
        } else {
            CACHE_MIN_KIB
        };
        conn.execute_batch(&format!("PRAGMA cache_size = -{kib}"))?;
        Ok(())
    }
}

/// Writes the entries of `runs`, of `pair_keys` when `index`, and the sorted `entries`
/// as run `into`, in one merge in key order (each source is read in its primary key's
/// order, so nothing is sorted again), then drops the runs' tables and empties
/// `pair_keys`. Returns the number of keys written. A key met twice is an error: it
/// would be a duplicate.
fn fold(
    conn: &Connection,
    runs: &[i64],
    index: bool,
    entries: &[(PairKey, i64)],
    into: i64,
) -> Result<usize> {
    /// One sorted source: a run's rows of entries, or `pair_keys`' rows.
    struct Reader<'s> {
        rows: rusqlite::Rows<'s>,
        /// `None` for `pair_keys`.
        run: Option<i64>,
        row: Vec<u8>,
        at: usize,
    }
    impl Reader<'_> {
        fn next(&mut self) -> Result<Option<(PairKey, i64)>> {
            let Some(run) = self.run else {
                let Some(row) = self.rows.next()? else {
                    return Ok(None);
                };
                let id: i64 = row.get(1)?;
                let key = PairKey::try_from(row.get_ref(0)?.as_blob()?)
                    .with_context(|| format!("pair {id}: its key in pair_keys is not 32 bytes"))?;
                return Ok(Some((key, id)));
            };
            if self.at == self.row.len() {
                let Some(row) = self.rows.next()? else {
                    return Ok(None);
                };
                let blob = row.get_ref(0)?.as_blob()?;
                run_entries(blob, run)?;
                self.row.clear();
                self.row.extend_from_slice(blob);
                self.at = 0;
            }
            let (id, key) = entry(&self.row[self.at..self.at + ENTRY_BYTES]);
            self.at += ENTRY_BYTES;
            Ok(Some((key, id)))
        }
    }
    // The new run's table first: no schema change while the sources are being read.
    let mut writer = RunWriter::new(conn, into)?;
    let mut stmts = runs
        .iter()
        .map(|&run| run_scan_sql(run))
        .chain(index.then(|| "SELECT key, pair_id FROM pair_keys ORDER BY key".to_string()))
        .map(|sql| conn.prepare(&sql))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut readers = stmts
        .iter_mut()
        .zip(runs.iter().map(|&run| Some(run)).chain([None]))
        .map(|(stmt, run)| {
            Ok(Reader {
                rows: stmt.query([])?,
                run,
                row: Vec::new(),
                at: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut heads = readers
        .iter_mut()
        .map(Reader::next)
        .collect::<Result<Vec<_>>>()?;
    let mut tail = entries.iter().peekable();
    let mut previous: Option<(PairKey, i64)> = None;
    loop {
        // The smallest next key of the tail and the sources (`None`: the tail's).
        let mut next = tail.peek().map(|&&(key, id)| (key, id, None));
        for (source, head) in heads.iter().enumerate() {
            if let Some((key, id)) = *head
                && next.is_none_or(|(smallest, _, _)| key < smallest)
            {
                next = Some((key, id, Some(source)));
            }
        }
        let Some((key, id, from)) = next else {
            break;
        };
        match from {
            None => {
                tail.next();
            }
            Some(source) => heads[source] = readers[source].next()?,
        }
        if let Some((seen, other)) = previous
            && seen == key
        {
            anyhow::bail!(
                "the key of pair {id} is merged already, as pair {other}'s: a duplicate pair"
            );
        }
        previous = Some((key, id));
        writer.push(&key, id)?;
    }
    let written = writer.finish()?;
    drop(readers);
    drop(stmts);
    // A run is a table so that this frees its pages without writing them: deleting the
    // rows of 1.56 million keys from one table wrote 52 MB of WAL (330 ms), dropping
    // a table of them 0.1 MB (26 ms).
    for &run in runs {
        conn.execute_batch(&format!("DROP TABLE {}", run_table(run)))?;
    }
    conn.prepare_cached("DELETE FROM pair_key_runs WHERE run < ?1")?
        .execute([into])?;
    if index {
        conn.prepare_cached("DELETE FROM pair_keys")?.execute([])?;
    }
    Ok(written)
}

/// Lookups of merged keys after which the writer's page cache grows to hold them.
pub const LOOKUPS_FOR_CACHE: usize = 1000;
/// Page cache per merged key: an entry of a run is 40 bytes (a `pair_keys` row of a
/// database from before the runs about as much, its leaves two-thirds full), and
/// as much again for the pages of the tables being appended to.
pub const CACHE_BYTES_PER_KEY: u64 = 80;
/// The writer's page cache while it reads the merged keys little (SQLite's own default).
pub const CACHE_MIN_KIB: u64 = 2000;
/// The writer's page cache at most, as `store::configure` sets for every connection.
pub const CACHE_MAX_KIB: u64 = 65536;

/// Number of distinct pairs stored.
pub fn count(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM pairs", [], |r| r.get::<_, i64>(0))? as u64)
}

/// Pairs first stored at or after `from` and at or before `to` (timestamps in the
/// clock's format, which sort as text): what a session integrated.
pub fn count_created_between(conn: &Connection, from: &str, to: &str) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM pairs WHERE created_at >= ?1 AND created_at <= ?2",
        params![from, to],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Pairs first stored at or after `from`, counted by the first `prefix` characters of
/// their timestamp (13: by hour, 15: by ten minutes, 16: by minute), in time order: the
/// web faucet's growth chart.
pub fn created_since_by(
    conn: &Connection,
    from: &str,
    prefix: usize,
) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(created_at, 1, ?2) AS t, COUNT(*) FROM pairs
         WHERE created_at >= ?1 GROUP BY t ORDER BY t",
    )?;
    let rows = stmt
        .query_map(params![from, prefix as i64], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(q: &str) -> Pair {
        Pair {
            key: crate::pair::pair_key(q, "a"),
            question: q.to_string(),
            answer: "a".to_string(),
            indicator: None,
            category: None,
            extra: None,
        }
    }

    /// An in-memory database with one ledger row for the pairs to come from.
    struct Db {
        conn: Connection,
        file: i64,
    }

    impl Db {
        fn new() -> Db {
            let conn = crate::store::open_in_memory().unwrap();
            conn.execute(
                "INSERT INTO files (agent, name, source_path, size, status, started_at)
                 VALUES ('t', 't', 't', 0, 'partial', 'now')",
                [],
            )
            .unwrap();
            let file = conn.last_insert_rowid();
            Db { conn, file }
        }

        /// [`PairSink::insert`] of the pair asked `q`, as the writer calls it.
        fn put(&self, sink: &mut PairSink, q: &str) -> bool {
            let mut stmts = Statements::new(&self.conn).unwrap();
            sink.insert(&self.conn, &mut stmts, &pair(q), "t", self.file, "now")
                .unwrap()
        }
    }

    #[test]
    fn the_insert_binds_in_place_stores_every_field_and_reports_sqlites_error() {
        let db = Db::new();
        let mut insert = InsertPair::new(&db.conn).unwrap();
        let full = Pair {
            indicator: Some("RSI".into()),
            // An empty text is stored as one, not as NULL.
            category: Some(String::new()),
            extra: Some(r#"{"level":"basic"}"#.into()),
            answer: "é".repeat(3000),
            ..pair("What is RSI?")
        };
        // Each value is dropped as soon as the call returns: the statement must not
        // hold on to them.
        for (p, agent, now) in [
            (full.clone(), "droid".to_string(), "t1".to_string()),
            (pair("Q2"), "zai".into(), "t2".into()),
        ] {
            insert.run(&p, &agent, db.file, &now).unwrap();
            assert!(db.conn.last_insert_rowid() > 0);
        }
        type Row = (Vec<u8>, String, String, Option<String>, Option<String>);
        type Rest = (String, Option<String>, i64, String);
        let sql = "SELECT key, question, answer, indicator, category,
                          agent, extra, file_id, created_at FROM pairs ORDER BY id";
        let rows: Vec<(Row, Rest)> = db
            .conn
            .prepare(sql)
            .unwrap()
            .query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?),
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let q2 = pair("Q2");
        let expected: [(Row, Rest); 2] = [
            (
                (
                    full.key.to_vec(),
                    full.question,
                    full.answer,
                    full.indicator,
                    full.category,
                ),
                ("droid".into(), full.extra, db.file, "t1".into()),
            ),
            (
                (q2.key.to_vec(), "Q2".into(), "a".into(), None, None),
                ("zai".into(), None, db.file, "t2".into()),
            ),
        ];
        assert_eq!(rows, expected);
        // A ledger row that does not exist: SQLite's own error, as rusqlite reports it.
        let err = insert
            .run(&pair("Q3"), "droid", db.file + 99, "t3")
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{err}"
        );
        assert!(
            err.to_string().contains("FOREIGN KEY constraint failed"),
            "{err}"
        );
        // The statement was reset: it inserts again.
        insert.run(&pair("Q4"), "droid", db.file, "t4").unwrap();
        let count: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM pairs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3);
    }

    fn count_of(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Merged keys: in the index and in its runs.
    fn merged_of(conn: &Connection) -> i64 {
        let (runs, index) = layout(conn);
        runs.iter().map(|(_, keys)| keys).sum::<i64>() + index
    }

    /// Each run with its number of keys, and the keys in `pair_keys`.
    fn layout(conn: &Connection) -> (Vec<(i64, i64)>, i64) {
        let runs = runs(conn)
            .unwrap()
            .into_iter()
            .map(|run| {
                let keys: i64 = conn
                    .query_row(
                        &format!("SELECT SUM(length(entries)) / 40 FROM {}", run_table(run)),
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                let listed: i64 = conn
                    .query_row(
                        "SELECT keys FROM pair_key_runs WHERE run = ?1",
                        [run],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(keys, listed, "run {run} holds the keys it is listed with");
                (run, keys)
            })
            .collect();
        (runs, count_of(conn, "pair_keys"))
    }

    fn watermark(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT last_id FROM tail_chunks WHERE length(entries) = 0",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn new_once_across_tail_merge_and_a_fresh_sink() {
        let db = Db::new();
        let conn = &db.conn;
        let mut sink = PairSink::new();
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        assert!(put(&mut sink, "q1"));
        assert!(!put(&mut sink, "q1"), "in the tail");
        sink.before_commit(conn).unwrap();
        // The empty database's watermark, and the chunk of the "commit".
        assert_eq!(count_of(conn, "tail_chunks"), 2);
        sink.merge(conn).unwrap();
        assert_eq!(sink.tail_len(), 0);
        assert_eq!((count_of(conn, "tail_chunks"), watermark(conn)), (1, 1));
        assert!(!put(&mut sink, "q1"), "merged");
        assert!(put(&mut sink, "q2"));
        assert!(put(&mut sink, "q3"));
        sink.before_commit(conn).unwrap();
        // A new writer (after a crash, say) reloads the tail from tail_chunks.
        let mut fresh = PairSink::new();
        assert!(!put(&mut fresh, "q2"), "reloaded tail");
        assert!(!put(&mut fresh, "q3"), "reloaded tail");
        assert_eq!((fresh.tail_len(), fresh.merged), (2, 1));
        assert!(fresh.pending.is_empty(), "nothing stray");
        fresh.merge(conn).unwrap();
        assert_eq!(merged_of(conn), 3);
        assert_eq!((count_of(conn, "tail_chunks"), watermark(conn)), (1, 3));
        assert_eq!(count(conn).unwrap(), 3);
    }

    #[test]
    fn a_pair_committed_without_its_chunk_is_still_distinct() {
        let db = Db::new();
        let conn = &db.conn;
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        let mut first = PairSink::new();
        assert!(put(&mut first, "q1"));
        first.before_commit(conn).unwrap();
        // Stored, and "committed" without before_commit: no chunk holds q2.
        assert!(put(&mut first, "q2"));
        let mut second = PairSink::new();
        assert!(
            !put(&mut second, "q2"),
            "found in pairs beyond the watermark"
        );
        assert!(!put(&mut second, "q1"), "found in its chunk");
        assert_eq!((second.tail_len(), second.merged), (2, 0));
        // The stray entry goes into the next chunk; a third writer finds it there.
        second.before_commit(conn).unwrap();
        let (last, stray) = load_tail(conn, |_, _| {}).unwrap();
        assert_eq!((last, stray.len()), (2, 0));
        second.merge(conn).unwrap();
        assert_eq!(merged_of(conn), 2, "each key merged once");
    }

    #[test]
    fn a_merge_by_a_new_sink_takes_the_stray_pairs_once() {
        let db = Db::new();
        let conn = &db.conn;
        let mut first = PairSink::new();
        assert!(db.put(&mut first, "q1"));
        first.before_commit(conn).unwrap();
        // Stored, and "committed" without its chunk.
        assert!(db.put(&mut first, "q2"));
        // A new sink's first act is the merge: both keys are merged, none left pending
        // for a later chunk.
        let mut second = PairSink::new();
        second.merge(conn).unwrap();
        second.before_commit(conn).unwrap();
        assert_eq!(merged_of(conn), 2);
        let (_, stray) = load_tail(conn, |_, _| panic!("nothing left in the tail")).unwrap();
        assert!(stray.is_empty());
    }

    #[test]
    fn each_merge_stores_the_key_filter_and_a_writer_rebuilds_one_that_does_not_match() {
        let db = Db::new();
        let conn = &db.conn;
        let put = |sink: &mut PairSink, q: &str| db.put(sink, q);
        let stamp = |conn: &Connection| -> Option<i64> {
            conn.query_row("SELECT keys FROM pair_key_filter", [], |r| r.get(0))
                .ok()
        };
        let mut first = PairSink::new();
        assert!(put(&mut first, "q1") && put(&mut first, "q2"));
        assert_eq!(stamp(conn), None, "nothing merged, no filter");
        first.merge(conn).unwrap();
        assert_eq!(stamp(conn), Some(2), "written by the merge");
        let merged_keys = [pair("q1").key, pair("q2").key];
        let stored = KeyFilter::load(conn, 2).unwrap().expect("stamped 2");
        assert!(merged_keys.iter().all(|k| stored.may_contain(k)));

        // A writer that starts uses it: merged keys are duplicates, a new one is new.
        let mut second = PairSink::new();
        assert!(!put(&mut second, "q1"));
        assert!(put(&mut second, "q3"));
        assert_eq!(second.filter.as_ref().map(KeyFilter::len), Some(2));
        second.merge(conn).unwrap();
        assert_eq!(stamp(conn), Some(3));
        assert!(
            KeyFilter::load(conn, 3)
                .unwrap()
                .expect("stamped 3")
                .may_contain(&pair("q3").key),
            "the merged key went into the stored filter"
        );

        // No filter (a database from before it) or a stamp that does not match: the
        // writer rebuilds it from the merged keys and stores it.
        for damage in [
            "DELETE FROM pair_key_filter",
            "UPDATE pair_key_filter SET keys = 7, bits = zeroblob(64)",
        ] {
            conn.execute_batch(damage).unwrap();
            let mut next = PairSink::new();
            for q in ["q1", "q2", "q3"] {
                assert!(!put(&mut next, q), "{q} after {damage}");
            }
            assert!(put(&mut next, &format!("new after {damage}")));
            assert_eq!(stamp(conn), Some(3), "rebuilt after {damage}");
            assert_eq!(next.filter.as_ref().map(KeyFilter::len), Some(3));
        }
    }

    /// Every key in `stored` (asked `q`, stored as pair `id`) is a duplicate, to `sink`
    /// and to a new writer (which reads the runs from the database), and resolves to its
    /// pair; a key never stored resolves to none; the filter covers them all.
    fn assert_all_merged(db: &Db, sink: &mut PairSink, stored: &[(String, i64)], when: &str) {
        let conn = &db.conn;
        let mut fresh = PairSink::new();
        for (q, id) in stored {
            assert!(!db.put(sink, q), "{q} {when}");
            assert!(!db.put(&mut fresh, q), "{q} to a new writer {when}");
            assert_eq!(
                merged_pair_id(conn, &pair(q).key).unwrap(),
                Some(*id),
                "{q} {when}"
            );
        }
        assert_eq!(merged_pair_id(conn, &pair("never").key).unwrap(), None);
        assert_eq!(
            conn.query_row("SELECT keys FROM pair_key_filter", [], |r| r
                .get::<_, i64>(0))
                .unwrap(),
            stored.len() as i64,
            "the filter covers every merged key {when}"
        );
    }

    /// The entries of run `run` as stored, in order: (key, pair id).
    fn run_entries_of(conn: &Connection, run: i64) -> Vec<(PairKey, i64)> {
        let mut out = Vec::new();
        for_each_entry_of_run(conn, run, &mut |id, key| out.push((key, id))).unwrap();
        out
    }

    #[test]
    fn merges_write_runs_and_the_fifth_folds_them_into_one_in_key_order() {
        let db = Db::new();
        let conn = &db.conn;
        let mut sink = PairSink::new();
        let mut stored = Vec::new();
        // Merges of 1 to 5 keys: four runs, then the fold of all fifteen into run 5.
        for merge in 1..=5i64 {
            for k in 0..merge {
                let q = format!("m{merge}k{k}");
                assert!(db.put(&mut sink, &q));
                stored.push((q, stored.len() as i64 + 1));
            }
            sink.before_commit(conn).unwrap();
            sink.merge(conn).unwrap();
            let want = if merge <= 4 {
                (1..=merge).map(|run| (run, run)).collect()
            } else {
                vec![(5, 15)]
            };
            assert_eq!(layout(conn), (want, 0), "after merge {merge}");
            assert_all_merged(&db, &mut sink, &stored, &format!("after merge {merge}"));
        }
        // The fold wrote one run in key order, each key with its own pair.
        let mut want: Vec<(PairKey, i64)> =
            stored.iter().map(|(q, id)| (pair(q).key, *id)).collect();
        want.sort();
        assert_eq!(run_entries_of(conn, 5), want);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE name GLOB 'pair_key_run_*'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            tables,
            vec![run_table(5)],
            "the folded runs' tables are dropped"
        );
        // After the fold, the next merge writes run 6.
        assert!(db.put(&mut sink, "after the fold"));
        sink.merge(conn).unwrap();
        assert_eq!(layout(conn), (vec![(5, 15), (6, 1)], 0));
    }

    #[test]
    fn the_index_of_a_database_from_before_the_runs_counts_as_a_run_until_a_fold_empties_it() {
        let db = Db::new();
        let conn = &db.conn;
        // Two pairs merged the old way: into pair_keys, the tail's watermark after them.
        let mut stored = Vec::new();
        let mut first = PairSink::new();
        for q in ["old1", "old2"] {
            assert!(db.put(&mut first, q));
            stored.push((q.to_string(), stored.len() as i64 + 1));
        }
        conn.execute_batch(
            "INSERT INTO pair_keys (key, pair_id) SELECT key, id FROM pairs;
             DELETE FROM tail_chunks; INSERT INTO tail_chunks VALUES (2, x'');",
        )
        .unwrap();
        // No filter yet: the writer builds it from pair_keys.
        let mut sink = PairSink::new();
        assert!(!db.put(&mut sink, "old1"), "found in pair_keys");
        assert_eq!(layout(conn), (vec![], 2));
        // Three runs beside it, then the fold of all four and the tail into run 4.
        for merge in 1..=4i64 {
            let q = format!("new{merge}");
            assert!(db.put(&mut sink, &q));
            stored.push((q, stored.len() as i64 + 1));
            sink.merge(conn).unwrap();
            let want = if merge <= 3 {
                ((1..=merge).map(|run| (run, 1)).collect(), 2)
            } else {
                (vec![(4, 6)], 0)
            };
            assert_eq!(layout(conn), want, "after merge {merge}");
            assert_all_merged(&db, &mut sink, &stored, &format!("after merge {merge}"));
        }
    }

    #[test]
    fn a_fold_refuses_a_key_met_twice() {
        // A key that reached a run while also merged (which the writer rules out) fails
        // the fold, whose transaction then rolls back: the runs' own guard.
        let db = Db::new();
        let conn = &db.conn;
        let mut sink = PairSink::new();
        assert!(db.put(&mut sink, "q"));
        sink.merge(conn).unwrap();
        let q = [(pair("q").key, 1)];
        write_run(conn, 2, &q).unwrap();
        write_run(conn, 3, &q).unwrap();
        write_run(conn, 4, &q).unwrap();
        let mut next = PairSink::new();
        assert!(db.put(&mut next, "q2"));
        let err = next.merge(conn).unwrap_err();
        assert!(
            format!("{err:#}").contains("folding the key runs into one")
                && format!("{err:#}").contains("merged already"),
            "{err:#}"
        );
    }

    #[test]
    fn a_run_finds_each_of_its_keys_in_its_rows_and_no_other() {
        let db = Db::new();
        let conn = &db.conn;
        // 100 keys: rows of 16, the last of 4.
        let mut entries: Vec<(PairKey, i64)> = (0..100)
            .map(|i| (pair(&format!("k{i}")).key, i + 1))
            .collect();
        entries.sort_unstable();
        write_run(conn, 1, &entries).unwrap();
        assert_eq!(count_of(conn, &run_table(1)), 7);
        let other = [(pair("elsewhere").key, 101)];
        write_run(conn, 2, &other).unwrap();
        assert_eq!(runs(conn).unwrap(), vec![1, 2]);
        for (key, id) in &entries {
            assert_eq!(run_pair_id(conn, 1, key).unwrap(), Some(*id));
            assert_eq!(run_pair_id(conn, 2, key).unwrap(), None, "another run");
        }
        assert_eq!(run_pair_id(conn, 2, &other[0].0).unwrap(), Some(101));
        for i in 0..100 {
            let absent = pair(&format!("absent{i}")).key;
            assert_eq!(run_pair_id(conn, 1, &absent).unwrap(), None);
        }
        let mut read = Vec::new();
        for_each_run_entry(conn, |id, key| read.push((key, id))).unwrap();
        entries.extend(other);
        assert_eq!(read, entries, "read back run by run, each in key order");
    }

    #[test]
    fn the_tail_grows_with_the_index_within_bounds() {
        let due = |merged, tail: u64| {
            PairSink {
                tail: Some(
                    (0..tail)
                        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
                        .collect(),
                ),
                merged,
                ..PairSink::default()
            }
            .merge_due()
        };
        assert!(!due(0, MERGE_MIN as u64 - 1));
        assert!(due(0, MERGE_MIN as u64));
        assert!(!due(4_000_000, 999_999), "a quarter of 4M");
        assert!(due(4_000_000, 1_000_000));
        assert!(due(40_000_000, MERGE_MAX as u64), "capped");
    }
}
